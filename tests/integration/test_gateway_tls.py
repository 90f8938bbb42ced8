"""TLS on the gateway with real clients, and plain HTTP kept to loopback.

A live ``vx11d gateway`` process with a certificate from a throwaway CA: ``openssl
s_client`` is refused TLS 1.1 and served 1.2 and 1.3; the openai SDK with an https
base URL and the custom CA works; a bad pair (expired, mismatched, missing, one of
two) stops the start with one line naming the file, exit 78; a renewed certificate is
served after SIGHUP while a client keeps connecting, none refused. Without TLS a peer
beyond loopback (this host's own non-loopback address) gets 403 ``tls_required``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.hermes_support import model, remote_llama
from tests.integration.conftest import REPO, run_gateway
from tests.support import poll_for
from tests.tls_support import Pki


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path / "pki")


def tls_yaml(cert: str, key: str) -> str:
    return f"  tls_cert_file: {cert}\n  tls_key_file: {key}\n"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def s_client(port: int, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                           "-servername", "localhost", *flags],
                          input="", capture_output=True, text=True, timeout=30)


def test_tls_versions_with_openssl_s_client(tmp_path, pki):
    cert, key = pki.issue("gw")
    with run_gateway(tmp_path, tls_yaml(cert, key), ca=pki.ca) as (url, _s, log, _p):
        port = port_of(url)
        # SECLEVEL=0: the client itself would not offer TLS 1.1 otherwise
        old = s_client(port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        assert old.returncode != 0 and "no peer certificate available" in old.stdout, \
            old.stdout + old.stderr
        for flag, proto in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            r = s_client(port, flag, "-CAfile", pki.ca, "-verify_return_error")
            assert r.returncode == 0, r.stdout + r.stderr
            assert f"Protocol  : {proto}" in r.stdout or f", {proto}," in r.stdout, r.stdout
            assert "Verify return code: 0 (ok)" in r.stdout
        weak = s_client(port, "-tls1_2", "-cipher", "AES128-SHA")  # no forward secrecy
        assert weak.returncode != 0
        assert "Traceback" not in log.read_text(errors="replace")


def test_openai_sdk_over_https_with_a_custom_ca_streaming_too(tmp_path, pki):
    """The official SDK with base_url=https://... and the site's CA: models, a streamed
    chat completion (through the remote fallback, llama-cpp-python's own server), and
    403/connection errors where they belong."""
    import openai

    cert, key = pki.issue("gw")
    tiny = model("tiny", str(tmp_path))
    with remote_llama(tiny, tmp_path, "remote-key-0123456789abcdef") as remote:
        extra = tls_yaml(cert, key) + "remote:\n" + "".join(
            f"  {k}: {v}\n" for k, v in remote.items())
        with run_gateway(tmp_path / "gw", extra, ca=pki.ca) as (url, secret, _l, _p):
            def sdk(token: str, ca: str | None = pki.ca) -> openai.OpenAI:
                http = openai.DefaultHttpx2Client(
                    verify=ssl.create_default_context(cafile=ca) if ca else True)
                return openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0,
                                     http_client=http)

            client = sdk(secret["chat"])
            assert client.models.list().data
            chunks = list(client.chat.completions.create(
                model="remote-tiny", max_tokens=8, temperature=0, stream=True,
                messages=[{"role": "user", "content": "Say hi"}]))
            assert chunks and chunks[-1].choices[0].finish_reason is not None
            with pytest.raises(openai.PermissionDeniedError, match="lacks scope chat"):
                sdk(secret["read"]).models.list()
            with pytest.raises(openai.APIConnectionError):
                sdk(secret["chat"], ca=None).models.list()  # the system CAs: untrusted


@pytest.mark.parametrize("case", ["expired", "mismatched", "missing", "half", "not_pem"])
def test_a_bad_certificate_or_key_stops_the_start_with_one_line(tmp_path, pki, case):
    cert, key = pki.issue("gw")
    extra = {
        "expired": lambda: tls_yaml(*pki.issue("old", start="20200101000000Z",
                                               end="20200201000000Z")),
        "mismatched": lambda: tls_yaml(cert, pki.stray_key("stray")),
        "missing": lambda: tls_yaml(str(tmp_path / "absent.pem"), key),
        "half": lambda: f"  tls_cert_file: {cert}\n",
        "not_pem": lambda: tls_yaml(cert, str(REPO / "README.md")),
    }[case]()
    named = {"expired": "old.pem", "mismatched": "stray.key", "missing": "absent.pem",
             "half": "gw.pem", "not_pem": "README.md"}[case]
    cfg = tmp_path / "vx11.yml"
    cfg.write_text(f"db: {{path: {tmp_path}/vx11.db}}\ngateway:\n  listen_port: 1\n"
                   f"  token_file: {tmp_path}/token\n{extra}")
    (tmp_path / "token").write_text("t" * 32)
    (tmp_path / "token").chmod(0o600)
    r = subprocess.run([sys.executable, "-m", "vx11d", "gateway"], cwd=REPO,
                       env={**os.environ, "VX11_CONFIG": str(cfg)}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 78, r.stderr
    lines = [x for x in r.stderr.strip().splitlines() if x]
    assert len(lines) == 1 and named in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    if case == "expired":
        assert "expired" in lines[0]
    if case == "mismatched":
        assert "does not match" in lines[0]


def _peer(cert_pem: str, port: int, ca: str) -> str:
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        return ssl.DER_cert_to_PEM_cert(s.getpeercert(binary_form=True))


def test_renewed_certificate_is_served_after_sighup_without_a_refused_connection(
        tmp_path, pki):
    cert, key = pki.issue("gw")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(cert, live_cert)
    shutil.copy(key, live_key)
    live_key.chmod(0o600)
    with run_gateway(tmp_path, tls_yaml(str(live_cert), str(live_key)), ca=pki.ca) as (
            url, secret, log, proc):
        port = port_of(url)
        first = _peer(cert, port, pki.ca)
        errors: list[str] = []
        done = threading.Event()
        count = [0]

        def hammer() -> None:
            ctx = ssl.create_default_context(cafile=pki.ca)
            while not done.is_set():
                req = urllib.request.Request(url + "/vx11/route", method="POST",
                                             data=b'{"query": "2+2"}', headers={
                                                 "X-VX11-Token": secret["chat"],
                                                 "Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                        if r.status != 200:
                            errors.append(str(r.status))
                except (OSError, urllib.error.HTTPError) as e:
                    errors.append(repr(e))
                count[0] += 1

        t = threading.Thread(target=hammer)
        t.start()
        try:
            poll_for(lambda: count[0] >= 20, timeout=30, what="requests before renewal")
            new_cert, new_key = pki.issue("renewed", days=90)
            shutil.copy(new_cert, live_cert)
            shutil.copy(new_key, live_key)
            proc.send_signal(signal.SIGHUP)
            poll_for(lambda: _peer(cert, port, pki.ca) != first, timeout=30,
                     what="the renewed certificate to be served")
            seen = count[0]
            poll_for(lambda: count[0] >= seen + 20, timeout=30, what="requests after")
        finally:
            done.set()
            t.join(30)
        renewed = ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(Path(new_cert).read_text()))
        assert _peer(cert, port, pki.ca) == renewed
        assert not errors, errors[:5]
        assert "tls_reloaded" in log.read_text()


def test_stop_serves_a_connection_accepted_mid_handshake(tmp_path, pki):
    """Regression (CI, a restart with a client looping): a connection the gateway had
    accepted but whose TLS handshake had not begun when SIGTERM came was closed at once
    (aiohttp knows a connection only after its handshake); the stop now lets it finish
    its handshake and request, and is answered."""
    import psutil

    cert, key = pki.issue("gw")
    with run_gateway(tmp_path, tls_yaml(cert, key), ca=pki.ca) as (url, _s, log, proc):
        port = port_of(url)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            mine = raw.getsockname()[1]
            poll_for(lambda: any(c.raddr and c.raddr.port == mine for c in
                                 psutil.Process(proc.pid).net_connections("tcp")),
                     timeout=10, what="the gateway to accept the connection")
            proc.send_signal(signal.SIGTERM)
            ctx = ssl.create_default_context(cafile=pki.ca)
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls_sock:
                tls_sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n"
                                 b"Connection: close\r\n\r\n")
                head = tls_sock.recv(64)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert proc.wait(timeout=30) == 0, log.read_text()
        finally:
            raw.close()


def _own_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the route
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def _get(url: str, token: str, source: str, ctx=None, **headers: str) -> tuple[int, dict]:
    """GET from a chosen local address (the peer address the gateway sees)."""
    import http.client

    host, port = url.split("://")[1].rsplit(":", 1)
    conn_cls = http.client.HTTPSConnection if ctx else http.client.HTTPConnection
    kw = {"context": ctx} if ctx else {}
    c = conn_cls(host, int(port), timeout=10, source_address=(source, 0), **kw)
    try:
        c.request("GET", "/vx11/hijas", headers={"X-VX11-Token": token, **headers})
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        c.close()


def test_plain_http_serves_loopback_only_until_tls_or_an_explicit_opt_in(tmp_path, pki):
    me = _own_address()
    if me is None:
        pytest.fail("this host has no non-loopback IPv4 address to test from")
    with run_gateway(tmp_path / "a", listen="0.0.0.0") as (url, secret, log, _p):
        assert _get(url, secret["read"], "127.0.0.1")[0] == 200
        wide = url.replace("127.0.0.1", me)
        code, body = _get(wide, secret["read"], me)
        assert code == 403 and body["error"] == "tls_required", body
        # a header cannot claim TLS: only the connection says so
        code, body = _get(wide, secret["read"], me, **{"X-Forwarded-Proto": "https",
                                                        "Forwarded": "proto=https"})
        assert code == 403 and body["error"] == "tls_required", body
        text = log.read_text()
        assert "plain_http_refused" in text and "plain_http_loopback_only" in text
    with run_gateway(tmp_path / "b", "  plain_http_beyond_loopback: true\n",
                     listen="0.0.0.0") as (url, secret, log, _p):
        assert _get(url.replace("127.0.0.1", me), secret["read"], me)[0] == 200
        assert "event=plain_http_beyond_loopback" in log.read_text()
    cert, key = pki.issue("gw", sans=(f"IP:{me}",))
    with run_gateway(tmp_path / "c", tls_yaml(cert, key), listen="0.0.0.0",
                     ca=pki.ca) as (url, secret, _log, _p):
        ctx = ssl.create_default_context(cafile=pki.ca)
        assert _get(url.replace("localhost", me), secret["read"], me, ctx)[0] == 200


def test_vx11ctl_route_via_gateway_over_tls(tmp_path, pki):
    """vx11ctl finds the local gateway's TLS (here from gateway.tls_cert_file) and trusts
    exactly that certificate; a plain http --url to the TLS port fails with one line."""
    cert, key = pki.issue("gw")
    with run_gateway(tmp_path, tls_yaml(cert, key), ca=pki.ca) as (url, _s, _log, _p):
        env = {**os.environ, "VX11_CONFIG": str(tmp_path / "vx11.yml")}
        r = subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "route", "2+2",
                            "--via-gateway", "--json"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["answer"] == "4" and out["route"] == "switch", out
        r = subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "route", "2+2",
                            "--via-gateway", "--url", url, "--cacert", pki.ca], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.startswith("4"), r.stderr
        plain = url.replace("https://localhost", "http://127.0.0.1")
        r = subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "route", "2+2",
                            "--via-gateway", "--url", plain], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
