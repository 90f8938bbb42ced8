"""The model file's page cache is dropped while it is read, not only after the load."""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from pathlib import Path

from vx11d.hermes import engine

SIZE = 32 << 20
TMPFS_MAGIC = 0x01021994


def _resident_fraction(path: Path) -> float:
    """The share of the file's pages in the page cache: mincore on a mapping that is never
    touched, so the check itself reads nothing."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    n = (SIZE + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * n)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, SIZE, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            if libc.mincore(addr, SIZE, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            libc.munmap(addr, SIZE)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec) / n


def _model_file(tmp_path: Path) -> Path:
    """A file on a disk-backed filesystem (tmpfs pages are the file: nothing to drop)."""
    d = tmp_path
    if _is_tmpfs(d):
        d = Path(__file__).resolve().parents[3] / ".state"
        d.mkdir(exist_ok=True)
    p = d / f"model-{os.getpid()}.bin"
    with open(p, "wb") as f:
        f.write(os.urandom(SIZE))
        f.flush()
        os.fsync(f.fileno())  # clean pages: dirty ones are not dropped
    return p


def _is_tmpfs(d: Path) -> bool:
    class StatFs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]

    st = StatFs()
    ctypes.CDLL(None).statfs(str(d).encode(), ctypes.byref(st))
    return st.f_type == TMPFS_MAGIC


def test_the_pages_already_read_leave_the_page_cache_during_the_read(tmp_path):
    """Regression: the page cache was dropped only after the load, so a 7B model's file
    pages were charged to the unit up to MemoryMax (cgroup v1, no MemoryHigh)."""
    p = _model_file(tmp_path)
    try:
        with engine._page_cache_dropped_while_read(str(p), every=0.05):
            with open(p, "rb") as f:
                while f.read(1 << 20):
                    pass
            deadline = time.monotonic() + 5
            while _resident_fraction(p) > 0.05:
                assert time.monotonic() < deadline, "still in the page cache mid-load"
                time.sleep(0.02)
        with open(p, "rb") as f:
            f.read()
        assert _resident_fraction(p) > 0.9  # the check sees a cached file as cached
    finally:
        p.unlink()


def test_the_last_pages_are_dropped_when_the_load_ends(tmp_path):
    p = _model_file(tmp_path)
    try:
        with engine._page_cache_dropped_while_read(str(p), every=3600):
            with open(p, "rb") as f:
                f.read()
            assert _resident_fraction(p) > 0.9  # no periodic drop yet
        assert _resident_fraction(p) < 0.05
    finally:
        p.unlink()
