"""Host tier: the .deb installed on a fresh Debian 12 root booted with systemd-nspawn.

One session builds (or reuses from the cache) two packages, the tree as the current
release and ``PREVIOUS_COMMIT`` as the previous one, and one image holding what their
``Depends`` name; every test module gets its own copy of that image.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from vx11d.ctl import freshhost

REPO = Path(__file__).resolve().parents[2]
# The previous release the upgrade test starts from: main at the time the host tier was
# written (the last commit before the package had maintainer scripts of its own).
PREVIOUS_COMMIT = "6e337dd"
PREVIOUS_VERSION = "0.1.0"
DEB_CACHE = freshhost.CACHE / "debs"
# The admin's first edit after install (docs/install.md): a template to spawn.
ADMIN_TEMPLATE_SED = [
    "-e", r"s|^  templates: {}|  templates:\n    sleeper:\n      command: [/usr/bin/sleep, "
          r"infinity]\n      default_ttl: 30s\n      max_ttl: 30m|"]


def _tree_key() -> str:
    """A hash of every file of the tree that goes into the package (tracked or new)."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard",
                            "-z"], capture_output=True, check=True).stdout.split(b"\0")
    h = hashlib.sha256()
    for name in sorted(f for f in files if f):
        path = REPO / name.decode()
        if path.is_file() and not path.is_symlink():
            h.update(name + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _build(src: Path, out: Path, version: str | None) -> Path:
    env = {**os.environ}
    if version:
        env["VX11_DEB_VERSION"] = version
    r = subprocess.run([str(src / "packaging" / "deb" / "build.sh"), str(out)], env=env,
                       capture_output=True, text=True, timeout=1500)
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return next(slot.glob("*.deb"))


def build_current() -> Path:
    return cached_deb(f"tree-{_tree_key()}", lambda out: _build(REPO, out, None))


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


@pytest.fixture(scope="session")
def debs() -> dict[str, Path]:
    """``{"current": .deb of the tree, "previous": .deb of PREVIOUS_COMMIT}``."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        cur, prev = pool.submit(build_current), pool.submit(build_previous)
        return {"current": cur.result(), "previous": prev.result()}


@pytest.fixture(scope="session")
def host_image(debs) -> Path:
    """The cached fresh-Debian image: the base set and what both packages depend on."""
    freshhost.clean_stale("vx11h-")
    return freshhost.ensure_image(freshhost.image_packages(debs.values()))


@pytest.fixture(scope="module")
def fresh_host(host_image, debs, request):
    """A booted copy of the image for one test module, the packages in /root."""
    name = f"vx11h-{os.getpid()}-{request.module.__name__.rsplit('_', 1)[-1][:10]}"
    host = freshhost.FreshHost(host_image, name).create()
    for deb in debs.values():
        host.put(deb, f"/root/{deb.name}")
    try:
        host.boot()
        yield host
    finally:
        if os.environ.get("VX11_KEEP_HOST") != "1":
            host.destroy()


# --- what a sysadmin runs, as helpers --------------------------------------------------

def run(host, *argv: str, ok: bool = True, timeout: float = 300, **kw):
    """Run a command in the host; with ``ok`` assert exit 0 and say what failed."""
    r = host.exec(list(argv), timeout=timeout, **kw)
    if ok:
        assert r.returncode == 0, (f"{' '.join(argv)} -> exit {r.returncode}\n"
                                   f"stdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}")
    return r


def show(host, unit: str, *props: str) -> dict[str, str]:
    r = run(host, "systemctl", "show", "-p", ",".join(props), unit)
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


def journal(host, *matches: str) -> list[dict]:
    r = run(host, "journalctl", "--no-pager", "-o", "json", *matches, ok=False)
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def sql(host, query: str) -> list[list]:
    """Rows of a read-only query on the installed DB, through the package's own Python."""
    code = ("import json, sqlite3, sys; c = sqlite3.connect('file:/var/lib/vx11/vx11.db?mode=ro',"
            " uri=True); print(json.dumps([list(r) for r in c.execute(sys.argv[1])]))")
    r = run(host, "/opt/vx11d/bin/python3", "-c", code, query)
    return json.loads(r.stdout)


def vx11_processes(host) -> list[str]:
    """Processes of the vx11d virtualenv or users still running in the host."""
    r = run(host, "ps", "-eo", "pid=,user:20=,args=", ok=False)
    if r.returncode != 0:  # procps is not in minbase: read /proc instead
        r = run(host, "sh", "-c", "for p in /proc/[0-9]*; do "
                "a=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); "
                "u=$(stat -c %U $p 2>/dev/null); echo \"${p#/proc/} $u $a\"; done")
    return [line for line in r.stdout.splitlines()
            if "/opt/vx11d" in line or " vx11 " in line or " vx11-hija " in line]
