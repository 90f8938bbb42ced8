"""Benchmark the package on a fresh Debian 12 host (the host tier's image and package).

1. install: on a fresh copy of the image, booted, the time from ``apt-get install
   ./vx11d_*.deb`` to a passing ``vx11ctl smoke`` (the admin's one config edit, a
   template, and ``systemctl reload vx11-madre`` included), with the install alone beside.
2. boot: power-on (``systemd-nspawn -b`` exec'd) to every unit of the set active
   (vx11.target, madre, reaper, the gateway socket), alternating with the floor: the same
   image with only a trivial ``Type=notify`` unit enabled, power-on to that unit active.
   Both sides are polled the same way (``systemctl is-active`` every 50 ms). Medians and
   their ratio (goal: boot_to_active_s <= 3 x floor_s).
3. size: the .deb, the installed package, and what dominates the virtualenv.

``--quick`` reuses the cached image and package (built if missing) and boots each side
twice. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.host.packages import ADMIN_TEMPLATE_SED, build_current  # noqa: E402
from vx11d.ctl import freshhost  # noqa: E402

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


def run(host, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    r = host.exec(list(argv), timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {r.returncode}\n{r.stdout[-1500:]}"
                         f"{r.stderr[-1500:]}")
    return r


def boot_until_active(host, units: list[str], timeout: float = 180) -> float:
    """Seconds from exec'ing nspawn to every unit in ``units`` active."""
    t0 = time.monotonic()
    host.boot(timeout=timeout)
    while True:
        r = host.exec(["systemctl", "is-active", *units], timeout=30)
        if r.stdout.split() == ["active"] * len(units):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"{units} not active after {timeout}s: {r.stdout}")
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 boots per side (< 3 min)")
    ap.add_argument("--boots", type=int, default=None, help="boots per side (default 5)")
    args = ap.parse_args()
    boots = args.boots or (2 if args.quick else 5)
    t_start = time.monotonic()
    deb = build_current()
    image = freshhost.ensure_image(freshhost.image_packages([deb]))
    freshhost.clean_stale("vx11b-")
    pid = os.getpid()
    vx = freshhost.FreshHost(image, f"vx11b-{pid}-set").create()
    floor = freshhost.FreshHost(image, f"vx11b-{pid}-floor").create()
    try:
        # 1. install to smoke
        vx.put(deb, f"/root/{deb.name}")
        vx.boot()
        t0 = time.monotonic()
        run(vx, "apt-get", "install", "-y", "--no-install-recommends", f"/root/{deb.name}")
        install_s = time.monotonic() - t0
        run(vx, "sed", "-i", *ADMIN_TEMPLATE_SED, "/etc/vx11/vx11.yml")
        run(vx, "systemctl", "try-reload-or-restart", "vx11-madre.service",
            "vx11-gateway.service")
        smoke = run(vx, "vx11ctl", "smoke", "--ttl", "1")
        install_to_smoke_s = time.monotonic() - t0
        assert smoke.stdout.strip().endswith("smoke passed"), smoke.stdout
        installed_kb = int(run(vx, "dpkg-query", "-W", "-f=${Installed-Size}", "vx11d").stdout)
        du = run(vx, "sh", "-c", "du -sk /opt/vx11d/lib/python3*/site-packages/* | sort -rn "
                 "| head -6").stdout.split("\n")
        top = [(int(line.split()[0]) / 1024, Path(line.split()[1]).name) for line in du
               if line.strip()]
        exposure = {}
        for unit in ("gateway", "madre", "reaper", "rotate", "hermes"):
            r = vx.exec(["systemd-analyze", "security", "--no-pager", f"vx11-{unit}.service"],
                        timeout=120)
            m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
            exposure[unit] = float(m.group(1)) if m else None
        vx.poweroff()
        # 2. boots, alternating with the floor
        floor.root.joinpath("etc/systemd/system/bench-floor.service").write_text(FLOOR_UNIT)
        wants = floor.root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "bench-floor.service").symlink_to("/etc/systemd/system/bench-floor.service")
        set_s, floor_s = [], []
        for _ in range(boots):
            set_s.append(boot_until_active(vx, SET))
            vx.poweroff()
            floor_s.append(boot_until_active(floor, ["bench-floor.service"]))
            floor.poweroff()
    finally:
        vx.destroy()
        floor.destroy()
    out = {
        "install_to_smoke_s": round(install_to_smoke_s, 2),
        "install_s": round(install_s, 2),
        "boot_to_active_s": round(statistics.median(set_s), 2),
        "floor_s": round(statistics.median(floor_s), 2),
        "boot_ratio": round(statistics.median(set_s) / statistics.median(floor_s), 2),
        "package_mb": round(deb.stat().st_size / 1e6, 2),
        "installed_mb": round(installed_kb / 1024, 1),
        "venv_top_mb": {name: round(mb, 1) for mb, name in top},
        "exposure": exposure,
        "boots_per_side": boots,
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    print(f"{'measure':<22} {'value':>10}")
    print(f"{'install':<22} {out['install_s']:>9.2f}s")
    print(f"{'install to smoke':<22} {out['install_to_smoke_s']:>9.2f}s")
    print(f"{'boot to set active':<22} {out['boot_to_active_s']:>9.2f}s  "
          f"(runs {', '.join(f'{x:.2f}' for x in set_s)})")
    print(f"{'boot floor (notify)':<22} {out['floor_s']:>9.2f}s  "
          f"(runs {', '.join(f'{x:.2f}' for x in floor_s)})")
    print(f"{'ratio set/floor':<22} {out['boot_ratio']:>10.2f}  (goal <= 3)")
    print(f"{'package':<22} {out['package_mb']:>8.2f}MB")
    print(f"{'installed':<22} {out['installed_mb']:>8.1f}MB  largest in the venv: "
          + ", ".join(f"{n} {mb:.1f}MB" for mb, n in top[:4]))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
