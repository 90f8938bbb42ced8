"""Delegating cgroup controllers to a systemd-nspawn container, so its systemd enforces limits.

On a host in hybrid or legacy cgroup mode ``systemd-nspawn`` mounts the v1 controller
hierarchies read-only in the container; the container's systemd then treats memory,
pids and cpu as absent and accepts ``MemoryMax=``, ``TasksMax=``, ``CPUQuota=`` while
enforcing none of them. The recipe (measured, see docs/sandbox.md):

1. in each hierarchy (``memory pids cpu cpuacct`` and ``name=systemd``, ``unified``)
   make a child of the caller's own cgroup, named after the container;
2. start nspawn from a process that first joins those children (:meth:`Delegation.preexec`
   or :meth:`Delegation.wrap`), so they become the container's cgroup-namespace root;
3. give nspawn ``--tmpfs=/sys/fs/cgroup`` and one ``--bind`` per controller
   (:meth:`Delegation.nspawn_args`): nspawn finds them mounted and leaves them writable;
4. after the container is gone, remove every dir under those children, deepest first
   (:meth:`Delegation.cleanup`; :func:`cleanup_stale` for those of killed runs).

Whether it worked is measured, never assumed: :func:`probe` starts a transient unit
with limits inside the container and reads the limits back from the kernel's files.

Why it is in the package and not under tests/: ``vx11ctl sandbox up`` (the Makefile's
``demo``, ``up-core`` and ``smoke`` targets) delegates and probes with it; the test
fixtures (tests/infra/freshhost.py, the sandbox fixture) use the same code.

Usage by any container fixture::

    d = cgroups.delegate("my-box")
    proc = subprocess.Popen(["systemd-nspawn", *d.nspawn_args(), ...], preexec_fn=d.preexec)
    ...
    d.cleanup()
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SandboxError

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Controllers bound writable into the container (what MemoryMax/TasksMax/CPUQuota need).
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
# Hierarchies the container's processes are moved into (the controllers, plus systemd's
# own named hierarchy and the cgroup2 one, so nspawn's payload/ and supervisor/ land in
# the container's own cgroup instead of being shared by every container).
JOINED = (*CONTROLLERS, "systemd", "unified")
PREFIX = "vx11cg-"
# The limits the probe asks for, chosen to differ from any default.
PROBE_MEMORY = 61 * 1024 * 1024
PROBE_TASKS = 7
PROBE_CPU_PERCENT = 37


def _own_cgroups(proc_cgroup: str = "/proc/self/cgroup") -> dict[str, str]:
    """Hierarchy name (``memory``, ``systemd``, ``unified``...) -> this process's cgroup path."""
    out: dict[str, str] = {}
    for line in Path(proc_cgroup).read_text().splitlines():
        hid, ctls, path = line.split(":", 2)
        if hid == "0" and not ctls:
            out["unified"] = path
            continue
        for ctl in ctls.split(","):
            out[ctl.removeprefix("name=")] = path
    return out


def _mount_of(hierarchy: str) -> Path | None:
    """Where a hierarchy is mounted (``/sys/fs/cgroup/<name>``, also joint mounts)."""
    direct = CGROUP_ROOT / hierarchy
    if (direct / "cgroup.procs").exists():
        return direct
    with contextlib.suppress(OSError):
        for entry in CGROUP_ROOT.iterdir():
            if hierarchy in entry.name.split(",") and (entry / "cgroup.procs").exists():
                return entry
    return None


def mode() -> str:
    """``unified`` (cgroup v2 only), ``hybrid`` or ``legacy``."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return "unified"
    return "hybrid" if (CGROUP_ROOT / "unified" / "cgroup.procs").exists() else "legacy"


@dataclass
class Delegation:
    """The cgroups made for one container: hierarchy -> host dir."""

    name: str
    dirs: dict[str, Path] = field(default_factory=dict)
    binds: dict[str, Path] = field(default_factory=dict)  # mount name in container -> dir

    def nspawn_args(self) -> list[str]:
        """Extra ``systemd-nspawn`` options (the tmpfs must come before the binds)."""
        if not self.binds:
            return []
        return ["--tmpfs=/sys/fs/cgroup",
                *[f"--bind={d}:/sys/fs/cgroup/{m}" for m, d in self.binds.items()]]

    def preexec(self) -> None:
        """In the child before exec (``preexec_fn``): join every delegated cgroup."""
        pid = str(os.getpid()).encode()
        for d in self.dirs.values():
            fd = os.open(d / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` behind a tiny shell that joins the cgroups, then execs it (for callers
        that cannot use ``preexec_fn``)."""
        procs = [str(d / "cgroup.procs") for d in self.dirs.values()]
        script = 'for f; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; ' \
                 'shift; exec "$@"'
        return ["/bin/sh", "-c", script, "vx11-cgroup-wrap", *procs, "--", *argv]

    def cleanup(self, timeout: float = 10.0) -> None:
        """Remove every dir made for (or by) the container, deepest first; SandboxError
        naming what stays if processes still hold it after ``timeout``."""
        left = remove_trees(list(self.dirs.values()), timeout)
        if left:
            raise SandboxError(f"cgroups of {self.name} still in use: {', '.join(left)}; "
                               "end the processes listed in their cgroup.procs")


