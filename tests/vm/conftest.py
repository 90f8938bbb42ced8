"""Real-kernel tier: the package on each Debian release's fresh root, booted by qemu on that
release's own kernel (pure cgroup v2, systemd as PID 1), for what containers on this
machine's hybrid cgroups cannot show: ``Result=oom-kill``, ``MemoryHigh=``, BPF address
policy, PSI, systemd 257's view of the units.

One guest at a time (a module each; the guest is powered off when its module ends): on a
2-core machine a TCG guest uses both cores while it boots. The packages are the tree's,
built in each release's own root with Hermes's engine (``build.sh --with-hermes``); the
images hold what those packages depend on, so installs need no network.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests import docblocks
from tests.host.conftest import journal, run, show, sql  # noqa: F401 (re-exported)
from tests.host.packages import build_current
from tests.infra import freshhost
from tests.support import poll_for

from .qemuhost import QemuHost, clean_stale

REPO = Path(__file__).resolve().parents[2]
RELEASES = ("bookworm", "trixie")
DEBIAN = {"bookworm": 12, "trixie": 13}
MODEL = "/var/lib/vx11/models/SmolLM2-135M-Instruct.Q4_1.gguf"
UNITS_DIR = "/usr/lib/systemd/system"
DAEMONS = ["vx11-madre.service", "vx11-reaper.service", "vx11-gateway.service"]


@pytest.fixture(scope="session")
def vm_debs() -> dict[str, Path]:
    """``{release: the tree's package built in that release's root, with Hermes}``."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = {r: pool.submit(build_current, r, hermes=True) for r in RELEASES}
        return {r: job.result() for r, job in jobs.items()}


def vm_image(release: str, deb: Path) -> Path:
    return freshhost.ensure_image(freshhost.image_packages([deb]), suite=release, vm=True)


@pytest.fixture(scope="module")
def guest(request, vm_debs, real_model):
    """The module's release (``RELEASE``) booted on its own kernel, nothing installed;
    its package, the default model and what the module asks for in /root."""
    release = request.module.RELEASE
    clean_stale("vx11v-")
    host = QemuHost(vm_image(release, vm_debs[release]),
                    f"vx11v-{os.getpid()}-{release}").create()
    host.put(vm_debs[release], f"/root/{vm_debs[release].name}")
    foreign = getattr(request.module, "FOREIGN_RELEASE", None)
    if foreign:  # another release's package (without Hermes: smaller), to be refused
        host.foreign_deb = build_current(foreign)
        host.put(host.foreign_deb, f"/root/{host.foreign_deb.name}")
    host.put(real_model, "/root/model.gguf")
    host.deb = vm_debs[release]
    if getattr(request.module, "NEXT_VERSION", False):
        host.next_version, nxt = next_version(vm_debs[release], host.dir)
        host.next_deb = Path(host.put(nxt, f"/root/{nxt.name}")).name
    try:
        host.boot_s = host.boot()
        yield host
    finally:
        if os.environ.get("VX11_KEEP_HOST") != "1":
            host.destroy()


def next_version(deb: Path, workdir: Path) -> tuple[str, Path]:
    """The same package as the next version (``<version>+next1``), for an upgrade."""
    tree = workdir / "next"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    version = re.search(r"^Version: (\S+)$", text, re.M).group(1) + "+next1"
    control.write_text(re.sub(r"^Version: \S+$", f"Version: {version}", text, flags=re.M))
    out = workdir / f"vx11d_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Znone", "-b", str(tree), str(out)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return version, out


def documented_purge_leftovers() -> list[str]:
    """What docs/install.md says a purge leaves: its block marked purge-leftovers."""
    return sorted(docblocks.lines(docblocks.block("install", "purge-leftovers")))


def purge_leftovers_command() -> str:
    """The commands docs/install.md lists the leftovers with, as one script."""
    return "\n".join(docblocks.commands(docblocks.block("install",
                                                        "purge-leftovers-command")))


def sandbox_config() -> str:
    """The sandbox's config (the limits' demo templates) with a probe template per
    sandboxing level (tests/vm/checks.py), Hermes on the default model."""
    from .checks import PROBE

    cfg = yaml.safe_load((REPO / "packaging" / "sandbox" / "vx11.yml").read_text())
    for level in ("basic", "strict"):
        cfg["madre"]["templates"][f"probe_{level}"] = {
            "command": ["/usr/bin/python3", "-c", PROBE], "sandboxing": level,
            "default_ttl": "30s", "max_ttl": "5m", "memory_max": "64M", "tasks_max": 8}
    cfg["hermes"].update({"model_path": MODEL, "model_sha256": ""})
    # the product's default stop timeout, not the sandbox's 2 s: under emulation a hija's
    # memory probe (its ExecStopPost) takes seconds
    cfg["madre"].pop("stop_timeout", None)
    return yaml.safe_dump(cfg, sort_keys=False)


@pytest.fixture(scope="module")
def vx11_guest(guest):
    """The module's guest with the package installed (once) and the test config in place."""
    if "install ok installed" not in run(guest, "dpkg", "-s", "vx11d", ok=False).stdout:
        install(guest, guest.deb)
    if not getattr(guest, "configured", False):
        configure(guest)
        guest.configured = True
    return guest


def install(host, deb: Path) -> float:
    """``apt-get install ./vx11d_...deb`` as a sysadmin does; seconds it took."""
    start = time.monotonic()
    r = run(host, "sh", "-c", f"cd /root && apt-get install -y --no-install-recommends "
            f"./{deb.name}", timeout=900)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-2000:]
    return time.monotonic() - start


def configure(host) -> None:
    """The sandbox's templates and the model in place; the set restarted on them."""
    run(host, "install", "-o", "root", "-g", "vx11", "-m", "0640", "/dev/stdin",
        "/etc/vx11/vx11.yml", input=sandbox_config())
    run(host, "install", "-D", "-o", "root", "-g", "vx11", "-m", "0640", "/root/model.gguf",
        MODEL)
    run(host, "vx11ctl", "config", "check")
    run(host, "systemctl", "restart", "vx11.target")
    poll_for(lambda: run(host, "systemctl", "is-active", *DAEMONS[:2], "vx11-gateway.socket",
                         ok=False).stdout.split() == ["active"] * 3, 60,
             what="the set active on the test config")


def goal(host, unit: str) -> float:
    """The exposure goal the unit file states (``systemd-analyze security goal: ...``)."""
    text = run(host, "cat", f"{UNITS_DIR}/{unit}").stdout
    m = re.search(r"systemd-analyze security goal: exposure <= ([\d.]+)", text)
    assert m, f"{unit} states no exposure goal"
    return float(m.group(1))
