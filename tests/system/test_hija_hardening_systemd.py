"""Hija sandboxing levels under real systemd: the ``systemd-analyze security`` figure of
live hijas of each level, what the seccomp/namespace settings really refuse, and that a
hija of each level still does its job."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.support import poll_for

from .conftest import REPO, journal
from .test_madre_system import api, madre_and_gateway

pytestmark = pytest.mark.system

# Prints what the sandbox let it do, then stays up to be analysed (no braces: "{x}" in a
# template command is a placeholder).
PROBE = """import ctypes, socket, time
libc = ctypes.CDLL(None, use_errno=True)
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    inet = 'open'
except OSError:
    inet = 'refused'
userns = 'refused' if libc.unshare(0x10000000) != 0 else 'open'
print('probe inet=' + inet + ' userns=' + userns, flush=True)
time.sleep(3600)
"""
LEVELS = {  # template -> (sandboxing, dynamic_user, goal for the exposure figure)
    "probe_basic": ("basic", False, 4.0),
    "probe_basic_dynamic": ("basic", True, 4.0),
    "probe_strict": ("strict", False, 2.5),
    "probe_strict_dynamic": ("strict", True, 2.5),
}


@pytest.fixture(scope="module")
def hardened(sandbox):
    cfg = yaml.safe_load((REPO / "packaging" / "sandbox" / "vx11.yml").read_text())
    for name, (level, dyn, _goal) in LEVELS.items():
        cfg["madre"]["templates"][name] = {
            "command": ["/usr/bin/python3", "-c", PROBE], "sandboxing": level,
            "dynamic_user": dyn, "max_ttl": "5m", "memory_max": "64M", "tasks_max": 8}
    sandbox.write_config(yaml.safe_dump(cfg))
    yield from madre_and_gateway(sandbox)


def exposure(sb, unit: str) -> float:
    r = sb.exec(["systemd-analyze", "security", "--no-pager", unit], timeout=60)
    line = [ln for ln in r.stdout.splitlines() if "Overall exposure level" in ln]
    assert line, r.stdout[-500:] + r.stderr[-500:]
    return float(line[0].split(f"level for {unit}:")[1].split()[0])


def spawn(sb, template: str, ttl: int = 60) -> dict:
    r = api(sb, "POST", "/vx11/spawn", {"template": template, "ttl_s": ttl})
    assert r["status"] == 201 and r["body"]["status"] == "running", r
    return r["body"]


@pytest.mark.parametrize("template", sorted(LEVELS))
def test_each_level_meets_its_exposure_goal_and_refuses_network_and_namespaces(
        hardened, template):
    sb = hardened
    h = spawn(sb, template)
    try:
        lines = poll_for(lambda: [e["MESSAGE"] for e in journal(sb, "-u", h["unit"])
                                  if str(e.get("MESSAGE", "")).startswith("probe ")],
                         timeout=20, what="the probe's report")
        # seccomp (RestrictAddressFamilies, RestrictNamespaces) really refuses
        assert lines[0] == "probe inet=refused userns=refused", lines
        score = exposure(sb, h["unit"])
        assert score <= LEVELS[template][2], (template, score)
        assert api(sb, "GET", f"/vx11/hijas/{h['id']}")["body"]["status"] == "running"
    finally:
        api(sb, "DELETE", f"/vx11/hijas/{h['id']}")


def test_strict_hija_with_a_port_serves_http_and_meets_the_goal(hardened):
    sb = hardened
    h = spawn(sb, "web")  # strict, needs_port: python -m http.server
    try:
        def served() -> bool:
            r = sb.exec(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                         f"http://127.0.0.1:{h['port']}/"], timeout=30)
            return r.stdout == "200"

        poll_for(served, timeout=20, what="the hija's HTTP server")
        assert exposure(sb, h["unit"]) <= 2.5
    finally:
        api(sb, "DELETE", f"/vx11/hijas/{h['id']}")


def test_a_strict_hija_without_a_port_still_runs_its_command(hardened):
    sb = hardened
    r = api(sb, "POST", "/vx11/spawn", {"template": "echo", "ttl_s": 10,
                                        "args": {"word": "hardened", "code": 0}})
    assert r["status"] == 201, r
    h = r["body"]
    final = poll_for(lambda: (x := api(sb, "GET", f"/vx11/hijas/{h['id']}")["body"])
                     ["status"] not in ("running", "starting", "requested") and x,
                     timeout=20, what="the echo hija to end")
    assert final["status"] == "exited" and final["exit_status"] == 0, final
    said = [e["MESSAGE"] for e in journal(sb, "-u", h["unit"])]
    assert f"hija {h['id']} says hardened" in said, json.dumps(said)[-500:]
