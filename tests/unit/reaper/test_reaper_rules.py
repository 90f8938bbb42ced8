"""Rule evaluation on fixture /proc trees: never-touch list, rules, the built-in hija rule."""

from __future__ import annotations

import pytest

from vx11d.reaper import proc
from vx11d.reaper.rules import Evaluator

from .procfixture import BASE, FakeProc, cfg

RULES = """
reaper:
  protected_units: ["-.slice", "init.scope", "systemd-*", "vx11-gateway.service",
                    "keep-*.service"]
  rules:
    - {name: stale, comm: "^stale", min_age: 1h, action: terminate, grace: 3}
    - {name: orphans, comm: "^code-server$", orphan: true, action: terminate}
    - {name: alice, user: "1234", cmdline: "--worker", action: observe}
    - {name: leaky, zombie_parent: true, min_zombies: 2, action: terminate}
    - {name: cg, cgroup: "/batch\\\\.slice/", comm: ".", action: observe}
"""


def evaluator(fp: FakeProc, text: str = RULES, *, lookup=None, self_pid: int = BASE + 999,
              self_cgroup: str | None = "/system.slice/vx11-reaper.service") -> Evaluator:
    return Evaluator(cfg(text).reaper, self_pid=self_pid, self_cgroup=self_cgroup,
                     cgroups=proc.CgroupCache(fp.path), hija_lookup=lookup)


def findings(fp: FakeProc, **kw) -> dict[int, tuple[str, str, str]]:
    rep = evaluator(fp, **kw).evaluate(proc.scan(fp.path))
    return {f.proc.pid: (f.rule, f.action, f.event) for f in rep.findings}


@pytest.fixture
def fp(tmp_path):
    f = FakeProc(tmp_path / "proc", uptime=10_000)
    f.add(1, "stale-init", ppid=0, cgroup="/init.scope")
    f.add(2, "kthreadd", ppid=0, flags=proc.PF_KTHREAD, cgroup="/")
    return f


def test_rules_match_and_first_match_wins(fp):
    fp.add(BASE + 1, "stale-worker", start=100)  # age 9900 s > 1h
    fp.add(BASE + 2, "stale-young", start=9000)  # 1000 s: too young for "stale"
    fp.add(BASE + 3, "code-server", ppid=1)
    fp.add(BASE + 4, "code-server", ppid=BASE + 3)  # not an orphan
    fp.add(BASE + 5, "py", uid=1234, cmdline="python3 app.py --worker 3")
    fp.add(BASE + 6, "py", uid=1234, cmdline="python3 app.py")
    fp.add(BASE + 7, "job", cgroup="/batch.slice/job-1.scope")
    got = findings(fp)
    assert got == {
        BASE + 1: ("stale", "terminate", "process_terminated"),
        BASE + 3: ("orphans", "terminate", "orphan_terminated"),
        BASE + 5: ("alice", "observe", "process_observed"),
        BASE + 7: ("cg", "observe", "process_observed"),
    }


def test_orphan_of_a_subreaper_user_manager(fp):
    fp.add(BASE + 1, "systemd", ppid=1, cgroup="/user.slice/user-1000.slice/user@1000.service")
    fp.add(BASE + 2, "code-server", ppid=BASE + 1, cgroup="/user.slice/user-1000.slice/x.scope")
    assert findings(fp)[BASE + 2][0] == "orphans"


def test_never_pid1_kernel_threads_itself_its_unit_protected_or_unnamed(fp):
    text = """
reaper:
  protected_units: ["-.slice", "init.scope", "systemd-*", "keep-*.service"]
  rules:
    - {name: all, comm: ".", action: terminate}
"""
    fp.add(BASE + 10, "kworker/0:0", ppid=2, flags=proc.PF_KTHREAD, cgroup="/")
    fp.add(BASE + 11, "odd-kthread", ppid=2, flags=0, cgroup="/system.slice/x.service")
    fp.add(BASE + 12, "me", cgroup="/system.slice/vx11-reaper.service")  # our pid
    fp.add(BASE + 13, "my-helper", cgroup="/system.slice/vx11-reaper.service")  # our unit
    fp.add(BASE + 14, "journald", cgroup="/system.slice/systemd-journald.service")
    fp.add(BASE + 15, "kept", cgroup="/system.slice/keep-me.service")
    fp.add(BASE + 16, "root-cg", cgroup="/")
    fp.add(BASE + 17, "victim", cgroup="/system.slice/junk.service")
    got = findings(fp, text=text, self_pid=BASE + 12)
    assert list(got) == [BASE + 17]
    # and with no rule at all, nothing is named
    assert findings(fp, text="reaper: {protected_units: []}", self_pid=BASE + 12) == {}


