"""``vx11ctl db backup|restore`` with no daemon running, and a Database handle adopting a
restored file, on real files: the stale WAL of a deleted file is never applied."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from vx11d import db
from vx11d.errors import DbCorrupt

HOLD = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("PRAGMA wal_autocheckpoint=0")
for i in range(int(sys.argv[2])):
    c.execute("INSERT INTO events (ts, component, event, subject, data) "
              "VALUES (0, 'filler', 'x', ?, ?)", (str(i), "y" * 400))
c.execute("DELETE FROM spawner_hijas")
print("ready", flush=True)
sys.stdin.readline()
"""


def ctl(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "--config", str(cfg),
                           *args], capture_output=True, text=True, timeout=120)


def config(tmp_path: Path) -> tuple[Path, Path]:
    state = tmp_path / "state"
    state.mkdir()
    dbp = state / "vx11.db"
    cfg = tmp_path / "vx11.yml"
    cfg.write_text(f"db:\n  path: {dbp}\n")
    assert ctl(cfg, "db", "migrate").returncode == 0
    os.chmod(dbp, 0o660)
    return cfg, dbp


def add_hija(path: Path, n: int = 1) -> list[str]:
    ids = []
    c = sqlite3.connect(path, isolation_level=None)
    for _ in range(n):
        hid = uuid.uuid4().hex[:12]
        c.execute("INSERT INTO spawner_hijas (id, template, ttl_s, unit, status, created_at)"
                  " VALUES (?, 'sleeper', 60, ?, 'exited', ?)",
                  (hid, f"vx11-hija-{hid}.service", time.time()))
        ids.append(hid)
    c.close()
    return ids


def hija_ids(path: Path) -> set[str]:
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0] for r in c.execute("SELECT id FROM spawner_hijas")}
    finally:
        c.close()


def digest(*paths: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.exists()}


def test_backup_is_a_sound_self_contained_copy_with_the_live_files_mode(tmp_path):
    cfg, dbp = config(tmp_path)
    before = add_hija(dbp, 3)
    dest = tmp_path / "b.db"
    r = ctl(cfg, "db", "backup", str(dest), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["rows"]["spawner_hijas"] == 3 and out["mode"] == "0660"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o660
    assert not Path(f"{dest}-wal").exists()  # self-contained: rollback-journal mode
    assert dest.read_bytes()[18:20] == b"\x01\x01"
    assert hija_ids(dest) == set(before)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".b.db")] == []
    over = ctl(cfg, "db", "backup", str(dbp))
    assert over.returncode == 1 and "is the live database" in over.stderr, over.stderr


def test_backup_default_dir_keeps_the_n_newest(tmp_path):
    cfg, dbp = config(tmp_path)
    made = []
    for _ in range(3):
        r = ctl(cfg, "db", "backup", "--keep", "2", "--json")
        assert r.returncode == 0, r.stderr
        made.append(json.loads(r.stdout)["file"])
        time.sleep(1.05)  # names carry the second
    left = sorted(str(p) for p in (dbp.parent / "backups").iterdir())
    assert left == sorted(made[1:])


def test_restore_with_no_daemon_puts_the_backup_back_and_reports_what_it_lacks(tmp_path):
    cfg, dbp = config(tmp_path)
    kept = add_hija(dbp, 2)
    dest = tmp_path / "b.db"
    assert ctl(cfg, "db", "backup", str(dest)).returncode == 0
    later = add_hija(dbp, 3)
    r = ctl(cfg, "db", "restore", str(dest), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] and rep["check"] == ["ok"]
    assert sorted(rep["not_in_backup"]["spawner_hijas"]) == sorted(later)
    assert hija_ids(dbp) == set(kept)
    kept_as = Path(rep["replaced_kept_as"])
    assert hija_ids(kept_as) == set(kept) | set(later)  # the replaced DB, whole
    c = ctl(cfg, "db", "check")
    assert c.returncode == 0, c.stdout + c.stderr
    # nothing deletes the replaced DB: `db check` says it is there, and how big
    assert f"{dbp}: ok\nkept beside it: 1 replaced database, " in c.stdout, c.stdout
    assert f"({kept_as.name}); nothing deletes them" in c.stdout, c.stdout
    text = ctl(cfg, "db", "restore", str(dest))
    assert text.returncode == 0 and "not in the backup: nothing" in text.stdout, text.stdout
    j = json.loads(ctl(cfg, "db", "check", "--json").stdout)
    assert j["kept"][0]["path"] == str(kept_as)
    assert len(j["kept"]) == 2 and all(k["bytes"] > 0 for k in j["kept"]), j
    assert j["kept"][0]["files"][0] == str(kept_as), j  # with its -wal/-shm, if any


