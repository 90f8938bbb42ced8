"""Debian 12 (bookworm) on its own kernel (6.1, systemd 252), pure cgroup v2: the
package installed, then every real-kernel check (tests/vm/checks.py). Its life cycle
(reboot, upgrade from the previous release, remove, purge) is the host tier's
(tests/host), on the same release in a container."""

from __future__ import annotations

import pytest

from .checks import *  # noqa: F403 (the checks run on this module's guest)

RELEASE = "bookworm"
pytestmark = [pytest.mark.vm, pytest.mark.timeout(2400)]
