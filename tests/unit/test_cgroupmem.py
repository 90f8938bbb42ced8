"""The memory report a unit's ExecStopPost= probe writes: v1 and v2 cgroup files."""

from __future__ import annotations

from vx11d import cgroupmem


def _tree(tmp_path, files: dict[str, str], proc: str):
    for rel, text in files.items():
        p = tmp_path / "sys" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (tmp_path / "cgroup").write_text(proc)
    return str(tmp_path / "cgroup"), str(tmp_path / "sys")


def test_v1_counters_of_an_oom_killed_unit(tmp_path):
    d = "memory/system.slice/vx11-hermes.service"
    proc, root = _tree(tmp_path, {
        f"{d}/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        f"{d}/memory.max_usage_in_bytes": "33554432\n",
        f"{d}/memory.limit_in_bytes": "33554432\n"},
        "9:name=systemd:/system.slice/vx11-hermes.service\n"
        "4:memory:/system.slice/vx11-hermes.service\n0::/\n")
    rep = cgroupmem.parse(cgroupmem.measure(proc, root))
    assert (rep.oom, rep.oom_kills, rep.peak, rep.limit) == (True, 1, 33554432, 33554432)


def test_v2_counters_and_no_limit(tmp_path):
    d = "system.slice/x.service"
    proc, root = _tree(tmp_path, {
        f"{d}/memory.events": "low 0\nhigh 3\nmax 9\noom 1\noom_kill 0\n",
        f"{d}/memory.peak": "1048576\n", f"{d}/memory.max": "max\n"},
        f"0::/{d}\n")
    rep = cgroupmem.parse(cgroupmem.measure(proc, root))
    assert (rep.oom, rep.oom_kills, rep.peak, rep.limit) == (False, 0, 1048576, None)


def test_reports_are_written_whole_and_taken_once(tmp_path):
    cgroupmem.write_report(str(tmp_path / "run"), "last-end",
                           "oom_kill 2\npeak 5\nlimit 9223372036854771712\n")
    rep = cgroupmem.take(str(tmp_path / "run"), "last-end")
    assert (rep.oom_kills, rep.peak, rep.limit) == (2, 5, None)
    assert cgroupmem.take(str(tmp_path / "run"), "last-end") is None
    assert [p.name for p in (tmp_path / "run").iterdir()] == []


def test_a_memory_cgroup_not_the_units_own_gives_no_figures(tmp_path):
    """Regression (issue 21, item 5): with the v1 memory controller not delegated the
    probe read the parent's memory.max_usage_in_bytes (1.3 GB for `sleep infinity`
    under a 512 MiB limit). A figure not measured for the unit itself is absent."""
    proc, root = _tree(tmp_path, {
        "memory/memory.oom_control": "oom_kill 4\n",
        "memory/memory.max_usage_in_bytes": "1306693632\n",
        "memory/memory.limit_in_bytes": "9223372036854771712\n"},
        "9:name=systemd:/vx11-hijas.slice/vx11-hija-abc.service\n"
        "4:memory:/\n0::/vx11-hijas.slice/vx11-hija-abc.service\n")
    rep = cgroupmem.parse(cgroupmem.measure(proc, root))
    assert (rep.oom_kills, rep.peak, rep.limit) == (None, None, None)
