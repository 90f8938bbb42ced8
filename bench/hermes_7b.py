"""Hermes with a 7B int4 model under its real unit and MemoryMax=6G, enforced.

The seed's production model is a 7B int4 GGUF; none can be downloaded here, so the
bench writes one with random weights (LLaMA-2-7B's shape: 32 layers, 4096 wide, 32
attention heads and 32 KV heads, feed-forward 11008, 32,000 tokens; Q4_0 blocks written
directly, ~3.8 GB; ``vx11d.hermes.testmodel --7b``) inside the sandbox, whose systemd
enforces the unit's limits (delegated memory controller: ``limits_enforced``). Hermes
runs as ``vx11-hermes.service`` with the shipped ``MemoryMax=6G`` / ``MemoryHigh=`` and
``hermes.rss_limit`` 5.5 GiB, ``n_ctx`` 4096, one sequence, the KV cache in q8_0 (a
model without grouped-query attention needs 2 GiB of f16 KV at 4096 cells: with the
~3.5 GiB of weights that is above the RSS guard; docs/switch-hermes-runtime.md has the
sizing). Measured: the model load, a ~2,000-token prompt's first token, 128 tokens out,
the cgroup's peak against MemoryMax (``memory.max_usage_in_bytes`` on v1,
``memory.peak`` on v2), the worker's RSS split into anonymous and file-backed (the
mmapped model) and the cgroup's page cache, then the idle unload and what is left. The
model file is written once, on the host's disk under ``.state/bench-models/`` (the
sandbox's /var is a tmpfs), and evicted from the page cache before each run (a cold
load, charged to the unit).

Not in ``make bench`` (``--quick`` only says so): ~10 minutes on 2 quiet cores (the
prompt is most of it) plus ~1 minute to write the model the first time; more on a busy
machine. Needs ~4 GB of free disk.

``--vm bookworm|trixie``: the same on the real-kernel tier's guest (tests/vm: that
release's own kernel, systemd as PID 1, pure cgroup v2, the package built for that
release and installed with apt), with 8 GiB of guest RAM so that the unit's 6G, not the
guest, is the limit. Under qemu's TCG (no KVM on the development VM) the load took 74 s
but llama.cpp's AVX2 code runs more than 80x slower than natively (a 512-row decode, 29 s
natively, had not ended after 40 minutes): there, read the unit's ``memory.peak`` in the
guest (``--keep``) rather than wait for the answer, or run it where KVM works.
``--prompt-tokens`` (default 2000) and ``--out-tokens`` (128) can be lowered:
llama.cpp zeroes the whole KV cache when it makes the context (it is charged at load,
whatever the prompt), and a prompt of 512 tokens or more fills one whole 512-token
batch, so its compute buffers are all touched too: the cgroup's peak is the one a
2,000-token prompt gives.

    python bench/hermes_7b.py [--keep] [--vm bookworm|trixie] [--prompt-tokens N]
                              [--out-tokens N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

# on the host's disk (the sandbox's /var is a tmpfs, whose pages would be charged to the
# writer, not to the unit that maps them); the checkout is bound into the sandbox
MODEL = str(REPO / ".state" / "bench-models" / "random-weights-llama2-7b-q4_0.gguf")
UNIT = "vx11-hermes.service"
SOCK = "/run/vx11-hermes/hermes.sock"
VM_MODEL = "/var/lib/vx11/models/random-weights-llama2-7b-q4_0.gguf"
PROMPT_TOKENS, OUT_TOKENS = 2000, 128
CONFIG = """log_level: info
hermes:
  model_path: {model}
  model_sha256: ''
  max_model_size: 5G
  n_ctx: 4096
  parallel: 1
  kv_cache_type: q8_0
  max_tokens: {out}
  request_timeout: 3600
  idle_unload: 15
