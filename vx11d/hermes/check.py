"""Refuse a bad model before llama.cpp ever sees it.

:func:`inspect_model` runs this module as a SUBPROCESS (``python -m
vx11d.hermes.check PATH``) under a timeout and an address-space limit, so a parser
that crashes, hangs or balloons takes down only the child, never the worker. The
child checks, in order:

1. size within bounds; sha256 equal to ``model_sha256`` when one is pinned (GGUF has
   no checksum of its own);
2. structure: ``gguf.GGUFReader`` parses the header, metadata and tensor table
   (it raises mixed exception types on damage; all become a refusal);
3. mandatory LLaMA metadata present;
4. weights: every float tensor (F32/F16/BF16) is scanned for NaN/Inf with numpy,
   quantized tensors are dequantized and scanned in sampled slices (a full
   dequantization of a 4 GB model would take minutes);
5. ``tokenizer.chat_template``: refused when it names a dunder attribute
   (``__class__``, ``__mro__``, ``__globals__``, ``__subclasses__``...) and rendered
   once with sample messages in a jinja2 ``ImmutableSandboxedEnvironment`` (what
   llama-cpp-python itself uses, where an unsafe access silently renders as empty; here
   it raises) — a SecurityError or any template error refuses it.

It prints one JSON line: ``{"ok": true, ...}`` or ``{"ok": false, "reason": ...}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import subprocess
import sys
from dataclasses import dataclass, field

MANDATORY = ("general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.tokens")
PER_ARCH = ("context_length", "embedding_length", "block_count",
            "attention.layer_norm_rms_epsilon")
DUNDER = re.compile(r"__\w+__|\bmro\b|\bsubclasses\b|\bglobals\b|\bbuiltins\b")
SCAN_CHUNK = 1 << 22  # elements per numpy pass
QUANT_SAMPLE_BYTES = 1 << 18  # bytes of each quantized tensor dequantized for the scan


class Refused(Exception):
    """The model is refused; the message is the reason."""


@dataclass
class CheckResult:
    ok: bool
    reason: str = ""
    info: dict = field(default_factory=dict)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _field_value(reader, key: str):
    fld = reader.fields.get(key)
    if fld is None:
        return None
    try:
        return fld.contents()
    except AttributeError:  # older gguf: decode by hand
        part = fld.parts[fld.data[0]]
        return bytes(part).decode("utf-8") if fld.types and fld.types[0].name == "STRING" \
            else part.tolist()


def check_template(template: str) -> None:
    """Refuse a chat template that reaches Python internals or fails in a sandbox."""
    m = DUNDER.search(template)
    if m:
        raise Refused(f"chat_template refers to {m.group(0)!r} (template injection)")
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Strict(ImmutableSandboxedEnvironment):
        """The sandbox quietly renders an unsafe access as undefined; we refuse it."""

        def unsafe_undefined(self, obj, attribute):
            raise SecurityError(f"access to {attribute!r} of a {type(obj).__name__} "
                                "is unsafe")

    env = Strict(trim_blocks=True, lstrip_blocks=True)
    try:
        env.from_string(template).render(
            messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            bos_token="<s>", eos_token="</s>",  # noqa: S106
            add_generation_prompt=True)
    except TemplateError as e:  # SecurityError is a TemplateError
        raise Refused(f"chat_template does not render in a sandbox: "
                      f"{type(e).__name__}: {e}") from e


def _scan(reader) -> int:
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    floats = {Q.F32, Q.F16}
    scanned = 0
    for t in reader.tensors:
        data = t.data
        if t.tensor_type in floats:
            flat = np.asarray(data).reshape(-1)
            for i in range(0, flat.size, SCAN_CHUNK):
                if not np.isfinite(flat[i:i + SCAN_CHUNK]).all():
                    raise Refused(f"tensor {t.name} holds NaN or Inf weights")
            scanned += 1
        elif t.tensor_type == Q.BF16 or t.tensor_type in quants._type_traits:
            raw = np.asarray(data).view(np.uint8).reshape(-1)
            _block, size = quants.GGML_QUANT_SIZES[t.tensor_type]
            take = max(size, (QUANT_SAMPLE_BYTES // size) * size)
            for start in (0, max(0, (raw.size // size // 2) * size),
                          max(0, raw.size - take)):
                part = raw[start:start + take]
                part = part[:(part.size // size) * size]
                if part.size and not np.isfinite(quants.dequantize(part, t.tensor_type)).all():
                    raise Refused(f"tensor {t.name} holds NaN or Inf weights")
            scanned += 1
    return scanned


def check_file(path: str, sha256: str = "", max_size: int = 8 << 30) -> dict:
    """All checks, in this process (the child): returns info or raises Refused."""
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise Refused(f"model file {path}: {e.strerror}") from e
    if size < 1024:
        raise Refused(f"model file is {size} bytes; too small to be a GGUF model")
    if size > max_size:
        raise Refused(f"model file is {size} bytes, above max_model_size {max_size}")
    if sha256:
        got = _sha256(path)
        if got != sha256.lower():
            raise Refused(f"sha256 mismatch: expected {sha256.lower()}, file has {got}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise Refused("bad magic: not a GGUF file")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path, "r")
    except (MemoryError, RecursionError) as e:
        raise Refused(f"GGUF structure is damaged: {type(e).__name__}") from e
    except Exception as e:
        raise Refused(f"GGUF structure is damaged: {type(e).__name__}: {e}"[:300]) from e
    missing = [k for k in MANDATORY if k not in reader.fields]
    arch = _field_value(reader, "general.architecture") if not missing else None
    if arch is not None:
        missing += [f"{arch}.{k}" for k in PER_ARCH if f"{arch}.{k}" not in reader.fields]
    if missing:
        raise Refused(f"missing GGUF metadata: {', '.join(missing)}")
    if not reader.tensors:
        raise Refused("GGUF file has no tensors")
    try:
        scanned = _scan(reader)
    except Refused:
        raise
    except Exception as e:
        raise Refused(f"tensor data is damaged: {type(e).__name__}: {e}"[:300]) from e
    template = _field_value(reader, "tokenizer.chat_template")
    if template is not None:
        if not isinstance(template, str):
            raise Refused("tokenizer.chat_template is not a string")
        check_template(template)
    return {"size": size, "architecture": arch, "tensors": len(reader.tensors),
            "scanned": scanned, "chat_template": template is not None}


def _limit(mem: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def inspect_model(path: str, sha256: str = "", max_size: int = 8 << 30, *,
                  timeout: float = 300.0, mem_limit: int | None = None) -> CheckResult:
    """Run the checks in a child process; a crash, hang or bad file is a refusal."""
    if mem_limit is None:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        mem_limit = 2 * min(size, max_size) + (1 << 30)  # mmap of the file + numpy
    argv = [sys.executable, "-m", "vx11d.hermes.check", path, "--max-size", str(max_size)]
    if sha256:
        argv += ["--sha256", sha256]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout,
                              preexec_fn=_limit(mem_limit), check=False)
    except subprocess.TimeoutExpired:
        return CheckResult(False, f"model check did not finish in {timeout:g}s")
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode < 0:
        return CheckResult(False, f"model check crashed (signal {-proc.returncode})")
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["?"]
        return CheckResult(False, f"model check failed (exit {proc.returncode}): {err[0]}"[:300])
    return CheckResult(bool(out.get("ok")), out.get("reason", ""), out.get("info", {}))


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("--sha256", default="")
    p.add_argument("--max-size", type=int, default=8 << 30)
    a = p.parse_args(argv)
    try:
        info = check_file(a.path, a.sha256, a.max_size)
    except Refused as e:
        print(json.dumps({"ok": False, "reason": str(e)}))
        return 1
    print(json.dumps({"ok": True, "info": info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
