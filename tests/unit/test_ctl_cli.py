"""vx11ctl as an operator meets it (issue 14): read commands create nothing, errors are one
line (or JSON with --json) with a documented exit code, help speaks plain words."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vx11d.ctl import main as ctl

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vx11d.ctl.main", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture
def nodb(tmp_path: Path) -> tuple[Path, Path]:
    """A config whose db.path (and its parent dir) does not exist."""
    dbfile = tmp_path / "state" / "sub" / "vx11.db"
    cfg = tmp_path / "vx11.yml"
    cfg.write_text(f"db:\n  path: {dbfile}\n")
    return cfg, dbfile


def test_deleted_db_said_madre_creates_it_now_says_restore_or_migrate(nodb):
    """Regression (issue 24 item 11): for a deleted DB, `hijas list` said "vx11-madre
    creates it when it starts" and `status` "not created yet"; madre refuses to
    re-create a lost DB, by design."""
    cfg, dbfile = nodb
    dbfile.parent.mkdir(parents=True)
    (dbfile.parent / f".{dbfile.name}.created").touch()  # a DB was made here before
    (dbfile.parent / f"{dbfile.name}.rescued-42").touch()
    for argv in (["hijas", "list"], ["status"]):
        r = run("--config", str(cfg), *argv)
        out = r.stdout + r.stderr
        assert "not created yet" not in out and "madre creates it" not in out, out
        assert "missing, though a vx11 database was there" in out, out
        assert "vx11ctl db restore FILE" in out and f"{dbfile}.rescued-42" in out, out


def test_hijas_list_with_a_missing_db_creates_nothing(nodb):
    cfg, dbfile = nodb
    r = run("--config", str(cfg), "hijas", "list")
    assert r.returncode == 69, r.stdout + r.stderr
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"vx11ctl: {dbfile}: missing, not created yet")
    assert not dbfile.parent.exists()
    j = run("--config", str(cfg), "hijas", "list", "--json")
    assert j.returncode == 69 and j.stderr == ""
    err = json.loads(j.stdout)
    assert err == {"ok": False, "error": "db_missing", "message": err["message"],
                   "exit_code": 69} and str(dbfile) in err["message"]
    for argv in (["hijas", "stop", "abcdefghij"], ["db", "schema", "--out",
                                                    str(cfg.parent / "s")]):
        r = run("--config", str(cfg), *argv)
        assert r.returncode == 69 and "Traceback" not in r.stderr, r.stderr
    assert not dbfile.parent.exists()


def test_db_migrate_is_the_command_that_creates_it(nodb):
    cfg, dbfile = nodb
    assert run("--config", str(cfg), "db", "migrate").returncode == 0
    assert dbfile.exists()
    r = run("--config", str(cfg), "hijas", "list")
    assert r.returncode == 0 and r.stdout.strip() == "no hijas"


def test_json_errors_are_json(nodb):
    cfg, _dbfile = nodb
    assert run("--config", str(cfg), "db", "migrate").returncode == 0
    r = run("--config", str(cfg), "hijas", "stop", "nonexistent", "--json")
    assert r.returncode == 2, r.stdout + r.stderr
    err = json.loads(r.stdout)
    assert err["ok"] is False and err["error"] == "not_found" and err["exit_code"] == 2
    assert "nonexistent" in err["message"] and r.stderr == ""
    r = run("--config", str(cfg), "hijas", "stop", "nonexistent")
    assert r.returncode == 2 and r.stderr == "vx11ctl: no hija 'nonexistent'\n"
    bad = cfg.parent / "bad.yml"
    bad.write_text("nope: 1\n")
    r = run("--config", str(bad), "status", "--json")
    assert r.returncode == 78 and json.loads(r.stdout)["error"] == "config"
    r = run("status", "--json", "--no-such-flag")
    assert r.returncode == 2 and json.loads(r.stdout)["error"] == "usage"


def test_an_action_is_asked_for_by_name():
    for group, actions in (("db", "check, schema, migrate"), ("reaper", "scan"),
                           ("hijas", "list, spawn, stop"), ("config", "check, sample")):
        r = run(group)
        assert r.returncode == 2, r.stderr
        assert f"vx11ctl {group}: choose an action: {actions}" in r.stderr, r.stderr
        assert "_command" not in r.stderr and "_cmd" not in r.stderr and "required:" \
            not in r.stderr
    r = run()
    assert r.returncode == 2 and "choose a command" in r.stderr


def _parsers(p: argparse.ArgumentParser):
    yield p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for child in {id(c): c for c in a.choices.values()}.values():
                yield from _parsers(child)


def test_every_flag_has_help_and_aggressive_says_it_deletes():
    parser = ctl.build_parser()
    missing = [f"{p.prog} {'/'.join(a.option_strings) or a.dest}" for p in _parsers(parser)
               for a in p._actions if a.option_strings
               and not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == []
    rotate = next(p for p in _parsers(parser) if p.prog == "vx11ctl rotate")
    assert "DELETE archives" in rotate.format_help()


def test_readme_table_names_every_command():
    readme = (REPO / "README.md").read_text()
    rows = [ln for ln in readme.splitlines() if ln.startswith("| `vx11ctl")]
    parser = ctl.build_parser()
    for p in _parsers(parser):
        if p is parser or any(isinstance(a, argparse._SubParsersAction) for a in p._actions):
            continue
        words = p.prog.split()[1:]
        assert any(all(re.search(rf"\b{re.escape(w)}\b", row) for w in words)
                   for row in rows), f"{p.prog} is not in README's command table"


def test_scorecard_writes_beside_the_configs_db(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "vx11.yml"
    cfg.write_text(f"db:\n  path: {state / 'vx11.db'}\n")
    r = run("--config", str(cfg), "scorecard", "--json")
    assert r.returncode == 1, r.stderr  # checks fail (no DB, no units) but it is written
    assert (state / "SCORECARD.json").exists()
    assert json.loads((state / "SCORECARD.json").read_text())["checks"]
    assert not (state / "vx11.db").exists()


def test_an_unreadable_file_is_one_line_not_a_traceback(tmp_path):
    cfg = tmp_path / "vx11.yml"
    cfg.write_text(f"gateway:\n  token_file: {tmp_path / 'no-token'}\n")
    r = run("--config", str(cfg), "route", "hello", "--via-gateway")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "no-token" in r.stderr


def test_an_unexpected_exception_is_one_line_exit_70(tmp_path, monkeypatch, capsys):
    import vx11d.ctl.routecmd as routecmd

    def broken(*_a, **_k):
        raise ValueError("boom\nsecond line")

    monkeypatch.setattr(routecmd, "Switch", broken)
    cfg = tmp_path / "vx11.yml"
    cfg.write_text("")
    monkeypatch.delenv("VX11_DEBUG", raising=False)
    assert ctl.main(["--config", str(cfg), "route", "2+2"]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("vx11ctl: internal error, please report it: ValueError: boom")
    assert ctl.main(["--config", str(cfg), "route", "2+2", "--json"]) == 70
    out = json.loads(capsys.readouterr().out)
    assert out["error"] == "internal" and out["exit_code"] == 70


def test_hijas_spawn_without_ttl_asks_for_the_templates_default_ttl(tmp_path):
    """Regression: the CLI required --ttl although the template has a default_ttl."""
    dbfile = tmp_path / "vx11.db"
    cfg = tmp_path / "vx11.yml"
    cfg.write_text(f"db:\n  path: {dbfile}\ngateway:\n  madre_wake_socket: {tmp_path}/m.sock\n"
                   "madre:\n  templates:\n    sleeper:\n      command: [/usr/bin/sleep, "
                   "infinity]\n      default_ttl: 30s\n      max_ttl: 30m\n")
    assert run("--config", str(cfg), "db", "migrate").returncode == 0
    r = run("--config", str(cfg), "hijas", "spawn", "sleeper", "--wait", "0", "--json")
    # no madre here: the request stays "requested" (exit 1), with the template's TTL
    row = json.loads(r.stdout)
    assert row["status"] == "requested" and row["ttl_s"] == 30, row
