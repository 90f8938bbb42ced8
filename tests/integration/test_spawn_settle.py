"""The spawn path in-process: the gateway's settle wait and madre's notice (fake systemd).

The gateway's fallback re-read is pushed far beyond the test's wait, so a 201 can only
come from madre's settle datagram."""

from __future__ import annotations

import asyncio
import json
import socket
import time

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from tests.fake_systemd import FakeSystemd
from vx11d import config, hijas
from vx11d.db import Database
from vx11d.gateway import hijas as gw_hijas
from vx11d.gateway.app import build_app
from vx11d.gateway.context import GatewayContext
from vx11d.madre.daemon import MadreService

TOKEN = "t0ken-for-tests-0123456789"
CFG = """
gateway: {{spawn_wait: 5s, auth_fail_limit: 1000, madre_wake_socket: {sock}}}
madre:
  tick: 60s
  templates:
    sleeper: {{command: [/usr/bin/sleep, infinity], max_ttl: 60s, sandboxing: basic}}
"""


def test_parse_settle_accepts_only_a_hija_id():
    assert hijas.parse_settle(hijas.settle_request("abcdefghij")) == "abcdefghij"
    for bad in (b"w", b"s ", b"s ../../x", b"s ABCDEFGHIJ", b"s abcdefghijk", b"x abc"):
        assert hijas.parse_settle(bad) is None


def test_spawn_answers_running_on_madres_notice_not_a_poll(dbpath, tmp_path, monkeypatch):
    monkeypatch.setattr(gw_hijas, "FALLBACK", 60.0)
    cfg = config.parse(CFG.format(sock=tmp_path / "m.sock"), "t.yml")
    sd = FakeSystemd()

    async def go():
        madre = MadreService(cfg, Database(dbpath), sd, CollectorRegistry())
        await madre.start()
        ctx = GatewayContext(cfg=cfg, db=Database(dbpath), registry=CollectorRegistry())
        client = TestClient(TestServer(build_app(ctx, TOKEN)))
        await client.start_server()
        try:
            out = []
            for _ in range(3):
                t0 = time.monotonic()
                r = await client.post("/vx11/spawn", json={"template": "sleeper",
                                                           "ttl_s": 5},
                                      headers={"X-VX11-Token": TOKEN})
                out.append((r.status, json.loads(await r.text()), time.monotonic() - t0))
            return out, dict(madre._waiters)
        finally:
            await client.close()
            await madre.stop()

    out, waiters = asyncio.run(go())
    for status, body, took in out:
        assert status == 201 and body["status"] == "running", body
        assert took < 4, took  # the notice, not spawn_wait (5 s) or the fallback (60 s)
    assert waiters == {}  # every notice sent and forgotten
    assert ("readback", out[0][1]["unit"]) in sd.calls


def test_madre_remembers_a_bounded_number_of_waiters_and_only_abstract_ones(dbpath, tmp_path,
                                                                              monkeypatch):
    from vx11d.madre import daemon

    monkeypatch.setattr(daemon, "MAX_WAITERS", 3)
    cfg = config.parse(CFG.format(sock=tmp_path / "m.sock"), "t.yml")

    async def go():
        madre = MadreService(cfg, Database(dbpath), FakeSystemd(), CollectorRegistry())
        await madre.start()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind("")
        named = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        named.bind(str(tmp_path / "named.sock"))
        try:
            for i in range(5):
                s.sendto(hijas.settle_request(f"aaaaaaaaa{i}"), str(tmp_path / "m.sock"))
            named.sendto(hijas.settle_request("bbbbbbbbbb"), str(tmp_path / "m.sock"))
            s.sendto(b"s not-an-id", str(tmp_path / "m.sock"))
            madre._on_wake()
            return dict(madre._waiters)
        finally:
            s.close()
            named.close()
            await madre.stop()

    waiters = asyncio.run(go())
    assert sorted(waiters) == ["aaaaaaaaa2", "aaaaaaaaa3", "aaaaaaaaa4"]


def test_a_row_started_before_its_settle_request_was_read_is_told_at_once(dbpath, tmp_path):
    """In a burst madre may start a row in an earlier pass than the one that reads its
    ``s <id>`` datagram: the waiter must still hear back (not wait for its fallback)."""
    cfg = config.parse(CFG.format(sock=tmp_path / "m.sock"), "t.yml")

    async def go():
        db = Database(dbpath)
        madre = MadreService(cfg, db, FakeSystemd(), CollectorRegistry())
        await madre.start()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind("")
        s.settimeout(2)
        try:
            row = hijas.request_spawn(db, cfg, "sleeper", 5, {}, "test")
            madre._work()  # started by a pass that has not read the datagram yet
            assert hijas.get(db, row["id"])["status"] == "running"
            s.sendto(hijas.settle_request(row["id"]), str(tmp_path / "m.sock"))
            madre._on_wake()
            return row["id"], s.recv(64).decode(), dict(madre._waiters)
        finally:
            s.close()
            await madre.stop()

    hid, told, waiters = asyncio.run(go())
    assert told == hid and waiters == {}
