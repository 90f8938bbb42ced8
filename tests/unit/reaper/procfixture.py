"""Build fake /proc trees for the reaper's unit tests.

PIDs are above PID_MAX_LIMIT (4194304), so even if a code path wrongly went to the real
kernel with one of them, pidfd_open would fail with ESRCH: no real process is at risk.
"""

from __future__ import annotations

import os
from pathlib import Path

from vx11d.config import Config, parse

BASE = 4_200_000
HZ = os.sysconf("SC_CLK_TCK")


class FakeProc:
    """A /proc directory under tmp_path with uptime and per-process stat/cmdline/cgroup."""

    def __init__(self, root: Path, uptime: float = 10_000.0):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.set_uptime(uptime)
        (root / "self").mkdir(exist_ok=True)
        (root / "sys").mkdir(exist_ok=True)

    def set_uptime(self, seconds: float) -> None:
        (self.root / "uptime").write_text(f"{seconds:.2f} 1234.00\n")

    @property
    def path(self) -> str:
        return str(self.root)

    def add(self, pid: int, comm: str, *, ppid: int = 1, state: str = "S", uid: int = 0,
            start: float = 100.0, flags: int = 0x400000, cmdline: str | None = None,
            cgroup: str = "/user.slice/session-1.scope", raw_stat: bytes | None = None,
            uids: tuple[int, int, int, int] | None = None) -> int:
        """One process; ``uid`` owns its /proc files, ``uids`` (default: all ``uid``) are
        its credentials as /proc/PID/status shows them (real, effective, saved, fs)."""
        d = self.root / str(pid)
        d.mkdir(exist_ok=True)
        start_ticks = int(start * HZ)
        rest = [state, ppid, pid, pid, 0, -1, flags, 0, 0, 0, 0, 5, 3, 0, 0, 20, 0, 1, 0,
                start_ticks, 1000, 100]
        stat = raw_stat if raw_stat is not None else (
            f"{pid} ({comm}) " + " ".join(str(x) for x in rest) + "\n").encode()
        (d / "stat").write_bytes(stat)
        (d / "cmdline").write_bytes((cmdline if cmdline is not None else comm)
                                    .replace(" ", "\0").encode() + b"\0")
        (d / "cgroup").write_text(f"0::{cgroup}\n")
        r, e, sv, fs = uids if uids is not None else (uid,) * 4
        (d / "status").write_text(f"Name:\t{comm}\nUmask:\t0022\nState:\t{state}\n"
                                  f"Pid:\t{pid}\nPPid:\t{ppid}\nUid:\t{r}\t{e}\t{sv}\t{fs}\n"
                                  f"Gid:\t{r}\t{e}\t{sv}\t{fs}\n")
        if uid:
            os.chown(d / "stat", uid, uid)
        return pid


def cfg(yaml_text: str = "") -> Config:
    """A Config from YAML text (the reaper section and anything else)."""
    return parse(yaml_text, "/test/vx11.yml")
