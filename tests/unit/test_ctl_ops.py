"""vx11ctl logs (journalctl arguments) and scorecard checks on real files."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import poll_for
from vx11d import config, db
from vx11d.ctl import opscmd
from vx11d.errors import ConfigError


def ns(**kw):
    base = {"component": None, "event": None, "follow": False, "lines": 50, "since": None,
            "json": False, "directory": None, "host": None}
    base.update(kw)
    return argparse.Namespace(**base)


def test_logs_filters_by_unit_and_event():
    argv = opscmd.journalctl_args(ns(component="madre", event="hija_expired", json=True))
    assert argv[:2] == ["journalctl", "--no-pager"]
    assert argv[argv.index("-u"):argv.index("-u") + 2] == ["-u", "vx11-madre.service"]
    assert "VX11_EVENT=hija_expired" in argv and argv[-2:] == ["-o", "json"]
    assert "-u" in opscmd.journalctl_args(ns()) and "vx11-*" in opscmd.journalctl_args(ns())


def test_logs_reads_a_collector_directory_for_one_host(tmp_path):
    argv = opscmd.journalctl_args(ns(directory=str(tmp_path), host="vx11-a.example.org",
                                     event="hija_expired"))
    assert f"--directory={tmp_path}" in argv and "_HOSTNAME=vx11-a.example.org" in argv
    with pytest.raises(ConfigError, match="not a directory"):
        opscmd.journalctl_args(ns(directory=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="host name"):
        opscmd.journalctl_args(ns(host="a b"))


@pytest.mark.parametrize("event", ["x y", "a;rm -rf /", "VX11_EVENT=x", "../x"])
def test_logs_refuses_odd_event_names(event):
    with pytest.raises(ConfigError):
        opscmd.journalctl_args(ns(event=event))


def test_scorecard_flags_overdue_hija_and_loose_token(tmp_path):
    dbfile = tmp_path / "vx11.db"
    token = tmp_path / "token"
    token.write_text("x" * 32)
    os.chmod(token, 0o644)
    cfgfile = tmp_path / "vx11.yml"
    cfgfile.write_text(f"db:\n  path: {dbfile}\ngateway:\n  token_file: {token}\n"
                       f"  credentials_dir: {tmp_path / 'creds'}\n")
    d = db.Database(str(dbfile), migrate=True)
    now = time.time()
    d.write(lambda c: c.execute(
        "INSERT INTO spawner_hijas (id, template, ttl_s, unit, status, created_at, expires_at) "
        "VALUES ('old1', 't', 5, 'vx11-hija-old1.service', 'running', ?, ?)",
        (now - 3600, now - 3000)))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "--config", str(cfgfile),
                        "scorecard", "--out", str(out), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    card = json.loads((out / "SCORECARD.json").read_text())
    by = {c["name"]: c for c in card["checks"]}
    assert card["ok"] is False
    assert by["config_valid"]["ok"] and by["db_integrity"]["ok"]
    assert not by["no_overdue_hijas"]["ok"] and "old1" in by["no_overdue_hijas"]["detail"]
    assert not by["credential_files_modes"]["ok"]
    assert "mode 0644" in by["credential_files_modes"]["detail"]
    assert json.loads(r.stdout) == card


def test_scorecard_counts_zombies_with_the_reaper_scan(tmp_path):
    """Twelve real zombies of this process fail the zombies_low check."""
    cfgfile = tmp_path / "vx11.yml"
    cfgfile.write_text(f"db:\n  path: {tmp_path / 'vx11.db'}\nreaper:\n  hija_enforce: false\n")
    kids = []
    try:
        for _ in range(12):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            kids.append(pid)
        poll_for(lambda: all(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
                             == "Z" for p in kids), timeout=10, what="12 zombies")
        r = subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "--config", str(cfgfile),
                            "scorecard", "--out", str(tmp_path), "--json"],
                           capture_output=True, text=True)
        by = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
        assert not by["zombies_low"]["ok"]
        assert int(by["zombies_low"]["detail"].split()[0]) >= 12
    finally:
        for p in kids:
            os.waitpid(p, 0)


def test_scorecard_tls_or_loopback_rows():
    from vx11d.ctl import credcheck

    g = config.parse("", "t.yml").gateway
    assert credcheck.listen_addresses("Listen=127.0.0.1:8000 (Stream)\n"
                                      "Listen=[::1]:8000 (Stream)") == ["127.0.0.1", "::1"]
    assert credcheck.listen_addresses("Listen=8000 (Stream)") == ["*"]
    assert credcheck.tls_or_loopback(g, ["127.0.0.1", "::1"], False)["ok"]
    row = credcheck.tls_or_loopback(g, ["*"], False)
    assert not row["ok"] and "without TLS" in row["detail"]
    assert credcheck.tls_or_loopback(g, ["*"], True)["ok"]
    loud = config.parse("gateway:\n  plain_http_beyond_loopback: true\n", "t.yml").gateway
    row = credcheck.tls_or_loopback(loud, ["127.0.0.1"], True)
    assert not row["ok"] and "in clear" in row["detail"]


def test_scorecard_admin_credentials_count_and_age(tmp_path, monkeypatch):
    from vx11d import credentials
    from vx11d.ctl import credcheck

    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    d = tmp_path / "c"
    d.mkdir(mode=0o750)
    g = config.parse(f"gateway:\n  credentials_dir: {d}\n  token_file: {tmp_path}/none\n",
                     "t.yml").gateway
    assert not credcheck.admins(g)["ok"]  # none at all
    credentials.add(str(d), "a1", frozenset({"admin"}), g.token_file)
    row = credcheck.admins(g)
    assert row["ok"] and "1 admin credential(s): a1 (created" in row["detail"]
    credentials.add(str(d), "a2", frozenset({"admin"}), g.token_file,
                    created="2020-01-01T00:00:00Z")
    row = credcheck.admins(g)
    assert not row["ok"] and "a2" in row["detail"] and "rotate" in row["detail"]
    assert credcheck.modes(g)["ok"]
    os.chmod(d / "a1", 0o644)
    row = credcheck.modes(g)
    assert not row["ok"] and "a1 is mode 0644" in row["detail"]
