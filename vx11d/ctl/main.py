"""``vx11ctl``: the operator command. Each command group is a module with ``register()``.

vx11ctl drives the daemons through systemd, the database and HTTP; it imports no
daemon's internals (Switch, a library, is the exception PRODUCT.md names).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from ..errors import ConfigError, Vx11Error

# Modules under vx11d.ctl that add command groups, in the order --help lists them.
COMMANDS = ["units", "opscmd", "sandbox", "configcmd", "dbcmd", "hijascmd", "reapercmd",
            "rotatecmd", "routecmd", "modelcmd"]


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON with --json, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vx11ctl", description="Operate the vx11d daemon set.")
    parser.add_argument("--config", help="config file (default: $VX11_CONFIG or "
                        "/etc/vx11/vx11.yml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"vx11d.ctl.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vx11ctl`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"vx11ctl: config {e}", file=sys.stderr)
        return 78
    except Vx11Error as e:
        print(f"vx11ctl: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