def _dir_name(name: str, creator: int) -> str:
    return f"{PREFIX}{name}.{creator}"


def delegate(name: str, *, creator: int | None = None) -> Delegation:
    """Make the per-container cgroups under the caller's own; SandboxError with the
    reason when they cannot be made (then limits would not be enforced)."""
    if not name or "/" in name or "." in name:
        raise SandboxError(f"bad container name for cgroups: {name!r}")
    creator = os.getpid() if creator is None else creator
    d = Delegation(name)
    m = mode()
    own = _own_cgroups()
    wanted = ("unified",) if m == "unified" else JOINED
    try:
        for h in wanted:
            mount = CGROUP_ROOT if m == "unified" else _mount_of(h)
            if mount is None:
                if h in CONTROLLERS:
                    raise SandboxError(f"cgroup controller {h} is not mounted under "
                                       f"{CGROUP_ROOT}: limits cannot be enforced")
                continue  # name=systemd / unified missing: nothing to join there
            if h not in own:
                raise SandboxError(f"this process is in no {h} cgroup (/proc/self/cgroup)")
            path = mount / own[h].lstrip("/") / _dir_name(name, creator)
            try:
                path.mkdir(exist_ok=True)
            except OSError as e:
                raise SandboxError(f"cannot create cgroup {path}: {e.strerror}; limits "
                                   "need a writable cgroup hierarchy (run as root, "
                                   "outside a read-only container)") from e
            d.dirs[h] = path
            if h in CONTROLLERS and mount.name == h:
                d.binds[h] = path
            elif h in CONTROLLERS:  # joint mount such as cpu,cpuacct: bind it once
                d.binds.setdefault(mount.name, path)
        if m == "unified":
            _enable_v2_controllers(d.dirs["unified"])
    except BaseException:
        with contextlib.suppress(SandboxError):
            d.cleanup(timeout=2)
        raise
    return d


def _enable_v2_controllers(path: Path) -> None:
    """cgroup v2: let the container's systemd hand memory, pids and cpu to its units."""
    have = set((path / "cgroup.controllers").read_text().split())
    missing = {"memory", "pids", "cpu"} - have
    if missing:
        raise SandboxError(f"cgroup v2 controllers {', '.join(sorted(missing))} are not "
                           f"delegated to {path.parent}: limits cannot be enforced")


def find_all() -> list[Path]:
    """Every dir this module made (any container), visible from the caller's cgroups."""
    return [p for p, _, _ in _all_made()]


def find(name: str) -> list[Path]:
    """Every dir made for container ``name`` (by any creator), in every hierarchy."""
    return [p for p, n, _ in _all_made() if n == name]


def _all_made() -> list[tuple[Path, str, int]]:
    """(dir, container name, creator pid) of every cgroup this module made, visible from
    the caller's cgroups."""
    out = []
    own = _own_cgroups()
    roots = {CGROUP_ROOT / own["unified"].lstrip("/")} if mode() == "unified" else set()
    if mode() != "unified":
        for h in JOINED:
            mount = _mount_of(h)
            if mount is not None and h in own:
                roots.add(mount / own[h].lstrip("/"))
    for root in roots:
        with contextlib.suppress(OSError):
            for entry in root.iterdir():
                if entry.is_dir() and entry.name.startswith(PREFIX) and "." in entry.name:
                    n, _, pid = entry.name[len(PREFIX):].rpartition(".")
                    if pid.isdigit():
                        out.append((entry, n, int(pid)))
    return out