"""


# --- inside the sandbox -------------------------------------------------------------------

class UnixConn(http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(SOCK)


def _get(path: str) -> tuple[int, bytes]:
    c = UnixConn("h", timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _cg_dir() -> tuple[str, str]:
    """(the unit's memory cgroup dir, "v1" or "v2")."""
    v1 = "/sys/fs/cgroup/memory/system.slice/" + UNIT
    if os.path.isdir(v1):
        return v1, "v1"
    return "/sys/fs/cgroup/system.slice/" + UNIT, "v2"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _stat(cg: str) -> dict[str, int]:
    return {k: int(v) for k, v in (ln.split() for ln in _read(cg + "/memory.stat").splitlines())}


def _proc(pid: int) -> dict[str, int]:
    out = {}
    for ln in _read(f"/proc/{pid}/status").splitlines():
        k, _, v = ln.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out


def _sh(*argv: str) -> str:
    import subprocess

    return subprocess.run(argv, capture_output=True, text=True, timeout=120).stdout.strip()


def inside(prompt_tokens: int, out_tokens: int) -> dict:
    import subprocess

    from vx11d.hermes.testmodel import high_byte_bias

    res: dict = {}
    subprocess.run(["systemctl", "restart", UNIT], check=True, timeout=120)
    cg, version = _cg_dir()
    res["cgroup"] = version
    res["memory_max_bytes"] = int(_read(cg + ("/memory.limit_in_bytes" if version == "v1"
                                              else "/memory.max")))
    pid = int(_sh("systemctl", "show", "-p", "MainPID", "--value", UNIT))
    res["idle_rss_bytes"] = _proc(pid)["VmRSS"]
    bias = {str(k): v for k, v in high_byte_bias().items()}
    bias["2"] = -100.0  # no end of sequence: exactly out_tokens come out
    words = " ".join(f"unit {i % 97} is bounded" for i in range(400))
    # random-weight vocabulary: ~1.44 tokens a character with the llama-2 template
    body = {"messages": [{"role": "user", "content": words[:int(prompt_tokens / 1.44)]}],
            "max_tokens": out_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "logit_bias": bias}
    c = UnixConn("h", timeout=3600)
    t0 = time.monotonic()
    c.request("POST", "/v1/chat/completions", json.dumps(body),
              {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    first = None
    usage = None
    while True:
        line = r.readline()
        if not line:
            break
        if line.startswith(b"data: {"):
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if first is None and any(ch["delta"].get("content")
                                     for ch in chunk.get("choices", [])):
                first = time.monotonic()
    end = time.monotonic()
    c.close()
    _, metrics = _get("/metrics")
    load = [ln for ln in metrics.decode().splitlines()
            if ln.startswith("vx11_hermes_model_load_duration_seconds ")]
    res["load_s"] = round(float(load[0].split()[1]), 2) if load else None
    res["prompt_tokens"] = usage["prompt_tokens"] if usage else None
    res["completion_tokens"] = usage["completion_tokens"] if usage else None
    res["first_token_s_incl_load"] = round(first - t0, 2) if first else None
    res["first_token_s"] = round(first - t0 - (res["load_s"] or 0), 2) if first else None
    res["tokens_per_s"] = round((usage["completion_tokens"] - 1) / (end - first), 2) \
        if first and usage else None
    p = _proc(pid)
    st = _stat(cg)
    res["rss_bytes_loaded"] = p["VmRSS"]
    res["rss_peak_bytes"] = p["VmHWM"]
    res["rss_anon_bytes"] = p["RssAnon"]
    res["rss_file_bytes"] = p["RssFile"]
    res["cgroup_page_cache_bytes"] = st.get("cache", st.get("file", 0))
    res["cgroup_rss_bytes"] = st.get("rss", st.get("anon", 0))
    res["cgroup_peak_bytes"] = int(_read(cg + ("/memory.max_usage_in_bytes" if version == "v1"
                                               else "/memory.peak")))
    res["cgroup_peak_fraction_of_max"] = round(res["cgroup_peak_bytes"]
                                               / res["memory_max_bytes"], 3)
    if version == "v1":
        oom = dict(ln.split() for ln in _read(cg + "/memory.oom_control").splitlines())
        res["oom_kills"] = int(oom.get("oom_kill", 0))
    else:
        ev = dict(ln.split() for ln in _read(cg + "/memory.events").splitlines())
        res["oom_kills"] = int(ev.get("oom_kill", 0))
    deadline = time.monotonic() + 180

    def health() -> dict:
        try:
            return json.loads(_get("/health")[1])
        except (OSError, ValueError):
            return {}

    while health().get("model") != "unloaded" and time.monotonic() < deadline:
        time.sleep(1)
    res["unloaded"] = health().get("model") == "unloaded"
    res["restarts"] = int(_sh("systemctl", "show", "-p", "NRestarts", "--value", UNIT))
    res["rss_guard_exits"] = len(_sh("journalctl", "-o", "cat",
                                     "VX11_EVENT=hermes_rss_guard").splitlines())
    res["unit_log_tail"] = _sh("journalctl", "-u", UNIT, "-n", "15", "-o", "cat")
    new_pid = int(_sh("systemctl", "show", "-p", "MainPID", "--value", UNIT) or 0)
    res["same_process"] = new_pid == pid
    if new_pid:
        res["rss_bytes_after_unload"] = _proc(new_pid)["VmRSS"]
    res["cgroup_bytes_after_unload"] = int(_read(cg + ("/memory.usage_in_bytes"
                                                       if version == "v1"
                                                       else "/memory.current")))
    return res


# --- on the host --------------------------------------------------------------------------

def host(args: argparse.Namespace) -> int:
    from vx11d.hermes.testmodel import write_q4_0_model

    t0 = time.monotonic()
    os.makedirs(os.path.dirname(MODEL), exist_ok=True)
    if not os.path.exists(MODEL):
        write_q4_0_model(MODEL + ".tmp")
        os.replace(MODEL + ".tmp", MODEL)
    os.chmod(MODEL, 0o644)
    written = round(time.monotonic() - t0, 1)
    fd = os.open(MODEL, os.O_RDONLY)  # its pages out of the page cache: a cold load,
    try:  # and the unit's cgroup is charged for what it reads
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    res = in_vm(args) if args.vm else in_sandbox(args)
    if res is None:
        return 1
    res["model_bytes"] = os.path.getsize(MODEL)
    res["model_write_s"] = written
    res["seconds"] = round(time.monotonic() - t0, 1)
    gib = 1024**3
    from _sandboxed import print_rows

    print_rows([
        ("model (LLaMA-2-7B shape, Q4_0, random weights)",
         f"{res['model_bytes'] / gib:.2f} GiB, written in {res['model_write_s']} s"),
        ("load (checks included)", f"{res['load_s']} s"),
        (f"first token, {res['prompt_tokens']}-token prompt", f"{res['first_token_s']} s"),
        (f"tokens/s ({res['completion_tokens']} out)", f"{res['tokens_per_s']}"),
        ("cgroup peak / MemoryMax",
         f"{res['cgroup_peak_bytes'] / gib:.2f} / {res['memory_max_bytes'] / gib:.2f} GiB "
         f"({res['cgroup_peak_fraction_of_max']})"),
        ("RSS loaded: anonymous + file-backed (the mmapped model)",
         f"{res['rss_anon_bytes'] / gib:.2f} + {res['rss_file_bytes'] / gib:.2f} GiB"),
        ("cgroup page cache / rss", f"{res['cgroup_page_cache_bytes'] / gib:.2f} / "
                                    f"{res['cgroup_rss_bytes'] / gib:.2f} GiB"),
        ("OOM kills, restarts, RSS-guard exits",
         f"{res['oom_kills']}, {res['restarts']}, {res['rss_guard_exits']}"),
        ("after the idle unload: RSS / cgroup (same process)",
         f"{res.get('rss_bytes_after_unload', 0) / 2**20:.0f} MiB / "
         f"{res['cgroup_bytes_after_unload'] / 2**20:.0f} MiB ({res['same_process']})"),
        ("host", res["where"]),
        ("limits enforced (measured)", str(res["limits_enforced"])),
        ("total (s)", str(res["seconds"]))])
    print(json.dumps(res, sort_keys=True))
    return 0


def in_sandbox(args: argparse.Namespace) -> dict | None:
    """The run in the sandbox (this machine's kernel, its delegated controllers)."""
    from _sandboxed import PYTHON

    from vx11d.ctl.sandbox import Sandbox

    sb = Sandbox(os.environ.get("VX11_SANDBOX") or f"vx11bench7b-{os.getpid()}")
    sb.up()
    try:
        sb.write_config(CONFIG.format(model=MODEL, out=args.out_tokens))
        r = sb.exec([PYTHON, str(Path(__file__).resolve()), "--inside", "--prompt-tokens",
                     str(args.prompt_tokens), "--out-tokens", str(args.out_tokens)],
                    timeout=7200)
        if r.returncode != 0:
            print(r.stdout, r.stderr, file=sys.stderr)
            return None
        res = json.loads(r.stdout.strip().splitlines()[-1])
        enforced = sb.enforced()
        res["limits_enforced"] = all(enforced.values())
        res["where"] = "sandbox (systemd-nspawn, this machine's kernel)"
        return res
    finally:
        if not args.keep:
            sb.down()


def in_vm(args: argparse.Namespace) -> dict | None:
    """The run on the real-kernel tier's guest of ``args.vm`` (its own kernel, pure
    cgroup v2), the package for that release installed with apt."""
    os.environ.setdefault("VX11_VM_MEM", "8192")  # the unit's 6G is the limit, not the RAM
    os.environ.setdefault("VX11_VM_DISK", "12G")  # the 3.8 GB model beside the root
    from tests.host.packages import build_current
    from tests.infra import freshhost
    from tests.vm.qemuhost import QemuHost, clean_stale

    deb = build_current(args.vm, hermes=True)
    image = freshhost.ensure_image(freshhost.image_packages([deb]), suite=args.vm, vm=True)
    clean_stale("vx11b7-")
    vm = QemuHost(image, f"vx11b7-{os.getpid()}-{args.vm}").create()

    def run(*argv: str, timeout: float = 900, input: str | None = None) -> str:
        r = vm.exec(list(argv), timeout=timeout, input=input)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(argv)}: exit {r.returncode}\n{r.stdout[-2000:]}"
                             f"\n{r.stderr[-2000:]}")
        return r.stdout

    try:
        vm.put(deb, f"/root/{deb.name}")
        vm.put(MODEL, "/root/model.gguf")
        for f in ("hermes_7b.py", "_sandboxed.py"):
            vm.put(REPO / "bench" / f, f"/root/bench/{f}")
        boot_s = vm.boot(timeout=600)
        run("sh", "-c", f"cd /root && apt-get install -y --no-install-recommends ./{deb.name}")
        run("sh", "-c", f"install -d -o root -g vx11 -m 0750 {os.path.dirname(VM_MODEL)} && "
            f"mv /root/model.gguf {VM_MODEL} && chown root:vx11 {VM_MODEL} && "
            f"chmod 0640 {VM_MODEL}")
        run("install", "-o", "root", "-g", "vx11", "-m", "0640", "/dev/stdin",
            "/etc/vx11/vx11.yml", input=CONFIG.format(model=VM_MODEL, out=args.out_tokens))
        run("vx11ctl", "config", "check")
        out = run("/opt/vx11d/bin/python3", "/root/bench/hermes_7b.py", "--inside",
                  "--prompt-tokens", str(args.prompt_tokens), "--out-tokens",
                  str(args.out_tokens), timeout=4 * 3600)
        res = json.loads(out.strip().splitlines()[-1])
        # pure cgroup v2 on the guest's own kernel: the memory controller is on for the
        # unit (the kernel's own list, not systemd's view); tests/vm shows the OOM kill
        controllers = run("cat", "/sys/fs/cgroup/system.slice/cgroup.subtree_control")
        res["limits_enforced"] = res["cgroup"] == "v2" and "memory" in controllers.split()
        kernel = run("uname", "-r").strip()
        res["where"] = f"qemu guest, Debian {args.vm}, kernel {kernel}, {vm.accel}"
        res["guest_boot_s"] = round(boot_s, 1)
        return res
    finally:
        if not args.keep:
            vm.destroy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="leave the sandbox (or guest) up")
    ap.add_argument("--vm", choices=["bookworm", "trixie"],
                    help="run on the real-kernel tier's guest of that release")
    ap.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS,
                    help=f"prompt length (default {PROMPT_TOKENS})")
    ap.add_argument("--out-tokens", type=int, default=OUT_TOKENS,
                    help=f"tokens generated (default {OUT_TOKENS})")
    ap.add_argument("--quick", action="store_true",
                    help="what make bench passes: this bench is not part of it")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        print("hermes_7b: not part of --quick (~10 min); run python bench/hermes_7b.py")
        print(json.dumps({"skipped": "not part of --quick"}))
        return 0
    if args.inside:
        print(json.dumps(inside(args.prompt_tokens, args.out_tokens)))
        return 0
    return host(args)


if __name__ == "__main__":
    sys.exit(main())
