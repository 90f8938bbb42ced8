"""How a hija used its memory, and whether the kernel killed it for exceeding the limit.

systemd says ``Result=oom-kill`` only on the unified (v2) hierarchy. On the legacy v1
memory controller (the sandbox's, and hybrid hosts') an OOM kill is just
``Result=signal``, status 9 — the same as any SIGKILL — and the counters that tell
the difference live in the unit's own memory cgroup, which systemd removes as soon as
the unit stops. So every hija unit gets a privileged ``ExecStopPost=`` probe: it runs
in the unit's cgroup after the main process is gone and before the cgroup is removed
(the unit is only "failed"/"inactive", and signalled to madre, after it), reads

* v1: ``memory.oom_control`` (``oom_kill N``), ``memory.max_usage_in_bytes``,
  ``memory.limit_in_bytes``;
* v2: ``memory.events`` (``oom_kill N``), ``memory.peak`` (kernel >= 5.19),
  ``memory.max``;

and writes them to ``<ends dir>/<hija id>``, which madre reads when it sees the end
and removes once the end is recorded (a held end re-read after a restart keeps them).
Figures are read from the unit's own memory cgroup only: where the v1 memory cgroup is
not the unit's (the controller not delegated), peak and limit are left out, never
taken from a parent. A hija ended by an OOM kill (``oom_kill`` > 0, or ``Result=oom-kill``)
is recorded as ``oom`` with its limit and peak usage. The report format and its reader
are shared (``vx11d/cgroupmem.py``); this probe is a shell one-liner, so a hija's end
costs no interpreter start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

from .. import cgroupmem
from ..cgroupmem import MemoryReport
from ..confload import format_size as size

log = logging.getLogger("vx11.madre")

ENDS_SUBDIR = "hija-ends"
STALE_AFTER = 600.0  # reports nobody read (madre was down and the row was settled)

# One line (a transient unit's command is stored in a unit file; no "[" at a line start);
# run with no-env-expand, so "$" reaches the shell as written. Shell builtins only (one
# fork per hija end, not ten: a burst of ends must not queue behind their probes);
# written in place: madre reads it only once the unit is inactive, i.e. after the probe.
_PROBE = "; ".join((
    "k=; p=; l=; m=; u=; s=",
    "while IFS=: read -r id ctl path",
    "do case \",$ctl,\" in *,memory,*) m=$path;; esac",
    "test \"$ctl\" = name=systemd && s=$path",
    "test \"$id\" = 0 && test -z \"$ctl\" && u=$path",
    "done < /proc/self/cgroup",
    "test -n \"$s\" || s=$u",
    # v1 memory cgroup other than the unit's own (controller not delegated, or the unit
    # has no memory cgroup): its figures are a parent's, so none are reported
    "if test -n \"$m\" && test \"$m\" != \"$s\"",
    "then e=/dev/null",
    "elif test -n \"$m\"",
    "then d=/sys/fs/cgroup/memory$m; e=$d/memory.oom_control",
    "read -r p < $d/memory.max_usage_in_bytes; read -r l < $d/memory.limit_in_bytes",
    "else d=/sys/fs/cgroup$u; e=$d/memory.events",
    "read -r p < $d/memory.peak; read -r l < $d/memory.max",
    "fi",
    "while read -r a b; do test \"$a\" = oom_kill && k=$b; done < $e",
    "test -d \"$1\" || mkdir -p \"$1\"",
    "printf 'oom_kill %s\\npeak %s\\nlimit %s\\n' \"$k\" \"$p\" \"$l\" > \"$1/$2\""))


def ends_dir(wake_socket: str) -> str:
    """Where the probes write: beside madre's wake socket (its runtime directory)."""
    return os.path.join(os.path.dirname(wake_socket), ENDS_SUBDIR)


def probe_property(directory: str, hija_id: str) -> tuple[str, list]:
    """The ``ExecStopPostEx`` unit property (D-Bus name and value) for one hija:
    privileged (to write to madre's directory), failure ignored, no ``$`` expansion."""
    argv = ["/bin/sh", "-c", _PROBE, "vx11-memory-probe", directory, hija_id]
    flags = ["privileged", "ignore-failure", "no-env-expand"]
    return "ExecStopPostEx", [(b"/bin/sh", [a.encode() for a in argv],
                               [f.encode() for f in flags])]


def read(directory: str, hija_id: str) -> MemoryReport | None:
    """The probe's report for a hija, left in place until its end is recorded (an end
    held through a DB fault and re-read after a madre restart keeps its figures)."""
    return cgroupmem.read(directory, hija_id)


def discard(directory: str, hija_id: str) -> None:
    """Remove a hija's report once its end is recorded."""
    cgroupmem.discard(directory, hija_id)


def sweep(directory: str, now: float | None = None) -> int:
    """Remove reports nobody read for STALE_AFTER seconds; how many."""
    now = time.time() if now is None else now
    n = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > STALE_AFTER:
                    os.unlink(entry.path)
                    n += 1
    return n


def is_oom(result: str, report: MemoryReport | None) -> bool:
    """Did the kernel kill the hija for memory? v2: systemd says so; v1: the cgroup's
    OOM-kill counter does (a plain SIGKILL leaves it at 0)."""
    if result == "oom-kill":
        return True
    return report is not None and report.oom and result in ("signal", "core-dump",
                                                             "exit-code")


_SIGNALS = {int(s): s.name for s in signal.Signals}


def oom_reason(report: MemoryReport | None, limit: int | None, result: str,
               status: object) -> str:
    """The row's reason for an OOM kill: the limit, the peak and what systemd said."""
    peak = report.peak if report else None
    kills = report.oom_kills if report else None
    if result == "oom-kill":
        how = "systemd result oom-kill"
    elif result == "signal" and isinstance(status, int) and status in _SIGNALS:
        how = f"systemd result signal, {_SIGNALS[status]}"  # the signal, not an exit status
    else:
        how = f"systemd result {result or 'unknown'}, status {status}"
    return (f"killed by the kernel: out of memory (peak {size(peak)} of its "
            f"{size(limit)} limit; {kills or 1} OOM kill{'s' if (kills or 1) > 1 else ''}; "
            f"{how})")
