"""The fleet: booted once per test session, taken down at its end (even on failure)."""

from __future__ import annotations

import os

import pytest

from .harness import Fleet


@pytest.fixture(scope="session")
def fleet():
    f = Fleet()
    try:
        f.up()
        yield f
    finally:
        if os.environ.get("VX11_KEEP_FLEET") != "1":
            f.down()
