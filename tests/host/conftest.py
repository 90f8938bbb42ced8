"""Host tier: the .deb installed on a fresh Debian 12 root booted with systemd-nspawn.

One session builds (or reuses from the cache) two packages, the tree as the current
release and ``PREVIOUS_COMMIT`` as the previous one, and one image holding what their
``Depends`` name; every test module gets its own copy of that image.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path

import pytest

from tests.infra import freshhost

from .packages import (  # noqa: F401 (re-exported for the test modules)
    ADMIN_CONFIG_SH,
    PREVIOUS_COMMIT,
    PREVIOUS_VERSION,
    build_current,
    build_previous,
)


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