def test_zombie_parent_rule_needs_min_zombies_and_nudges_first(fp):
    fp.add(BASE + 1, "leaky")
    fp.add(BASE + 2, "z", ppid=BASE + 1, state="Z")
    fp.add(BASE + 3, "leakier")
    fp.add(BASE + 4, "z", ppid=BASE + 3, state="Z")
    fp.add(BASE + 5, "z", ppid=BASE + 3, state="Z")
    got = findings(fp)
    assert got == {BASE + 3: ("leaky", "nudge", "zombie_parent_nudged")}
    rep = evaluator(fp).evaluate(proc.scan(fp.path))
    assert rep.zombies_by_rule["leaky"] == 2 and rep.zombies_by_rule["none"] == 1
    assert rep.top_zombie_parent() == (BASE + 3, 2, "leakier")


def test_zombie_parent_observe_rule_reports_zombies_observed(fp):
    text = "reaper: {rules: [{name: zp, zombie_parent: true}]}"
    fp.add(BASE + 1, "leaky", cgroup="/a.slice/b.service")
    fp.add(BASE + 2, "z", ppid=BASE + 1, state="Z")
    assert findings(fp, text=text) == {BASE + 1: ("zp", "observe", "zombies_observed")}


def test_a_process_younger_than_two_ticks_is_only_observed(fp):
    fp.set_uptime(5000.0)
    fp.add(BASE + 1, "stale-new", start=5000.0 - 0.01)
    text = "reaper: {rules: [{name: s, comm: '^stale-new$', action: terminate}]}"
    assert findings(fp, text=text) == {BASE + 1: ("s", "observe", "process_observed")}
    fp.set_uptime(5000.05)
    assert findings(fp, text=text)[BASE + 1][1] == "terminate"


HIJA_CG = "/vx11.slice/vx11-hijas.slice/vx11-hija-{}.service"


def test_hija_rule_terminates_ended_or_unknown_hijas_and_spares_live_ones(fp):
    for i, hid in enumerate(["live1", "ended1", "norow1", "start1"], start=1):
        fp.add(BASE + i, "worker", cgroup=HIJA_CG.format(hid))
    fp.add(BASE + 9, "worker", cgroup="/vx11.slice/vx11-hija-fake.service")  # not in the slice
    # a nested container's hija, as its host sees it: not this host's hija
    fp.add(BASE + 8, "worker", cgroup="/payload" + HIJA_CG.format("nested1"))
    rows = {"vx11-hija-live1.service": ("live1", "running"),
            "vx11-hija-ended1.service": ("ended1", "expired"),
            "vx11-hija-start1.service": ("start1", "starting")}
    asked = []

    def lookup(units):
        asked.append(units)
        return {u: rows[u] for u in units if u in rows}

    ev = evaluator(fp, lookup=lookup)
    rep = ev.evaluate(proc.scan(fp.path))
    got = {f.proc.pid: (f.rule, f.action, f.event, f.hija_id, f.hija_row) for f in rep.findings}
    assert got == {
        BASE + 2: ("hija", "terminate", "hija_terminated", "ended1", True),
        BASE + 3: ("hija", "terminate", "hija_terminated", "norow1", False),
    }
    assert len(asked) == 1 and len(asked[0]) == 4


def test_hija_rule_decides_nothing_when_the_db_cannot_answer(fp):
    fp.add(BASE + 1, "worker", cgroup=HIJA_CG.format("x"))

    def broken(units):
        raise RuntimeError("database is locked")

    rep = evaluator(fp, lookup=broken).evaluate(proc.scan(fp.path))
    assert rep.findings == [] and rep.hija_lookup_failed
    rep = evaluator(fp, lookup=None).evaluate(proc.scan(fp.path))
    assert rep.findings == [] and rep.hija_lookup_failed


