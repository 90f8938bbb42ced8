"""Benchmark the package on a fresh host of each Debian release, on its own kernel (qemu).

Per release (bookworm, trixie), on a fresh copy of the real-kernel tier's image (the
tree's package built in that release's root, Hermes included; tests/vm):

1. install: ``apt-get install ./vx11d_*.deb`` to a passing ``vx11ctl smoke`` (the admin's
   template edit and a reload included), with the install alone beside it.
2. boot: power-on to every unit of the set active, against a trivial ``Type=notify``
   unit enabled in the same guest and the same boot (both read from systemd's own
   ``ActiveEnterTimestampMonotonic``, i.e. time since the kernel started); medians over
   the boots and their ratio (goal: ``boot_ratio`` <= 3).
3. OOM detection: a hija allocating 200 MB under ``memory_max: 32M``; the time from the
   kernel's kill (systemd's journal line for the unit, ``Result=oom-kill``) to madre's
   ``hija_oom_killed`` event (goal: ``oom_detect_s_p50`` <= 1 s).
4. CPU: the same pure-Python loop on this machine and in the guest, in the same run:
   ``cpu_slowdown`` (guest / host; TCG emulation is ~8-9x) reads the other figures fairly.

``--quick`` boots each guest twice (install, one reboot) and kills 3 hogs: about 5 min
per release under TCG on 2 cores (a guest cannot boot in under a minute there). The last
line is one JSON object with ``"releases": {"bookworm": {...}, "trixie": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.host.packages import ADMIN_CONFIG_SH, build_current  # noqa: E402
from tests.infra import freshhost  # noqa: E402
from tests.vm.qemuhost import QemuHost, clean_stale  # noqa: E402

RELEASES = ("bookworm", "trixie")
SET = ["vx11.target", "vx11-madre.service", "vx11-reaper.service", "vx11-gateway.socket"]
FLOOR_UNIT = """[Unit]
Description=bench floor: a trivial Type=notify service
[Service]
Type=notify
NotifyAccess=all
ExecStart=/bin/sh -c 'systemd-notify --ready; exec sleep infinity'
[Install]
WantedBy=multi-user.target
"""
HOG = ("    hog:\n      command: [/usr/bin/python3, -I, -c, \"import time; b = b'x' * (200 << 20);"
       " time.sleep(60)\"]\n      default_ttl: 30s\n      max_ttl: 5m\n      memory_max: 32M\n")
CPU_LOOP = "import time; t = time.perf_counter(); sum(i * i for i in range(3_000_000)); " \
           "print(time.perf_counter() - t)"


def run(host, *argv: str, timeout: float = 900, **kw) -> subprocess.CompletedProcess[str]:
    r = host.exec(list(argv), timeout=timeout, **kw)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {r.returncode}\n{r.stdout[-1500:]}"
                         f"{r.stderr[-1500:]}")
    return r


def wait_active(host, units: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = host.exec(["systemctl", "is-active", *units], timeout=60)
        if r.stdout.split() == ["active"] * len(units):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{units} not active after {timeout}s: {r.stdout}")
        time.sleep(0.5)


def active_since_kernel(host, units: list[str]) -> float:
    """Seconds from the kernel's start to the last of ``units`` becoming active."""
    r = run(host, "systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", *units)
    return max(int(v.split("=")[1]) for v in r.stdout.split()) / 1e6


def cpu_loop_s(host=None, runs: int = 3) -> float:
    """Median seconds of the same pure-Python loop here, or in ``host`` when given."""
    times = []
    for _ in range(runs):
        if host is None:
            r = subprocess.run(["python3", "-c", CPU_LOOP], capture_output=True, text=True,
                               timeout=300, check=True)
        else:
            r = run(host, "python3", "-c", CPU_LOOP, timeout=300)
        times.append(float(r.stdout.split()[-1]))
    return statistics.median(times)


def reload_count(host) -> int:
    return len(host.exec(["journalctl", "-o", "cat", "--no-pager", "-u", "vx11-madre.service",
                          "VX11_EVENT=config_reloaded"], timeout=60).stdout.splitlines())


def oom_detect_s(host) -> float:
    """Kernel kill (systemd's OOM line for the unit) to madre's hija_oom_killed event."""
    row = json.loads(run(host, "vx11ctl", "hijas", "spawn", "hog", "--ttl", "60s",
                         "--json").stdout)
    unit, hid = f"vx11-hija-{row['id']}.service", row["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        killed = host.exec(["journalctl", "-o", "json", "--no-pager", "-u", unit,
                            "--grep", "OOM killer|oom-kill"], timeout=60).stdout.splitlines()
        seen = host.exec(["journalctl", "-o", "json", "--no-pager", "VX11_EVENT=hija_oom_killed",
                          f"VX11_HIJA_ID={hid}"], timeout=60).stdout.splitlines()
        if killed and seen:
            t_kill = int(json.loads(killed[0])["__REALTIME_TIMESTAMP"])
            t_seen = int(json.loads(seen[0])["__REALTIME_TIMESTAMP"])
            return max(0.0, (t_seen - t_kill) / 1e6)
        time.sleep(0.5)
    raise SystemExit(f"hija {hid}: no OOM kill or no hija_oom_killed event in 120 s")


