"""The two faults Debian's own Prometheus and node_exporter showed on a live set.

1. The gateway is socket-activated on :8000; its /metrics (:9711) answered nothing until a
   first client came, so after a boot with no traffic `up` was 0 and VX11GatewayDown fired
   for a healthy set. vx11.target now starts the service itself.
2. The rotator's vx11_rotate.prom was 0660 vx11:vx11 (the unit's UMask=0007); Debian's
   node_exporter runs as user prometheus and reported node_textfile_scrape_error 1.
"""

from __future__ import annotations

import pytest

from tests.support import poll_for

from .conftest import REPO, show, sysctl

pytestmark = pytest.mark.system

SET = ("vx11-gateway.service", "vx11-gateway.socket", "vx11-madre.service",
       "vx11-reaper.service", "vx11-rotate.timer")


def curl(sb, url: str):
    return sb.exec(["curl", "-sS", "-m", "5", url], timeout=20)


@pytest.fixture
def clean_set(sandbox):
    sandbox.write_config((REPO / "packaging" / "sandbox" / "vx11.yml").read_text())
    sysctl(sandbox, "daemon-reload")
    sysctl(sandbox, "stop", *SET, "vx11.target", check=False)
    try:
        yield sandbox
    finally:
        sysctl(sandbox, "stop", *SET, "vx11.target", "prometheus-node-exporter.service",
               check=False)
        sysctl(sandbox, "reset-failed", check=False)


def test_gateway_metrics_answer_after_start_with_no_traffic_on_8000(clean_set):
    sb = clean_set
    assert show(sb, "vx11-gateway.service", "ActiveState")["ActiveState"] == "inactive"
    sysctl(sb, "start", "vx11.target")
    body = poll_for(lambda: (r := curl(sb, "http://127.0.0.1:9711/metrics")).returncode == 0
                    and r.stdout, timeout=30, what="the gateway's :9711 answering")
    assert "vx11_build_info" in body
    # Nobody connected to :8000: the gateway served no request, yet it runs and is scraped.
    assert "vx11_gateway_requests_total{" not in body
    props = show(sb, "vx11-gateway.service", "ActiveState", "TriggeredBy")
    assert props["ActiveState"] == "active", props
    # Still socket-activated: :8000 belongs to the socket unit, handed to the service.
    assert show(sb, "vx11-gateway.socket", "ActiveState")["ActiveState"] == "active"
    r = curl(sb, "http://127.0.0.1:8000/health")
    assert r.returncode == 0 and '"ok"' in r.stdout, r.stdout + r.stderr


def test_rotate_textfile_read_by_debian_node_exporter_as_prometheus(clean_set):
    sb = clean_set
    # What Debian's postinst does (adduser prometheus) and its default file.
    r = sb.exec(["systemd-sysusers", "-"], input='u prometheus - "Prometheus daemon"\n',
                timeout=30)
    assert r.returncode == 0, r.stderr
    r = sb.exec(["sh", "-c", "mkdir -p /etc/default && echo 'ARGS=\"--web.listen-address="
                 "127.0.0.1:9100\"' > /etc/default/prometheus-node-exporter"], timeout=10)
    assert r.returncode == 0, r.stderr
    sysctl(sb, "start", "vx11-rotate.service")
    st = sb.exec(["stat", "-c", "%a %U:%G",
                  "/var/lib/prometheus/node-exporter/vx11_rotate.prom"], timeout=10)
    assert st.stdout.split() == ["644", "vx11:vx11"], st.stdout + st.stderr
    sysctl(sb, "start", "prometheus-node-exporter.service")
    assert show(sb, "prometheus-node-exporter.service", "User")["User"] == "prometheus"
    body = poll_for(lambda: (r := curl(sb, "http://127.0.0.1:9100/metrics")).returncode == 0
                    and r.stdout, timeout=30, what="node_exporter answering")
    assert "node_textfile_scrape_error 0" in body, [
        ln for ln in body.splitlines() if "textfile" in ln]
    assert "\nvx11_rotate_last_run_timestamp_seconds " in body
