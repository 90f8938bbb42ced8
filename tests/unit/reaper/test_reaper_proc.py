"""The /proc scanner on fixture trees: hostile comm values, vanishing and garbled entries."""

from __future__ import annotations

from vx11d.reaper import proc

from .procfixture import BASE, HZ, FakeProc


def test_comm_with_spaces_parens_and_newlines_is_split_at_the_last_paren(tmp_path):
    fp = FakeProc(tmp_path / "proc")
    nasty = "a) (b c)\n) S 1 2"
    fp.add(BASE + 1, nasty, ppid=BASE, state="R", start=50)
    snap = proc.scan(fp.path)
    p = snap.procs[BASE + 1]
    assert p.comm == nasty
    assert (p.ppid, p.state, p.start) == (BASE, "R", 50 * HZ)


def test_garbled_vanished_and_foreign_entries_are_skipped(tmp_path):
    fp = FakeProc(tmp_path / "proc")
    fp.add(BASE + 1, "ok")
    fp.add(BASE + 2, "x", raw_stat=b"4200002 no parens here\n")
    fp.add(BASE + 3, "x", raw_stat=b"4200003 (short) S 1\n")
    fp.add(BASE + 4, "x", raw_stat=b"")
    (tmp_path / "proc" / str(BASE + 5)).mkdir()  # vanished: directory without stat
    (tmp_path / "proc" / "123abc").mkdir()
    snap = proc.scan(fp.path)
    assert list(snap.procs) == [BASE + 1]
    assert snap.malformed == 3


def test_uid_is_the_owner_of_the_stat_file_as_ps_reports_it(tmp_path):
    fp = FakeProc(tmp_path / "proc")
    fp.add(BASE + 1, "alice", uid=1234)
    assert proc.scan(fp.path).procs[BASE + 1].uid == 1234


def test_zombies_are_attributed_to_their_parent(tmp_path):
    fp = FakeProc(tmp_path / "proc")
    fp.add(BASE + 1, "leaky")
    for i in range(2, 5):
        fp.add(BASE + i, "child", ppid=BASE + 1, state="Z")
    fp.add(BASE + 9, "other", state="Z", ppid=1)
    snap = proc.scan(fp.path)
    assert sorted(snap.zombies_by_parent[BASE + 1]) == [BASE + 2, BASE + 3, BASE + 4]
    assert snap.zombies_by_parent[1] == [BASE + 9]


def test_kernel_threads_by_flag_by_kthreadd_parent_and_kthreadd_itself(tmp_path):
    fp = FakeProc(tmp_path / "proc")
    fp.add(2, "kthreadd", ppid=0, flags=proc.PF_KTHREAD)
    fp.add(BASE + 1, "kworker/0:1", ppid=2, flags=proc.PF_KTHREAD)
    fp.add(BASE + 2, "odd", ppid=2, flags=0)
    fp.add(BASE + 3, "flagged", ppid=1, flags=proc.PF_KTHREAD | 0x40)
    fp.add(BASE + 4, "user", ppid=1, flags=0x400000)
    snap = proc.scan(fp.path)
    assert [p.is_kthread for p in (snap.procs[k] for k in (2, BASE + 1, BASE + 2, BASE + 3,
                                                           BASE + 4))] == [True] * 4 + [False]


def test_age_comes_from_the_boot_clock_in_proc_uptime(tmp_path):
    fp = FakeProc(tmp_path / "proc", uptime=1000)
    fp.add(BASE + 1, "x", start=400)
    snap = proc.scan(fp.path)
    assert snap.age(snap.procs[BASE + 1]) == 600


def test_cgroup_paths_unified_hybrid_and_legacy():
    assert proc.parse_cgroup("0::/system.slice/a.service\n") == "/system.slice/a.service"
    hybrid = "12:pids:/x\n1:name=systemd:/vx11.slice/b.service\n0::/vx11.slice/b.service\n"
    assert proc.parse_cgroup(hybrid) == "/vx11.slice/b.service"
    legacy = "4:memory:/foo\n1:name=systemd:/user.slice/c.scope\n"
    assert proc.parse_cgroup(legacy) == "/user.slice/c.scope"
    assert proc.parse_cgroup("garbage\n") == "/"
    assert proc.unit_names("/") == ["-.slice"]
    assert proc.unit_names("/vx11.slice/vx11-hijas.slice/vx11-hija-a1.service") == [
        "vx11.slice", "vx11-hijas.slice", "vx11-hija-a1.service"]


def test_lazy_readers_return_none_for_vanished_processes(tmp_path):
    fp = FakeProc(tmp_path / "proc")
    fp.add(BASE + 1, "x", cmdline="python3 -m thing --flag", cgroup="/a.slice/b.service")
    assert proc.read_cmdline(fp.path, BASE + 1) == "python3 -m thing --flag"
    assert proc.read_cgroup(fp.path, BASE + 1) == "/a.slice/b.service"
    assert proc.read_cmdline(fp.path, BASE + 2) is None
    assert proc.read_cgroup(fp.path, BASE + 2) is None
    assert proc.read_proc(fp.path, BASE + 2) is None


def test_cgroup_cache_forgets_processes_that_are_gone_or_reused(tmp_path):
    fp = FakeProc(tmp_path / "proc")
    fp.add(BASE + 1, "x", cgroup="/one.slice/a.service")
    cache = proc.CgroupCache(fp.path)
    snap = proc.scan(fp.path)
    assert cache.get(snap.procs[BASE + 1]) == "/one.slice/a.service"
    fp.add(BASE + 1, "x", start=200, cgroup="/two.slice/b.service")  # PID reused
    snap = proc.scan(fp.path)
    cache.prune(snap)
    assert cache.get(snap.procs[BASE + 1]) == "/two.slice/b.service"
