"""One rotation: the five phases, under a lock, crash-idempotent at every step.

1. protect: the hard-exclude patterns in force;
2. scan: classify each root's entries by the timestamp in their names;
3. archive: for each due dir, write a temp archive in the archive dir, fsync, verify,
   rename, fsync the dir, check the source is unchanged, then remove it by fd;
4. aggressive: with ``--aggressive``, delete archives older than the limit;
5. report: active dirs, archives, sizes.

Crash idempotency: temp archives are the only partial files; a re-run removes them
first. An archive under its final name was verified before the rename, so a re-run that
finds one checks it again (sound, and covering what is left of the source) and
finishes the removal; one that fails is set aside (never deleted) and rebuilt from the
source, which was never removed without a verified archive. So at every instant each
audit dir exists as its source, as a verified archive, or both.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from typing import Any

from ..errors import Vx11Error
from . import archive, names
from .archive import VerifyError
from .remove import remove_tree
from .walk import DIR_FLAGS, Policy, Walker, WalkError, lstat_at, patterns_for

FAULT_ENV = "VX11_ROTATE_FAULT"
FAULT_POINTS = ("scan", "archive_written", "archive_verified", "archive_renamed",
                "remove_partial", "aggressive", "report")
DAY = 86400.0
_MAIN_PID = os.getpid()

Hook = Callable[[str, str], None]


class LockBusy(Vx11Error):
    """Another rotation holds the lock."""


def fault(point: str) -> None:
    """Test hook: SIGKILL the whole rotation when ``$VX11_ROTATE_FAULT`` names ``point``."""
    if os.environ.get(FAULT_ENV) != point:
        return
    if os.getpgrp() == _MAIN_PID:
        os.killpg(_MAIN_PID, signal.SIGKILL)
    if os.getpid() != _MAIN_PID:
        with contextlib.suppress(OSError):
            os.kill(_MAIN_PID, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


class LockError(Vx11Error):
    """The lock file cannot be opened."""


def _open_lock(path: str, create: bool) -> int | None:
    flags = os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        return os.open(path, os.O_RDWR | flags)
    except FileNotFoundError:
        if not create:
            return None
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644)
        except OSError as e:
            raise LockError(f"cannot create lock file {path}: {e.strerror}") from e
        # flock needs only a read-only fd: a run as another user (root with --local,
        # vx11 in the unit) can still take it.
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o644)
        return fd
    except PermissionError:
        try:
            return os.open(path, os.O_RDONLY | flags)
        except OSError as e:
            raise LockError(f"cannot open lock file {path}: {e.strerror}") from e
    except OSError as e:
        raise LockError(f"cannot open lock file {path}: {e.strerror}") from e


@contextlib.contextmanager
def run_lock(path: str, *, create: bool = True) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (LockBusy if another run holds it). With
    ``create=False`` (a dry run) a missing lock file is not created and not needed."""
    fd = _open_lock(path, create)
    if fd is None:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise LockBusy(f"another rotation is running (lock {path})") from e
        yield
    finally:
        os.close(fd)


@dataclass
class Job:
    """One due audit dir, with everything a worker process needs."""

    root: str
    archive_dir: str
    name: str
    patterns: tuple[str, ...]
    level: int
    dry_run: bool
    now: float
    threads: int = 1