def test_restore_refuses_an_unsound_file_and_leaves_the_live_db_untouched(tmp_path):
    cfg, dbp = config(tmp_path)
    add_hija(dbp, 2)
    good = tmp_path / "good.db"
    assert ctl(cfg, "db", "backup", str(good)).returncode == 0
    live = digest(dbp, Path(f"{dbp}-wal"))
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all " * 200)
    torn = tmp_path / "torn.db"
    raw = bytearray(good.read_bytes())
    for page in range(1, len(raw) // 4096):
        raw[page * 4096] = 0x55  # no valid b-tree page type: every table page torn
    torn.write_bytes(bytes(raw))
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.commit()
    for bad in (garbage, torn, foreign, tmp_path / "nothing-here.db", dbp):
        r = ctl(cfg, "db", "restore", str(bad))
        assert r.returncode == 1, (bad, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and (("refused" in lines[0] and "not touched" in lines[0])
                                    or "is the live database" in lines[0]), lines
        assert "Traceback" not in r.stderr
        assert digest(dbp, Path(f"{dbp}-wal")) == live
    leftovers = [p.name for p in dbp.parent.iterdir() if p.name.startswith(".vx11.db.")]
    assert leftovers == [".vx11.db.created"], leftovers


def _stale_wal_beside(dbp: Path) -> None:
    """What `rm vx11.db` under a running writer leaves: the deleted file's -wal and -shm,
    full of frames, beside the path."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(dbp), "3000"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        os.unlink(dbp)
    finally:
        holder.communicate("\n", timeout=30)
    assert Path(f"{dbp}-wal").stat().st_size > 1_000_000


def test_restore_after_rm_never_applies_the_stale_wal_of_the_deleted_file(tmp_path):
    """Regression (issue 21, scenario 1): an older backup put back beside the deleted
    DB's stale -wal/-shm was corrupted by SQLite applying them."""
    cfg, dbp = config(tmp_path)
    kept = add_hija(dbp, 4)
    dest = tmp_path / "b.db"
    assert ctl(cfg, "db", "backup", str(dest)).returncode == 0
    _stale_wal_beside(dbp)
    r = ctl(cfg, "db", "restore", str(dest), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["check"] == ["ok"]
    c = ctl(cfg, "db", "check")
    assert c.returncode == 0, c.stdout + c.stderr
    assert hija_ids(dbp) == set(kept)


def test_a_handle_adopting_a_restored_file_moves_the_stale_wal_aside(dbpath):
    """Regression (issue 21, scenario 1, the daemon side): daemons that had the deleted
    file open adopted the backup put at the path, and SQLite applied the old WAL (whose
    index another daemon still held) to it: malformed, served as ok."""
    dbp = Path(dbpath)
    d = db.Database(dbpath)
    d.event("test", "base")
    backup = dbp.parent / "b.db"
    _copy_of(dbpath, backup)
    d.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    other = subprocess.Popen([sys.executable, "-c", HOLD, dbpath, "1000"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:  # another daemon writing, then gone (restarted): its frames stay in the WAL
        assert other.stdout.readline().strip() == "ready"
        assert d.query("SELECT count(*) FROM events")[0][0] > 1000
        os.unlink(dbp)
    finally:
        other.communicate("\n", timeout=30)
    with pytest.raises(db.DbMissing):
        d.query("SELECT 1")
    d.close()  # as madre does before it reopens a file that came back
    assert Path(f"{dbpath}-wal").stat().st_size > 1_000_000
    os.link(backup, dbp)  # an operator's `cp backup vx11.db`, done by hand
    got = d.query("SELECT count(*) FROM events WHERE event = 'base'")
    assert got[0][0] == 1
    # the backup's content, not the deleted file's WAL laid over it
    assert d.query("SELECT count(*) FROM events WHERE component = 'filler'")[0][0] == 0
    assert db.check(d) == []
    d.event("test", "written after adoption")
    assert d.health() == ("ok", "", "")
    aside = [p.name for p in dbp.parent.iterdir() if ".stale-" in p.name]
    assert len(aside) == 2, aside  # -wal and -shm, kept, not deleted
    fresh = db.Database(dbpath, readonly=True)
    assert db.check(fresh) == []
    assert fresh.query("SELECT count(*) FROM events WHERE component = 'filler'")[0][0] == 0


def test_a_handle_refuses_an_unsound_file_put_at_the_path_as_corrupt(dbpath):
    dbp = Path(dbpath)
    d = db.Database(dbpath)
    d.event("test", "base")
    good = dbp.parent / "good.db"
    _copy_of(dbpath, good)
    out = sqlite3.connect(good)
    out.execute("PRAGMA journal_mode=DELETE")
    for _ in range(200):
        out.execute("INSERT INTO events (ts, component, event, data) VALUES (0, 'c', 'e', ?)",
                    ("q" * 500,))
    out.commit()
    out.close()
    raw = bytearray(good.read_bytes())
    for page in range(1, len(raw) // 4096):
        raw[page * 4096] = 0x55  # no valid b-tree page type
    os.unlink(dbp)
    with pytest.raises(db.DbMissing):
        d.query("SELECT 1")
    dbp.write_bytes(bytes(raw))
    with pytest.raises(DbCorrupt):
        d.event("test", "into a corrupt file")
    status, cause, msg = d.health()
    assert (status, cause) == ("degraded", "corrupt") and "vx11ctl db restore" in msg
    # a sound file put there next is taken
    os.unlink(dbp)
    db.Database(str(dbp), migrate=True, create=True).close()
    d.event("test", "after a sound file came")
    assert d.health() == ("ok", "", "")


def test_a_read_only_wal_db_without_its_shm_is_readable(tmp_path):
    """Issue 21 (faults list): a WAL database on a read-only filesystem with no -shm
    beside it (SQLite would have to create one) could not be read at all; with no -wal
    there every committed page is in the file: vx11ctl reads it immutable."""
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "vx11.yml"
    dbp = state / "vx11.db"
    cfg.write_text(f"db:\n  path: {dbp}\n")
    make = (f"from vx11d import db; db.Database('{dbp}', migrate=True).close(); "
            f"import os; [os.unlink(f'{dbp}' + s) for s in ('-wal', '-shm') "
            f"if os.path.exists(f'{dbp}' + s)]; "
            f"assert open('{dbp}', 'rb').read()[18:20] == bytes([2, 2])")
    script = (f"mount -t tmpfs -o size=4m tmpfs {state} && "
              f"{sys.executable} -c \"{make}\" && mount -o remount,ro {state} && "
              f"exec {sys.executable} -m vx11d.ctl.main --config {cfg} db check --json")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=120,
                       cwd=str(Path(__file__).resolve().parents[2]))
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["ok"] is True


def _copy_of(dbpath: str, dest: Path) -> None:
    src = sqlite3.connect(dbpath)
    out = sqlite3.connect(dest)
    src.backup(out)
    out.close()
    src.close()


def test_a_file_moved_away_and_back_keeps_its_own_wal(dbpath):
    """Never throw away a WAL that belongs to the file: `mv vx11.db x; mv x vx11.db`
    brings back the very file the WAL belongs to, with committed frames only there."""
    dbp = Path(dbpath)
    d = db.Database(dbpath)
    d.conn.execute("PRAGMA wal_autocheckpoint=0")
    for i in range(50):
        d.event("test", "in-the-wal", subject=str(i))
    assert Path(f"{dbpath}-wal").stat().st_size > 0
    os.rename(dbp, f"{dbpath}.away")
    with pytest.raises(db.DbMissing):
        d.query("SELECT 1")
    os.rename(f"{dbpath}.away", dbp)
    assert d.query("SELECT count(*) FROM events WHERE event = 'in-the-wal'")[0][0] == 50
    assert [p.name for p in dbp.parent.iterdir() if ".stale-" in p.name] == []
    assert db.check(d) == []


def test_a_second_handle_adopting_later_leaves_the_new_files_wal_alone(dbpath):
    """madre and the reaper have two handles each: the one that adopts second must not
    take the WAL the first one started for the new file for a stale one."""
    dbp = Path(dbpath)
    first, second = db.Database(dbpath), db.Database(dbpath, readonly=True)
    first.event("test", "base")
    assert second.query("SELECT count(*) FROM events")[0][0] >= 1
    backup = dbp.parent / "b.db"
    _copy_of(dbpath, backup)
    first.conn.execute("PRAGMA wal_autocheckpoint=0")
    for i in range(200):
        first.event("test", "after-backup", subject=str(i))
    os.unlink(dbp)
    for h in (first, second):
        with pytest.raises(db.DbMissing):
            h.query("SELECT 1")
    os.link(backup, dbp)
    first.conn.execute("PRAGMA wal_autocheckpoint=0")  # adopts, moves the stale WAL aside
    for i in range(30):
        first.event("test", "into-the-new-wal", subject=str(i))
    new_wal = Path(f"{dbpath}-wal").stat().st_ino
    got = second.query("SELECT count(*) FROM events WHERE event = 'into-the-new-wal'")
    assert got[0][0] == 30
    assert Path(f"{dbpath}-wal").stat().st_ino == new_wal
    assert second.query("SELECT count(*) FROM events WHERE event = 'after-backup'")[0][0] == 0
    assert len([p for p in dbp.parent.iterdir() if ".stale-" in p.name]) == 2
