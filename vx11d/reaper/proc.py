"""A fast, hostile-input-tolerant reader of the process table under a given /proc path.

Per process the scan reads only ``/proc/PID/stat`` (one ``read``) and keeps the owner
of that file from ``fstat`` as ``Proc.uid``. That owner is NOT the process's uid (it is
root for a non-dumpable or setuid-changed process): rules match users with
:func:`read_uids` (``/proc/PID/status``). The command line, the cgroup and the uids are
read lazily, only for processes a rule is about to look at. ``comm`` may hold spaces,
parentheses and newlines, so ``stat`` is split at its LAST ``)``; a process that
vanishes mid-read (ENOENT/ESRCH) is simply skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

PF_KTHREAD = 0x00200000
KTHREADD_PID = 2
HZ = os.sysconf("SC_CLK_TCK")
_GONE = (FileNotFoundError, ProcessLookupError)


class Proc:
    """One process as seen by the scan (start is in clock ticks since boot)."""

    __slots__ = ("comm", "flags", "pid", "ppid", "start", "state", "uid")

    def __init__(self, pid: int, ppid: int, state: str, comm: str, uid: int, start: int,
                 flags: int):
        self.pid, self.ppid, self.state, self.comm = pid, ppid, state, comm
        self.uid, self.start, self.flags = uid, start, flags

    @property
    def is_kthread(self) -> bool:
        """Kernel threads: the PF_KTHREAD flag, kthreadd itself or one of its children.

        PID 2 is kthreadd only in the initial PID namespace; inside another one (where
        kernel threads are invisible) it is an ordinary process: see Snapshot.is_kthread.
        """
        return bool(self.flags & PF_KTHREAD) or self.pid == KTHREADD_PID \
            or self.ppid == KTHREADD_PID

    @property
    def is_zombie(self) -> bool:
        return self.state == "Z"

    def __repr__(self) -> str:
        return f"Proc(pid={self.pid}, ppid={self.ppid}, state={self.state}, comm={self.comm!r})"


@dataclass
class Snapshot:
    """The process table at one instant: processes by pid, and the boot clock when read."""

    procs: dict[int, Proc]
    now_ticks: int
    malformed: int = 0
    zombies_by_parent: dict[int, list[int]] = field(default_factory=dict)

    def is_kthread(self, p: Proc) -> bool:
        """A kernel thread: PF_KTHREAD, or kthreadd (PID 2) or its child when PID 2 is
        kthreadd here (or cannot be seen, the cautious answer)."""
        if p.flags & PF_KTHREAD:
            return True
        if p.pid != KTHREADD_PID and p.ppid != KTHREADD_PID:
            return False
        k = self.procs.get(KTHREADD_PID)
        return k is None or bool(k.flags & PF_KTHREAD) or k.comm == "kthreadd"

    def age(self, p: Proc) -> float:
        """Seconds since ``p`` started (from the boot clock read before the scan)."""
        return max(0.0, (self.now_ticks - p.start) / HZ)


def parse_stat(data: bytes, uid: int = -1) -> Proc:
    """A Proc from the bytes of /proc/PID/stat; ValueError if they are malformed."""
    lp = data.find(b"(")
    rp = data.rfind(b")")
    if lp < 0 or rp < lp:
        raise ValueError("no (comm) in stat")
    f = data[rp + 2:].split()
    if len(f) < 20:
        raise ValueError("short stat line")
    return Proc(int(data[:lp]), int(f[1]), f[0].decode("ascii", "replace"),
                data[lp + 1:rp].decode("utf-8", "replace"), uid, int(f[19]), int(f[6]))


def read_uptime_ticks(proc: str = "/proc") -> int:
    """The boot clock (CLOCK_BOOTTIME, as /proc/uptime shows it) in clock ticks, rounded down."""
    with open(f"{proc}/uptime", "rb") as f:
        return int(float(f.read().split()[0]) * HZ)


def read_proc(proc: str, pid: int) -> Proc | None:
    """One process, or None when it is gone or its stat is unreadable."""
    try:
        fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (*_GONE, PermissionError, NotADirectoryError):
        return None
    try:
        data = os.read(fd, 4096)
        uid = os.fstat(fd).st_uid
    except (*_GONE, PermissionError):
        return None
    finally:
        os.close(fd)
    try:
        return parse_stat(data, uid)
    except (ValueError, IndexError):
        return None


def scan(proc: str = "/proc") -> Snapshot:
    """Read the whole process table under ``proc``; vanished or garbled entries are skipped."""
    now = read_uptime_ticks(proc)
    procs: dict[int, Proc] = {}
    zombies: dict[int, list[int]] = {}
    malformed = 0
    o_flags = os.O_RDONLY | os.O_CLOEXEC
    open_, read, fstat, close = os.open, os.read, os.fstat, os.close
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            fd = open_(f"{proc}/{name}/stat", o_flags)
        except (*_GONE, PermissionError, NotADirectoryError):
            continue
        try:
            data = read(fd, 4096)
            uid = fstat(fd).st_uid
        except (*_GONE, PermissionError):
            continue
        finally:
            close(fd)
        try:
            p = parse_stat(data, uid)
        except (ValueError, IndexError):
            malformed += 1
            continue
        procs[p.pid] = p
        if p.state == "Z":
            zombies.setdefault(p.ppid, []).append(p.pid)
    return Snapshot(procs, now, malformed, zombies)


def read_cmdline(proc: str, pid: int) -> str | None:
    """The command line joined by spaces ('' for kernel threads), None when gone."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            data = f.read(65536)
    except (*_GONE, PermissionError, NotADirectoryError):
        return None
    return data.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")


