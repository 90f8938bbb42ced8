"""Helpers for the rotator's tests: build audit trees, hash them, read archives back."""

from __future__ import annotations

import calendar
import hashlib
import os
import stat
import tarfile
from pathlib import Path

import yaml

from vx11d import config

# A fixed clock: 2026-01-20 12:00:00 UTC.
NOW = float(calendar.timegm((2026, 1, 20, 12, 0, 0)))
OLD = "20260103T120000Z"          # 17 days before NOW: due
OLD_LABEL = "20260105T080000Z_smoke"  # 15 days: due
RECENT = "20260118T120000Z"        # 2 days: active
FUTURE = "20260201T000000Z"        # in the future


def make_cfg(tmp_path: Path, roots: list[dict], **rotate) -> config.Config:
    """A Config with rotate roots, lock, textfile dir and DB all under tmp_path."""
    out = tmp_path / "state"
    out.mkdir(exist_ok=True)
    data = {"db": {"path": str(out / "vx11.db")},
            "rotate": {"roots": roots, "textfile_dir": str(out),
                       "lock_file": str(out / "rotate.lock"), "workers": 1, **rotate}}
    path = tmp_path / "vx11.yml"
    path.write_text(yaml.safe_dump(data))
    return config.load(str(path))


def write_tree(base: Path, files: dict[str, bytes | str]) -> None:
    """Files under base; a str value starting with '->' makes a symlink."""
    for rel, content in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str) and content.startswith("->"):
            os.symlink(content[2:], p)
        else:
            p.write_bytes(content if isinstance(content, bytes) else content.encode())


def audit_tree(root: Path, name: str, n_files: int = 5) -> dict[str, bytes]:
    files = {f"f{i}.txt": f"{name} line {i}\n".encode() * (i + 1) for i in range(n_files)}
    files["logs/run.log"] = f"{name} run log\n".encode() * 200
    files["logs/deep/x.json"] = b'{"ok": true}\n'
    write_tree(root / name, files)
    return files


def tree_state(path: Path) -> dict[str, tuple]:
    """Every entry under path: kind, mode and content hash or link target (no following)."""
    out: dict[str, tuple] = {}
    base = os.fsencode(path)
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    out[rel] = ("f", stat.S_IMODE(st.st_mode),
                                hashlib.sha256(f.read()).hexdigest())
            else:
                out[rel] = ("other", st.st_mode)
    return out


def archive_members(path: Path) -> dict[str, tuple]:
    """Members of a tar.gz: name -> (kind, content hash or link target)."""
    out: dict[str, tuple] = {}
    with tarfile.open(path, "r:gz", errors="surrogateescape") as tar:
        for m in tar:
            if m.isreg():
                f = tar.extractfile(m)
                out[m.name] = ("f", hashlib.sha256(f.read()).hexdigest())
            elif m.issym():
                out[m.name] = ("l", m.linkname)
            else:
                out[m.name] = (m.type.decode(),)
    return out


def file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
