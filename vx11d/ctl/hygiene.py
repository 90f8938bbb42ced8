"""Scorecard checks a host needs beyond the daemons' own state: leaked secrets, the audit
roots' size, the rotate timer. Each check names what it found and where; a secret's
value never appears in a result.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from typing import Any

from .. import config, textfmt, units
from ..errors import SystemdError

CHUNK = 1 << 20
ETC_DIR = "/etc/vx11"
ROTATE_TIMER = "vx11-rotate.timer"
# Compressed archives are skipped by the leak scan: a plain search cannot see into them.
SKIP_SUFFIXES = (".gz", ".xz", ".zst", ".bz2")


def _check(name: str, ok: bool, detail: str) -> dict[str, object]:
    return {"name": name, "ok": bool(ok), "detail": detail}


def _secrets(cfg: config.Config) -> list[tuple[str, bytes]]:
    """(what, value) for the API token and the remote API key that can be read."""
    out = []
    for what, path in (("API token", cfg.gateway.token_file),
                       ("remote API key", cfg.remote.api_key_file)):
        if not path:
            continue
        try:
            with open(path, "rb") as f:
                value = f.read(4096).strip()
        except OSError:
            continue
        if len(value) >= 8:
            out.append((what, value))
    return out


def _files(root: str) -> Iterator[str]:
    """Regular files under ``root``, links never followed."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    yield path
            except OSError:
                continue


def _contains(path: str, needles: list[bytes]) -> list[int]:
    """Indexes of the needles found in the file (read in chunks, with overlap)."""
    found: set[int] = set()
    keep = max(len(n) for n in needles) - 1
    tail = b""
    try:
        with open(path, "rb") as f:
            while len(found) < len(needles):
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                buf = tail + chunk
                found.update(i for i, n in enumerate(needles) if n in buf)
                tail = buf[-keep:] if keep else b""
    except OSError:
        pass
    return sorted(found)


def leak_checks(cfg: config.Config, etc_dir: str = ETC_DIR) -> list[dict[str, object]]:
    """The token and remote key in no file under the audit roots, and in no
    world-readable file under /etc/vx11."""
    secrets = _secrets(cfg)
    if not secrets:
        return [_check("secrets_not_leaked", False,
                       f"cannot read {cfg.gateway.token_file} to look for it (run as root)")]
    needles = [v for _, v in secrets]
    hits, scanned, skipped = [], 0, 0
    for root in [r.path for r in cfg.rotate.roots]:
        for path in _files(root):
            if path.endswith(SKIP_SUFFIXES):
                skipped += 1
                continue
            scanned += 1
            hits += [f"{secrets[i][0]} in {path}" for i in _contains(path, needles)]
    roots = ", ".join(r.path for r in cfg.rotate.roots) or "no audit roots configured"
    detail = ("; ".join(hits[:10]) if hits else
              f"not found in {scanned} files under {roots}"
              + (f" ({skipped} compressed archives not searched)" if skipped else ""))
    out = [_check("secrets_not_in_audit_roots", not hits, detail)]
    exposed = []
    for path in _files(etc_dir) if os.path.isdir(etc_dir) else ():
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue
        if mode & stat.S_IROTH:
            exposed += [f"{secrets[i][0]} in {path} (mode {stat.S_IMODE(mode):o})"
                        for i in _contains(path, needles)]
    out.append(_check("secrets_not_world_readable", not exposed, "; ".join(exposed) or
                      f"no world-readable file under {etc_dir} holds a secret"))
    return out


def audit_size(cfg: config.Config) -> dict[str, object]:
    """The audit roots' total size against rotate.size_budget."""
    budget = int(cfg.rotate.size_budget)
    if not cfg.rotate.roots:
        return _check("audit_size_budget", True, "no audit roots configured")
    total, per = 0, []
    for r in cfg.rotate.roots:
        size = 0
        for path in _files(r.path):
            try:
                size += os.lstat(path).st_blocks * 512
            except OSError:
                continue
        total += size
        per.append(f"{r.path} {textfmt.size(size)}")
    return _check("audit_size_budget", total <= budget,
                  f"{textfmt.size(total)} of {textfmt.size(budget)} (rotate.size_budget): "
                  + ", ".join(per))


def rotate_timer(props: dict[str, Any] | None = None) -> dict[str, object]:
    """vx11-rotate.timer enabled and scheduled (its properties read over D-Bus, as
    :mod:`vx11d.units` reads every unit; ``props`` for tests)."""
    if props is None:
        try:
            props = units.read_all([ROTATE_TIMER], load=True)[ROTATE_TIMER] or {}
        except SystemdError as e:
            return _check("rotate_timer_enabled", False, f"{ROTATE_TIMER}: {e}")
    state = str(props.get("UnitFileState") or "unknown")
    active = str(props.get("ActiveState") or "unknown")
    nxt = units.usec_time(props.get("NextElapseUSecRealtime"))
    last = units.usec_time(props.get("LastTriggerUSec"))
    return _check("rotate_timer_enabled", state == "enabled" and active == "active",
                  f"{ROTATE_TIMER} {state}, {active}; next "
                  f"{textfmt.when(nxt) if nxt else 'not scheduled'}; last triggered "
                  f"{textfmt.when(last) if last else 'never'}")


def last_rotation(last_ok: float | None, now: float | None = None,
                  max_age_h: float = 36, since: float | None = None) -> dict[str, object]:
    """The last successful (not dry) rotation within ``max_age_h`` hours.

    ``since`` is when the database was made (its first migration): a fresh install that
    has had no rotation yet is "not yet due" (ok, ``due`` false) until ``max_age_h`` after
    it, so the first scorecard after an install does not fail on a timer that has not
    fired yet."""
    now = time.time() if now is None else now
    limit = f"(limit {max_age_h:g} h)"
    if last_ok is None and since is not None and now - since < max_age_h * 3600:
        return {**_check("rotation_recent", True, f"not yet due: no rotation since the "
                         f"database was made {textfmt.when(since, now)} {limit}"),
                "due": False}
    fresh = last_ok is not None and now - last_ok < max_age_h * 3600
    detail = ("no successful rotation recorded in the rotations table" if last_ok is None
              else f"last successful rotation {textfmt.when(last_ok, now)}")
    return _check("rotation_recent", fresh, f"{detail} {limit}")


def cgroup_hierarchy(mountinfo: str = "/proc/self/mountinfo") -> dict[str, object]:
    """Which cgroup hierarchy this host runs (information: every kind passes).

    Unified (v2) is what Debian 12 and 13 boot with: systemd says ``Result=oom-kill``,
    ``MemoryHigh=`` throttles and PSI is exported. On a hybrid host (legacy v1
    controllers) an OOM kill is told by the units' memory probe and ``MemoryHigh=`` does
    nothing; docs/install.md says what differs."""
    from ..pressure import unified_root

    root = unified_root(mountinfo)
    if root is None:
        return _check("cgroup_hierarchy", True, "legacy (cgroup v1 only): OOM kills told "
                      "by the memory probe; no MemoryHigh=, no pressure metrics")
    try:
        controllers = (root / "cgroup.controllers").read_text().split()
    except OSError:
        controllers = []
    listed = " ".join(controllers) or "none"
    if str(root) == "/sys/fs/cgroup":
        return _check("cgroup_hierarchy", True, f"unified (cgroup v2) at {root}; "
                      f"controllers: {listed}")
    return _check("cgroup_hierarchy", True, f"hybrid (legacy v1 controllers, v2 at {root} "
                  f"with: {listed}): OOM kills told by the memory probe; no MemoryHigh=")