def read_uids(proc: str, pid: int) -> tuple[int, int, int, int] | None:
    """(real, effective, saved, filesystem) uid from ``/proc/PID/status``, None when gone.

    These are the process's own credentials. The owner of ``/proc/PID`` (what the scan's
    ``Proc.uid`` holds) is root for a non-dumpable process, including one that changed
    its uids (setuid), so a rule about users must not use it.
    """
    try:
        with open(f"{proc}/{pid}/status", "rb") as f:
            data = f.read(8192)
    except (*_GONE, PermissionError, NotADirectoryError):
        return None
    for line in data.split(b"\n"):
        if line.startswith(b"Uid:"):
            try:
                r, e, s, fs = (int(x) for x in line[4:].split()[:4])
            except ValueError:
                return None
            return r, e, s, fs
    return None


def parse_cgroup(text: str) -> str:
    """The cgroup path systemd tracks a process by: the unified (0::) path, else name=systemd."""
    unified = named = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            unified = parts[2]
        elif parts[1] == "name=systemd":
            named = parts[2]
    if unified and unified != "/":
        return unified
    return named or unified or "/"


def read_cgroup(proc: str, pid: int) -> str | None:
    """The process's cgroup path, None when it is gone."""
    try:
        with open(f"{proc}/{pid}/cgroup", "rb") as f:
            text = f.read(65536).decode("utf-8", "replace")
    except (*_GONE, PermissionError, NotADirectoryError):
        return None
    return parse_cgroup(text)


def unit_names(cgroup: str) -> list[str]:
    """The slice and unit names along a cgroup path ('/' is the root slice, '-.slice')."""
    names = [c for c in cgroup.split("/") if c]
    return names or ["-.slice"]


class CgroupCache:
    """Cgroup paths by (pid, start time): a process is read once, then forgotten when gone.

    The kill path never trusts this cache: it re-reads the cgroup after ``pidfd_open``.
    """

    def __init__(self, proc: str):
        self.proc = proc
        self._c: dict[tuple[int, int], str | None] = {}

    def get(self, p: Proc) -> str | None:
        key = (p.pid, p.start)
        if key not in self._c:
            self._c[key] = read_cgroup(self.proc, p.pid)
        return self._c[key]

    def __len__(self) -> int:
        return len(self._c)

    def prune(self, snap: Snapshot) -> None:
        procs = snap.procs
        for key in [k for k in self._c if (p := procs.get(k[0])) is None or p.start != k[1]]:
            del self._c[key]
