"""Runs INSIDE the sandbox: HTTP calls to the gateway and DB/systemd snapshots, as JSON.

    python madre_client.py call METHOD PATH [JSON_BODY] [--no-token]
    python madre_client.py burst N TEMPLATE TTL [CONCURRENCY]
    python madre_client.py snapshot
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TOKEN = Path("/etc/vx11/token").read_text().strip()
DB = "/var/lib/vx11/vx11.db"


def call(method: str, path: str, body=None, token: bool = True, conn=None):
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", 8000, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-VX11-Token"] = TOKEN
    data = None if body is None else json.dumps(body)
    t0 = time.perf_counter()
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    raw = r.read()
    dt = time.perf_counter() - t0
    if own:
        conn.close()
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = raw.decode(errors="replace")
    return {"status": r.status, "body": payload, "seconds": dt,
            "headers": {k.lower(): v for k, v in r.getheaders()}}


def burst(n: int, template: str, ttl: float, concurrency: int = 5):
    def one(_i):
        try:
            return call("POST", "/vx11/spawn", {"template": template, "ttl_s": ttl})
        except OSError as e:
            return {"status": 0, "body": str(e), "seconds": 0}

    with ThreadPoolExecutor(concurrency) as ex:
        return list(ex.map(one, range(n)))


def snapshot():
    c = sqlite3.connect(f"file:{DB}?mode=ro", uri=True)
    c.row_factory = sqlite3.Row
    rows = [dict(r) for r in c.execute("SELECT * FROM spawner_hijas")]
    events = [dict(r) for r in c.execute("SELECT event, subject FROM events WHERE "
                                         "event LIKE 'hija_%' ORDER BY id")]
    c.close()
    out = subprocess.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                          "vx11-hija-*"], capture_output=True, text=True).stdout
    units = {}
    for line in out.splitlines():
        parts = line.split()
        if parts:
            units[parts[0]] = parts[2]  # ACTIVE
    return {"rows": rows, "units": units, "events": events, "now": time.time()}


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "call":
        body = json.loads(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != "-" else None
        res = call(sys.argv[2], sys.argv[3], body, token="--no-token" not in sys.argv)
    elif cmd == "burst":
        res = burst(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]),
                    int(sys.argv[5]) if len(sys.argv) > 5 else 5)
    else:
        res = snapshot()
    print(json.dumps(res, default=str))
