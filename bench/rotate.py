"""Benchmark the audit rotator against ``tar -czf`` and ``tar -I pigz`` on the same dirs.

1. A tree of timestamped audit dirs (many small log/JSON files and a few large logs, all
   generated text) is built; each repeat times ``tar -czf`` (gzip -6, one archive per
   dir, in sequence, as the old shell script did), ``tar -I 'pigz -6'`` (what a sysadmin
   on a multi-core host uses: every core on each archive) and a real ``vx11d rotate``
   process (workers=2, threads per archive by default, verification and fsyncs
   included) on the same dirs; medians, and the compressed bytes of each.
2. The same with a tree several times larger, once, to compare the rotating process's
   peak RSS (ru_maxrss from wait4: the largest process of the run, workers included).
3. A symlink-race canary trial: a subdir swapped for a link to a canary dir during the
   walk (at the exact moment, by the walker's hook, and by a brute-force thread).

Every archive is checked independently (``gzip -t`` and its member list against the
tree listed before the run). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VX11D = os.path.join(os.path.dirname(sys.executable), "vx11d")
LEVEL = 6
_VOCAB = ("request handled ok latency_ms user gateway madre hija spawned expired ttl "
          "port status running stopped reaper zombie pid cgroup rotate archive verified "
          "bytes hermes model loaded tokens prompt completion error warning info debug "
          "socket checksum db write commit wal scorecard policy activation window")
WORDS = tuple(_VOCAB.split())


def text_pool(seed: int, size: int) -> bytes:
    """Realistic-ish log text: timestamps, levels, components, words and numbers."""
    rnd = random.Random(seed)
    lines = []
    n = 0
    t = 1767441600
    while n < size:
        t += rnd.randint(0, 3)
        lvl = rnd.choice(("INFO", "INFO", "INFO", "DEBUG", "WARNING", "ERROR"))
        words = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 14)))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
        comp = rnd.choice(("gateway", "madre", "reaper"))
        line = (f"{stamp}.{rnd.randint(0, 999):03d}Z {lvl} vx11-{comp}[{rnd.randint(100, 99999)}]: "
                f"{words} id={rnd.getrandbits(48):012x} n={rnd.randint(0, 10**6)}\n")
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()


def build_tree(root: Path, n_dirs: int, small: int, large: int, large_mb: int,
               seed: int) -> int:
    """Audit dirs named 30+ days ago; returns the bytes written."""
    pool = text_pool(seed, 8 << 20)
    rnd = random.Random(seed)
    total = 0
    base = time.time() - 30 * 86400
    for d in range(n_dirs):
        name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(base - d * 3600))
        dd = root / f"{name}_bench"
        for i in range(small):
            sub = dd / f"step{i % 8}"
            sub.mkdir(parents=True, exist_ok=True)
            size = rnd.randint(512, 16384)
            off = rnd.randrange(0, len(pool) - size)
            data = pool[off:off + size]
            if i % 5 == 0:
                data = json.dumps({"step": i, "ok": True, "lines": data.decode()[:2000]},
                                  indent=1).encode()
            (sub / f"out{i}.{'json' if i % 5 == 0 else 'log'}").write_bytes(data)
            total += len(data)
        for j in range(large):
            with open(dd / f"big{j}.log", "wb") as f:
                left = large_mb << 20
                while left:
                    off = rnd.randrange(0, len(pool) - (1 << 20))
                    chunk = pool[off:off + min(left, 1 << 20)]
                    f.write(chunk)
                    left -= len(chunk)
                    total += len(chunk)
        (dd / "SCORECARD.json").write_text('{"score": 1}')
    return total


def listing(root: Path) -> dict[str, set[str]]:
    out = {}
    for d in sorted(root.iterdir()):
        if d.name == "archive":
            continue
        names = {d.name}
        for p in d.rglob("*"):
            if p.name != "SCORECARD.json":
                names.add(f"{d.name}/{p.relative_to(d)}")
        out[d.name] = names
    return out


def write_config(work: Path, root: Path) -> str:
    state = work / "state"
    state.mkdir(exist_ok=True)
    cfg = work / "vx11.yml"
    cfg.write_text(f"db: {{path: {state}/vx11.db}}\nrotate:\n  roots: [{{path: {root}}}]\n"
                   f"  compression_level: {LEVEL}\n  workers: 2\n  textfile_dir: {state}\n"
                   f"  lock_file: {state}/rotate.lock\n")
    return str(cfg)


def run_tar(root: Path, out: Path, program: str = "gzip") -> tuple[float, int]:
    """Seconds and compressed bytes of one tar.gz per dir with ``program -6``."""
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    for d in sorted(p for p in root.iterdir() if p.name != "archive"):
        subprocess.run(["tar", "--use-compress-program", f"{program} -{LEVEL}", "-cf",
                        str(out / f"{d.name}.tar.gz"), "-C", str(root), d.name], check=True)
    secs = time.perf_counter() - t0
    return secs, sum(f.stat().st_size for f in out.iterdir())


def run_rotate(cfg: str) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS (MB) and report of one real ``vx11d rotate``."""
    env = {**os.environ, "VX11_CONFIG": cfg}
    t0 = time.perf_counter()
    proc = subprocess.Popen([VX11D, "rotate", "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    out = proc.stdout.read()
    _pid, status, ru = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"vx11d rotate failed ({proc.returncode}): {out[-2000:]!r}")
    return secs, ru.ru_maxrss / 1024, json.loads(out)


def check_archives(root: Path, before: dict[str, set[str]]) -> int:
    ok = 0
    for name, want in before.items():
        arch = root / "archive" / f"{name}.tar.gz"
        if not arch.exists():
            continue
        if subprocess.run(["gzip", "-t", str(arch)], capture_output=True).returncode != 0:
            continue
        r = subprocess.run(["tar", "-tzf", str(arch)], capture_output=True, text=True)
        got = {m.rstrip("/") for m in r.stdout.splitlines()}
        ok += r.returncode == 0 and got == want
    return ok


def canary_trial(work: Path) -> bool:
    from tests.rotate_support import make_cfg, tree_state, write_tree
    from vx11d.rotator import run

    base = work / "canary_trial"
    canary = base / "canary"
    write_tree(canary, {"secret.txt": b"canary\n" * 100, "d/x": b"x"})
    before = tree_state(canary)
    secret = hashlib.sha256(b"canary\n" * 100).hexdigest()
    root = base / "audits"
    name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 30 * 86400))
    d = root / name
    cfg = make_cfg(base, [{"path": str(root)}])
    intact = True

    def hook_swap(event, rel):
        if event == "dir" and rel == "sub":
            shutil.rmtree(d / "sub")
            os.symlink(canary, d / "sub")

    trials = [hook_swap] + [None] * 20
    for hook in trials:
        write_tree(d, {"a.txt": b"a" * 5000, "sub/b.txt": b"b"})
        stop = threading.Event()

        def swapper(stop: threading.Event = stop) -> None:
            while not stop.is_set():
                try:
                    if (d / "sub").is_symlink():
                        (d / "sub").unlink()
                        (d / "sub").mkdir()
                    else:
                        shutil.rmtree(d / "sub")
                        os.symlink(canary, d / "sub")
                except OSError:
                    pass

        t = threading.Thread(target=swapper) if hook is None else None
        if t:
            t.start()
        try:
            run.rotate(cfg.rotate, hook=hook)
        finally:
            stop.set()
            if t:
                t.join()
        arch = root / "archive" / f"{name}.tar.gz"
        if arch.exists():
            import tarfile

            with tarfile.open(arch) as tar:
                for m in tar:
                    if m.isreg() and hashlib.sha256(tar.extractfile(m).read()).hexdigest() \
                            == secret:
                        intact = False
            arch.unlink()
        intact = intact and tree_state(canary) == before
        if d.is_symlink():
            d.unlink()
        shutil.rmtree(d, ignore_errors=True)
    return intact


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small trees, < 60 s")
    ap.add_argument("--dir", default=None, help="work dir (default: a temp dir in /var/tmp)")
    args = ap.parse_args()
    if args.quick:
        n_dirs, small, large, large_mb, repeats, scale = 8, 150, 2, 2, 3, 4
    else:
        n_dirs, small, large, large_mb, repeats, scale = 12, 400, 2, 6, 5, 4
    work = Path(tempfile.mkdtemp(prefix="vx11-bench-rotate-", dir=args.dir or "/var/tmp"))
    try:
        tars, pigzs, ours, rss_small, bytes_in = [], [], [], [], 0
        size_ratios = []
        written = verified = 0
        for rep in range(repeats):
            root = work / f"small{rep}"
            bytes_in = build_tree(root, n_dirs, small, large, large_mb, seed=rep)
            before = listing(root)
            tars.append(run_tar(root, work / f"tar{rep}")[0])
            shutil.rmtree(work / f"tar{rep}")
            secs, pigz_bytes = run_tar(root, work / f"pigz{rep}", "pigz")
            pigzs.append(secs)
            shutil.rmtree(work / f"pigz{rep}")
            secs, rss, report = run_rotate(write_config(work, root))
            ours.append(secs)
            rss_small.append(rss)
            written += report["phases"]["archive"]["archived"]
            verified += check_archives(root, before)
            assert report["phases"]["archive"]["bytes_in"] == bytes_in
            size_ratios.append(sum(f.stat().st_size for f in (root / "archive").iterdir())
                               / pigz_bytes)
            shutil.rmtree(root)
        root = work / "large"
        large_bytes = build_tree(root, n_dirs * scale, small, large, large_mb * 2, seed=99)
        before = listing(root)
        secs_large, rss_large, report = run_rotate(write_config(work, root))
        written += report["phases"]["archive"]["archived"]
        verified += check_archives(root, before)
        shutil.rmtree(root)
        canary = canary_trial(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t_ours, t_tar = statistics.median(ours), statistics.median(tars)
    t_pigz = statistics.median(pigzs)
    peak_small = max(rss_small)
    res = {
        "bytes_in": bytes_in, "dirs": n_dirs, "repeats": repeats,
        "seconds": round(t_ours, 3), "tar_seconds": round(t_tar, 3),
        "mb_per_s": round(bytes_in / t_ours / 1e6, 1),
        "tar_mb_per_s": round(bytes_in / t_tar / 1e6, 1),
        "throughput_ratio_vs_tar": round(t_tar / t_ours, 3),
        "pigz_seconds": round(t_pigz, 3),
        "pigz_mb_per_s": round(bytes_in / t_pigz / 1e6, 1),
        "throughput_ratio_vs_pigz": round(t_pigz / t_ours, 3),
        "compressed_ratio_vs_pigz": round(statistics.median(size_ratios), 4),
        "large_bytes_in": large_bytes, "large_dirs": n_dirs * scale,
        "large_mb_per_s": round(large_bytes / secs_large / 1e6, 1),
        "peak_rss_mb_small": round(peak_small, 1), "peak_rss_mb_large": round(rss_large, 1),
        "rss_growth_ratio": round(rss_large / peak_small, 3),
        "archives_written": written, "archives_verified": verified,
        "symlink_canary_intact": canary, "compression_level": LEVEL, "workers": 2,
        "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(f"{'':<22}{'ours (vx11d rotate)':>22}{'tar -czf':>12}{'tar -I pigz':>14}")
    print(f"{'median seconds':<22}{res['seconds']:>22}{res['tar_seconds']:>12}"
          f"{res['pigz_seconds']:>14}")
    print(f"{'MB/s':<22}{res['mb_per_s']:>22}{res['tar_mb_per_s']:>12}"
          f"{res['pigz_mb_per_s']:>14}")
    print(f"throughput ratio vs tar: {res['throughput_ratio_vs_tar']} (goal >= 1.0), "
          f"vs pigz: {res['throughput_ratio_vs_pigz']} (goal >= 1.0, verification included)")
    print(f"compressed bytes vs pigz: {res['compressed_ratio_vs_pigz']} (goal <= 1.02)")
    print(f"peak RSS small {res['peak_rss_mb_small']} MB, large ({scale}x dirs, 2x big files, "
          f"{large_bytes / 1e6:.0f} MB) {res['peak_rss_mb_large']} MB: growth "
          f"{res['rss_growth_ratio']} (goal <= 1.10)")
    print(f"archives written {written}, verified independently {verified}; "
          f"symlink canary intact: {canary}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
