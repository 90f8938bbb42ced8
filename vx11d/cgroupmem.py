"""A unit's memory at its end: OOM kills, peak and limit, read from its own cgroup.

systemd says ``Result=oom-kill`` only on the unified (v2) hierarchy; on the legacy v1
memory controller an OOM kill is ``Result=signal``, status 9, like any SIGKILL, and
the counters that tell them apart live in the unit's memory cgroup, which systemd
removes (or recreates, on a restart) right after the unit stops. So a unit that wants
its OOM kills known runs a probe as ``ExecStopPost=``: it runs in the unit's cgroup
after the main process is gone and before the cgroup goes, and writes

    oom_kill N      (v1 memory.oom_control, v2 memory.events)
    peak N          (v1 memory.max_usage_in_bytes, v2 memory.peak on kernels >= 5.19)
    limit N         (v1 memory.limit_in_bytes, v2 memory.max)

to a file that the daemon reads later (:func:`take`). Two probes write that format:
the shell one madre gives every hija (``vx11d/madre/memory.py``: no interpreter start
per hija end) and ``python -m vx11d.cgroupmem DIR NAME`` here, for unit files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("vx11")

V1_NO_LIMIT = 1 << 62  # v1 reports "no limit" as a page-rounded 2^63 - 1


@dataclass
class MemoryReport:
    """What a probe read from a unit's memory cgroup at its end."""

    oom_kills: int | None
    peak: int | None
    limit: int | None

    @property
    def oom(self) -> bool:
        return bool(self.oom_kills)


def _int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def parse(text: str) -> MemoryReport:
    """A probe's file; missing or unreadable values are None."""
    vals = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    limit = _int(vals.get("limit"))
    if limit is not None and limit >= V1_NO_LIMIT:
        limit = None
    return MemoryReport(_int(vals.get("oom_kill")), _int(vals.get("peak")), limit)


def read(directory: str, name: str) -> MemoryReport | None:
    """A probe's report, left in place (None: there is none)."""
    path = Path(directory) / name
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("memory report %s unreadable: %s", path, e)
        return None
    return parse(text)


def discard(directory: str, name: str) -> None:
    """Remove a report once what it says is recorded."""
    with contextlib.suppress(OSError):
        (Path(directory) / name).unlink()


def take(directory: str, name: str) -> MemoryReport | None:
    """Read and remove a probe's report (None: there is none)."""
    rep = read(directory, name)
    if rep is not None:
        discard(directory, name)
    return rep


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def measure(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> str:
    """The report text for the calling process's memory cgroup (v1 or v2)."""
    v1 = v2 = None
    mem = unified = named = None
    for line in _read(Path(proc_cgroup)).splitlines():
        hid, ctls, path = line.split(":", 2)
        if "memory" in ctls.split(","):
            v1, mem = Path(root, ctls, path.lstrip("/")), path
        elif hid == "0" and not ctls:
            v2, unified = Path(root, path.lstrip("/")), path
        elif ctls == "name=systemd":
            named = path
    own = named if named is not None else unified  # the unit's own cgroup
    if v1 is not None and mem != own:
        # the memory controller does not account this unit on its own (not delegated,
        # or no memory cgroup of its own): its figures are a parent's, not the unit's
        v1 = v2 = None
    if v1 is not None:
        events, peak, limit = (_read(v1 / "memory.oom_control"),
                               _read(v1 / "memory.max_usage_in_bytes"),
                               _read(v1 / "memory.limit_in_bytes"))
    elif v2 is not None:
        events, peak, limit = (_read(v2 / "memory.events"), _read(v2 / "memory.peak"),
                               _read(v2 / "memory.max"))
    else:
        events = peak = limit = ""
    kills = next((ln.split()[1] for ln in events.splitlines()
                  if ln.startswith("oom_kill ") and len(ln.split()) == 2), "")
    return f"oom_kill {kills}\npeak {peak.strip()}\nlimit {limit.strip()}\n"


def write_report(directory: str, name: str, text: str) -> None:
    """Atomically write a report (a reader never sees half of one)."""
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(directory, name))


def main(argv: list[str]) -> int:
    """``python -m vx11d.cgroupmem DIR NAME``: the ExecStopPost= probe for unit files."""
    if len(argv) != 2:
        print("usage: python -m vx11d.cgroupmem DIR NAME", file=sys.stderr)
        return 64
    try:
        write_report(argv[0], argv[1], measure())
    except OSError as e:
        print(f"cgroupmem: cannot write {argv[0]}/{argv[1]}: {e.strerror}", file=sys.stderr)
        return 73
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
