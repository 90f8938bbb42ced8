"""Random-weight LLaMA GGUF models for tests and the bench, and a damaged-GGUF corpus.

No model can be downloaded on the build machines, so the suite writes its own with the
``gguf`` package: :func:`write_model` (tiny by default, ~0.5 MB; ``BENCH_SHAPE`` makes a
token cost milliseconds) and :func:`write_corpus` (files Hermes must refuse).

    python -m vx11d.hermes.testmodel OUT.gguf [--bench]
"""

from __future__ import annotations

import argparse
import os
import random
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

PIECES = ["▁the", "▁a", "▁is", "▁of", "▁and", "▁to", "▁in", "▁it", "▁vx", "11",
          "▁hermes", "▁switch", "▁ok", "▁yes", "▁no", "e", "s", "t", "▁", "."]
N_BYTE = 256
FIRST_BYTE = 3
EOS = 2  # </s>, after <unk> and <s> (see _vocabulary)


@dataclass(frozen=True)
class Shape:
    layers: int = 2
    embd: int = 64
    heads: int = 4
    ff: int = 128
    ctx: int = 256


TINY_SHAPE = Shape()
BENCH_SHAPE = Shape(layers=8, embd=768, heads=12, ff=2048, ctx=512)


def high_byte_bias() -> dict[int, float]:
    """A logit_bias that suppresses byte tokens >= 0x80 (invalid UTF-8 alone)."""
    return {FIRST_BYTE + b: -100.0 for b in range(0x80, 0x100)}


def endless_bias() -> dict[int, float]:
    """:func:`high_byte_bias` with the end of answer suppressed too: random weights may
    end an answer at any token (where depends on the CPU's kernels), so a request that
    must still be generating runs to ``max_tokens``."""
    return {**high_byte_bias(), EOS: -100.0}


def _vocabulary(pieces: list[str]) -> list[str]:
    """The special tokens, the 256 byte tokens, then ``pieces``."""
    return ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(N_BYTE)] + pieces