@dataclass
class DirResult:
    root: str
    name: str
    archive: str = ""
    action: str = ""  # archived, reused, failed (dry run: would_archive, would_reuse)
    verified: bool = False
    source_removed: bool = False
    files: int = 0
    members: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    kept: list[dict[str, str]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        lstat_at(dir_fd, name)
        return True
    except FileNotFoundError:
        return False


def _open_archive_dir(path: str) -> int | None:
    try:
        return os.open(path, DIR_FLAGS)
    except FileNotFoundError:
        return None


def process_dir(job: Job, hook: Hook | None = None) -> DirResult:
    """Archive, verify and remove one audit dir (or say what would be done)."""
    src = os.path.join(job.root, job.name)
    res = DirResult(job.root, job.name, archive=os.path.join(job.archive_dir,
                                                             names.archive_name(job.name)))
    verb = "would " if job.dry_run else ""
    try:
        root_fd = os.open(job.root, DIR_FLAGS)
    except OSError as e:
        res.action = "failed"
        res.errors.append(f"{src}: cannot open the root: {e.strerror}")
        return res
    try:
        arch_fd = _open_archive_dir(job.archive_dir)
    except OSError as e:
        os.close(root_fd)
        res.action = "failed"
        res.errors.append(f"{src}: cannot open the archive dir: {e.strerror}")
        return res
    try:
        rst = os.fstat(root_fd)
        policy = Policy(job.patterns, rst.st_dev, rst.st_uid)
        final = names.archive_name(job.name)
        written: archive.Written | None = None
        if arch_fd is not None and _exists(arch_fd, final):
            res.actions.append(f"{verb}verify existing archive {res.archive}")
            try:
                res.members = _verify_existing(arch_fd, final, root_fd, job.name, policy)
                res.verified = True
                res.action = "would_reuse" if job.dry_run else "reused"
            except VerifyError as e:  # a WalkError (the source's fault) leaves all as is
                res.errors.append(f"{src}: existing archive {res.archive} does not verify: "
                                  f"{e}; it is set aside and rebuilt")
                aside = f"{final}.bad-{int(job.now)}"
                res.actions.append(f"{verb}set aside {res.archive} as {aside}")
                if not job.dry_run:
                    os.rename(final, aside, src_dir_fd=arch_fd, dst_dir_fd=arch_fd)
                    os.fsync(arch_fd)
        if not res.verified:
            walker = Walker(policy)
            files = nbytes = 0
            for e in walker.walk(root_fd, job.name):
                files += e.kind == "f"
                nbytes += e.size
            res.kept = [asdict(k) for k in walker.kept]
            res.actions.append(f"{verb}archive {src} -> {res.archive} "
                               f"({files} files, {nbytes} bytes)")
            if job.dry_run:
                res.action, res.files, res.bytes_in = "would_archive", files, nbytes
            else:
                assert arch_fd is not None
                written = _build(job, root_fd, arch_fd, policy, res, hook)
                res.action, res.verified = "archived", True
        else:
            walker = Walker(policy)
            for _ in walker.walk(root_fd, job.name):
                pass
            res.kept = [asdict(k) for k in walker.kept]
        keep_note = f" (keeping {len(res.kept)} entries in place)" if res.kept else ""
        res.actions.append(f"{verb}remove source {src}{keep_note}")
        if job.dry_run:
            return res
        fault("archive_renamed")
        if written is not None:
            digest, _n = archive.digest_of(Walker(policy).walk(root_fd, job.name))
            if digest != written.digest:
                raise WalkError("the source changed after it was archived; it is kept")
        removed = remove_tree(root_fd, job.name, policy,
                              on_unlink=lambda: fault("remove_partial"))
        os.fsync(root_fd)
        res.source_removed = removed.complete
        res.errors.extend(f"{src}: {e}" for e in removed.errors)
    except (WalkError, VerifyError) as e:
        res.action = res.action if res.action in ("archived", "reused") else "failed"
        res.errors.append(f"{src}: {e}")
    except OSError as e:
        res.action = res.action if res.action in ("archived", "reused") else "failed"
        where = e.filename if isinstance(e.filename, str) and os.path.isabs(e.filename) \
            else src
        res.errors.append(f"{where}: {e.strerror or e}" if where == src
                          else f"{src}: {where}: {e.strerror or e}")
    finally:
        os.close(root_fd)
        if arch_fd is not None:
            os.close(arch_fd)
    return res


def _verify_existing(arch_fd: int, final: str, root_fd: int, name: str,
                     policy: Policy) -> int:
    afd = os.open(final, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=arch_fd)
    try:
        if not stat.S_ISREG(os.fstat(afd).st_mode):
            raise VerifyError("not a regular file")
        return archive.verify_covers(afd, name, Walker(policy).walk(root_fd, name))
    finally:
        os.close(afd)


def _build(job: Job, root_fd: int, arch_fd: int, policy: Policy, res: DirResult,
           hook: Hook | None) -> archive.Written:
    tmp = names.temp_name(job.name)
    try:
        tfd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o640, dir_fd=arch_fd)
    except OSError as e:
        raise OSError(e.errno, f"cannot create the archive: {e.strerror}",
                      os.path.join(job.archive_dir, tmp)) from e
    if os.geteuid() == 0:  # run as root: the file belongs to whoever owns the archive dir
        ast = os.fstat(arch_fd)
        os.fchown(tfd, ast.st_uid, ast.st_gid)
    renamed = False
    try:
        walker = Walker(policy, open_files=True, hook=hook)
        written = archive.write(tfd, job.name, walker.walk(root_fd, job.name), job.level,
                                job.threads)
        os.fsync(tfd)
        res.files, res.members = written.files, written.members
        res.bytes_in, res.bytes_out = written.bytes_in, written.bytes_out
        fault("archive_written")
        if hook:
            hook("archive_written", os.path.join(job.archive_dir, tmp))
        archive.verify_exact(tfd, job.name, written)
        fault("archive_verified")
        os.rename(tmp, names.archive_name(job.name), src_dir_fd=arch_fd, dst_dir_fd=arch_fd)
        renamed = True
        os.fsync(arch_fd)
        return written
    finally:
        os.close(tfd)
        if not renamed:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=arch_fd)


