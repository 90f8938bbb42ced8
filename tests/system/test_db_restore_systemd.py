"""Issue 21 under real systemd: putting a backup back never corrupts the DB, and an
unsound file is refused. madre, the reaper and the socket-activated gateway run on a
tmpfs state dir of their own, as on a host."""

from __future__ import annotations

import json

import pytest

from tests.support import poll_for

from .conftest import STATE_DAEMONS, show
from .test_faults_gateway import api, health, sh

pytestmark = pytest.mark.system

PY = "/opt/vx11d/bin/python"
STATE = "/var/lib/vx11"
DB = f"{STATE}/vx11.db"
DAEMONS = STATE_DAEMONS
LONG = {"template": "sleeper", "ttl_s": 120}
# A sound copy the way an operator might have made one before vx11ctl db backup existed.
RAW_BACKUP = ("import sqlite3,sys; s=sqlite3.connect('file:/var/lib/vx11/vx11.db?mode=ro', "
              "uri=True); d=sqlite3.connect(sys.argv[1]); s.backup(d); d.close()")
# Checkpoint, then leave a few MB of frames in the WAL (as the daemons' writes would).
WAL_FRAMES = ("import sqlite3; c=sqlite3.connect('/var/lib/vx11/vx11.db', isolation_level=None,"
              " timeout=10); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); "
              "c.execute('PRAGMA wal_autocheckpoint=0'); "
              "[c.execute(\"INSERT INTO events (ts, component, event, subject, data) VALUES "
              "(0, 'test', 'filler', ?, ?)\", (str(i), 'x' * 600)) for i in range(1500)]")
IDS = ("import json,sqlite3; c=sqlite3.connect('file:/var/lib/vx11/vx11.db?mode=ro', uri=True);"
       " print(json.dumps({r[0]: r[1] for r in c.execute('SELECT id, status FROM "
       "spawner_hijas')}))")


