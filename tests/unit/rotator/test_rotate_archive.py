"""Archives: written from the walk, verified by reading back; corruption is caught."""

from __future__ import annotations

import gzip
import os
import subprocess
import zlib
from pathlib import Path

import pytest

from tests.rotate_support import NOW, OLD, archive_members, audit_tree, make_cfg, tree_state
from vx11d.rotator import archive, run
from vx11d.rotator.walk import Policy, Walker, patterns_for


def build(tmp_path: Path, root: Path, name: str, threads: int = 1
          ) -> tuple[Path, archive.Written]:
    rst = os.stat(root)
    pol = Policy(patterns_for(()), rst.st_dev, rst.st_uid)
    out = tmp_path / f"{name}.tar.gz"
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        w = archive.write(fd, name, Walker(pol, open_files=True).walk(root_fd, name), 6,
                          threads)
        archive.verify_exact(fd, name, w)
    finally:
        os.close(fd)
        os.close(root_fd)
    return out, w


def verify(path: Path, name: str, w: archive.Written) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        archive.verify_exact(fd, name, w)
    finally:
        os.close(fd)


def test_written_archive_reads_back_exactly(tmp_path):
    root = tmp_path / "r"
    files = audit_tree(root, OLD)
    (root / OLD / "big.bin").write_bytes(os.urandom(3 << 20))
    out, w = build(tmp_path, root, OLD)
    assert w.files == len(files) + 1 and w.bytes_in == sum(map(len, files.values())) + (3 << 20)
    m = archive_members(out)
    assert set(m) >= {f"{OLD}/{r}" for r in files}
    assert w.bytes_out == out.stat().st_size


def test_a_parallel_archive_extracts_byte_identical_with_tar(tmp_path):
    """Several threads, many 1 MiB blocks: a multi-member gzip file that tar -xzf,
    gzip -t and Python's gzip read as one stream."""
    root = tmp_path / "r"
    files = audit_tree(root, OLD)
    big = (b"2026-01-03T12:00:00Z INFO vx11-madre: hija spawned ttl 30s\n" * 120_000
           + os.urandom(1 << 20))
    (root / OLD / "big.log").write_bytes(big)
    out, w = build(tmp_path, root, OLD, threads=3)
    assert w.bytes_out == out.stat().st_size
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "-xzf", str(out), "-C", str(dest)], check=True)
    subprocess.run(["gzip", "-t", str(out)], check=True)
    assert (dest / OLD / "big.log").read_bytes() == big
    for rel, data in files.items():
        assert (dest / OLD / rel).read_bytes() == data, rel
    (tmp_path / "one").mkdir()
    single, _ = build(tmp_path / "one", root, OLD, threads=1)
    assert out.stat().st_size <= single.stat().st_size * 1.02
    assert single.read_bytes() == out.read_bytes(), "threads changed the bytes written"


def test_an_archive_cut_at_a_gzip_member_boundary_is_detected(tmp_path):
    """Cut exactly between two 1 MiB members, the file is still valid gzip (gzip -t
    passes): only the comparison with what was written catches it."""
    root = tmp_path / "r"
    audit_tree(root, OLD, n_files=20)
    (root / OLD / "big.log").write_bytes(b"2026-01-03T12:00:00Z INFO hija spawned\n" * 90_000)
    out, w = build(tmp_path, root, OLD, threads=2)
    data = out.read_bytes()
    cuts = [i for i in range(10, len(data)) if data.startswith(b"\x1f\x8b\x08", i)
            and _gunzips(data[:i])]
    assert cuts, "no member boundary found"
    out.write_bytes(data[:cuts[-1]])
    assert subprocess.run(["gzip", "-t", str(out)]).returncode == 0
    with pytest.raises(archive.VerifyError, match="bytes read back"):
        verify(out, OLD, w)
    fd = os.open(out, os.O_RDONLY)
    try:
        with pytest.raises(archive.VerifyError):
            list(archive.read_keys(fd, OLD))
    finally:
        os.close(fd)