@dataclass
class RootScan:
    path: str
    archive_dir: str
    active: list[str] = field(default_factory=list)
    due: list[str] = field(default_factory=list)
    future: list[str] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)
    stale_temps: list[str] = field(default_factory=list)
    archive_ok: bool = True  # False: the archive dir is not writable (an error says so)


def scan_root(path: str, archive_dir: str, patterns: tuple[str, ...], keep_s: float,
              now: float, dry_run: bool, actions: list[str], errors: list[str]
              ) -> RootScan | None:
    """Phase 2 for one root: which dirs are due, active, future or not audit dirs."""
    sc = RootScan(path, archive_dir)
    try:
        root_fd = os.open(path, DIR_FLAGS)
    except OSError as e:
        errors.append(f"root {path}: cannot open: {e.strerror}")
        return None
    try:
        arch_id = _prepare_archive_dir(sc, dry_run, actions, errors)
        policy = Policy(patterns, 0, 0)
        for name in sorted(os.listdir(root_fd)):
            try:
                st = lstat_at(root_fd, name)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == arch_id:
                continue
            if policy.excluded(name):
                sc.protected.append(name)
                continue
            stamp = names.parse(name)
            if stamp is None:
                sc.ignored.append({"name": names.printable(name),
                                   "reason": "not a timestamp name"})
            elif not stat.S_ISDIR(st.st_mode):
                sc.ignored.append({"name": names.printable(name),
                                   "reason": "timestamp name but not a directory"})
            elif stamp.age(now) < 0:
                sc.future.append(name)
            elif stamp.age(now) > keep_s:
                sc.due.append(name)
            else:
                sc.active.append(name)
    finally:
        os.close(root_fd)
    return sc


def make_dirs(path: str) -> None:
    """Create ``path`` and any missing parents the way the service needs them, whoever
    runs this: mode 2770 (whatever the umask), and the owner and group of the nearest
    existing ancestor (the audit root). Run as root, a plain mkdir would leave a dir
    owned by root that the vx11 user's next timer run cannot write into."""
    missing: list[str] = []
    cur = os.path.abspath(path)
    while not os.path.lexists(cur):
        missing.append(cur)
        cur = os.path.dirname(cur)
    like = os.stat(cur)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o770)
        except FileExistsError:
            continue
        except OSError as e:
            raise OSError(e.errno, f"cannot create: {e.strerror}", d) from e
        fd = os.open(d, DIR_FLAGS)
        try:
            _own_like(fd, like)
        except OSError as e:
            raise OSError(e.errno, f"cannot set owner or mode: {e.strerror}", d) from e
        finally:
            os.close(fd)


