"""vx11ctl db migrate|check|schema on real files, with exit codes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys


def ctl(cfgfile, *args):
    return subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "--config", str(cfgfile),
                           *args], capture_output=True, text=True)


def test_db_check_schema_and_corruption(tmp_path):
    dbfile = tmp_path / "vx11.db"
    cfg = tmp_path / "vx11.yml"
    cfg.write_text(f"db:\n  path: {dbfile}\n")
    missing = ctl(cfg, "db", "check")
    assert missing.returncode == 1 and "missing" in missing.stdout
    assert ctl(cfg, "db", "migrate").returncode == 0
    ok = ctl(cfg, "db", "check", "--json")
    assert ok.returncode == 0 and '"ok": true' in ok.stdout
    out = tmp_path / "schema"
    r = ctl(cfg, "db", "schema", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "CREATE TABLE spawner_hijas" in (out / "DB_SCHEMA").read_text()
    assert "spawner_hijas\tmadre" in (out / "DB_MAP").read_text()
    # A dangling foreign key (written with enforcement off) is reported, exit 1.
    raw = sqlite3.connect(dbfile)
    raw.execute("INSERT INTO reaper_actions (ts, pid, rule, action, outcome, hija_id) "
                "VALUES (0, 1, 'r', 'observe', 'seen', 'ghost')")
    raw.commit()
    raw.close()
    bad = ctl(cfg, "db", "check")
    assert bad.returncode == 1 and "foreign key" in bad.stdout


def test_db_check_on_a_garbage_file_is_a_clear_error(tmp_path):
    dbfile = tmp_path / "vx11.db"
    dbfile.write_bytes(b"this is not a database" * 100)
    cfg = tmp_path / "vx11.yml"
    cfg.write_text(f"db:\n  path: {dbfile}\n")
    r = ctl(cfg, "db", "check")
    assert r.returncode == 1
    assert "not a database" in r.stderr and "Traceback" not in r.stderr
