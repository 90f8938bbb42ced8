"""A fleet in a test: vx11 hosts and one monitoring host, each a booted systemd container.

The network is made here and lives only in namespaces this module creates: one "switch"
namespace holding a bridge, one namespace per host with a veth pair to that bridge, and
addresses from 198.18.0.0/24 (RFC 2544's benchmarking range) on those links only. No
address or route is added to the machine's own namespace, so nothing leaves it.

Each host is a :class:`vx11d.ctl.sandbox.Sandbox` booted in its namespace
(``--network-namespace-path``) on the machine's ``/usr``, so Debian's prometheus,
prometheus-alertmanager, prometheus-node-exporter and systemd-journal-remote packages are
there. The shipped files from ``packaging/`` are installed as docs/fleet.md says, with
only the documented site values changed (addresses, scrape/eval interval).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vx11d.ctl.sandbox import MASKED, Sandbox

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "packaging"
FLEET_MODEL = "/var/lib/vx11/models/random-weights-tiny.gguf"  # testmodel writes it
NET = "198.18.0"  # /24, on the test's own links only
MON_IP = f"{NET}.2"
SCRAPE = 2.0  # seconds: the documented override of global.scrape_interval/evaluation_interval
JOURNAL_NAME = "vx11-journal"  # the collector's name in packaging/journal/upload.conf


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def poll(fn, timeout: float, what: str, interval: float = 0.5):
    """fn() until it returns something truthy, or fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; "
                                 f"last: {last!r}")
        time.sleep(interval)


@dataclass
class Host:
    """One container of the fleet."""

    role: str  # "vx11" or "monitor"
    name: str
    ip: str
    netns: str
    sb: Sandbox = field(init=False)

    def __post_init__(self) -> None:
        # The monitoring host runs Debian's prometheus.service, which every other
        # sandbox masks (its volatile root has no prometheus user until the test adds it).
        masked = tuple(u for u in MASKED if self.role != "monitor" or u != "prometheus.service")
        self.sb = Sandbox(self.name, die_with_caller=True, netns=f"/run/netns/{self.netns}",
                          masked=masked)

    @property
    def root(self) -> Path:
        """The container's / seen from the machine (writes land in its tmpfs /etc)."""
        leader = self.sb.leader()
        assert leader is not None, f"{self.name} is not up"
        return Path(f"/proc/{leader}/root")

    def put(self, path: str, text: str, mode: int = 0o644, owner: str | None = None) -> None:
        dest = self.root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        os.chmod(dest, mode)
        if owner:
            self.run("chown", owner, path)

    def run(self, *argv: str, timeout: float = 60, check: bool = True, input: str | None = None
            ) -> subprocess.CompletedProcess:
        r = self.sb.exec(list(argv), timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(argv)}: exit {r.returncode}: "
                               f"{(r.stderr or r.stdout).strip()[-800:]}")
        return r

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("systemctl", *args, timeout=120, check=check)

    def curl(self, url: str, *extra: str, timeout: float = 10) -> subprocess.CompletedProcess:
        """curl run inside this host's network namespace (the machine has no route in)."""
        return subprocess.run(["ip", "netns", "exec", self.netns, "curl", "-sS", "-m",
                               str(timeout), *extra, url], capture_output=True, text=True,
                              timeout=timeout + 5)