def _own_like(fd: int, like: os.stat_result) -> None:
    """Owner and group of ``like`` (as far as this user may), mode 2770."""
    if os.geteuid() == 0:
        os.fchown(fd, like.st_uid, like.st_gid)
    elif os.fstat(fd).st_gid != like.st_gid:
        with contextlib.suppress(PermissionError):  # only to a group we are in
            os.fchown(fd, -1, like.st_gid)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode == 0o2770:
        return  # the service's case: UMask=0007 under a setgid root
    try:
        os.fchmod(fd, 0o2770)
    except PermissionError:
        # RestrictSUIDSGID= (the unit) refuses any chmod with S_ISGID: rwx for the group
        # is what matters; new entries get the group from a setgid root anyway.
        if mode & 0o770 != 0o770:
            os.fchmod(fd, 0o770)


def writable(path: str) -> str | None:
    """None if this process can create and remove entries in ``path``, else why not."""
    if os.access(path, os.W_OK | os.X_OK, effective_ids=True):
        return None
    st = os.stat(path)
    return (f"archive dir {path}: not writable by uid {os.geteuid()} (owner uid "
            f"{st.st_uid}, group gid {st.st_gid}, mode {stat.S_IMODE(st.st_mode):04o}); "
            "make it writable by the vx11 user or group (e.g. chown vx11:vx11, chmod 2770)")


def _prepare_archive_dir(sc: RootScan, dry_run: bool, actions: list[str],
                         errors: list[str]) -> tuple[int, int] | None:
    verb = "would " if dry_run else ""
    try:
        ast = os.stat(sc.archive_dir)
    except FileNotFoundError:
        actions.append(f"{verb}create archive dir {sc.archive_dir}")
        if dry_run:
            return None
        make_dirs(sc.archive_dir)
        ast = os.stat(sc.archive_dir)
    problem = writable(sc.archive_dir)
    if problem is not None:
        sc.archive_ok = False
        errors.append(problem)
    afd = os.open(sc.archive_dir, DIR_FLAGS)
    try:
        for name in sorted(os.listdir(afd)):
            if names.is_temp(name):
                sc.stale_temps.append(name)
                actions.append(f"{verb}remove stale temp {os.path.join(sc.archive_dir, name)}")
                if not dry_run:
                    try:
                        os.unlink(name, dir_fd=afd)
                    except OSError as e:
                        errors.append(f"{sc.archive_dir}/{name}: cannot remove: {e.strerror}")
        if sc.stale_temps and not dry_run:
            os.fsync(afd)
    finally:
        os.close(afd)
    return (ast.st_dev, ast.st_ino)


def aggressive_phase(archive_dir: str, patterns: tuple[str, ...], limit_s: float,
                     now: float, dry_run: bool, actions: list[str], errors: list[str],
                     spare: frozenset[str] = frozenset()) -> tuple[list[str], int]:
    """Phase 4 for one archive dir: delete archives whose name is older than the limit,
    except those named in ``spare`` (the archives of dirs due in this very run: this
    run made or re-verified them, and they may be the only copy of what it removed)."""
    verb = "would " if dry_run else ""
    deleted: list[str] = []
    freed = 0
    afd = _open_archive_dir(archive_dir)
    if afd is None:
        return deleted, freed
    policy = Policy(patterns, 0, 0)
    try:
        for name in sorted(os.listdir(afd)):
            stamp = names.parse_archive(name)
            if stamp is None or policy.excluded(name) or stamp.age(now) <= limit_s \
                    or name in spare:
                continue
            try:
                st = lstat_at(afd, name)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            actions.append(f"{verb}delete archive {os.path.join(archive_dir, name)} "
                           f"({stamp.age(now) / DAY:.0f} days old)")
            if not dry_run:
                try:
                    os.unlink(name, dir_fd=afd)
                except OSError as e:
                    errors.append(f"{archive_dir}/{name}: cannot delete: {e.strerror}")
                    continue
                fault("aggressive")
            deleted.append(name)
            freed += st.st_size
        if deleted and not dry_run:
            os.fsync(afd)
    finally:
        os.close(afd)
    return deleted, freed