def _llama_writer(path: str, tokens: list[str], *, ctx: int, embd: int, layers: int,
                  ff: int, heads: int, kv_heads: int) -> Any:
    """A ``gguf.GGUFWriter`` for a LLaMA model of that shape, its tokenizer (from
    :func:`_vocabulary`: normal pieces scored by rank) written in; tensors to add."""
    import gguf

    pieces = len(tokens) - FIRST_BYTE - N_BYTE
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(ctx)
    w.add_embedding_length(embd)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(embd // heads)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types([2, 3, 3] + [6] * N_BYTE + [1] * pieces)
    w.add_token_scores([0.0] * (FIRST_BYTE + N_BYTE) + [-float(i) for i in range(pieces)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(EOS)
    w.add_unk_token_id(0)
    return w


def write_model(path: str, shape: Shape = TINY_SHAPE, *, seed: int = 11, f16: bool = True,
                chat_template: str | None = None, poison: float | None = None) -> str:
    """Write a random-weight LLaMA GGUF to ``path``; ``poison`` puts that value in a weight."""
    rng = np.random.default_rng(seed)
    tokens = _vocabulary(PIECES)
    w = _llama_writer(path, tokens, ctx=shape.ctx, embd=shape.embd, layers=shape.layers,
                      ff=shape.ff, heads=shape.heads, kv_heads=shape.heads)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    dt = np.float16 if f16 else np.float32
    n_vocab, e = len(tokens), shape.embd

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.05).astype(dt)

    emb = mat(n_vocab, e)
    if poison is not None:
        emb = emb.astype(np.float32)
        emb[5, 7] = poison
    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("output_norm.weight", np.ones(e, dtype=np.float32))
    for i in range(shape.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(e, dtype=np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(e, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(p + name + ".weight", mat(e, e))
        w.add_tensor(p + "ffn_gate.weight", mat(shape.ff, e))
        w.add_tensor(p + "ffn_up.weight", mat(shape.ff, e))
        w.add_tensor(p + "ffn_down.weight", mat(e, shape.ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@dataclass(frozen=True)
class BigShape:
    """A full-size shape; the default is LLaMA-2-7B's (no grouped-query attention)."""

    layers: int = 32
    embd: int = 4096
    heads: int = 32
    kv_heads: int = 32
    ff: int = 11008
    vocab: int = 32000
    ctx: int = 4096


Q4_0_BLOCK, Q4_0_BYTES = 32, 18  # 32 weights: an f16 scale and 16 bytes of nibbles


def q4_0_bytes(shape: BigShape) -> int:
    """The weights' size of :func:`write_q4_0_model` (what the file holds, +metadata)."""
    e, kv = shape.embd, shape.embd // shape.heads * shape.kv_heads
    per_layer = 2 * e * e + 2 * e * kv + 3 * e * shape.ff
    n = 2 * shape.vocab * e + shape.layers * per_layer
    return n // Q4_0_BLOCK * Q4_0_BYTES


def write_q4_0_model(path: str, shape: BigShape = BigShape(), *, seed: int = 7) -> str:
    """A random-weight LLaMA GGUF with Q4_0 matrices, written block by block (no f16
    copy in memory or on disk: a 7B shape is ~3.8 GB, written tensor by tensor). Its
    vocabulary: the special and byte tokens, then one-word pieces ``▁w<n>``, so a prompt
    of n such words is ~n tokens."""
    import gguf

    rng = np.random.default_rng(seed)
    words = shape.vocab - FIRST_BYTE - N_BYTE
    e, kv = shape.embd, shape.embd // shape.heads * shape.kv_heads
    w = _llama_writer(path, _vocabulary([f"▁w{i}" for i in range(words)]), ctx=shape.ctx,
                      embd=e, layers=shape.layers, ff=shape.ff, heads=shape.heads,
                      kv_heads=shape.kv_heads)
    mats: list[tuple[str, int, int]] = [("token_embd.weight", shape.vocab, e)]
    norms = ["output_norm.weight"]
    for i in range(shape.layers):
        p = f"blk.{i}."
        norms += [p + "attn_norm.weight", p + "ffn_norm.weight"]
        mats += [(p + "attn_q.weight", e, e), (p + "attn_k.weight", kv, e),
                 (p + "attn_v.weight", kv, e), (p + "attn_output.weight", e, e),
                 (p + "ffn_gate.weight", shape.ff, e), (p + "ffn_up.weight", shape.ff, e),
                 (p + "ffn_down.weight", e, shape.ff)]
    mats.append(("output.weight", shape.vocab, e))
    for name in norms:
        w.add_tensor_info(name, (e,), np.dtype(np.float32), e * 4)
    q4 = gguf.GGMLQuantizationType.Q4_0
    for name, rows, cols in mats:
        nbytes = rows * cols // Q4_0_BLOCK * Q4_0_BYTES
        w.add_tensor_info(name, (rows, cols // Q4_0_BLOCK * Q4_0_BYTES), np.dtype(np.uint8),
                          nbytes, raw_dtype=q4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    ones = np.ones(e, dtype=np.float32)
    for _ in norms:
        w.write_tensor_data(ones)
    scale = np.frombuffer(np.float16(0.004).tobytes(), dtype=np.uint8)
    for _, rows, cols in mats:
        blocks = rng.integers(0, 256, size=(rows, cols // Q4_0_BLOCK, Q4_0_BYTES),
                              dtype=np.uint8)
        blocks[:, :, :2] = scale
        w.write_tensor_data(blocks.reshape(rows, -1))
        del blocks
    w.close()
    return path


INJECTION = ("{{ ''.__class__.__mro__[1].__subclasses__() }}"
             "{% for m in messages %}{{ m.content }}{% endfor %}")
INJECTION_ATTR = ("{{ messages|attr('__class__')|attr('__mro__') }}"
                  "{% for m in messages %}{{ m.content }}{% endfor %}")


def write_corpus(directory: str, good: str | None = None, seed: int = 7) -> list[str]:
    """Write damaged GGUF files into ``directory``; returns their paths (all must be refused)."""
    os.makedirs(directory, exist_ok=True)
    good = good or write_model(os.path.join(directory, ".good.gguf.src"))
    with open(good, "rb") as f:
        data = f.read()
    rnd = random.Random(seed)
    cases: dict[str, bytes] = {"empty": b"", "magic_only": data[:4], "header_only": data[:24]}
    for frac in (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
        cases[f"truncated_{int(frac * 100):02d}pct"] = data[:int(len(data) * frac)]
    cases["truncated_last_byte"] = data[:-1]
    cases["bad_magic"] = b"GGML" + data[4:]
    cases["version_99"] = data[:4] + struct.pack("<I", 99) + data[8:]
    cases["huge_tensor_count"] = data[:8] + struct.pack("<Q", 2**62) + data[16:]
    cases["huge_kv_count"] = data[:16] + struct.pack("<Q", 2**62) + data[24:]
    cases["random_bytes"] = rnd.randbytes(len(data))
    cases["random_after_header"] = data[:24] + rnd.randbytes(len(data) - 24)
    paths = []
    for name, blob in cases.items():
        p = os.path.join(directory, name + ".gguf")
        with open(p, "wb") as f:
            f.write(blob)
        paths.append(p)
    paths.append(write_model(os.path.join(directory, "nan_weights.gguf"), poison=float("nan")))
    paths.append(write_model(os.path.join(directory, "inf_weights.gguf"), poison=float("inf")))
    paths.append(write_model(os.path.join(directory, "template_injection_mro.gguf"),
                             chat_template=INJECTION))
    paths.append(write_model(os.path.join(directory, "template_injection_attr.gguf"),
                             chat_template=INJECTION_ATTR))
    os.unlink(good) if good.endswith(".src") else None
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--bench", action="store_true", help="the bigger bench shape")
    p.add_argument("--corpus", action="store_true", help="write the damaged corpus into OUT")
    p.add_argument("--7b", dest="big", action="store_true",
                   help="a LLaMA-2-7B-shaped Q4_0 model (~3.8 GB)")
    a = p.parse_args(argv)
    if a.big:
        print(write_q4_0_model(a.out))
    elif a.corpus:
        for path in write_corpus(a.out):
            print(path)
    else:
        print(write_model(a.out, BENCH_SHAPE if a.bench else TINY_SHAPE))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
