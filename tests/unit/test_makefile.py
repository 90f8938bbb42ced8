"""The Makefile's operator targets: listed by `make help`, thin over vx11ctl, and the
destructive one asks first."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OPERATOR = ["up-core", "up-full-test", "down", "smoke", "lint", "test", "clean",
            "audit-rotate", "audit-rotate-do", "logs", "status", "demo", "help"]


def make(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-s", "-C", str(REPO), *args], capture_output=True,
                          text=True, input=input, timeout=60)


def test_help_lists_every_operator_target_on_one_line():
    out = make("help").stdout.splitlines()
    names = [line.split()[0] for line in out]
    assert len(names) == len(set(names)), out
    for target in OPERATOR:
        lines = [ln for ln in out if ln.split()[0] == target]
        assert len(lines) == 1 and len(lines[0].split()) > 2, (target, out)


def test_operator_targets_are_thin_over_vx11ctl():
    text = (REPO / "Makefile").read_text()
    for target, cmd in [("down", "down"), ("smoke", "smoke"), ("status", "status"),
                        ("logs", "logs"), ("audit-rotate", "rotate --dry-run")]:
        body = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.M)
        assert body and f"$(VX11CTL) {cmd}" in body.group(1), target


def test_audit_rotate_do_asks_and_does_nothing_without_yes():
    r = make("audit-rotate-do", "VX11CTL=echo would-run", input="n\n")
    assert r.returncode != 0 and "not rotating" in r.stdout and "would-run" not in r.stdout
    r = make("audit-rotate-do", "VX11CTL=echo would-run", input="y\n")
    assert r.returncode == 0 and "would-run rotate" in r.stdout
    r = make("audit-rotate-do", "VX11CTL=echo would-run", "CONFIRM=yes", input="")
    assert "would-run rotate" in r.stdout


def test_make_bench_provides_every_program_a_bench_runs():
    """Issue 25: `make bench` on a fresh machine failed with FileNotFoundError: 'wrk'."""
    text = (REPO / "Makefile").read_text()
    tools = set(re.search(r"^BENCH_TOOLS := ((?:.*\\\n)*.*)$", text, re.M).group(1)
                .replace("\\\n", " ").split())
    assert re.search(r"^bench: .*\bbench-tools\b", text, re.M)
    called: dict[str, str] = {}
    for b in sorted((REPO / "bench").glob("*.py")):
        src = b.read_text()
        for m in re.finditer(r"""(?:Popen|run|exec|check_output|which)\(\s*\[?\s*["']"""
                             r"""([A-Za-z][\w.+-]*)["']""", src):
            called.setdefault(m.group(1), b.name)
    # the vx11 programs themselves (and run helpers taking a program name) are not tools
    ours = {"vx11ctl", "vx11d", "sh"}
    missing = {t: f for t, f in called.items() if t not in tools | ours}
    assert not missing, f"programs benches run but BENCH_TOOLS lacks: {missing}"
    apt = re.search(r"^APT_PACKAGES := ((?:.*\\\n)*.*)$", text, re.M).group(1)
    for pkg in ("wrk", "nginx", "prometheus-node-exporter", "pigz", "procps", "curl"):
        assert pkg in apt.split(), pkg
