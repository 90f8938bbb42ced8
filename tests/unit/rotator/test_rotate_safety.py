"""Safety: hard excludes at any depth, links never followed out of the root, races."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.rotate_support import NOW, OLD, archive_members, make_cfg, tree_state, write_tree
from vx11d.rotator import run


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "audits"
    r.mkdir()
    return r


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A dir outside the root whose contents must never change."""
    c = tmp_path / "canary"
    write_tree(c, {"secret.txt": b"do not touch\n", "sub/deep.txt": b"deep\n"})
    return c


def rotate(tmp_path, root, hook=None, **kw):
    cfg = make_cfg(tmp_path, [{"path": str(root)}], **kw)
    return run.rotate(cfg.rotate, now=NOW, hook=hook)


def test_hard_excluded_files_at_any_depth_stay_and_are_not_archived(tmp_path, root):
    write_tree(root / OLD, {"a.txt": b"a", "SCORECARD.json": b"{}", "x/DB_SCHEMA": b"sql",
                            "x/y/z/DB_MAP.txt": b"map", "x/y/keep.me": b"mine",
                            "x/y/plain": b"p", "DB_MAPdir/inner": b"kept with its dir"})
    rep = rotate(tmp_path, root, hard_exclude=["*.me"])
    assert not rep["errors"], rep["errors"]
    left = tree_state(root / OLD)
    assert {k.decode() for k, v in left.items() if v[0] == "f"} == {
        "SCORECARD.json", "x/DB_SCHEMA", "x/y/z/DB_MAP.txt", "x/y/keep.me", "DB_MAPdir/inner"}
    members = archive_members(root / "archive" / f"{OLD}.tar.gz")
    assert f"{OLD}/a.txt" in members and f"{OLD}/x/y/plain" in members
    for name in members:
        assert not any(s in name for s in ("SCORECARD", "DB_SCHEMA", "DB_MAP", "keep.me"))
    kept = {d["rel"] for d in rep["phases"]["archive"]["dirs"][0]["kept"]}
    assert "x/y/z/DB_MAP.txt" in kept and "DB_MAPdir" in kept
    # A second run finds the verified archive and leaves the kept files where they are.
    rep2 = rotate(tmp_path, root, hard_exclude=["*.me"])
    assert not rep2["errors"] and rep2["phases"]["archive"]["reused"] == 1
    assert tree_state(root / OLD) == left


def test_symlink_and_hardlink_out_of_the_root_leave_the_canary_intact(tmp_path, root,
                                                                      canary):
    outside_file = tmp_path / "outside.txt"
    outside_file.write_bytes(b"someone else's file\n")
    os.chown(outside_file, 65534, 65534)
    write_tree(root / OLD, {"a.txt": b"a", "to_dir": f"->{canary}",
                            "to_file": f"->{canary}/secret.txt", "rel": "->../../canary"})
    os.link(outside_file, root / OLD / "hard.txt")
    before = tree_state(canary)
    rep = rotate(tmp_path, root)
    assert not rep["errors"], rep["errors"]
    assert tree_state(canary) == before
    assert outside_file.read_bytes() == b"someone else's file\n"
    members = archive_members(root / "archive" / f"{OLD}.tar.gz")
    assert members[f"{OLD}/to_dir"] == ("l", str(canary))
    assert f"{OLD}/hard.txt" not in members
    assert not any("secret" in m and not m.endswith("to_file") for m in members)
    assert all(v[0] != "f" or v[1] != tree_state(canary)[b"secret.txt"][2]
               for v in members.values())
    # The foreign hardlink is kept in place and reported; the links themselves are gone.
    assert sorted(os.listdir(root / OLD)) == ["hard.txt"]
    reasons = [k["reason"] for k in rep["phases"]["archive"]["dirs"][0]["kept"]]
    assert any("hardlinked file owned by uid 65534" in r for r in reasons)


def test_subdir_swapped_for_a_symlink_before_open_is_not_followed(tmp_path, root, canary):
    write_tree(root / OLD, {"a.txt": b"a", "sub/b.txt": b"b", "sub/c/d.txt": b"d"})
    before = tree_state(canary)

    def swap(event, rel):
        if event == "dir" and rel == "sub":
            shutil.rmtree(root / OLD / "sub")
            os.symlink(canary, root / OLD / "sub")

    rep = rotate(tmp_path, root, hook=swap)
    assert tree_state(canary) == before
    d = rep["phases"]["archive"]["dirs"][0]
    assert d["action"] == "failed" and "changed during the walk" in " ".join(d["errors"])
    assert not (root / "archive" / f"{OLD}.tar.gz").exists()
    assert not [n for n in os.listdir(root / "archive")], "temp archive left behind"
    assert (root / OLD / "a.txt").exists(), "source removed without an archive"
    # The next run archives the link as a link and removes only the link.
    rep2 = rotate(tmp_path, root)
    assert not rep2["errors"], rep2["errors"]
    assert tree_state(canary) == before
    assert archive_members(root / "archive" / f"{OLD}.tar.gz")[f"{OLD}/sub"] == \
        ("l", str(canary))


