"""The gateway's TLS pair: loaded and checked, its expiry read, its metrics lint-clean."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.tls_support import Pki
from vx11d import config
from vx11d.db import Database
from vx11d.gateway import tls
from vx11d.gateway.app import build_app
from vx11d.gateway.context import GatewayContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def test_expiry_within_14_days_is_reported(pki):
    soon = tls.Tls.load(tls.TlsSource(*pki.issue("soon", days=5), "file"))
    left = soon.expiring()
    assert left is not None and 4 * 86400 < left <= 5 * 86400
    later = tls.Tls.load(tls.TlsSource(*pki.issue("later", days=60), "file"))
    assert later.expiring() is None
    assert later.expiring(now=later.expires - 86400) == pytest.approx(86400)


def test_reload_keeps_the_old_pair_when_the_new_one_is_bad(pki):
    cert, key = pki.issue("a", days=30)
    live = tls.Tls.load(tls.TlsSource(cert, key, "file"))
    before = live.expires
    with pytest.raises(tls.TlsError, match="does not match"):
        live.reload(tls.TlsSource(cert, pki.stray_key("x"), "file"))
    assert live.expires == before
    new = pki.issue("b", days=90)
    assert live.reload(tls.TlsSource(*new, "file")) > before + 50 * 86400


def test_source_needs_both_or_neither(tmp_path, monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert tls.source("", "") is None
    (tmp_path / "tls.crt").write_text("x")
    with pytest.raises(tls.TlsError, match="only one of the credentials"):
        tls.source("", "")
    (tmp_path / "tls.key").write_text("x")
    assert tls.source("", "").via == "credential"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(tls.TlsError, match="both"):
        tls.source("/a.pem", "")


@pytest.mark.parametrize("remote,loop", [("127.0.0.1", True), ("127.9.9.9", True),
                                         ("::1", True), ("::ffff:127.0.0.1", True),
                                         (None, True), ("10.0.0.1", False),
                                         ("::ffff:10.0.0.1", False), ("fe80::1%eth0", False),
                                         ("garbage", False)])
def test_is_loopback(remote, loop):
    assert tls.is_loopback(remote) is loop


def test_tls_metrics_pass_promtool(pki, dbpath):
    state = tls.Tls.load(tls.TlsSource(*pki.issue("m", days=30), "file"))
    ctx = GatewayContext(cfg=config.parse("", "t.yml"), db=Database(dbpath),
                         registry=CollectorRegistry())
    build_app(ctx, "t0ken-for-tests-0123456789", modules=[], tls_state=state)
    text = generate_latest(ctx.registry).decode()
    assert "vx11_gateway_tls_enabled 1.0" in text
    value = next(float(ln.split()[1]) for ln in text.splitlines()
                 if ln.startswith("vx11_gateway_tls_cert_expiry_timestamp_seconds "))
    assert value == pytest.approx(state.expires)
    assert "vx11_gateway_plain_http_beyond_loopback 0.0" in text
    assert abs(state.expires - (time.time() + 30 * 86400)) < 86400
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                           capture_output=True)
        assert r.returncode == 0, r.stdout + r.stderr
