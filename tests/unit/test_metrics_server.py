"""The metrics endpoint: served from a thread blocked in accept() (no 0.5 s poll), and
stopped at once and quietly on SIGTERM (issue 25).

A real process (the runtime's sync loop, as the reaper runs it) with a real socket;
wakeups are counted from the kernel's context-switch counters of its threads.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.support import poll_for

DAEMON = """
import sys
from vx11d import metrics, runtime

class Idle:
    component = "test"
    interval = 3600.0
    def start(self): pass
    def tick(self): pass
    def status(self): return "idle"
    def reload(self, cfg): pass
    def stop(self): pass

server = metrics.serve(metrics.new_registry("test"), "127.0.0.1", 0)
print(server.server_address[1], flush=True)
try:
    sys.exit(runtime.run(Idle()))
finally:
    server.shutdown()
"""


def switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of ``pid``."""
    n = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt")):
                        n += int(line.split()[1])
        except FileNotFoundError:
            pass  # a scrape's thread that just ended
    return n


@pytest.fixture
def daemon():
    p = subprocess.Popen([sys.executable, "-c", DAEMON], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=os.getcwd())
    port = int(p.stdout.readline())
    yield p, port
    if p.poll() is None:
        p.kill()
        p.wait()


def test_metrics_server_makes_no_wakeup_between_scrapes(daemon):
    p, port = daemon
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    assert b"vx11_build_info" in text
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
        assert r.returncode == 0, r.stdout + r.stderr
    poll_for(lambda: len(glob.glob(f"/proc/{p.pid}/task/*")) == 2, timeout=10,
             what="the scrape's thread to end")  # main loop + the accept thread
    before = switches(p.pid)
    time.sleep(2.0)  # four 0.5 s polls of prometheus_client's own server
    assert switches(p.pid) - before <= 1, "a thread of an idle daemon woke up"


def test_metrics_server_stops_at_once_and_quietly_on_sigterm(daemon):
    p, port = daemon
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).status == 200
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    assert "Traceback" not in err and err == "", err
    assert time.monotonic() - t0 < 5.0, "the stop waited for something"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
