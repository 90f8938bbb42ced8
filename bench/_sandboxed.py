"""What the benches that measure inside a sandbox share: the command line (``--quick``,
``--keep``, and the hidden ``--inside`` that the host side re-runs the file with), the
re-run itself, and the host's two-column table."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PYTHON = "/opt/vx11d/bin/python"  # the package's interpreter inside the sandbox


def main(doc: str, inside: Callable[[bool], dict], host: Callable[[argparse.Namespace], int],
         quick_help: str = "fewer samples (< 60 s)", keep: bool = True,
         flags: dict[str, str] | None = None) -> int:
    """Parse the bench's arguments; ``--inside``: print ``inside(quick)`` as JSON, else
    run ``host(args)``. ``flags``: the bench's own on/off options and their help (the
    host side passes them on to ``--inside``, which reads them from ``sys.argv``)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    for flag, text in (flags or {}).items():
        ap.add_argument(flag, action="store_true", help=text)
    if keep:
        ap.add_argument("--keep", action="store_true", help="leave the sandbox up")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        print(json.dumps(inside(args.quick)))
        return 0
    return host(args)


def start_madre_and_gateway(sb: Any, repo: Path, gateway: str) -> None:
    """The sandbox config in place, madre and the gateway socket restarted, and the
    gateway service ``restart``-ed now or ``stop``-ped (its socket starts it)."""
    sb.write_config((repo / "packaging" / "sandbox" / "vx11.yml").read_text())
    for argv in (["systemctl", "daemon-reload"],
                 ["systemctl", "restart", "vx11-madre.service", "vx11-gateway.socket"],
                 ["systemctl", gateway, "vx11-gateway.service"]):
        sb.exec(argv, timeout=60)


def run_in(sb: Any, *argv: str, inp: str | None = None, timeout: float = 600) -> str:
    """``argv`` in the sandbox, its output; a failure ends the bench with its stderr."""
    r = sb.exec(list(argv), timeout=timeout, input=inp)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {r.stderr.strip()[-800:]}")
    return r.stdout


def set_up_node_exporter(sb: Any) -> None:
    """Debian's prometheus-node-exporter, the peer every scraped host already runs, made
    ready in the sandbox on 127.0.0.1:9100 (its user and its arguments; not started)."""
    run_in(sb, "systemd-sysusers", "-", inp='u prometheus - "Prometheus daemon"\n')
    run_in(sb, "sh", "-c", "mkdir -p /etc/default && echo 'ARGS=\"--web.listen-address="
           "127.0.0.1:9100\"' > /etc/default/prometheus-node-exporter")


def run_inside(sb: Any, script: str, quick: bool, timeout: float) -> dict | None:
    """``script --inside`` in the sandbox: its last output line as JSON, or None (its
    output printed to stderr) when it failed."""
    r = sb.exec([PYTHON, script, "--inside", *(["--quick"] if quick else [])],
                timeout=timeout)
    if r.returncode != 0:
        print(r.stdout, r.stderr, file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def print_rows(rows: list[tuple[str, str]]) -> None:
    """Label and figure, the labels padded to one width."""
    w = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{w}}  {b}")
