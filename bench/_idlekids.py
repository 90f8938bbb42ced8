"""Idle processes for the benches: a parent that forks N children blocked in pause(),
says ``ready``, and on SIGTERM kills and reaps them all (a host with many processes that
do nothing, as the reaper and the idle bench need)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

PARENT = r"""
import os, signal, sys
n = int(sys.argv[1])
kids = []
def stop(*_):
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for k in kids:
        try:
            os.waitpid(k, 0)
        except ChildProcessError:
            pass
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        while True:
            signal.pause()
    kids.append(pid)
sys.stdout.write("ready\n"); sys.stdout.flush()
while True:
    signal.pause()
"""


CPARENT = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static pid_t *kids; static int nk;
static void stop(int s) { (void)s; for (int i = 0; i < nk; i++) kill(kids[i], SIGKILL);
  for (int i = 0; i < nk; i++) waitpid(kids[i], NULL, 0); _exit(0); }
int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 0; kids = calloc(n + 1, sizeof *kids);
  signal(SIGTERM, stop);
  for (int i = 0; i < n; i++) { pid_t p = fork(); if (p < 0) { perror("fork"); stop(0); }
    if (p == 0) { signal(SIGTERM, SIG_DFL); for (;;) pause(); } kids[nk++] = p; }
  printf("ready\n"); fflush(stdout); for (;;) pause(); }
"""


def idle_parent(tmp: str) -> list[str]:
    """A tiny C parent when a compiler is there (fork is ~50x cheaper), else Python.
    gcc first: cc is a link through /etc/alternatives, which a sandbox's fresh /etc
    lacks."""
    src, exe = Path(tmp, "idle.c"), Path(tmp, "vx11-bench-idle")
    src.write_text(CPARENT)
    for compiler in ("gcc", "cc"):
        try:
            subprocess.run([compiler, "-O2", "-o", str(exe), str(src)], check=True,
                           capture_output=True)
            return [str(exe)]
        except (OSError, subprocess.CalledProcessError):
            continue
    return [sys.executable, "-S", "-c", PARENT]


def start_idle(n: int, tmp: str) -> subprocess.Popen:
    p = subprocess.Popen([*idle_parent(tmp), str(n)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    assert p.stdout is not None
    if p.stdout.readline().strip() != "ready":
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(30)
        raise RuntimeError("the idle-process parent did not start")
    return p


def stop_idle(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(30)
