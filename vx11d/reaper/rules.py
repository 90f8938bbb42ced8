"""Which processes a policy names, and what it says to do: pure evaluation of one snapshot.

Order of decisions for each process:

1. never touched: PID 1, kernel threads, the reaper itself, anything in the reaper's own
   unit, anything in a unit or slice matching ``protected_units`` or
   ``extra_protected_units``, any process whose name matches ``protected_comms`` or
   ``extra_protected_comms``, zombies (they cannot be signalled; their parents are what
   the policy acts on);
2. the built-in hija rule: a process in ``vx11-hijas.slice`` under
   ``vx11-hija-<id>.service`` whose ``spawner_hijas`` row has ended (or does not exist);
3. the configured rules, first match wins;
4. anything no rule names is left alone.

Incremental: a verdict of "protected" or "no rule matches" is remembered per process
with what it was decided from (start time, parent, state, name, uid, flags, zombie
children, the parent's name) and reused while none of that changed and no ``min_age``
was crossed; it is decided again from scratch every ``full_every`` evaluations. A
process some rule names is matched again at every evaluation, so a remembered verdict
can only delay a new finding (a process that rewrote its command line or changed
uids without anything in ``/proc/PID/stat`` changing), never cause a signal.

A rule's ``user`` is matched against the process's **effective** uid as its own
credentials say (``/proc/PID/status`` ``Uid:``, second field; what ``ps -o uid`` shows),
never the owner of ``/proc/PID`` (root for a non-dumpable or setuid-changed process).
The kill path checks it again after ``pidfd_open``, like the start time and the cgroup.
"""

from __future__ import annotations

import fnmatch
import pwd
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..config import ReaperConfig, ReaperRule
from ..hijas import LIVE
from .proc import HZ, PF_KTHREAD, CgroupCache, Proc, Snapshot, read_cmdline, read_uids, unit_names

HIJA_RULE = "hija"
HIJA_SLICE = "vx11-hijas.slice"
_HIJA_UNIT = re.compile(r"^vx11-hija-(.+)\.service$")
SUBREAPER_COMMS = ("systemd",)  # user managers are subreapers (PR_SET_CHILD_SUBREAPER)
MIN_AGE_TICKS = 2  # see Evaluator._old_enough: the proof that a reused PID is never hit
_NEVER = float("inf")


def _same(a: Proc, b: Proc) -> bool:
    """Whether two reads of a process agree on what a verdict is decided from."""
    return (a.start == b.start and a.ppid == b.ppid and a.state == b.state
            and a.comm == b.comm and a.uid == b.uid and a.flags == b.flags)


class _Verdict:
    """A process nothing names (or that is protected), and what that was decided from:
    the Proc read then (immutable), its zombie children, its parent's Proc."""

    __slots__ = ("nzombies", "parent", "proc", "protected", "recheck")

    def __init__(self, protected: bool, recheck: float, nzombies: int, proc: Proc,
                 parent: Proc | None) -> None:
        self.protected, self.recheck, self.nzombies = protected, recheck, nzombies
        self.proc, self.parent = proc, parent

# hija unit names -> (hija id, status or None when no row); raises on DB trouble.
HijaLookup = Callable[[list[str]], dict[str, tuple[str, str | None]]]


@dataclass
class Finding:
    """A process a rule names, and what the rule says to do with it."""

    proc: Proc
    rule: str
    action: str  # observe | terminate | nudge
    event: str
    grace: float = 0.0
    cgroup: str | None = None
    hija_id: str | None = None  # the hija's id (from its unit name)
    hija_row: bool = False  # whether spawner_hijas has a row for it
    zombies: int = 0
    orphan: bool = False
    uid: int | None = None  # effective uid from /proc/PID/status (None: unreadable)


@dataclass
class Report:
    """The evaluation of one snapshot."""

    snapshot: Snapshot
    findings: list[Finding] = field(default_factory=list)
    zombies_by_rule: dict[str, int] = field(default_factory=dict)
    orphans_by_rule: dict[str, int] = field(default_factory=dict)
    protected: int = 0
    hija_lookup_failed: bool = False

    def top_zombie_parent(self) -> tuple[int, int, str] | None:
        """(pid, zombie count, comm) of the parent with the most zombies."""
        zp = self.snapshot.zombies_by_parent
        if not zp:
            return None
        pid = max(zp, key=lambda p: (len(zp[p]), -p))
        parent = self.snapshot.procs.get(pid)
        return pid, len(zp[pid]), parent.comm if parent else "?"