def test_subdir_moved_out_after_open_is_never_modified(tmp_path, root, canary):
    """The walker holds the real dir's fd; the dir moves outside the root and a symlink
    takes its place: the source check before removal catches it; nothing outside moves."""
    write_tree(root / OLD, {"a.txt": b"a", "sub/b.txt": b"b"})
    moved = tmp_path / "moved_out"

    def swap(event, rel):
        if event == "file" and rel == "sub/b.txt":
            os.rename(root / OLD / "sub", moved)
            os.symlink(canary, root / OLD / "sub")

    before = tree_state(canary)
    rep = rotate(tmp_path, root, hook=swap)
    assert tree_state(canary) == before
    assert (moved / "b.txt").read_bytes() == b"b", "a dir outside the root was modified"
    assert rep["errors"] and "changed after it was archived" in " ".join(rep["errors"])
    assert (root / OLD / "a.txt").exists()


def test_brute_force_symlink_swapper_never_reaches_outside(tmp_path, root, canary):
    """A thread flips a subdir between a real dir and a symlink to the canary while
    rotations run; the canary never changes and never lands in an archive."""
    before = tree_state(canary)
    secret_hash = before[b"secret.txt"][2]
    stop = threading.Event()
    d = root / OLD

    def swapper():
        spare = tmp_path / "spare"
        while not stop.is_set():
            try:
                if (d / "sub").is_symlink():
                    (d / "sub").unlink()
                    write_tree(d, {"sub/secret.txt": b"inside copy\n"})
                else:
                    os.rename(d / "sub", spare) if not spare.exists() else \
                        shutil.rmtree(d / "sub")
                    shutil.rmtree(spare, ignore_errors=True)
                    os.symlink(canary, d / "sub")
            except OSError:
                pass

    for _ in range(15):
        write_tree(d, {"a.txt": b"a" * 1000, "b/c.txt": b"c"})
        t = threading.Thread(target=swapper)
        t.start()
        try:
            rotate(tmp_path, root)
        finally:
            stop.set()
            t.join()
            stop.clear()
        assert tree_state(canary) == before
        arch = root / "archive" / f"{OLD}.tar.gz"
        if arch.exists():
            for name, v in archive_members(arch).items():
                assert not (v[0] == "f" and v[1] == secret_hash), name
            arch.unlink()
        shutil.rmtree(d, ignore_errors=True)
        if d.is_symlink():
            d.unlink()
    assert tree_state(canary) == before


def test_a_mount_inside_an_audit_dir_is_not_crossed(tmp_path, root):
    write_tree(root / OLD, {"a.txt": b"a", "mnt/.keep": b""})
    mnt = root / OLD / "mnt"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True, check=False)
    assert r.returncode == 0, f"cannot mount tmpfs (the suite runs as root): {r.stderr!r}"
    try:
        (mnt / "on_other_fs.txt").write_bytes(b"other fs")
        rep = rotate(tmp_path, root)
        assert not rep["errors"], rep["errors"]
        assert (mnt / "on_other_fs.txt").read_bytes() == b"other fs"
        members = archive_members(root / "archive" / f"{OLD}.tar.gz")
        assert not any("mnt" in m for m in members)
        assert any("mount point" in k["reason"]
                   for k in rep["phases"]["archive"]["dirs"][0]["kept"])
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_weird_names_fifos_and_sparse_files_are_handled(tmp_path, root):
    d = root / OLD
    write_tree(d, {"new\nline.txt": b"nl", "tab\there": b"t"})
    (d / os.fsdecode(b"bad\xffbyte")).write_bytes(b"undecodable")
    os.mkfifo(d / "fifo")
    with open(d / "sparse.bin", "wb") as f:
        f.truncate(64 * 1024 * 1024)
    (root / "weird\nname").mkdir()
    t0 = time.monotonic()
    rep = rotate(tmp_path, root)
    assert time.monotonic() - t0 < 60
    assert not rep["errors"], rep["errors"]
    members = archive_members(root / "archive" / f"{OLD}.tar.gz")
    assert f"{OLD}/new\nline.txt" in members
    assert os.fsdecode(b"20260103T120000Z/bad\xffbyte") in members
    assert f"{OLD}/sparse.bin" in members and f"{OLD}/fifo" not in members
    assert os.listdir(d) == ["fifo"]  # special files stay, reported
    ignored = rep["phases"]["scan"]["roots"][0]["ignored"]
    assert ignored == [{"name": "weird\\nname", "reason": "not a timestamp name"}]


def test_unreadable_file_keeps_the_dir_with_a_clear_error():
    """Run as nobody: a 000 file cannot be read, so the dir is not archived nor removed."""
    base = Path("/tmp") / f"vx11-rotate-perm-{os.getpid()}"
    base.mkdir(mode=0o755)
    try:
        root = base / "audits"
        write_tree(root / OLD, {"ok.txt": b"ok", "secret.txt": b"no"})
        os.chmod(root / OLD / "secret.txt", 0)
        for p in [base, *base.rglob("*")]:
            os.chown(p, 65534, 65534)
        cfg_path = base / "vx11.yml"
        state = base / "state"
        state.mkdir()
        os.chown(state, 65534, 65534)
        cfg_path.write_text(f"db: {{path: {state}/vx11.db}}\nrotate:\n  roots: [{{path: {root}}}]"
                            f"\n  textfile_dir: {state}\n  lock_file: {state}/lock\n")
        os.chmod(cfg_path, 0o644)
        r = subprocess.run([os.path.join(os.path.dirname(os.sys.executable), "vx11d"),
                            "rotate", "--json"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "VX11_CONFIG": str(cfg_path)},
                           user=65534, group=65534, check=False)
        assert r.returncode == 1, r.stderr
        assert "secret.txt: cannot read: Permission denied" in r.stdout
        assert (root / OLD / "ok.txt").exists() and (root / OLD / "secret.txt").exists()
        assert not (root / "archive" / f"{OLD}.tar.gz").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)