def totals(sc: RootScan, patterns: tuple[str, ...], keep_s: float, now: float
           ) -> dict[str, int]:
    """Phase 5 for one root: audit dirs left by kind (active: not yet due; future; due but
    still there), archives, and their sizes."""
    out = {"active_dirs": 0, "active_bytes": 0, "future_dirs": 0, "due_dirs_left": 0,
           "dir_bytes": 0, "archive_count": 0, "archive_bytes": 0}
    try:
        root_fd = os.open(sc.path, DIR_FLAGS)
    except OSError:
        return out
    try:
        rst = os.fstat(root_fd)
        policy = Policy(patterns, rst.st_dev, rst.st_uid)
        for name in os.listdir(root_fd):
            stamp = names.parse(name)
            if stamp is None or policy.excluded(name):
                continue
            try:
                if not stat.S_ISDIR(lstat_at(root_fd, name).st_mode):
                    continue
                size = sum(e.size for e in Walker(policy).walk(root_fd, name))
            except (OSError, WalkError):
                continue
            age = stamp.age(now)
            if age < 0:
                out["future_dirs"] += 1
            elif age > keep_s:
                out["due_dirs_left"] += 1
            else:
                out["active_dirs"] += 1
                out["active_bytes"] += size
            out["dir_bytes"] += size
    finally:
        os.close(root_fd)
    afd = _open_archive_dir(sc.archive_dir)
    if afd is not None:
        try:
            for name in os.listdir(afd):
                if names.parse_archive(name) is not None:
                    with contextlib.suppress(OSError):
                        out["archive_bytes"] += lstat_at(afd, name).st_size
                        out["archive_count"] += 1
        finally:
            os.close(afd)
    return out


def run_jobs(jobs: list[Job], workers: int, hook: Hook | None = None) -> list[DirResult]:
    """Phase 3: process the due dirs, ``workers`` at a time (processes: two cores
    compress two dirs at once)."""
    if workers <= 1 or len(jobs) <= 1 or hook is not None:
        return [process_dir(j, hook) for j in jobs]
    results: list[DirResult] = []
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                             mp_context=get_context("fork")) as pool:
        futures = [pool.submit(process_dir, j) for j in jobs]
        for j, f in zip(jobs, futures, strict=True):
            try:
                results.append(f.result())
            except Exception as e:  # noqa: BLE001 - a dead worker is one dir's error
                results.append(DirResult(j.root, j.name, action="failed",
                                         errors=[f"{j.root}/{j.name}: worker failed: {e}"]))
    return results