def py(sb, code: str, *args: str):
    r = sb.exec([PY, "-c", code, *args], timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def spawn(sb, body=LONG) -> str:
    r = api(sb, "POST", "/vx11/spawn", body)
    assert r["status"] == 201, r
    return r["body"]["id"]


def rows(sb) -> dict[str, str]:
    return json.loads(py(sb, IDS).stdout)


def db_check(sb):
    return sb.exec(["vx11ctl", "db", "check"], timeout=60)


def torn_backup(sb) -> None:
    """/root/good.db, a sound backup, and /root/torn.db, the same with every page's
    b-tree type byte overwritten (unsound)."""
    sh(sb, "vx11ctl db backup /root/good.db")
    py(sb, "d=bytearray(open('/root/good.db','rb').read()); "
           "[d.__setitem__(i * 4096, 0x55) for i in range(1, len(d) // 4096)]; "
           "open('/root/torn.db','wb').write(bytes(d))")


def sound_whenever_ok(sb) -> bool:
    """/health ok (checked together with `db check`: ok must never mean malformed)."""
    if health(sb)["status"] != 200:
        return False
    c = db_check(sb)
    assert c.returncode == 0, f"/health says ok on an unsound DB: {c.stdout}{c.stderr}"
    return True


def test_older_backup_put_beside_a_stale_wal_got_the_deleted_files_wal_applied(state_set):
    """Regression (issue 21, scenario 1): after checkpoints, `rm vx11.db` and an older
    sound backup installed in its place, SQLite applied the deleted file's stale -wal
    and -shm to it: `db check` said malformed while /health said ok and spawns got 201.
    Now the daemons move the stale WAL aside before they take the file."""
    sb = state_set
    before = [spawn(sb), spawn(sb)]
    py(sb, RAW_BACKUP, "/root/old.db")
    after = [spawn(sb), spawn(sb)]
    py(sb, WAL_FRAMES)
    assert int(sh(sb, f"stat -c %s {DB}-wal").stdout) > 1_000_000
    sh(sb, f"rm {DB}")  # -wal and -shm stay: the running daemons hold them
    poll_for(lambda: health(sb)["body"].get("cause") == "db_missing", timeout=20,
             interval=0.5, what="/health to notice the deleted DB")
    sh(sb, f"install -m 0660 -g vx11 /root/old.db {DB}")
    poll_for(lambda: sound_whenever_ok(sb), timeout=40, interval=0.5,
             what="/health ok again on the restored file")
    new = api(sb, "POST", "/vx11/spawn", LONG)
    assert new["status"] == 201, new
    got = poll_for(lambda: (x := rows(sb)) and all(h in x for h in after) and x,
                   timeout=30, interval=0.5, what="madre to re-create the later hijas")
    for h in (*before, *after, new["body"]["id"]):
        assert got[h] == "running", (h, got)
    c = db_check(sb)
    assert c.returncode == 0, c.stdout + c.stderr
    filler = py(sb, f"import sqlite3; print(sqlite3.connect('file:{DB}?mode=ro', uri=True)"
                ".execute(\"SELECT count(*) FROM events WHERE event='filler'\")"
                ".fetchone()[0])").stdout.strip()
    assert filler == "0", "the deleted file's WAL was applied to the backup"
    aside = sh(sb, f"ls {STATE}").stdout
    assert "vx11.db-wal.stale-" in aside, aside


def test_restore_command_with_daemons_running_gives_backup_rows_plus_what_systemd_runs(
        state_set):
    sb = state_set
    before = [spawn(sb), spawn(sb)]
    r = sh(sb, "vx11ctl db backup /root/b.db --json")
    assert json.loads(r.stdout)["rows"]["spawner_hijas"] == 2
    running = [spawn(sb), spawn(sb)]
    short = spawn(sb, {"template": "sleeper", "ttl_s": 2})
    poll_for(lambda: rows(sb).get(short) == "expired", timeout=30, interval=0.5,
             what="the short hija to end")
    py(sb, WAL_FRAMES)
    r = sb.exec(["vx11ctl", "db", "restore", "/root/b.db", "--json"], timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] and rep["check"] == ["ok"], rep
    assert set(rep["not_in_backup"]["spawner_hijas"]) == {*running, short}, rep
    assert sorted(rep["recreated_from_systemd"]) == sorted(running), rep
    assert set(DAEMONS) <= set(rep["stopped"]) and set(DAEMONS) <= set(rep["started"]), rep
    assert rep["replaced_kept_as"].startswith(f"{DB}.replaced-"), rep
    c = db_check(sb)
    assert c.returncode == 0, c.stdout + c.stderr
    got = rows(sb)
    assert short not in got  # ended after the backup: listed in the report, not invented
    for h in (*before, *running):
        assert got[h] == "running", (h, got)
        unit = f"vx11-hija-{h}.service"
        assert show(sb, unit, "ActiveState")["ActiveState"] == "active", unit
    poll_for(lambda: sound_whenever_ok(sb), timeout=30, interval=0.5, what="/health ok")
    assert spawn(sb) in rows(sb)
    for u in DAEMONS:
        assert show(sb, u, "ActiveState")["ActiveState"] == "active", u


def test_restore_refuses_an_unsound_file_and_leaves_the_live_db_and_daemons_alone(
        state_set):
    sb = state_set
    hid = spawn(sb)
    torn_backup(sb)
    ino = sh(sb, f"stat -c %i {DB}").stdout
    madre_inv = show(sb, "vx11-madre.service", "InvocationID")["InvocationID"]
    r = sb.exec(["vx11ctl", "db", "restore", "/root/torn.db"], timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0] and "not touched" in lines[0], lines
    assert sh(sb, f"stat -c %i {DB}").stdout == ino
    assert show(sb, "vx11-madre.service", "InvocationID")["InvocationID"] == madre_inv
    assert rows(sb)[hid] == "running"
    assert db_check(sb).returncode == 0
    assert health(sb)["status"] == 200


def test_the_shipped_backup_timer_unit_writes_a_verified_backup_as_vx11(state_set):
    sb = state_set
    spawn(sb)
    assert show(sb, "vx11-backup.timer", "UnitFileState")["UnitFileState"] != "enabled"
    r = sb.exec(["systemctl", "start", "vx11-backup.service"], timeout=120)
    assert r.returncode == 0, r.stderr
    out = sh(sb, f"stat -c '%a %G %U %n' {STATE}/backups/vx11-*.db").stdout.split()
    assert out[:3] == ["660", "vx11", "vx11"], out
    c = sb.exec(["vx11ctl", "db", "restore", out[3], "--json"], timeout=180)
    assert c.returncode == 0 and json.loads(c.stdout)["check"] == ["ok"], c.stdout + c.stderr


def test_an_unsound_file_put_at_the_path_is_a_corrupt_fault_not_ok(state_set):
    """Issue 21, scenario 1: a file put at the path by hand was taken and served as ok
    although `db check` found it malformed. Now it is `corrupt`: 503 + Retry-After,
    metric, STATUS, until `vx11ctl db restore` puts a sound one back."""
    sb = state_set
    hid = spawn(sb)
    torn_backup(sb)
    sh(sb, f"install -m 0660 -g vx11 /root/torn.db {DB}.new && mv -f {DB}.new {DB}")
    h = poll_for(lambda: (x := health(sb))["status"] == 503
                 and x["body"].get("cause") == "corrupt" and x, timeout=20, interval=0.5,
                 what="/health to call the file corrupt")
    assert h["body"] == {"status": "degraded", "cause": "corrupt"}, h
    r = api(sb, "POST", "/vx11/spawn", LONG)
    assert r["status"] == 503 and r["body"]["cause"] == "corrupt", r
    assert int(r["headers"]["retry-after"]) >= 1, r
    m = sb.exec(["curl", "-sf", "http://127.0.0.1:9711/metrics"], timeout=10).stdout
    assert 'vx11_db_fault{cause="corrupt"} 1.0' in m
    poll_for(lambda: "DB file corrupt" in show(sb, "vx11-madre.service",
                                               "StatusText")["StatusText"],
             timeout=20, interval=0.5, what="madre's STATUS")
    r = sb.exec(["vx11ctl", "db", "restore", "/root/good.db", "--json"], timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    poll_for(lambda: sound_whenever_ok(sb), timeout=30, interval=0.5, what="/health ok")
    assert rows(sb)[hid] == "running"
