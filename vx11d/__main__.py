"""``vx11d DAEMON [ARGS]``: run one vx11d daemon in the foreground (systemd's job is the rest).

Each daemon lives in ``vx11d/<name>/main.py`` and exposes ``main(cfg, argv) -> int``.
A config that does not load stops the daemon with one journal line naming the file and
the key, and exit status 78 (EX_CONFIG).
"""

from __future__ import annotations

import importlib
import logging
import sys

from . import config, journal, runtime
from .errors import EX_CONFIG, EX_UNAVAILABLE, ConfigError, Vx11Error

DAEMONS = {
    "gateway": "vx11d.gateway.main",
    "madre": "vx11d.madre.main",
    "reaper": "vx11d.reaper.main",
    "rotate": "vx11d.rotator.main",
    "hermes": "vx11d.hermes.main",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vx11d`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in DAEMONS:
        names = "|".join(DAEMONS)
        print(f"usage: vx11d {{{names}}} [ARGS...]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 64
    name, rest = argv[0], argv[1:]
    try:
        cfg = config.load()
    except ConfigError as e:
        log = journal.setup(name)
        log.error("refusing to start: %s %s", e.noun, e,
                  extra={"VX11_EVENT": "config_invalid", "VX11_CONFIG_KEY": e.key})
        return EX_CONFIG
    log = journal.setup(name, cfg.log_level)
    wd = runtime.watchdog_interval()
    try:
        if wd is not None:  # half of WatchdogSec: the unit in force, drop-ins included
            config.check_db_fits_watchdog(cfg, 2 * wd)
    except ConfigError as e:
        log.error("refusing to start: %s %s", e.noun, e,
                  extra={"VX11_EVENT": "config_invalid", "VX11_CONFIG_KEY": e.key})
        return EX_CONFIG
    module = importlib.import_module(DAEMONS[name])
    try:
        return int(module.main(cfg, rest) or 0)
    except ConfigError as e:
        log.error("refusing to start: %s %s", e.noun, e,
                  extra={"VX11_EVENT": "config_invalid", "VX11_CONFIG_KEY": e.key})
        return EX_CONFIG
    except Vx11Error as e:
        log.error("%s", e, extra={"VX11_EVENT": "daemon_failed"})
        return EX_UNAVAILABLE
    finally:
        logging.shutdown()


if __name__ == "__main__":
    sys.exit(main())
