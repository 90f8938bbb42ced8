"""The sandboxes of test sessions that were killed: which run, and taking them down
(container, state dir and cgroups). Test infrastructure: vx11ctl has no use for it."""

from __future__ import annotations

import os
from pathlib import Path

from vx11d.ctl import cgroups
from vx11d.ctl.sandbox import STATE_ROOT, Sandbox, is_nspawn_of


def running_names(prefix: str = "") -> list[str]:
    """Names of the sandboxes whose nspawn runs now (optionally only those with a prefix)."""
    names = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"systemd-nspawn") and b"-M" in cmdline:
            i = cmdline.index(b"-M")
            if i + 1 < len(cmdline):
                name = cmdline[i + 1].decode(errors="replace")
                if name.startswith(prefix) and is_nspawn_of(int(entry), name):
                    names.append(name)
    return sorted(set(names))


def down_orphans(prefix: str) -> list[str]:
    """Take down the sandboxes named ``<prefix><owner pid>`` whose owner is dead (a test
    session that was killed): container, state dir and cgroups. The names taken down."""
    names = set(running_names(prefix))
    if STATE_ROOT.exists():
        names |= {p.name for p in STATE_ROOT.glob(f"{prefix}*")}
    names |= {p.name[len(cgroups.PREFIX):].rpartition(".")[0] for p in cgroups.find_all()}
    done = []
    for name in sorted(names):
        owner = name.removeprefix(prefix)
        if name.startswith(prefix) and owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            Sandbox(name).down()
            done.append(name)
    return done