def _has_procs(tree: Path) -> bool:
    for dirpath, _dirs, _files in os.walk(tree):
        with contextlib.suppress(OSError):
            if Path(dirpath, "cgroup.procs").read_text().strip():
                return True
    return False


def cleanup_stale(names: Callable[[str], bool] = lambda n: True) -> list[str]:
    """Remove cgroups of containers gone for good: no process in them and their creator
    dead (a run that was killed). Returns the dirs removed."""
    removed = []
    for path, n, creator in _all_made():
        if not names(n) or os.path.exists(f"/proc/{creator}") or _has_procs(path):
            continue
        if not remove_trees([path], timeout=2):
            removed.append(str(path))
    return removed


def remove_trees(roots: list[Path], timeout: float) -> list[str]:
    """rmdir every dir under ``roots`` (and them), deepest first, retrying while the
    last processes leave; the dirs that stay."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for root in roots:
            if not root.exists():
                continue
            for dirpath, _dirs, _files in os.walk(root, topdown=False):
                try:
                    os.rmdir(dirpath)
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(dirpath)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


# --- measuring ------------------------------------------------------------------------

# One line (systemd stores a transient unit's command line in a unit file, where a new
# line starting with "[" would read as a section header).
_PROBE_SH = "; ".join((
    "while IFS=: read -r id ctls path",
    "do for c in $(echo \"$ctls\" | tr , ' ')",
    "do d=/sys/fs/cgroup/$ctls$path",
    "case \"$c\" in memory) echo \"memory $(cat $d/memory.limit_in_bytes)\"",
    ";; pids) echo \"pids $(cat $d/pids.max)\"",
    ";; cpu) echo \"cpu $(cat $d/cpu.cfs_quota_us) $(cat $d/cpu.cfs_period_us)\"",
    ";; esac",
    "done",
    "if test \"$id\" = 0 && test -z \"$ctls\"",
    "then d=/sys/fs/cgroup$path",
    "test -f $d/memory.max || d=/sys/fs/cgroup/unified$path",
    "test -f $d/memory.max && echo \"memory $(cat $d/memory.max)\"",
    "test -f $d/pids.max && echo \"pids $(cat $d/pids.max)\"",
    "test -f $d/cpu.max && echo \"cpu $(cat $d/cpu.max)\"",
    "fi",
    "done < /proc/self/cgroup",
    "true"))


def probe_argv() -> list[str]:
    """A command run inside the container: a transient unit with limits that prints the
    limits the kernel holds for it (``memory N``, ``pids N``, ``cpu QUOTA PERIOD``)."""
    return ["systemd-run", "--quiet", "--wait", "--pipe", "--collect",
            f"--property=MemoryMax={PROBE_MEMORY}", f"--property=TasksMax={PROBE_TASKS}",
            f"--property=CPUQuota={PROBE_CPU_PERCENT}%", "/bin/sh", "-c", _PROBE_SH]


def parse_probe(text: str) -> dict[str, bool]:
    """Which controllers enforce the probe's limits, from the probe's output."""
    seen: dict[str, bool] = dict.fromkeys(("memory", "pids", "cpu"), False)
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        if parts[0] == "memory":
            seen["memory"] |= parts[1] == str(PROBE_MEMORY)
        elif parts[0] == "pids":
            seen["pids"] |= parts[1] == str(PROBE_TASKS)
        elif parts[0] == "cpu" and len(parts) == 3 and parts[1].isdigit() \
                and parts[2].isdigit() and int(parts[2]):
            seen["cpu"] |= round(100 * int(parts[1]) / int(parts[2])) == PROBE_CPU_PERCENT
    return seen


def probe(run: Callable[[list[str]], subprocess.CompletedProcess[str]]) -> dict[str, bool]:
    """Measure which limits the container's systemd really hands to the kernel; ``run``
    executes an argv inside the container. SandboxError if the probe cannot run."""
    try:
        r = run(probe_argv())
    except subprocess.TimeoutExpired as e:
        raise SandboxError(f"limit probe did not finish in {e.timeout:g}s "
                           "(systemd-run --wait inside the container)") from e
    if r.returncode != 0:
        raise SandboxError(f"limit probe ({shlex.join(probe_argv()[:3])} ...) failed "
                           f"with status {r.returncode}: {(r.stderr or '').strip()[:300]}")
    return parse_probe(r.stdout)
