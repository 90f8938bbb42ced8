"""``vx11ctl``: the operator command. Each command group is a module with ``register()``.

vx11ctl drives the daemons through systemd, the database and HTTP; it imports no
daemon's internals (Switch is the exception: a library the gateway and vx11ctl share,
see docs/architecture.md).

This module is the one place that turns an error into what the operator sees: one
line on stderr (``vx11ctl: ...``), or with ``--json`` one JSON object on stdout
(``{"ok": false, "error": KIND, "message": ..., "exit_code": N}``), and an exit status:

====  ==================================================================================
0     done
1     the command ran and found a problem, or could not do what was asked
2     bad command line or bad input (unknown flag, missing action, no such hija)
69    a service is unavailable: the database is missing or unusable, systemd refused
70    an internal error (a bug: set ``VX11_DEBUG=1`` for the traceback)
75    try again later: the database stayed locked, another rotation holds the lock
78    the config file does not load
130   interrupted (Ctrl-C)
====  ==================================================================================
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import traceback
from typing import Any, NoReturn

from ..errors import EX_SOFTWARE, ConfigError, UsageError, Vx11Error

# Modules under vx11d.ctl that add command groups, in the order --help lists them.
COMMANDS = ["units", "opscmd", "sandbox", "configcmd", "dbcmd", "hijascmd", "reapercmd",
            "rotatecmd", "routecmd", "modelcmd", "tokencmd"]
JSON_HELP = "print the result as JSON (errors too, as {\"ok\": false, ...})"
EX_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing and exiting, so that the
    error reaches the operator the same way as every other (one line, or JSON)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", usage=self.format_usage())


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON with --json, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(text)


def _missing_action(parser: argparse.ArgumentParser, word: str, choices: list[str]
                    ):  # type: ignore[no-untyped-def]
    def run(_args: argparse.Namespace) -> int:
        raise UsageError(f"{parser.prog}: choose {word}: {', '.join(choices)} "
                         f"(see {parser.prog} --help)", usage=parser.format_usage())
    return run


def _finish(parser: argparse.ArgumentParser) -> None:
    """For every command group: no argparse-internal names in messages (an action is
    asked for by name, with the choices), and help on every --json flag."""
    for action in parser._actions:
        if "--json" in action.option_strings and not action.help:
            action.help = JSON_HELP
        if isinstance(action, argparse._SubParsersAction):
            names = list(action.choices)
            action.required = False
            root = parser.prog == "vx11ctl"
            if action.metavar is None:
                action.metavar = "COMMAND" if root else "ACTION"
            parser.set_defaults(func=_missing_action(
                parser, "a command" if root else "an action", names))
            seen: set[int] = set()
            for child in action.choices.values():
                if id(child) not in seen:
                    seen.add(id(child))
                    _finish(child)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vx11ctl", description="Operate the vx11d daemon set.",
                    epilog="Exit status: 0 done, 1 a problem found or an operation "
                    "failed, 2 bad command line or input, 69 database or systemd "
                    "unavailable, 70 internal error, 75 busy (try again), 78 bad config.")
    parser.add_argument("--config", help="config file (default: $VX11_CONFIG or "
                        "/etc/vx11/vx11.yml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"vx11d.ctl.{name}").register(sub)
    _finish(parser)
    return parser


def child_config_error(stderr: str, what: str) -> ConfigError:
    """The ConfigError for a ``vx11d`` child that exited 78: its last stderr line, without
    the journal fields its log line carries when not under journald."""
    lines = stderr.strip().splitlines() or [f"{what}: the config does not load"]
    why = re.split(r"refusing to start: (?:config|credential) ", lines[-1], maxsplit=1)[-1]
    err = ConfigError(what, "", "the config does not load")
    err.args = (re.split(r" (?:config_key|event)=", why, maxsplit=1)[0],)
    return err


def kind(e: BaseException) -> str:
    """The error's kind for JSON: its class name in snake case (``not_found``)."""
    if not isinstance(e, Vx11Error | OSError):
        return "internal"  # a bug: exit 70
    name = type(e).__name__
    if name in ("Vx11Error", "OSError"):
        return "error" if name == "Vx11Error" else "os_error"
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", name.removesuffix("Error")).lower()


def message(e: BaseException) -> str:
    """One line: the error's text with line breaks folded."""
    text = str(e) if isinstance(e, Vx11Error) else _os_text(e)
    if not isinstance(e, Vx11Error | OSError):
        text = f"internal error, please report it: {text} (VX11_DEBUG=1 shows the traceback)"
    return " ".join(text.split()) or type(e).__name__


def _os_text(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = e.filename if e.filename is not None else ""
        return f"{where}: {e.strerror}" if where else e.strerror
    return f"{type(e).__name__}: {e}"


def report(e: BaseException, as_json: bool, code: int) -> int:
    """Print ``e`` the one way vx11ctl prints errors; returns ``code``."""
    text = message(e)
    if isinstance(e, ConfigError):
        text = f"{e.noun} {text}"
    if as_json:
        print(json.dumps({"ok": False, "error": kind(e), "message": text,
                          "exit_code": code}, sort_keys=True))
    else:
        if isinstance(e, UsageError) and e.usage:
            sys.stderr.write(e.usage)
        print(f"vx11ctl: {text}" if not text.startswith("vx11ctl") else text,
              file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vx11ctl`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        as_json = bool(getattr(args, "json", False))
        return int(args.func(args) or 0)
    except Vx11Error as e:
        return report(e, as_json, e.exit_code)
    except OSError as e:  # a file or socket the command needed: name it, no traceback
        return report(e, as_json, 1)
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the last line of defence: no traceback to a user
        if os.environ.get("VX11_DEBUG"):
            traceback.print_exc()
        return report(e, as_json, EX_SOFTWARE)


if __name__ == "__main__":
    sys.exit(main())
