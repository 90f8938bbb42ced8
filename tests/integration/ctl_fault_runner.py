"""Runs vx11ctl commands under one host fault and prints their outcomes as JSON.

    python ctl_fault_runner.py STATE_DIR FAULT

Meant to run inside ``unshare -m`` with STATE_DIR a small tmpfs of its own: it creates
the DB and a live hija row, injects FAULT (read_only, disk_full, db_missing, locked),
then runs each command and prints one JSON list of {cmd, rc, stdout, stderr}.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

COMMANDS = [["hijas", "list"], ["hijas", "spawn", "sleeper", "--ttl", "5s", "--wait", "0"],
            ["hijas", "stop", "@ID@"], ["status"], ["db", "check"],
            ["activate", "hermes", "--for", "1m"]]


def ctl(cfg: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "--config", cfg, *args],
                          capture_output=True, text=True, timeout=60, check=False)


def main() -> None:
    state, fault = sys.argv[1], sys.argv[2]
    cfg = os.path.join(state, "vx11.yml")
    db = os.path.join(state, "vx11.db")
    with open(cfg, "w") as f:
        f.write(f"db:\n  path: {db}\nmadre:\n  templates:\n    sleeper: {{command: "
                "[/usr/bin/sleep, infinity]}\n")
    assert ctl(cfg, "db", "migrate").returncode == 0
    r = ctl(cfg, "hijas", "spawn", "sleeper", "--ttl", "30s", "--wait", "0", "--json")
    hid = json.loads(r.stdout)["id"]
    holder = None
    if fault == "read_only":
        subprocess.run(["mount", "-o", "remount,ro", state], check=True)
    elif fault == "disk_full":
        # an empty WAL: the next write must grow it (a WAL reused from its start after
        # a checkpoint takes small writes on a full disk, and that is fine)
        c = sqlite3.connect(db)
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.close()
        subprocess.run(["dd", "if=/dev/zero", f"of={state}/filler", "bs=64k"],
                       capture_output=True, check=False)
    elif fault == "db_missing":
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.unlink(db + suffix)
    elif fault == "locked":
        holder = subprocess.Popen([sys.executable, "-c", (
            "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN IMMEDIATE'); print('held', flush=True); time.sleep(120)"), db],
            stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    out = []
    try:
        for cmd in COMMANDS:
            argv = [a.replace("@ID@", hid) for a in cmd]
            t0 = time.monotonic()
            r = ctl(cfg, *argv)
            out.append({"cmd": " ".join(cmd[:2]), "rc": r.returncode, "stdout": r.stdout,
                        "stderr": r.stderr, "seconds": round(time.monotonic() - t0, 2)})
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