def compress_threads(cfg: Any, jobs: int) -> int:
    """Threads per archive: ``compress_threads``, or the CPUs this process may use shared
    among the archives written at once (one big dir gets every core, as pigz would)."""
    if cfg.compress_threads:
        return int(cfg.compress_threads)
    cpus = len(os.sched_getaffinity(0))
    return max(1, cpus // max(1, min(cfg.workers, jobs)))


def rotate(cfg: Any, *, dry_run: bool = False, aggressive: bool = False,
           now: float | None = None, hook: Hook | None = None) -> dict[str, Any]:
    """Run the five phases over ``cfg`` (a RotateConfig); returns the report dict."""
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    t0 = time.monotonic()
    started = time.time()
    now = started if now is None else now
    patterns = patterns_for(cfg.hard_exclude)
    actions: list[str] = []
    errors: list[str] = []
    with run_lock(cfg.lock_file, create=not dry_run):
        scans: list[RootScan] = []
        jobs: list[Job] = []
        for r in cfg.roots:
            adir = r.archive_dir or os.path.join(r.path, "archive")
            try:
                sc = scan_root(r.path, adir, patterns, cfg.keep_days * DAY, now, dry_run,
                               actions, errors)
            except OSError as e:
                errors.append(f"root {r.path}: {e.filename or r.path}: {e.strerror or e}")
                sc = None
            if sc is None:
                continue
            scans.append(sc)
            if not sc.archive_ok:
                continue  # each due dir would fail the same way: the error names the dir
            jobs += [Job(r.path, adir, n, patterns, cfg.compression_level, dry_run, now)
                     for n in sc.due]
        fault("scan")
        threads = compress_threads(cfg, len(jobs))
        jobs = [replace(j, threads=threads) for j in jobs]
        results = run_jobs(jobs, cfg.workers, hook)
        for d in results:
            actions.extend(d.actions)
            errors.extend(d.errors)
        deleted: list[str] = []
        freed = 0
        if aggressive:
            for sc in scans:
                spare = frozenset(names.archive_name(j.name) for j in jobs
                                  if j.archive_dir == sc.archive_dir)
                try:
                    d_names, d_bytes = aggressive_phase(sc.archive_dir, patterns,
                                                        cfg.aggressive_days * DAY, now,
                                                        dry_run, actions, errors, spare)
                except OSError as e:
                    errors.append(f"archive dir {sc.archive_dir}: {e.strerror or e}")
                    continue
                deleted += d_names
                freed += d_bytes
        tot: dict[str, int] = {}
        for sc in scans:
            for k, v in totals(sc, patterns, cfg.keep_days * DAY, now).items():
                tot[k] = tot.get(k, 0) + v
        for k in ("active_dirs", "active_bytes", "future_dirs", "due_dirs_left", "dir_bytes",
                  "archive_count", "archive_bytes"):
            tot.setdefault(k, 0)
    tot["total_bytes"] = tot["dir_bytes"] + tot["archive_bytes"]
    ok_dirs = [d for d in results if d.action in ("archived", "reused")]
    kept = sum(len(d.kept) for d in results)
    esc = names.printable
    return {
        "dry_run": dry_run, "aggressive": aggressive, "now": now,
        "started_at": started, "finished_at": time.time(),
        "duration_seconds": round(time.monotonic() - t0, 6),
        "phases": {
            "protect": {"patterns": list(patterns), "kept_in_place": kept},
            "scan": {"roots": [_escaped_scan(sc) for sc in scans],
                     "timestamp_dirs": sum(len(s.active) + len(s.due) for s in scans),
                     "due": len(jobs), "active": sum(len(s.active) for s in scans),
                     "future": sum(len(s.future) for s in scans),
                     "ignored": sum(len(s.ignored) for s in scans),
                     "stale_temps": sum(len(s.stale_temps) for s in scans)},
            "archive": {"due": len(jobs),
                        "archived": sum(d.action == "archived" for d in results),
                        "reused": sum(d.action == "reused" for d in results),
                        "failed": sum(d.action == "failed" for d in results),
                        "would_archive": sum(d.action.startswith("would_") for d in results),
                        "verified": sum(d.verified for d in results),
                        "sources_removed": sum(d.source_removed for d in results),
                        "files": sum(d.files for d in results),
                        "bytes_in": sum(d.bytes_in for d in ok_dirs),
                        "bytes_out": sum(d.bytes_out for d in ok_dirs),
                        "dirs": [_escaped_dir(d) for d in results]},
            "aggressive": {"enabled": aggressive, "limit_days": cfg.aggressive_days,
                           "deleted": len(deleted), "bytes_freed": freed,
                           "names": [esc(n) for n in deleted]},
            "report": tot,
        },
        "actions": [esc(a) for a in actions],
        "errors": [esc(e) for e in errors],
    }


def _escaped_scan(sc: RootScan) -> dict[str, Any]:
    """A root's scan for the report: every name escaped (one line each, whatever it holds)."""
    d = asdict(sc)
    for k in ("path", "archive_dir"):
        d[k] = names.printable(d[k])
    for k in ("active", "due", "future", "protected", "stale_temps"):
        d[k] = [names.printable(n) for n in d[k]]
    return d


def _escaped_dir(r: DirResult) -> dict[str, Any]:
    """A dir's result for the report, names and messages escaped."""
    d = asdict(r)
    for k in ("root", "name", "archive"):
        d[k] = names.printable(d[k])
    d["kept"] = [{k: names.printable(v) for k, v in kept.items()} for kept in d["kept"]]
    d["actions"] = [names.printable(a) for a in d["actions"]]
    d["errors"] = [names.printable(e) for e in d["errors"]]
    return d