def _gunzips(data: bytes) -> bool:
    try:
        gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        return False
    return True


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("damage", ["truncate", "bitflip_middle", "bitflip_end", "append"])
def test_truncated_or_bit_flipped_archive_is_detected(tmp_path, damage, threads):
    root = tmp_path / "r"
    audit_tree(root, OLD, n_files=50)
    (root / OLD / "big.bin").write_bytes(os.urandom(1 << 20) + b"text " * 600000)
    out, w = build(tmp_path, root, OLD, threads)
    data = bytearray(out.read_bytes())
    if damage == "truncate":
        data = data[: len(data) * 2 // 3]
    elif damage == "bitflip_middle":
        data[len(data) // 2] ^= 0x10
    elif damage == "bitflip_end":
        data[-12] ^= 0x01
    else:
        data += b"garbage"
    out.write_bytes(bytes(data))
    with pytest.raises(archive.VerifyError):
        verify(out, OLD, w)


def test_corruption_before_verify_keeps_the_source(tmp_path):
    """The temp archive is damaged between write and verify: no rename, source kept."""
    root = tmp_path / "r"
    audit_tree(root, OLD, n_files=20)
    before = tree_state(root / OLD)

    def corrupt(event, path):
        if event == "archive_written":
            with open(path, "r+b") as f:
                f.seek(os.path.getsize(path) // 2)
                b = f.read(1)
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([b[0] ^ 0xFF]))

    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    rep = run.rotate(cfg.rotate, now=NOW, hook=corrupt)
    assert rep["phases"]["archive"]["failed"] == 1
    assert any("unreadable" in e or "differ" in e for e in rep["errors"]), rep["errors"]
    assert tree_state(root / OLD) == before
    assert os.listdir(root / "archive") == []


def test_corrupt_final_archive_is_set_aside_and_rebuilt_from_the_source(tmp_path):
    root = tmp_path / "r"
    files = audit_tree(root, OLD)
    (root / "archive").mkdir()
    final = root / "archive" / f"{OLD}.tar.gz"
    final.write_bytes(b"\x1f\x8b not really gzip")
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    rep = run.rotate(cfg.rotate, now=NOW)
    assert any("does not verify" in e for e in rep["errors"])
    aside = [n for n in os.listdir(root / "archive") if ".bad-" in n]
    assert len(aside) == 1, "the unverifiable archive must be kept, not deleted"
    m = archive_members(final)
    assert {f"{OLD}/{r}" for r in files} <= set(m)
    assert not (root / OLD).exists()


def test_existing_archive_covering_a_partly_removed_source_is_reused(tmp_path):
    root = tmp_path / "r"
    audit_tree(root, OLD, n_files=10)
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    (root / "archive").mkdir()
    out, _w = build(tmp_path, root, OLD)
    os.rename(out, root / "archive" / f"{OLD}.tar.gz")
    for i in range(5):  # a crash in the middle of the removal
        (root / OLD / f"f{i}.txt").unlink()
    rep = run.rotate(cfg.rotate, now=NOW)
    assert not rep["errors"], rep["errors"]
    assert rep["phases"]["archive"]["reused"] == 1
    assert not (root / OLD).exists()


def test_existing_archive_missing_a_source_file_is_rebuilt(tmp_path):
    root = tmp_path / "r"
    audit_tree(root, OLD, n_files=3)
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    (root / "archive").mkdir()
    out, _w = build(tmp_path, root, OLD)
    os.rename(out, root / "archive" / f"{OLD}.tar.gz")
    (root / OLD / "late.txt").write_bytes(b"added after the archive")
    rep = run.rotate(cfg.rotate, now=NOW)
    assert any("not in the archive" in e for e in rep["errors"])
    m = archive_members(root / "archive" / f"{OLD}.tar.gz")
    assert f"{OLD}/late.txt" in m


def test_source_walk_failure_never_sets_a_sound_archive_aside(tmp_path, monkeypatch):
    from vx11d.rotator.walk import WalkError

    root = tmp_path / "r"
    audit_tree(root, OLD, n_files=3)
    (root / "archive").mkdir()
    out, _w = build(tmp_path, root, OLD)
    final = root / "archive" / f"{OLD}.tar.gz"
    os.rename(out, final)

    def failing(*a, **k):
        raise WalkError("sub: changed during the walk")

    monkeypatch.setattr(run, "_verify_existing", failing)
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    rep = run.rotate(cfg.rotate, now=NOW)
    assert rep["phases"]["archive"]["failed"] == 1
    assert os.listdir(root / "archive") == [final.name]
    assert (root / OLD / "f0.txt").exists()