def bench_release(release: str, boots: int, hogs: int, show: bool = False) -> dict:
    t_start = time.monotonic()
    deb = build_current(release, hermes=True)
    image = freshhost.ensure_image(freshhost.image_packages([deb]), suite=release, vm=True)
    host = QemuHost(image, f"vx11b-{os.getpid()}-{release}").create()
    host.put(deb, f"/root/{deb.name}")
    unit = host.root / "etc/systemd/system/bench-floor.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(FLOOR_UNIT)
    wants = host.root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "bench-floor.service").symlink_to("/etc/systemd/system/bench-floor.service")
    try:
        first_boot = host.boot()
        cgroup = "v2" if run(host, "stat", "-fc", "%T", "/sys/fs/cgroup").stdout.strip() \
            == "cgroup2fs" else "v1"
        kernel = run(host, "uname", "-r").stdout.strip()
        systemd = run(host, "systemctl", "--version").stdout.split()[1]
        guest_cpu = cpu_loop_s(host)
        host_cpu = cpu_loop_s()
        # 1. install to smoke
        t0 = time.monotonic()
        said = run(host, "sh", "-c", f"cd /root && apt-get install -y --no-install-recommends "
                   f"./{deb.name}")
        install_s = time.monotonic() - t0
        run(host, "sh", "-c", ADMIN_CONFIG_SH)
        run(host, "systemctl", "try-reload-or-restart", "vx11-madre.service",
            "vx11-gateway.service")
        smoke = run(host, "vx11ctl", "smoke", "--ttl", "1")
        install_to_smoke_s = time.monotonic() - t0
        assert smoke.stdout.strip().endswith("smoke passed"), smoke.stdout
        # 3. OOM detection (the hog template added to the admin's config)
        run(host, "sed", "-i", "s|^  templates:$|  templates:\\n" + HOG.replace("\n", "\\n")
            .rstrip("\\n") + "|", "/etc/vx11/vx11.yml")
        reloads = reload_count(host)
        run(host, "systemctl", "reload", "vx11-madre.service")
        deadline = time.monotonic() + 60
        while reload_count(host) == reloads:  # the reload is asynchronous
            if time.monotonic() > deadline:
                raise SystemExit("madre did not reload the hog template in 60 s")
            time.sleep(0.5)
        oom = [oom_detect_s(host) for _ in range(hogs)]
        if show:
            print(f"--- {release}: what a sysadmin sees ---")
            print(f"# apt-get install -y ./{deb.name}   (last lines)")
            print("\n".join(said.stdout.splitlines()[-4:]))
            print("# vx11ctl smoke")
            print(smoke.stdout.rstrip())
            print("# vx11ctl hijas list")
            print(run(host, "vx11ctl", "hijas", "list").stdout.rstrip())
            print("# systemctl status 'vx11-*' --no-pager")
            print(host.exec(["systemctl", "status", "vx11-*", "--no-pager", "-n", "0"],
                            timeout=60).stdout.rstrip())
            sys.stdout.flush()
        # 2. boots: both the set and the floor unit are enabled; each boot gives a pair
        set_s, floor_s = [], []
        for _ in range(boots):
            host.reboot()
            wait_active(host, [*SET, "bench-floor.service"])
            set_s.append(active_since_kernel(host, SET))
            floor_s.append(active_since_kernel(host, ["bench-floor.service"]))
        installed_kb = int(run(host, "dpkg-query", "-W", "-f=${Installed-Size}",
                               "vx11d").stdout)
    finally:
        host.destroy()
    return {
        "install_to_smoke_s": round(install_to_smoke_s, 1),
        "install_s": round(install_s, 1),
        "boot_to_active_s": round(statistics.median(set_s), 2),
        "floor_s": round(statistics.median(floor_s), 2),
        "boot_ratio": round(statistics.median(set_s) / statistics.median(floor_s), 2),
        "oom_detect_s_p50": round(statistics.median(oom), 3),
        "oom_detect_s": [round(x, 3) for x in oom],
        "cgroup": cgroup,
        "cpu_slowdown": round(guest_cpu / host_cpu, 1),
        "first_boot_s": round(first_boot, 1),
        "kernel": kernel,
        "systemd": systemd,
        "accel": host.accel,
        "package_mb": round(deb.stat().st_size / 1e6, 1),
        "installed_mb": round(installed_kb / 1024, 1),
        "wall_s": round(time.monotonic() - t_start, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="one reboot and 3 OOM kills per release (~5 min each under TCG)")
    ap.add_argument("--boots", type=int, default=None, help="reboots per release (default 3)")
    ap.add_argument("--release", choices=RELEASES, action="append",
                    help="only this release (repeatable; default both)")
    ap.add_argument("--show", action="store_true",
                    help="print what a sysadmin sees: install, smoke, hijas list, status")
    args = ap.parse_args()
    boots = args.boots or (1 if args.quick else 3)
    hogs = 3 if args.quick else 7
    clean_stale("vx11b-")
    out = {"releases": {r: bench_release(r, boots, hogs, args.show)
                        for r in args.release or RELEASES},
           "boots_per_release": boots, "oom_kills_per_release": hogs}
    print(f"{'measure':<28}" + "".join(f"{r:>16}" for r in out["releases"]))
    rows = [("install (s)", "install_s"), ("install to smoke (s)", "install_to_smoke_s"),
            ("boot to set active (s)", "boot_to_active_s"),
            ("boot floor: notify unit (s)", "floor_s"), ("boot ratio (goal <= 3)", "boot_ratio"),
            ("OOM detect p50 (s, <= 1)", "oom_detect_s_p50"), ("cgroup", "cgroup"),
            ("CPU slowdown vs host", "cpu_slowdown"), ("kernel", "kernel"),
            ("systemd", "systemd"), ("accel", "accel"), ("installed (MB)", "installed_mb")]
    for label, key in rows:
        print(f"{label:<28}" + "".join(f"{v[key]!s:>16}" for v in out["releases"].values()))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