def test_hija_enforce_off_only_observes(fp):
    fp.add(BASE + 1, "worker", cgroup=HIJA_CG.format("x"))
    got = findings(fp, text="reaper: {hija_enforce: false}", lookup=lambda u: {})
    assert got == {BASE + 1: ("hija", "observe", "hija_leftover_observed")}


def test_protected_units_win_over_the_hija_rule(fp):
    fp.add(BASE + 1, "worker", cgroup=HIJA_CG.format("x"))
    got = findings(fp, text="reaper: {protected_units: ['vx11-hija-*']}", lookup=lambda u: {})
    assert got == {}


def test_own_cgroup_protection_only_when_running_in_a_unit(fp):
    fp.add(BASE + 1, "stale-x", start=1, cgroup="/")
    text = "reaper: {protected_units: [], rules: [{name: s, comm: '^stale-x$'}]}"
    # Not under systemd (cgroup "/"): the root cgroup is not "our unit".
    assert BASE + 1 in findings(fp, text=text, self_cgroup="/")


def test_still_allowed_rechecks_a_fresh_cgroup(fp):
    fp.add(BASE + 1, "job", cgroup="/batch.slice/job-1.scope")
    ev = evaluator(fp)
    (f,) = ev.evaluate(proc.scan(fp.path)).findings
    assert ev.still_allowed(f, "/batch.slice/job-1.scope")
    assert not ev.still_allowed(f, "/system.slice/systemd-logind.service")
    assert not ev.still_allowed(f, "/other.slice/job-1.scope")
    assert not ev.still_allowed(f, None)


def test_incremental_an_unchanged_process_is_not_matched_again_a_changed_one_is(fp, monkeypatch):
    """Issue 25: only processes new or changed since the last scan meet the rules; a full
    re-evaluation every ``full_every`` evaluations; what a rule names is judged each time."""
    fp.add(BASE + 1, "idle-a")
    fp.add(BASE + 2, "idle-b")
    fp.add(BASE + 3, "stale-young", start=9000)  # 1000 s old: "stale" wants 1h
    fp.add(BASE + 4, "code-server", ppid=1)  # a finding (orphans)
    ev = Evaluator(cfg(RULES).reaper, self_pid=BASE + 999, self_cgroup=None,
                   cgroups=proc.CgroupCache(fp.path), full_every=5)
    matched: list[int] = []
    real = ev._match_rules
    monkeypatch.setattr(ev, "_match_rules", lambda p, *a: matched.append(p.pid) or real(p, *a))

    first = ev.evaluate(proc.scan(fp.path))
    assert sorted(matched) == [BASE + 1, BASE + 2, BASE + 3, BASE + 4]
    assert [f.proc.pid for f in first.findings] == [BASE + 4]

    matched.clear()
    again = ev.evaluate(proc.scan(fp.path))  # a new snapshot, nothing changed
    assert matched == [BASE + 4], "only the process a rule names is matched again"
    assert [f.proc.pid for f in again.findings] == [BASE + 4]
    assert again.protected == first.protected

    matched.clear()
    fp.add(BASE + 2, "stale-b", start=100)  # exec'd into something else (new name)
    fp.add(BASE + 5, "newcomer")
    rep = ev.evaluate(proc.scan(fp.path))
    assert sorted(matched) == [BASE + 2, BASE + 4, BASE + 5]
    assert {f.proc.pid: f.rule for f in rep.findings} == {BASE + 2: "stale", BASE + 4: "orphans"}

    matched.clear()
    fp.set_uptime(9000 + 3600 + 1)  # "stale-young" crosses the rule's min_age
    rep = ev.evaluate(proc.scan(fp.path))
    assert BASE + 3 in matched and BASE + 1 not in matched
    assert {f.proc.pid: f.rule for f in rep.findings}[BASE + 3] == "stale"

    matched.clear()
    ev.evaluate(proc.scan(fp.path))  # the 5th
    assert BASE + 1 not in matched
    ev.evaluate(proc.scan(fp.path))  # the 6th: full_every after the first, all again
    assert BASE + 1 in matched
