"""A minimal daemon on vx11d.runtime, started as a unit by the system tests."""

import logging
import os
import sys
import time

from vx11d import journal, runtime


class Heartbeat:
    component = "heartbeat"
    interval = 0.2

    def __init__(self) -> None:
        self.ticks = 0
        self.log = logging.getLogger("vx11.heartbeat")

    def start(self) -> None:
        time.sleep(float(os.environ.get("HB_START_DELAY", "0")))
        # The last thing before READY=1: the time (CLOCK_MONOTONIC, systemd's clock) the
        # daemon was ready. journald's own timestamp is when it received the line, which
        # can be after systemd processed READY, so tests compare with this one.
        journal.event(self.log, "heartbeat_started", "heartbeat up", pid=os.getpid(),
                      ready_usec=time.monotonic_ns() // 1000)

    def tick(self) -> None:
        self.ticks += 1

    def status(self) -> str:
        return f"{min(self.ticks, 3)}+ ticks" if self.ticks >= 3 else f"{self.ticks} ticks"

    def reload(self, cfg) -> None:
        pass

    def stop(self) -> None:
        journal.event(self.log, "heartbeat_stopped", "heartbeat down", pid=os.getpid())


if __name__ == "__main__":
    journal.setup("heartbeat")
    sys.exit(runtime.run(Heartbeat()))
