"""The two packages the host tier installs, built from the tree and from a named commit,
cached under /var/cache/vx11-test/debs by content (shared by tests/host, tests/integration
and bench/install.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests import docblocks
from tests.infra import freshhost

REPO = Path(__file__).resolve().parents[2]
# The previous release the upgrade test starts from: main at the time the host tier was
# written (the last commit before the package had maintainer scripts of its own).
PREVIOUS_COMMIT = "6e337dd"
PREVIOUS_VERSION = "0.1.0"
DEB_CACHE = freshhost.CACHE / "debs"
KEEP_TREE_BUILDS = 8  # two releases, with and without Hermes
# What packaging/deb/build.sh puts into the package (a change elsewhere reuses the cache).
PACKAGED = ["pyproject.toml", "README.md", "vx11d", "units", "packaging", "docs"]
# The admin's first edit after install: docs/install.md's sample config (a template to
# spawn, an audit root), appended by the shell command the page shows.
ADMIN_CONFIG_SH = docblocks.block("install", "config")


def _tree_key() -> str:
    """A hash of every file of the tree that goes into the package (tracked or new)."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard",
                            "-z", "--", *PACKAGED], capture_output=True,
                           check=True).stdout.split(b"\0")
    h = hashlib.sha256()
    for name in sorted(f for f in files if f):
        path = REPO / name.decode()
        if path.is_file() and not path.is_symlink():
            h.update(name + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def llama_wheels() -> Path | None:
    """The Makefile's llama-cpp-python wheel dir (``$VX11_WHEELS``, else the newest cache
    dir). The wheel is ``py3-none``: libllama is loaded with ctypes, so one wheel serves
    every release's Python and Debian 13's build need not compile llama.cpp again."""
    found = os.environ.get("VX11_WHEELS")
    dirs = [Path(found)] if found else sorted(
        Path("/var/cache/vx11d/wheels").glob("llama-*"), key=lambda p: p.stat().st_mtime)
    if dirs and any(dirs[-1].glob("llama_cpp_python-*-py3-none-*.whl")):
        return dirs[-1]
    return None


def _build(src: Path, out: Path, version: str | None, *, release: str | None = None,
           hermes: bool = False) -> Path:
    env = {**os.environ}
    if version:
        env["VX11_DEB_VERSION"] = version
    argv = [str(src / "packaging" / "deb" / "build.sh"), str(out)]
    if release:
        argv += ["--release", release]
    if hermes:
        argv.append("--with-hermes")
        wheels = llama_wheels()
        if wheels:
            env["VX11_WHEELS"] = str(wheels)
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=2400)
    assert r.returncode == 0, f"build.sh in {src} failed:\n{r.stderr[-3000:]}"
    return Path(r.stdout.strip().splitlines()[-1])


def cached_deb(key: str, make) -> Path:
    """The package cached under ``key``, built by ``make(outdir)`` when missing."""
    slot = DEB_CACHE / key
    debs = list(slot.glob("*.deb")) if slot.is_dir() else []
    if debs:
        return debs[0]
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=DEB_CACHE))
    try:
        make(tmp)
        shutil.rmtree(slot, ignore_errors=True)
        os.rename(tmp, slot)
        # keep the newest few builds of the tree (each a few MB); commits stay
        trees = sorted(DEB_CACHE.glob("tree-*"), key=lambda p: p.stat().st_mtime)
        for old in trees[:-KEEP_TREE_BUILDS]:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return next(slot.glob("*.deb"))


def build_current(release: str = "bookworm", *, hermes: bool = False) -> Path:
    """The tree's package for ``release``, built in that release's root (build.sh)."""
    key = f"tree-{_tree_key()}-{release}{'-hermes' if hermes else ''}"
    return cached_deb(key, lambda out: _build(REPO, out, None, release=release, hermes=hermes))


def build_previous() -> Path:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", PREVIOUS_COMMIT],
                            capture_output=True, text=True, check=True).stdout.strip()

    def make(out: Path) -> None:
        src = Path(tempfile.mkdtemp(prefix="vx11-prev-"))
        try:
            archive = subprocess.run(["git", "-C", str(REPO), "archive", commit],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
            _build(src, out, PREVIOUS_VERSION)
        finally:
            shutil.rmtree(src, ignore_errors=True)

    return cached_deb(f"commit-{commit[:12]}", make)
