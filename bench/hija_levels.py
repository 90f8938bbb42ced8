"""Benchmark: what each hija sandboxing level costs at start, and its exposure figure.

    .venv/bin/python bench/hija_levels.py [--quick] [--keep]

Boots a sandbox (a real systemd in systemd-nspawn) and runs this same file inside it
(``--inside``). For each property set below it times one ``systemd-run --collect
--quiet -p Type=exec -p User=vx11-hija ... /usr/bin/true`` process (returns once the
command has been exec'd: the start cost systemd pays for the unit's sandbox), all sets
interleaved round by round, and reports the median and its difference to the bare set
(only ``User=`` and ``Type=exec``). Then it starts one ``sleep`` unit per level and
reads ``systemd-analyze security``'s "Overall exposure level" for it.

Sets: ``before_basic``/``before_strict`` are the levels as they were before this hardening;
``basic``/``strict`` (``_port``: a template with ``needs_port``; ``_dynamic``:
``dynamic_user: true``) come from ``vx11d.madre.hardening``, what madre sets today;
``+name`` sets are the bare set plus one group of settings, to show where the cost is.

Goals: exposure strict <= 2.5, basic <= 4.0. The last line is one JSON object.
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

from _sandboxed import main, run_inside

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BARE = ["Type=exec", "User=vx11-hija"]
BEFORE_BASIC = [*BARE, "NoNewPrivileges=yes", "CapabilityBoundingSet=", "RestrictSUIDSGID=yes",
                "RestrictRealtime=yes", "LockPersonality=yes"]
BEFORE_STRICT = [
    *BEFORE_BASIC, "PrivateTmp=yes", "PrivateDevices=yes", "ProtectSystem=strict",
    "ProtectHome=yes",
    "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
    "ProtectHostname=yes", "ProtectControlGroups=yes"]
GROUPS = {
    "+seccomp": ["SystemCallFilter=@system-service", "SystemCallArchitectures=native",
                 "SystemCallErrorNumber=EPERM", "RestrictNamespaces=yes",
                 "RestrictAddressFamilies=AF_UNIX"],
    "+ProtectClock": ["ProtectClock=yes"],
    "+mount_namespace": BEFORE_STRICT[len(BEFORE_BASIC):],
    "+ProtectProc": ["ProtectProc=invisible", "ProcSubset=pid"],
    "+PrivateUsers": ["PrivateUsers=yes"],
    "+PrivateNetwork": ["PrivateNetwork=yes"],
    "+DynamicUser": ["DynamicUser=yes"],
}


def run_args(props: dict) -> list[str]:
    """``systemd-run -p`` assignments for D-Bus property values (hardening.py's)."""
    out = []
    for name, v in props.items():
        if name == "RestrictNamespaces":
            text = "yes" if v == 0 else str(v)
        elif name == "UMask":
            text = f"{v:04o}"
        elif name == "CapabilityBoundingSet":
            text = "" if v == 0 else str(v)
        elif name == "SystemCallErrorNumber":
            text = "EPERM" if v == 1 else str(v)
        elif isinstance(v, bool):
            text = "yes" if v else "no"
        elif isinstance(v, bytes):
            text = v.decode()
        elif isinstance(v, tuple):  # (allow list?, [names])
            text = ("" if v[0] else "~") + " ".join(x.decode() for x in v[1])
        elif isinstance(v, list):
            text = " ".join(x.decode() for x in v)
        else:
            text = str(v)
        out.append(f"{name}={text}")
    return out


def sets() -> dict[str, list[str]]:
    from vx11d.madre import hardening

    out = {"bare": BARE, "before_basic": BEFORE_BASIC, "before_strict": BEFORE_STRICT}
    for level in ("basic", "strict"):
        for port in (False, True):
            out[level + ("_port" if port else "")] = BARE + run_args(
                hardening.properties(level, port))
        out[f"{level}_dynamic"] = [p for p in out[level] if not p.startswith("User=")] + [
            "DynamicUser=yes"]
    for name, extra in GROUPS.items():
        base = [p for p in BARE if not (extra[0].startswith("DynamicUser") and
                                        p.startswith("User="))]
        out[name] = base + extra
    return out


def systemd_run(props: list[str], argv: list[str], unit: str | None = None) -> float:
    cmd = ["systemd-run", "--collect", "--quiet"]
    if unit:
        cmd.append(f"--unit={unit}")
    for p in props:
        cmd += ["-p", p]
    t0 = time.perf_counter()
    subprocess.run(cmd + argv, check=True, capture_output=True)
    return time.perf_counter() - t0


def exposure(props: list[str], name: str) -> float:
    unit = f"bench-level-{name.replace('+', 'with-').replace('_', '-')}-{os.getpid()}"
    systemd_run(props, ["/usr/bin/sleep", "60"], unit)
    try:
        r = subprocess.run(["systemd-analyze", "security", "--no-pager", unit + ".service"],
                           capture_output=True, text=True, check=False)
        line = next(ln for ln in r.stdout.splitlines() if "Overall exposure level" in ln)
        return float(line.split(f"{unit}.service:")[1].split()[0])
    finally:
        subprocess.run(["systemctl", "stop", unit + ".service"], capture_output=True,
                       check=False)


def inside(quick: bool) -> dict:
    all_sets = sets()
    reps = 8 if quick else 30
    times: dict[str, list[float]] = {n: [] for n in all_sets}
    names = list(all_sets)
    for i in range(reps):
        order = names if i % 2 == 0 else names[::-1]
        for n in order:
            times[n].append(systemd_run(all_sets[n], ["/usr/bin/true"]))
    med = {n: statistics.median(t) * 1000 for n, t in times.items()}
    levels = ["before_basic", "before_strict", "basic", "basic_port", "basic_dynamic",
              "strict", "strict_port", "strict_dynamic"]
    expo = {n: exposure(all_sets[n], n) for n in levels}
    return {"bench": "hija_levels", "quick": quick, "reps": reps,
            "start_p50_ms": {n: round(v, 1) for n, v in med.items()},
            "start_cost_vs_bare_ms": {n: round(v - med["bare"], 1) for n, v in med.items()},
            "exposure": expo,
            "goal_met": all(expo[n] <= 2.5 for n in levels if n.startswith("strict"))
            and all(expo[n] <= 4.0 for n in levels if n.startswith("basic"))}


def host(args: argparse.Namespace) -> int:
    from vx11d.ctl.sandbox import Sandbox

    sb = Sandbox(os.environ.get("VX11_SANDBOX") or f"vx11bench-{os.getpid()}")
    sb.up()
    try:
        res = run_inside(sb, str(Path(__file__).resolve()), args.quick, 900)
        if res is None:
            return 1
    finally:
        if not args.keep and not os.environ.get("VX11_SANDBOX"):
            sb.down()
    print(f"{'set':18} {'start p50 ms':>12} {'vs bare ms':>10} {'exposure':>9}")
    for n, v in res["start_p50_ms"].items():
        e = res["exposure"].get(n)
        print(f"{n:18} {v:>12.1f} {res['start_cost_vs_bare_ms'][n]:>10.1f} "
              f"{'' if e is None else f'{e:.1f}':>9}")
    print(f"goals: strict <= 2.5, basic <= 4.0: {'met' if res['goal_met'] else 'NOT met'}")
    print(json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(__doc__, inside, host))