class Fleet:
    """Two vx11 hosts and a monitoring host on a private bridge."""

    def __init__(self, n_vx11: int = 2, tag: str | None = None):
        self.tag = tag or f"vx11f-{os.getpid()}"
        self.switch = f"{self.tag}-sw"
        letters = "abcdefgh"[:n_vx11]
        self.vx11 = [Host("vx11", f"{self.tag}-{c}", f"{NET}.{11 + i}", f"{self.tag}-{c}")
                     for i, c in enumerate(letters)]
        self.mon = Host("monitor", f"{self.tag}-mon", MON_IP, f"{self.tag}-mon")
        self.hosts = [*self.vx11, self.mon]
        self.token = secrets.token_urlsafe(32)  # each host's admin (legacy token file)
        self.read_secret = ""  # the `read` credential Prometheus scrapes with
        self.pki = Path(tempfile.mkdtemp(prefix=f"{self.tag}-pki-"))

    # --- network ---------------------------------------------------------------------

    def make_network(self) -> None:
        sh("ip", "netns", "add", self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for i, h in enumerate(self.hosts):
            sh("ip", "netns", "add", h.netns)
            sh("ip", "link", "add", "eth0", "netns", h.netns, "type", "veth",
               "peer", "name", f"p{i}", "netns", self.switch)
            sh("ip", "-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up")
            sh("ip", "-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", "eth0")
            sh("ip", "-n", h.netns, "link", "set", "eth0", "up")
            sh("ip", "-n", h.netns, "link", "set", "lo", "up")

    def remove_network(self) -> None:
        for ns in [h.netns for h in self.hosts] + [self.switch]:
            sh("ip", "netns", "del", ns, check=False)

    @staticmethod
    def remove_leftovers() -> None:
        """Containers and namespaces of fleet sessions that were killed."""
        names = sh("ip", "netns", "list", check=False).stdout.split()
        for ns in names:
            parts = ns.split("-")
            if ns.startswith("vx11f-") and len(parts) >= 3 and parts[1].isdigit() \
                    and not os.path.exists(f"/proc/{parts[1]}"):
                with contextlib.suppress(Exception):
                    Sandbox(ns).down()
                sh("ip", "netns", "del", ns, check=False)
        for d in Path(tempfile.gettempdir()).glob("vx11f-*-pki-*"):
            pid = d.name.split("-")[1]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(d, ignore_errors=True)

    # --- life ------------------------------------------------------------------------

    def up(self) -> None:
        self.remove_leftovers()
        self.make_network()
        self._make_pki()
        for h in self.hosts:
            cfg = self.vx11_config(h) if h.role == "vx11" else None
            h.sb.up(timeout=180, config=cfg)
            self._common(h)
        self._monitor()
        for h in self.vx11:
            self._vx11_host(h)
        self._read_credential()

    def down(self) -> None:
        for h in self.hosts:
            with contextlib.suppress(Exception):
                h.sb.down()
        self.remove_network()
        shutil.rmtree(self.pki, ignore_errors=True)

    # --- provisioning ----------------------------------------------------------------

    def vx11_config(self, h: Host) -> str:
        """The sandbox config plus this host's fleet values (docs/fleet.md)."""
        cfg = yaml.safe_load((PKG / "sandbox" / "vx11.yml").read_text())
        for daemon in ("gateway", "madre", "reaper"):
            cfg.setdefault(daemon, {})["metrics_address"] = h.ip
        cfg["gateway"].update(auth_fail_limit=5, auth_fail_window="20s")
        # max_kills_per_scan 1: the breaker scenario's 40 runaways open the per-scan
        # breaker; breaker_max_share 1.0 keeps that from also stopping enforcement (its own
        # critical alert would inhibit the host's warnings the other scenarios expect).
        cfg["reaper"].update(interval="2s", max_kills_per_scan=1, breaker_max_share=1.0)
        cfg["reaper"]["rules"] = [*cfg["reaper"].get("rules", []),
                                  {"name": "runaway", "comm": "^vx11runaway$",
                                   "action": "terminate", "grace": "1s"}]
        cfg["rotate"] = {"roots": [{"path": "/var/lib/vx11/audit"}], "keep_days": 1}
        # the fleet's Hermes runs a tiny generated model (no download in the containers)
        cfg.setdefault("hermes", {}).update(model_path=FLEET_MODEL, model_sha256="")
        return yaml.safe_dump(cfg, sort_keys=False)

    def _common(self, h: Host) -> None:
        hosts = "127.0.0.1 localhost\n" + "".join(f"{x.ip} {x.name}\n" for x in self.hosts)
        hosts += f"{MON_IP} {JOURNAL_NAME}\n"
        h.put("/etc/hosts", hosts)
        # What the Debian packages' maintainer scripts would have made in a real /etc.
        h.put("/etc/sysusers.d/prometheus.conf",
              'u prometheus - "Prometheus daemon" /var/lib/prometheus\n')
        h.put("/etc/sysusers.d/journal-upload.conf",
              (PKG / "journal" / "sysusers-journal-upload.conf").read_text())
        h.run("systemd-sysusers")
        h.run("install", "-d", "-o", "prometheus", "-g", "prometheus", "/var/lib/prometheus")
        h.put("/etc/ssl/ca/trusted.pem", (self.pki / "ca.pem").read_text())

    def _monitor(self) -> None:
        m = self.mon
        for name in ("prometheus", "prometheus-alertmanager"):
            m.put(f"/etc/default/{name}", 'ARGS=""\n')
        m.run("install", "-d", "-o", "prometheus", "-g", "prometheus",
              "/var/lib/prometheus/metrics2", "/var/lib/prometheus/alertmanager")
        prom = yaml.safe_load((PKG / "prometheus" / "prometheus.yml").read_text())
        prom["global"].update(scrape_interval=f"{SCRAPE:g}s",
                              evaluation_interval=f"{SCRAPE:g}s")
        m.put("/etc/prometheus/prometheus.yml", yaml.safe_dump(prom, sort_keys=False))
        for rules in sorted((PKG / "prometheus").glob("*.rules.yml")):
            m.put(f"/etc/prometheus/vx11/{rules.name}", rules.read_text())
        m.put("/etc/prometheus/vx11/targets/fleet.yml", yaml.safe_dump(
            [{"targets": [h.name for h in self.vx11], "labels": {"group": "test"}}]))
        # The secret comes once the first vx11 host made the credential (_read_credential);
        # Prometheus reads this file at every scrape.
        m.put("/etc/prometheus/vx11/read-credential", "pending\n", mode=0o640,
              owner="root:prometheus")
        m.put("/etc/prometheus/vx11/ca.pem", (self.pki / "ca.pem").read_text())
        m.put("/etc/prometheus/alertmanager.yml",
              (PKG / "prometheus" / "alertmanager.yml").read_text())
        m.put("/etc/systemd/journal-remote.conf.d/vx11.conf",
              (PKG / "journal" / "remote.conf").read_text())
        m.put("/etc/ssl/certs/journal-remote.pem", (self.pki / "mon.pem").read_text())
        m.put("/etc/ssl/private/journal-remote.pem", (self.pki / "mon.key").read_text(),
              mode=0o640, owner="root:systemd-journal-remote")
        m.systemctl("daemon-reload")
        m.systemctl("start", "prometheus-alertmanager.service", "prometheus.service",
                    "systemd-journal-remote.socket")

    def _vx11_host(self, h: Host) -> None:
        h.sb.etc_vx11.joinpath("token").write_text(self.token + "\n")
        units = h.sb.state / "etc-systemd-system"
        # TLS on :8000 and :8000 open to the network: the two drop-ins of docs/security.md,
        # with this host's certificate (its name in subjectAltName) as credentials.
        tls = h.sb.etc_vx11 / "tls"
        tls.mkdir(mode=0o700, exist_ok=True)
        shutil.copy(self.pki / f"{h.name}.pem", tls / "gateway.crt")
        shutil.copy(self.pki / f"{h.name}.key", tls / "gateway.key")
        (tls / "gateway.key").chmod(0o600)
        for unit, name in (("vx11-gateway.socket", "network.conf"),
                           ("vx11-gateway.service", "tls.conf")):
            (units / f"{unit}.d").mkdir(exist_ok=True)
            (units / f"{unit}.d" / name).write_text(
                (PKG / "systemd" / f"{unit}.d" / name).read_text())
        dropin = (PKG / "fleet" / "vx11-metrics-remote.conf").read_text()
        dropin = dropin.replace("IPAddressAllow=192.0.2.10", f"IPAddressAllow={MON_IP}")
        for unit in ("vx11-madre.service", "vx11-reaper.service"):
            (units / f"{unit}.d").mkdir(exist_ok=True)
            (units / f"{unit}.d" / "metrics-remote.conf").write_text(dropin)
        h.put("/etc/default/prometheus-node-exporter", 'ARGS=""\n')
        h.put("/etc/systemd/journal-upload.conf.d/vx11.conf",
              (PKG / "journal" / "upload.conf").read_text())
        h.put("/etc/ssl/certs/journal-upload.pem", (self.pki / f"{h.name}.pem").read_text())
        h.put("/etc/ssl/private/journal-upload.pem", (self.pki / f"{h.name}.key").read_text(),
              mode=0o640, owner="root:systemd-journal-upload")
        h.systemctl("daemon-reload")
        h.systemctl("start", "vx11.target", "prometheus-node-exporter.service",
                    "systemd-journal-upload.service")

    def _read_credential(self) -> None:
        """The monitoring host's `read` credential: made on the first host, where the
        secret is printed once; only its digest file is copied to the others."""
        first = self.vx11[0]
        out = first.run("vx11ctl", "token", "add", "prometheus", "--scope", "read", "--json")
        self.read_secret = json.loads(out.stdout)["secret"]
        digest = first.run("cat", "/etc/vx11/credentials.d/prometheus").stdout
        for h in self.vx11[1:]:
            h.put("/etc/vx11/credentials.d/prometheus", digest, mode=0o640,
                  owner="root:vx11")
        self.mon.put("/etc/prometheus/vx11/read-credential", self.read_secret + "\n",
                     mode=0o640, owner="root:prometheus")

    def gateway(self, via: Host, target: Host, path: str, *extra: str,
                timeout: float = 10) -> subprocess.CompletedProcess:
        """curl from ``via`` to ``target``'s gateway over TLS, trusting the fleet's CA."""
        return via.curl(f"https://{target.name}:8000{path}", "--cacert",
                        str(self.pki / "ca.pem"), "--resolve",
                        f"{target.name}:8000:{target.ip}", *extra, timeout=timeout)

    def _make_pki(self) -> None:
        """A CA, the collector's server certificate and one certificate per host (its
        journal upload client and its gateway's TLS server). 30 days: the TLS expiry
        alert (14 days) must stay quiet."""
        d = self.pki
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
           "-subj", "/CN=vx11 fleet test CA", "-keyout", str(d / "ca.key"),
           "-out", str(d / "ca.pem"))
        names = [(self.mon.name, "mon", JOURNAL_NAME)] + [(h.name, h.name, h.name)
                                                           for h in self.vx11]
        for cn, stem, dns in names:
            sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
               "-keyout", str(d / f"{stem}.key"), "-out", str(d / f"{stem}.csr"))
            ext = d / f"{stem}.ext"
            ext.write_text(f"subjectAltName=DNS:{dns},DNS:{cn}\n")
            sh("openssl", "x509", "-req", "-in", str(d / f"{stem}.csr"), "-CA",
               str(d / "ca.pem"), "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "30",
               "-extfile", str(ext), "-out", str(d / f"{stem}.pem"))

    # --- reading the monitoring host -------------------------------------------------

    def api(self, port: int, path: str) -> dict | list:
        r = self.mon.curl(f"http://{MON_IP}:{port}{path}")
        if r.returncode != 0:
            raise OSError(f"GET :{port}{path}: {r.stderr.strip()}")
        return json.loads(r.stdout)

    def query(self, expr: str) -> list[dict]:
        """An instant query against the monitoring host's Prometheus."""
        q = urllib.parse.quote(expr, safe="")
        out = self.api(9090, f"/api/v1/query?query={q}")
        if out.get("status") != "success":
            raise ValueError(f"query {expr!r}: {out}")
        return out["data"]["result"]

    def am_alerts(self) -> list[dict]:
        """Alerts Alertmanager holds now (active or suppressed; resolved ones drop out)."""
        return self.api(9093, "/api/v2/alerts")