class CompiledRule:
    """A ReaperRule with its regexes compiled and its user resolved to a uid."""

    def __init__(self, rule: ReaperRule):
        self.rule = rule
        self.name = rule.name
        self.comm = re.compile(rule.comm) if rule.comm else None
        self.cmdline = re.compile(rule.cmdline) if rule.cmdline else None
        self.cgroup = re.compile(rule.cgroup) if rule.cgroup else None
        self.uid: int | None = None
        if rule.user:
            if rule.user.isdigit():
                self.uid = int(rule.user)
            else:
                try:
                    self.uid = pwd.getpwnam(rule.user).pw_uid
                except KeyError:
                    self.uid = -2  # an unknown user matches nothing


def is_orphan(p: Proc, snap: Snapshot) -> bool:
    """Re-parented to PID 1 or to a subreaper (a user manager)."""
    if p.ppid == 1:
        return True
    parent = snap.procs.get(p.ppid)
    return parent is not None and parent.comm in SUBREAPER_COMMS


class Evaluator:
    """Applies the never-touch list, the hija rule and the configured rules to a snapshot."""

    def __init__(self, cfg: ReaperConfig, *, self_pid: int, self_cgroup: str | None,
                 cgroups: CgroupCache, hija_lookup: HijaLookup | None = None,
                 full_every: int = 1):
        self.cfg = cfg
        self.full_every = max(1, full_every)  # 1: every evaluation decides everything
        self.evaluations = 0
        self.matched = 0  # processes matched against the rules by the last evaluation
        self._memo: dict[int, _Verdict] = {}  # pid -> its remembered verdict
        self.rules = [CompiledRule(r) for r in cfg.rules]
        self.self_pid = self_pid
        # Our own unit is protected only when we run in one (a .service or .scope leaf).
        leaf = (self_cgroup or "").rstrip("/").rsplit("/", 1)[-1]
        self.self_cgroup = self_cgroup if leaf.endswith((".service", ".scope")) else None
        self.cgroups = cgroups
        self.hija_lookup = hija_lookup
        self.proc_path = cgroups.proc
        self._cg_protected: dict[str, bool] = {}
        self.unit_globs = (*cfg.protected_units, *cfg.extra_protected_units)
        self.comm_globs = (*cfg.protected_comms, *cfg.extra_protected_comms)
        self._comm_protected: dict[str, bool] = {}

    def rule_names(self) -> list[str]:
        return [HIJA_RULE, *(r.name for r in self.rules)]

    def protected(self, p: Proc, cgroup: str | None, snap: Snapshot | None = None) -> bool:
        """True for what the reaper never touches, whatever the rules say."""
        kthread = snap.is_kthread(p) if snap is not None else bool(p.flags & PF_KTHREAD)
        if p.pid in (1, self.self_pid) or kthread or p.ppid == 0:
            return True
        return self.protected_comm(p.comm) or self.protected_cgroup(cgroup)

    def protected_comm(self, comm: str) -> bool:
        """A process name matching ``protected_comms`` or ``extra_protected_comms``."""
        hit = self._comm_protected.get(comm)
        if hit is None:
            if len(self._comm_protected) > 50_000:
                self._comm_protected.clear()
            hit = self._comm_protected[comm] = any(
                fnmatch.fnmatchcase(comm, g) for g in self.comm_globs)
        return hit

    def protected_cgroup(self, cgroup: str | None) -> bool:
        """The reaper's own unit, and units/slices matching ``protected_units``."""
        if cgroup is None:
            return True  # gone, or unreadable: not ours to judge
        hit = self._cg_protected.get(cgroup)
        if hit is None:
            if len(self._cg_protected) > 50_000:
                self._cg_protected.clear()
            hit = self._cg_protected[cgroup] = self._protected_cgroup(cgroup)
        return hit

    def _protected_cgroup(self, cgroup: str) -> bool:
        if self.self_cgroup and (cgroup == self.self_cgroup
                                 or cgroup.startswith(self.self_cgroup + "/")):
            return True
        names = unit_names(cgroup)
        return any(fnmatch.fnmatchcase(n, g) for n in names for g in self.unit_globs)

    def still_allowed(self, finding: Finding, cgroup: str | None) -> bool:
        """The kill path's re-check, after ``pidfd_open``, against a freshly read cgroup
        and the process's current credentials."""
        if self.protected(finding.proc, cgroup):
            return False
        if finding.rule == HIJA_RULE:
            return cgroup is not None and _hija_unit(cgroup) is not None
        for r in self.rules:
            if r.name != finding.rule:
                continue
            if r.cgroup is not None and not (cgroup is not None and r.cgroup.search(cgroup)):
                return False
            if r.uid is not None:
                uids = read_uids(self.proc_path, finding.proc.pid)
                if uids is None or uids[1] != r.uid:
                    return False
            return True
        return False  # the rule is gone (a reload): nothing to act on

    @staticmethod
    def _old_enough(p: Proc, snap: Snapshot) -> bool:
        """Only processes at least two ticks older than the scan's clock may be signalled.

        The start time (in ticks) is what the kill path compares after ``pidfd_open``. A
        process that takes over the PID starts after the scan read the original, so its
        start tick is then >= now_ticks > original start + 1: it can never compare equal.
        """
        return snap.now_ticks - p.start >= MIN_AGE_TICKS

    def evaluate(self, snap: Snapshot) -> Report:
        """Findings for ``snap`` (no side effects beyond reading /proc)."""
        rep = Report(snap)
        hija_candidates: list[tuple[Proc, str, str]] = []
        zp = snap.zombies_by_parent
        procs = snap.procs
        now = snap.now_ticks
        self.evaluations += 1
        if (self.evaluations - 1) % self.full_every == 0:
            self._memo.clear()
        memo = self._memo
        for gone in memo.keys() - procs.keys():
            del memo[gone]
        self.matched = 0
        for p in procs.values():
            pid = p.pid
            m = memo.get(pid)
            if m is not None:
                # the verdict stands while what it was decided from is the same: the
                # very objects (a tracked table keeps a process's Proc until it re-reads
                # it), else equal values; cheapest tests first
                parent = procs.get(p.ppid)
                zs = zp.get(pid)
                mp = m.parent
                if now < m.recheck and (len(zs) if zs else 0) == m.nzombies \
                        and (m.proc is p or _same(m.proc, p)) \
                        and (mp is parent or (mp is not None and parent is not None
                                              and mp.comm == parent.comm)):
                    if m.protected:
                        rep.protected += 1
                    continue
                del memo[pid]
            if p.state == "Z" or pid == 1 or pid == self.self_pid or snap.is_kthread(p):
                continue
            zs = zp.get(pid)
            nzombies = len(zs) if zs else 0
            parent = procs.get(p.ppid)
            cg = self.cgroups.get(p)
            if self.protected(p, cg, snap):
                rep.protected += 1
                memo[pid] = _Verdict(True, _NEVER, nzombies, p, parent)
                continue
            assert cg is not None
            unit = _hija_unit(cg)
            if unit is not None:
                hija_candidates.append((p, cg, unit))  # the DB row decides, every time
                continue
            self.matched += 1
            f = self._match_rules(p, cg, snap, nzombies)
            if f is not None:
                rep.findings.append(f)  # judged again at every evaluation
            else:
                memo[pid] = _Verdict(False, self._recheck_at(p, snap), nzombies, p, parent)
        if hija_candidates:
            self._hija_findings(hija_candidates, snap, rep)
        self._count(rep)
        return rep

    def _recheck_at(self, p: Proc, snap: Snapshot) -> float:
        """When the process's age next crosses a rule's ``min_age`` (boot clock ticks)."""
        at = _NEVER
        for r in self.rules:
            t = p.start + r.rule.min_age * HZ
            if snap.now_ticks < t < at:
                at = t
        return at

    def _match_rules(self, p: Proc, cg: str, snap: Snapshot, nzombies: int
                     ) -> Finding | None:
        age = snap.age(p)
        orphan: bool | None = None
        uids: tuple[int, int, int, int] | None = None
        for r in self.rules:
            rule = r.rule
            if r.comm is not None and not r.comm.search(p.comm):
                continue
            if age < rule.min_age:
                continue
            if rule.zombie_parent and nzombies < rule.min_zombies:
                continue
            if rule.orphan:
                if orphan is None:
                    orphan = is_orphan(p, snap)
                if not orphan:
                    continue
            if r.cgroup is not None and not r.cgroup.search(cg):
                continue
            if r.uid is not None:
                if uids is None:
                    uids = read_uids(self.proc_path, p.pid)
                if uids is None or uids[1] != r.uid:
                    continue
            if r.cmdline is not None:
                cmd = read_cmdline(self.proc_path, p.pid)
                if cmd is None or not r.cmdline.search(cmd):
                    continue
            if orphan is None:
                orphan = is_orphan(p, snap)
            f = self._finding(p, r, cg, snap, nzombies, orphan)
            if uids is None:
                uids = read_uids(self.proc_path, p.pid)
            f.uid = uids[1] if uids is not None else None
            return f
        return None

    def _finding(self, p: Proc, r: CompiledRule, cg: str, snap: Snapshot, nzombies: int,
                 orphan: bool) -> Finding:
        rule = r.rule
        terminate = rule.action == "terminate" and self._old_enough(p, snap)
        if rule.zombie_parent:
            event = "zombie_parent_nudged" if terminate else "zombies_observed"
            action = "nudge" if terminate else "observe"
        elif rule.orphan:
            event = "orphan_terminated" if terminate else "orphan_observed"
            action = "terminate" if terminate else "observe"
        else:
            event = "process_terminated" if terminate else "process_observed"
            action = "terminate" if terminate else "observe"
        return Finding(p, r.name, action, event, grace=rule.grace, cgroup=cg,
                       zombies=nzombies, orphan=orphan)

    def _hija_findings(self, cands: list[tuple[Proc, str, str]], snap: Snapshot,
                       rep: Report) -> None:
        if self.hija_lookup is None:
            rep.hija_lookup_failed = True
            return
        units = sorted({u for _, _, u in cands})
        try:
            rows = self.hija_lookup(units)
        except Exception:  # noqa: BLE001 - DB trouble: decide nothing about hijas this scan
            rep.hija_lookup_failed = True
            return
        for p, cg, unit in cands:
            row = rows.get(unit)
            if row is not None and row[1] in LIVE:
                continue
            match = _HIJA_UNIT.match(unit)
            terminate = self.cfg.hija_enforce and self._old_enough(p, snap)
            uids = read_uids(self.proc_path, p.pid)
            rep.findings.append(Finding(
                p, HIJA_RULE, "terminate" if terminate else "observe",
                "hija_terminated" if terminate else "hija_leftover_observed",
                grace=self.cfg.hija_grace, cgroup=cg,
                hija_id=row[0] if row else (match.group(1) if match else None),
                hija_row=row is not None,
                zombies=len(snap.zombies_by_parent.get(p.pid, ())),
                orphan=is_orphan(p, snap), uid=uids[1] if uids is not None else None))

    def _count(self, rep: Report) -> None:
        snap = rep.snapshot
        by_pid = {f.proc.pid: f for f in rep.findings}
        for name in ["none", *self.rule_names()]:
            rep.zombies_by_rule.setdefault(name, 0)
            rep.orphans_by_rule.setdefault(name, 0)
        for ppid, zs in snap.zombies_by_parent.items():
            f = by_pid.get(ppid)
            rule = f.rule if f else "none"
            rep.zombies_by_rule[rule] = rep.zombies_by_rule.get(rule, 0) + len(zs)
        for f in rep.findings:
            if f.orphan:
                rep.orphans_by_rule[f.rule] = rep.orphans_by_rule.get(f.rule, 0) + 1


def _hija_unit(cgroup: str) -> str | None:
    """The ``vx11-hija-<id>.service`` a cgroup path lies in: exactly
    ``/vx11.slice/vx11-hijas.slice/vx11-hija-<id>.service[/...]`` from the root, so the
    hijas of a nested container (``/payload/vx11.slice/...`` seen from its host) are
    never taken for this host's."""
    if HIJA_SLICE not in cgroup:
        return None
    names = unit_names(cgroup)
    if len(names) >= 3 and names[0] == "vx11.slice" and names[1] == HIJA_SLICE \
            and _HIJA_UNIT.match(names[2]):
        return names[2]
    return None


def hija_units(procs: Iterable[tuple[Proc, str]]) -> list[str]:
    """Hija unit names among (process, cgroup) pairs."""
    return sorted({u for _, cg in procs if (u := _hija_unit(cg))})
