"""tests/textcheck.py: each rule catches its bad example and passes the good wording."""

from __future__ import annotations

from tests import textcheck as tc
from tests.textcheck import Entry


def test_epoch_float_and_integer_caught_iso_and_relative_pass():
    assert tc.epoch(["last rotation at 1765090412.8312"])
    assert tc.epoch(["expires_at 1765090412"])
    assert not tc.epoch(["expires 2026-12-07T06:13:32Z (in 12s)", "3m ago",
                         "inode 1234567", "pid 4242", "size 1765090412345 B",
                         "version 1.7650904128"])


def test_python_reprs_caught_in_prose():
    bad = ["reason None", "tls False", "listening on ('::', 8000, 0, 0)",
           "args {'a': 1}", "hijas []", "<vx11d.db.Database object at 0x7f3a2c>"]
    assert [f.split(":")[0] for f in tc.reprs(bad)] == [
        "repr None", "repr True/False", "repr ('", "repr {'", "repr []", "repr object repr"]
    assert not tc.reprs(["no hijas", "listening on [::]:8000", "TLS off", "none running"])


def test_doubled_phrase_in_one_line():
    bad = "degraded: DB file missing (/var/lib/vx11/vx11.db: DB file missing)"
    assert tc.doubled_in_line([bad])
    assert not tc.doubled_in_line(["degraded: DB file missing (/var/lib/vx11/vx11.db)",
                                   "1 hija running, next expiry in 4s; of the hija"])


def test_one_event_logged_twice_in_two_wordings():
    lines = [Entry("madre", 100.0, "database writable again (was disk_full after 4s)"),
             Entry("madre", 100.1, "DB writable again after 4s (state disk full)")]
    assert tc.doubled_lines(lines)
    # other sources, or far apart, or the same text repeated: not this rule's finding
    assert not tc.doubled_lines([Entry("madre", 100.0, lines[0].text),
                                 Entry("reaper", 100.1, lines[1].text)])
    assert not tc.doubled_lines([Entry("madre", 100.0, lines[0].text),
                                 Entry("madre", 110.0, lines[1].text)])
    assert not tc.doubled_lines([Entry("madre", 100.0, "hija k3x9a0b2c1 running"),
                                 Entry("madre", 100.5, "hija k3x9a0b2c1 expired")])


def test_running_and_expired_at_once_is_a_contradiction():
    status = ["vx11-madre.service  active/running  1 hija running, next expiry in 0s",
              "db /var/lib/vx11/vx11.db: hijas 1 expired; 12 events"]
    assert tc.contradictions(status)
    assert not tc.contradictions(
        ["vx11-madre.service  active/running  0 hijas running",
         "db /var/lib/vx11/vx11.db: hijas 1 expired; 12 events"])
    assert not tc.contradictions(
        ["vx11-madre.service  active/running  2 hijas running, next expiry in 3s",
         "db /var/lib/vx11/vx11.db: hijas 1 expired, 2 running; 12 events"])
    one_hija = ["k3x9a0b2c1  sleeper  running  port 9000  expires in 3s",
                "hija k3x9a0b2c1 expired at its TTL"]
    assert tc.contradictions(one_hija)


def test_a_command_telling_you_to_run_itself():
    out = ["db check: unsound: 2 problems (run `vx11ctl db check`)"]
    assert tc.self_command("vx11ctl db check", out)
    assert not tc.self_command("vx11ctl db check",
                               ["restore a backup: run `vx11ctl db restore FILE`"])
    assert tc.self_command("vx11ctl status", ["run vx11ctl status to see it"])
    assert not tc.self_command("vx11ctl hijas list",
                               ["no database: restore one (`vx11ctl db restore FILE`)"])


def test_snapshot_combines_the_rules():
    assert tc.snapshot("vx11ctl status", ["ok", "all good"]) == []
    got = tc.snapshot("vx11ctl status", ["x None", "at 1765090412.5"])
    assert len(got) == 2


def test_counts_said_to_lag_are_no_contradiction_paths_no_doubled_phrase():
    assert not tc.contradictions(
        ["vx11-madre.service  active/running  0 hijas running; degraded: DB locked, "
         "2 transitions pending",
         "db /var/lib/vx11/vx11.db: hijas 2 running as last recorded (madre holds newer "
         "ones, see above); 11 events"])
    assert not tc.doubled_in_line(
        ["degraded: DB locked (/var/lib/vx11/vx11.db: still locked; `fuser "
         "/var/lib/vx11/vx11.db` shows who)",
         "stopped vx11-gateway.socket, vx11-madre.service; started again: "
         "vx11-madre.service, vx11-gateway.socket"])
