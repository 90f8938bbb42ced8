"""Scorecard additions on real files: leaked secrets, audit size budget, rotate timer."""

from __future__ import annotations

import os

from vx11d import config
from vx11d.ctl import hygiene

TOKEN = "tok-0123456789abcdefghijklmnop"
KEY = "sk-remote-key-9876543210zyxw"


def cfg_for(tmp_path, budget="10G"):
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    os.chmod(tok, 0o600)
    key = tmp_path / "remote.key"
    key.write_text(KEY + "\n")
    root = tmp_path / "audit"
    root.mkdir()
    text = (f"gateway: {{token_file: {tok}}}\nremote: {{api_key_file: {key}}}\n"
            f"rotate: {{roots: [{{path: {root}}}], size_budget: {budget}}}\n")
    return config.parse(text, str(tmp_path / "vx11.yml")), root


def test_secrets_found_in_audit_roots_are_named_by_file_never_by_value(tmp_path):
    cfg, root = cfg_for(tmp_path)
    run = root / "20260101T000000Z" / "logs"
    run.mkdir(parents=True)
    (run / "ok.log").write_text("nothing here\n")
    # the key straddles the 1 MiB read boundary: still found
    (run / "leak.log").write_bytes(b"x" * (hygiene.CHUNK - 5) + KEY.encode() + b"\n")
    (run / "token.txt").write_text(f"curl -H 'X-VX11-Token: {TOKEN}'\n")
    (root / "archive").mkdir()
    (root / "archive" / "old.tar.gz").write_bytes(TOKEN.encode())  # not searched
    (root / "link").symlink_to(tmp_path / "token")  # never followed
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "notes").write_text(TOKEN)
    os.chmod(etc / "notes", 0o644)
    (etc / "private").write_text(TOKEN)
    os.chmod(etc / "private", 0o600)
    checks = {c["name"]: c for c in hygiene.leak_checks(cfg, str(etc))}
    audit = checks["secrets_not_in_audit_roots"]
    assert not audit["ok"]
    assert f"remote API key in {run / 'leak.log'}" in audit["detail"]
    assert f"API token in {run / 'token.txt'}" in audit["detail"]
    assert "ok.log" not in audit["detail"] and "link" not in audit["detail"]
    world = checks["secrets_not_world_readable"]
    assert not world["ok"] and f"API token in {etc / 'notes'} (mode 644)" in world["detail"]
    assert "private" not in world["detail"]
    for c in checks.values():
        assert TOKEN not in str(c) and KEY not in str(c)


def test_clean_roots_pass_and_say_what_was_searched(tmp_path):
    cfg, root = cfg_for(tmp_path)
    (root / "a.log").write_text("fine\n")
    (root / "b.tar.gz").write_bytes(b"\x1f\x8b")
    checks = {c["name"]: c for c in hygiene.leak_checks(cfg, str(tmp_path / "none"))}
    assert checks["secrets_not_in_audit_roots"]["ok"]
    assert checks["secrets_not_in_audit_roots"]["detail"] == (
        f"not found in 1 files under {root} (1 compressed archives not searched)")
    assert checks["secrets_not_world_readable"]["ok"]


def test_unreadable_token_fails_the_check_with_the_reason(tmp_path):
    cfg = config.parse(f"gateway: {{token_file: {tmp_path / 'absent'}}}\n", "x.yml")
    (c,) = hygiene.leak_checks(cfg)
    assert not c["ok"] and str(tmp_path / "absent") in c["detail"]


def test_audit_size_against_budget(tmp_path):
    cfg, root = cfg_for(tmp_path, budget="1M")
    (root / "big").write_bytes(os.urandom(2 * 1024 * 1024))
    c = hygiene.audit_size(cfg)
    assert not c["ok"] and c["detail"].startswith("2.0 MiB of 1.0 MiB (rotate.size_budget)")
    assert str(root) in c["detail"]
    (tmp_path / "roomy").mkdir()
    cfg, root = cfg_for(tmp_path / "roomy", budget="10M")
    (root / "small").write_bytes(b"x" * 4096)
    assert hygiene.audit_size(cfg)["ok"]


def test_rotate_timer_enabled_and_scheduled():
    """Its properties as D-Bus gives them (vx11d.units), not `systemctl show` text."""
    def props(state, active, nxt=1_796_602_380 * 10**6, last=0):
        return {"UnitFileState": state, "ActiveState": active,
                "NextElapseUSecRealtime": nxt, "LastTriggerUSec": last}
    ok = hygiene.rotate_timer(props("enabled", "active"))
    assert ok["ok"] and "next 2026-12-07T00:13:00Z (" in ok["detail"], ok
    assert "last triggered never" in ok["detail"]
    bad = hygiene.rotate_timer(props("disabled", "inactive", nxt=2**64 - 1))
    assert not bad["ok"] and "vx11-rotate.timer disabled, inactive; next not scheduled" \
        in bad["detail"], bad


def test_last_rotation_recent_or_not():
    now = 1_800_000_000.0
    assert hygiene.last_rotation(now - 3600, now)["ok"]
    old = hygiene.last_rotation(now - 48 * 3600, now)
    assert not old["ok"] and "(2d ago)" in old["detail"] and "limit 36 h" in old["detail"]
    assert not hygiene.last_rotation(None, now)["ok"]


def test_scorecard_rotation_not_yet_due_on_a_fresh_install():
    """Regression: vx11ctl scorecard exited 1 on every fresh install (FAIL rotation_recent:
    no successful rotation recorded) before the daily timer had a chance to fire."""
    now = 1_800_000_000.0
    fresh = hygiene.last_rotation(None, now, since=now - 600)
    assert fresh["ok"] and fresh["due"] is False, fresh
    assert fresh["detail"].startswith("not yet due: no rotation since the database was "
                                      "made"), fresh
    assert "10m ago" in fresh["detail"], fresh
    # past the limit with still no rotation: a failure again
    late = hygiene.last_rotation(None, now, since=now - 40 * 3600)
    assert not late["ok"] and "no successful rotation" in late["detail"], late
    # a rotation that ran and is old is never "not yet due"
    assert not hygiene.last_rotation(now - 48 * 3600, now, since=now - 600)["ok"]


def test_cgroup_hierarchy_names_unified_hybrid_and_legacy_hosts(tmp_path):
    from vx11d.ctl.hygiene import cgroup_hierarchy

    pure = tmp_path / "pure"
    pure.write_text("35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    hybrid = tmp_path / "hybrid"
    hybrid.write_text("35 34 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    legacy = tmp_path / "legacy"
    legacy.write_text("36 34 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    got = {k: cgroup_hierarchy(str(p)) for k, p in
           (("pure", pure), ("hybrid", hybrid), ("legacy", legacy))}
    assert all(c["name"] == "cgroup_hierarchy" and c["ok"] for c in got.values())
    assert str(got["pure"]["detail"]).startswith("unified (cgroup v2) at /sys/fs/cgroup")
    assert str(got["hybrid"]["detail"]).startswith("hybrid (legacy v1 controllers, v2 at "
                                                   "/sys/fs/cgroup/unified")
    assert str(got["legacy"]["detail"]).startswith("legacy (cgroup v1 only)")
