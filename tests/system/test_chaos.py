"""The quick chaos soak (bench/chaos.py --quick) under real systemd: nothing lost.

It boots its own sandbox (``vx11t-chaos-<pid>``, powered off if this session dies),
SIGKILLs madre, the gateway and the reaper 50 times under a spawn load and rotations,
fills and frees the state disk and flips it read-only and back, then checks the DB, the
records against systemd, the audit dirs and the units.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.system


def load_chaos():
    """bench/chaos.py as a module, its own dir on sys.path as when it runs as a script
    (it imports bench/_sandboxed.py)."""
    if str(REPO / "bench") not in sys.path:
        sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("vx11_bench_chaos",
                                                  REPO / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_chaos_soak_loses_nothing_and_every_daemon_comes_back():
    chaos = load_chaos()
    res = chaos.run(quick=True, kills=None, seed=1, keep=False, name=None)
    assert res["kills"] == 50 and res["faults_injected"] >= 3, res
    assert res["restores"] >= 1, res
    assert res["spawns_acked"] > 50, res
    assert res["integrity_ok"], res
    for key, goal in chaos.GOALS.items():
        assert res[key] == goal, (key, res)
