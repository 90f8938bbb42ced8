"""A fresh install keeps credentials off the network in clear; TLS opens it (real systemd).

In the sandbox (its own network namespace), with an address beyond loopback added to
its loopback interface: the shipped socket listens on 127.0.0.1 and [::1] only; with
the documented drop-in that opens :8000 to the network but no TLS, a peer beyond
loopback gets 403 ``tls_required`` (loopback is still served); once the certificate and
key are handed in as systemd credentials (the documented drop-in), that peer is served
over TLS, and the STATUS line says TLS.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.support import poll_for
from tests.tls_support import Pki

from .conftest import REPO, show, sysctl

pytestmark = pytest.mark.system

PEER = "10.99.0.1"  # beyond loopback, on the sandbox's own lo
SET = ("vx11-gateway.service", "vx11-gateway.socket")
# The shipped drop-ins, as docs/security.md installs them.
NETWORK_DROPIN = (REPO / "packaging" / "systemd" / "vx11-gateway.socket.d" / "network.conf"
                  ).read_text()
TLS_DROPIN = (REPO / "packaging" / "systemd" / "vx11-gateway.service.d" / "tls.conf"
              ).read_text()


def curl(sb, url: str, *flags: str):
    token = sb.token()
    r = sb.exec(["curl", "-sS", "-m", "5", "-w", "\n%{http_code}", "-H",
                 f"X-VX11-Token: {token}", *flags, url], timeout=20)
    body, _, code = r.stdout.rpartition("\n")
    return r.returncode, code, body


@pytest.fixture
def net_sandbox(sandbox, tmp_path):
    sb = sandbox
    dropins = []

    def dropin(unit: str, text: str) -> None:
        d = sb.state / "etc-systemd-system" / f"{unit}.d"
        d.mkdir(exist_ok=True)
        (d / "vx11-test.conf").write_text(text)
        dropins.append(d)
        sysctl(sb, "daemon-reload")

    sb.write_config((REPO / "packaging" / "sandbox" / "vx11.yml").read_text())
    sysctl(sb, "stop", *SET, check=False)
    r = sb.exec(["ip", "addr", "add", f"{PEER}/32", "dev", "lo"], timeout=20)
    assert r.returncode == 0 or "exists" in r.stderr, r.stderr
    try:
        yield sb, dropin
    finally:
        sysctl(sb, "stop", *SET, check=False)
        for d in dropins:
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(sb.etc_vx11 / "tls", ignore_errors=True)
        sb.exec(["ip", "addr", "del", f"{PEER}/32", "dev", "lo"], timeout=20)
        sysctl(sb, "daemon-reload", check=False)
        sysctl(sb, "reset-failed", check=False)


def test_fresh_install_refuses_a_peer_beyond_loopback_in_clear_then_serves_it_over_tls(
        net_sandbox, tmp_path):
    sb, dropin = net_sandbox
    listen = sb.exec(["systemctl", "show", "-p", "Listen", "vx11-gateway.socket"],
                     timeout=30).stdout
    assert "127.0.0.1:8000" in listen and "[::1]:8000" in listen, listen
    sysctl(sb, "start", "vx11-gateway.socket")
    # Shipped socket: nothing listens on the outside address at all.
    rc, _code, _ = curl(sb, f"http://{PEER}:8000/vx11/hijas", "--interface", PEER)
    assert rc != 0
    assert curl(sb, "http://127.0.0.1:8000/vx11/hijas")[1] == "200"
    assert curl(sb, "http://[::1]:8000/vx11/hijas")[1] == "200"

    # The documented drop-in opens :8000 to the network; without TLS, refused in clear.
    sysctl(sb, "stop", *SET)
    dropin("vx11-gateway.socket", NETWORK_DROPIN)
    sysctl(sb, "start", "vx11-gateway.socket")
    rc, code, body = poll_for(
        lambda: (r := curl(sb, f"http://{PEER}:8000/vx11/hijas", "--interface", PEER))[0] == 0
        and r, timeout=30, what="the opened socket to answer")
    assert code == "403" and json.loads(body)["error"] == "tls_required", body
    assert curl(sb, "http://127.0.0.1:8000/vx11/hijas")[1] == "200"
    status = show(sb, "vx11-gateway.service", "StatusText")["StatusText"]
    assert "plain HTTP" in status, status

    # TLS through systemd credentials: the same peer is served.
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("gw", sans=(f"IP:{PEER}",))
    (sb.etc_vx11 / "tls").mkdir(mode=0o700)
    shutil.copy(cert, sb.etc_vx11 / "tls" / "gateway.crt")
    shutil.copy(key, sb.etc_vx11 / "tls" / "gateway.key")
    (sb.etc_vx11 / "tls" / "gateway.key").chmod(0o600)
    shutil.copy(pki.ca, sb.etc_vx11 / "tls" / "ca.pem")
    sysctl(sb, "stop", *SET)
    dropin("vx11-gateway.service", TLS_DROPIN)
    sysctl(sb, "start", "vx11-gateway.socket")
    rc, code, body = poll_for(
        lambda: (r := curl(sb, f"https://{PEER}:8000/vx11/hijas", "--interface", PEER,
                           "--cacert", "/etc/vx11/tls/ca.pem"))[0] == 0 and r,
        timeout=30, what="the gateway to answer over TLS")
    assert code == "200" and "hijas" in json.loads(body), body
    rc, _code, _ = curl(sb, f"http://{PEER}:8000/vx11/hijas", "--interface", PEER)
    assert rc != 0  # plain HTTP on the TLS port: no answer a client could take for one
    status = show(sb, "vx11-gateway.service", "StatusText")["StatusText"]
    assert "(TLS)" in status, status
    r = sb.exec(["journalctl", "--no-pager", "-u", "vx11-gateway.service"], timeout=30)
    assert "Traceback" not in r.stdout


def test_renewed_certificate_by_restart_refuses_no_connection(net_sandbox, tmp_path):
    """Certificates handed in as systemd credentials are copied at start: renewal is a
    restart of the service, and the socket unit keeps :8000 listening meanwhile, so a
    client connecting in a loop through it sees no refused connection and then the new
    certificate."""
    sb, dropin = net_sandbox
    pki = Pki(tmp_path / "pki")
    tls_dir = sb.etc_vx11 / "tls"
    tls_dir.mkdir(mode=0o700)

    def install(name: str) -> str:
        cert, key = pki.issue(name)
        shutil.copy(cert, tls_dir / "gateway.crt")
        shutil.copy(key, tls_dir / "gateway.key")
        (tls_dir / "gateway.key").chmod(0o600)
        return (tmp_path / "pki" / f"{name}.pem").read_text()

    install("old")
    shutil.copy(pki.ca, tls_dir / "ca.pem")
    dropin("vx11-gateway.service", TLS_DROPIN)
    sysctl(sb, "start", "vx11-gateway.socket")
    # Each line "code:curl's exit code" (7 refused, 28 timed out, 35/56 reset)
    loop = ("for i in $(seq 400); do curl -s -o /dev/null -m 20 "
            "-w '%{http_code}:%{exitcode}\\n' "
            "--cacert /etc/vx11/tls/ca.pem https://127.0.0.1:8000/health; done "
            "> /run/tls-loop.out 2>&1")
    sb.exec(["systemd-run", "--unit=vx11-test-tls-loop", "--collect", "sh", "-c", loop],
            timeout=30)
    try:
        poll_for(lambda: len(sb.exec(["cat", "/run/tls-loop.out"], timeout=10).stdout
                             .split()) >= 50, timeout=60, what="the client loop running")
        install("renewed")
        sysctl(sb, "restart", "vx11-gateway.service")
        done = len(sb.exec(["cat", "/run/tls-loop.out"], timeout=10).stdout.split())
        assert done < 400, "the loop ended before the restart: it proves nothing"
        poll_for(lambda: sb.exec(["systemctl", "is-active", "vx11-test-tls-loop"],
                                 timeout=10).stdout.strip() != "active", timeout=180,
                 what="the client loop to finish")
    finally:
        sysctl(sb, "stop", "vx11-test-tls-loop", check=False)
    codes = sb.exec(["cat", "/run/tls-loop.out"], timeout=10).stdout.split()
    assert len(codes) == 400 and set(codes) == {"200:0"}, sorted(set(codes))
    served = sb.exec(["sh", "-c", "openssl s_client -connect 127.0.0.1:8000 "
                      "-servername localhost </dev/null 2>/dev/null | openssl x509"],
                     timeout=30).stdout
    renewed = (tmp_path / "pki" / "renewed.pem").read_text()
    assert served.split("-----BEGIN CERTIFICATE-----")[1] == \
        renewed.split("-----BEGIN CERTIFICATE-----")[1], served
