"""cgroup delegation on the host's real cgroup hierarchies: made, joined, cleaned up."""

from __future__ import annotations

import os
import subprocess

import pytest

from vx11d.ctl import cgroups

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making cgroups needs root")


def _name(tag: str) -> str:
    return f"vx11it-{tag}-{os.getpid()}"


def test_wrap_and_preexec_put_the_child_in_every_delegated_cgroup():
    d = cgroups.delegate(_name("join"))
    try:
        assert set(d.dirs) >= set(cgroups.CONTROLLERS)
        assert d.nspawn_args()[0] == "--tmpfs=/sys/fs/cgroup"
        assert {a.split(":")[-1] for a in d.nspawn_args()[1:]} == {
            f"/sys/fs/cgroup/{c}" for c in cgroups.CONTROLLERS}
        for run in (lambda: subprocess.run(d.wrap(["cat", "/proc/self/cgroup"]),
                                           capture_output=True, text=True, check=True),
                    lambda: subprocess.run(["cat", "/proc/self/cgroup"], preexec_fn=d.preexec,
                                           capture_output=True, text=True, check=True)):
            lines = run().stdout.splitlines()
            inside = [ln for ln in lines if f"/{cgroups.PREFIX}{d.name}." in ln]
            assert len(inside) == len(d.dirs), lines
    finally:
        d.cleanup()
    assert cgroups.find(d.name) == []


def test_stale_cgroups_of_a_dead_creator_are_swept_and_live_ones_kept():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = cgroups.delegate(_name("stale"), creator=dead.pid)
    (stale.dirs["memory"] / "payload").mkdir()  # what a container's systemd leaves
    mine = cgroups.delegate(_name("live"))
    try:
        removed = cgroups.cleanup_stale()
        assert set(removed) >= {str(p) for p in stale.dirs.values()}
        assert cgroups.find(stale.name) == []
        assert len(cgroups.find(mine.name)) == len(mine.dirs)  # its creator (us) lives
    finally:
        mine.cleanup()
        stale.cleanup()
