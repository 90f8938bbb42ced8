"""Shared test helpers: wait on a condition with a deadline (never sleep and hope), stop a
child process."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_for(cond: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
             what: str = "condition") -> T:
    """Call ``cond`` until it returns something truthy; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    last: T = cond()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")
        time.sleep(interval)
        last = cond()
    return last


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if ``proc`` is still there after ``timeout``; reaped."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
