"""A fresh Debian 12 host in a container: an mmdebstrap image, copied per use, booted.

Unlike ``vx11ctl sandbox`` (the host's own ``/usr``, a volatile root and the checkout
bound in), a fresh host is a whole Debian root of its own that keeps its state across a
poweroff and a second boot, with nothing of vx11d in it until a package is installed.

* :func:`ensure_image` builds the image once with ``mmdebstrap --variant=minbase`` and
  caches it under ``/var/cache/vx11-test`` (``$VX11_HOST_CACHE``); its name carries a
  hash of the package list, so a changed list (e.g. a new ``Depends`` of the .deb, read
  by :func:`deb_depends`) builds a new one and a missing one is rebuilt.
* :class:`FreshHost` gives each user its own copy (an overlay on the image, or a
  ``cp --reflink=auto`` copy where overlayfs is not available) under
  ``/var/tmp/vx11-hosts`` (``$VX11_HOSTS_DIR``), boots it with ``systemd-nspawn -b``
  (private network, no machined), runs commands inside with ``nsenter`` and powers it
  off. :func:`clean_stale` removes the copies of runs that were killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from vx11d.ctl import cgroups
from vx11d.ctl.sandbox import check_name, systemd_child, term_on_parent_death
from vx11d.errors import SandboxError

CACHE = Path(os.environ.get("VX11_HOST_CACHE", "/var/cache/vx11-test"))
HOSTS = Path(os.environ.get("VX11_HOSTS_DIR", "/var/tmp/vx11-hosts"))
SUITE = "bookworm"
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "libsystemd0")
# Bump when the way the image is made changes (hooks below), so caches rebuild.
RECIPE = "2"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def deb_depends(deb: Path | str) -> list[str]:
    """Package names the .deb's ``Depends`` (and ``Pre-Depends``) name; first alternative."""
    names: list[str] = []
    for field in ("Pre-Depends", "Depends"):
        r = subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True,
                           text=True, check=False)
        if r.returncode != 0:
            raise SandboxError(f"{deb}: cannot read {field}: {r.stderr.strip()}")
        for item in r.stdout.replace("\n", " ").split(","):
            first = item.split("|")[0].strip()
            name = first.split("(")[0].split(":")[0].strip()
            if name and name not in names:
                names.append(name)
    return names


def image_packages(debs: Iterable[Path | str] = ()) -> list[str]:
    """The image's package list: the base set plus what each .deb depends on."""
    pkgs = set(BASE_PACKAGES)
    for deb in debs:
        pkgs.update(deb_depends(deb))
    return sorted(pkgs)


# What a root booted by qemu (tests/vm) needs beyond a container's: its own kernel
# (the cloud flavour has NVMe and ext4 built in: no initrd is used), udev to load the
# NIC's module, and sshd on a static address behind qemu's user network.
VM_PACKAGES = ("linux-image-cloud-amd64", "udev", "kmod", "openssh-server", "iproute2",
               "procps", "curl")
VM_HOOKS = (
    'printf "LABEL=vmroot / ext4 rw,noatime,errors=remount-ro 0 0\\n" > "$1/etc/fstab"',
    'printf "127.0.0.1 localhost\\n127.0.1.1 fresh\\n::1 localhost\\n" > "$1/etc/hosts"',
    'printf "[Match]\\nName=en* eth*\\n\\n[Network]\\nAddress=10.0.2.15/24\\n'
    'Gateway=10.0.2.2\\nLinkLocalAddressing=no\\nIPv6AcceptRA=no\\n" '
    '> "$1/etc/systemd/network/10-qemu.network"',
    'chroot "$1" systemctl enable systemd-networkd.service ssh.service',
    'chroot "$1" systemctl disable systemd-networkd-wait-online.service apt-daily.timer '
    'apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer dpkg-db-backup.timer '
    '2>/dev/null || true',
    'chroot "$1" systemctl mask e2scrub_reap.service',
    'printf "UseDNS no\\nPermitRootLogin prohibit-password\\nPasswordAuthentication no\\n"'
    ' > "$1/etc/ssh/sshd_config.d/test-guest.conf"',
)
def image_name(packages: Iterable[str], suite: str = SUITE, vm: bool = False) -> str:
    hooks = hashlib.sha256("\n".join(VM_HOOKS).encode()).hexdigest()[:8]
    recipe = f"{RECIPE}-vm-{hooks}" if vm else RECIPE
    key = hashlib.sha256(f"{suite}\n{recipe}\n{' '.join(sorted(packages))}".encode())
    return f"{suite}{'-vm' if vm else ''}-{key.hexdigest()[:12]}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_image(packages: Iterable[str], *, cache: Path = CACHE, suite: str = SUITE,
                 vm: bool = False, timeout: float = 1800.0) -> Path:
    """The cached image root of ``suite`` for ``packages``; built with mmdebstrap when
    missing. ``vm``: bootable by qemu on its own kernel (``VM_PACKAGES``, ``VM_HOOKS``)."""
    packages = sorted(set(packages) | (set(VM_PACKAGES) if vm else set()))
    name = image_name(packages, suite, vm)
    root = cache / name
    done = cache / f"{name}.done"
    if done.exists() and (root / "usr" / "bin" / "systemctl").exists():
        return root
    if not shutil.which("mmdebstrap"):
        raise SandboxError("mmdebstrap not found: apt-get install mmdebstrap")
    with _locked(cache / ".lock"):
        if done.exists() and (root / "usr" / "bin" / "systemctl").exists():
            return root  # another session built it while we waited
        tmp = cache / f".{name}.tmp-{os.getpid()}"
        for stale in [root, tmp, *cache.glob(f".{name}.tmp-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        done.unlink(missing_ok=True)
        # A fixed machine-id: the host is not on its first boot (no preset-all of
        # every unit), and no other first-boot question waits on a console.
        hooks = ['echo 0b7f3e1c5d9a4e2f8c6b1a0d9e8f7a6b > "$1/etc/machine-id"',
                 'echo fresh > "$1/etc/hostname"', *(VM_HOOKS if vm else ())]
        argv = ["mmdebstrap", "--variant=minbase", "--quiet",
                f"--include={','.join(packages)}",
                *[f"--customize-hook={h}" for h in hooks], suite, str(tmp)]
        with open(cache / f"{name}.log", "wb") as log:
            try:
                r = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                                   timeout=timeout, check=False)
            except subprocess.TimeoutExpired as e:
                shutil.rmtree(tmp, ignore_errors=True)
                raise SandboxError(f"mmdebstrap did not finish in {timeout:g}s") from e
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = (cache / f"{name}.log").read_text(errors="replace")[-1500:]
            raise SandboxError(f"mmdebstrap failed (exit {r.returncode}); see "
                               f"{cache / (name + '.log')}:\n{tail}")
        os.rename(tmp, root)
        done.write_text(" ".join(packages) + "\n")
        _prune_images(cache, keep=name)
    return root


def _prune_images(cache: Path, keep: str) -> None:
    """Remove other cached images of the same suite and flavour that no host copy uses."""
    mounts = Path("/proc/mounts").read_text()
    flavour = keep.rsplit("-", 1)[0]
    for root in cache.glob(f"{flavour}-*"):
        if not root.is_dir() or root.name.rsplit("-", 1)[0] != flavour:
            continue
        name, done = root.name, cache / f"{root.name}.done"
        if name == keep or str(cache / name) in mounts:
            continue
        if any(h.read_text().strip() == str(cache / name)
               for h in HOSTS.glob("*/image") if h.is_file()):
            continue
        done.unlink(missing_ok=True)
        shutil.rmtree(cache / name, ignore_errors=True)
        (cache / f"{name}.log").unlink(missing_ok=True)


class FreshHost:
    """One copy of an image, bootable (and re-bootable) with systemd-nspawn."""

    def __init__(self, image: Path, name: str, *, hosts: Path = HOSTS,
                 die_with_caller: bool = True, bind_ro: Iterable[str] = ()):
        self.image = image
        self.name = check_name(name, "host")
        self.dir = hosts / name
        self.root = self.dir / "root"
        self.die_with_caller = die_with_caller
        self.bind_ro = list(bind_ro)
        self.proc: subprocess.Popen[bytes] | None = None
        self.boots = 0
        self.cgroups: cgroups.Delegation | None = None

    # --- the copy --------------------------------------------------------------------

    def create(self) -> FreshHost:
        """Make this host's root: an overlay on the image, else a reflink/plain copy."""
        make_copy(self.dir, self.image)
        return self

    def put(self, src: Path | str, dest: str, mode: int = 0o644) -> str:
        """Copy a host file into the root at ``dest`` (a path inside); returns ``dest``."""
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        os.chmod(target, mode)
        return dest

    # --- boot and power off ----------------------------------------------------------

    def boot(self, timeout: float = 120.0, args: Iterable[str] = ()) -> float:
        """Boot the root and wait for ``is-system-running``; seconds from exec to up."""
        if self.nspawn_pid() is not None:
            raise SandboxError(f"host {self.name} is already up")
        # The cgroup controllers delegated (vx11d/ctl/cgroups.py): the host's systemd
        # enforces MemoryMax/TasksMax/CPUQuota and can remove its units' cgroups.
        self.cgroups = cgroups.delegate(self.name)
        cmd = ["systemd-nspawn", *self.cgroups.nspawn_args(), "-D", str(self.root),
               "--private-network", "--register=no",
               "--keep-unit", "-M", self.name, "--console=passive",
               *[f"--bind-ro={b}" for b in self.bind_ro],
               "-b", "systemd.firstboot=off", *args]
        self.boots += 1
        start = time.monotonic()
        with open(self.dir / f"boot{self.boots}.log", "wb") as logf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=self._preexec)
        (self.dir / "nspawn.pid").write_text(str(self.proc.pid))
        self.wait_running(start + timeout)
        return time.monotonic() - start

    def _preexec(self) -> None:
        """In nspawn's process before exec: join the delegated cgroups; die with us."""
        if self.cgroups is not None:
            self.cgroups.preexec()
        if self.die_with_caller:
            term_on_parent_death()

    def wait_running(self, deadline: float) -> str:
        state = ""
        while time.monotonic() < deadline:
            if self.nspawn_pid() is None:
                raise SandboxError(f"host {self.name}: systemd-nspawn exited:\n"
                                   + self.log_tail())
            if self.leader() is not None:
                try:
                    r = self.exec(["systemctl", "is-system-running", "--wait"], timeout=60)
                except subprocess.TimeoutExpired:
                    continue
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    return state
            time.sleep(0.05)
        raise SandboxError(f"host {self.name} not up in time (state {state or 'unknown'})")

    def log_tail(self) -> str:
        try:
            return (self.dir / f"boot{self.boots}.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def nspawn_pid(self) -> int | None:
        if self.proc is not None:
            if self.proc.poll() is None:
                return self.proc.pid
            return None
        return _find_nspawn(self.name)

    def leader(self) -> int | None:
        """Host PID of the container's systemd (PID 1 inside)."""
        pid = self.nspawn_pid()
        if pid is None:
            return None
        return systemd_child(pid)

    def is_up(self) -> bool:
        return self.leader() is not None

    def poweroff(self, timeout: float = 60.0) -> None:
        """``systemctl poweroff`` inside; SIGTERM then SIGKILL to nspawn if it hangs."""
        pid = self.nspawn_pid()
        if pid is None:
            self.proc = None
            if self.cgroups is not None:
                self.cgroups.cleanup()
                self.cgroups = None
            return
        leader = self.leader()
        if leader is not None:
            with contextlib.suppress(subprocess.TimeoutExpired, SandboxError):
                self.exec(["systemctl", "poweroff", "--no-block"], timeout=15)
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                for victim in ((leader, pid) if sig == signal.SIGKILL else (pid,)):
                    if victim is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(victim, sig)
            if self._wait_gone(timeout / 2 if sig is None else 15):
                break
        else:
            raise SandboxError(f"host {self.name}: nspawn {pid} does not exit")
        self.proc = None
        if self.cgroups is not None:
            self.cgroups.cleanup()
            self.cgroups = None

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None:
                if self.proc.poll() is not None:
                    return True
            elif _find_nspawn(self.name) is None:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def destroy(self) -> None:
        """Power off (if up) and remove the copy."""
        try:
            self.poweroff()
        finally:
            destroy_dir(self.dir)

    # --- inside ----------------------------------------------------------------------

    def exec(self, argv: list[str], *, timeout: float | None = 120, input: str | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the booted host (all namespaces), output captured."""
        leader = self.leader()
        if leader is None:
            raise SandboxError(f"host {self.name} is not up")
        base = {"PATH": HOST_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb",
                "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0",
                "DEBIAN_FRONTEND": "noninteractive"}
        base.update(env or {})
        cmd = ["nsenter", "-t", str(leader), "-a", "env", "-i",
               *[f"{k}={v}" for k, v in base.items()], *argv]
        return subprocess.run(cmd, text=True, input=input, timeout=timeout,
                              capture_output=True, check=False)

    def offline(self, argv: list[str], *, timeout: float = 300
                ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the root while it is NOT booted (no systemd running in it)."""
        if self.nspawn_pid() is not None:
            raise SandboxError(f"host {self.name} is up; offline() needs it powered off")
        cmd = ["systemd-nspawn", "-D", str(self.root), "--private-network", "--register=no",
               "--keep-unit", "-M", self.name, "--console=pipe", "-q",
               *[f"--bind-ro={b}" for b in self.bind_ro],
               "env", f"PATH={HOST_PATH}", "DEBIAN_FRONTEND=noninteractive", *argv]
        return subprocess.run(cmd, text=True, capture_output=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)


def make_copy(d: Path, image: Path) -> Path:
    """A fresh host dir ``d`` whose ``root`` is an overlay on ``image`` (a reflink/plain
    copy where overlayfs is not available), owned by this process; returns the root."""
    if d.exists():
        destroy_dir(d)
    d.mkdir(parents=True)
    (d / "image").write_text(str(image))
    (d / "owner").write_text(str(os.getpid()))
    root, upper, work = d / "root", d / "upper", d / "work"
    for sub in (root, upper, work):
        sub.mkdir()
    r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={image},upperdir={upper},workdir={work}", str(root)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        cp = subprocess.run(["cp", "-a", "--reflink=auto", f"{image}/.", str(root)],
                            capture_output=True, text=True, check=False)
        if cp.returncode != 0:
            raise SandboxError(f"cannot copy {image}: {cp.stderr.strip()}")
    return root


def destroy_dir(d: Path) -> None:
    """Unmount a host copy's overlay (if mounted) and remove its directory."""
    root = d / "root"
    if str(root) in Path("/proc/mounts").read_text():
        subprocess.run(["umount", "-l", str(root)], capture_output=True, check=False)
    shutil.rmtree(d, ignore_errors=True)


def clean_stale(prefix: str = "", hosts: Path = HOSTS) -> list[str]:
    """Remove host copies whose owning process is gone (a killed run); their names."""
    removed = []
    if not hosts.exists():
        return removed
    for d in sorted(hosts.iterdir()):
        if not d.name.startswith(prefix):
            continue
        try:
            owner = int((d / "owner").read_text())
        except (OSError, ValueError):
            owner = -1
        if owner > 0 and os.path.exists(f"/proc/{owner}"):
            continue
        pid = _find_nspawn(d.name)
        if pid is not None:
            child = systemd_child(pid)
            for victim in (child, pid):
                if victim is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while _find_nspawn(d.name) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
        destroy_dir(d)
        removed.append(d.name)
    cgroups.cleanup_stale(lambda n: n.startswith(prefix) if prefix else True)
    return removed


def _find_nspawn(name: str) -> int | None:
    """PID of a live systemd-nspawn running machine ``name`` (booted with -b)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            st = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if not cmdline or not cmdline[0].endswith(b"systemd-nspawn"):
            continue
        if st.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            continue
        with contextlib.suppress(ValueError):
            i = cmdline.index(b"-M")
            if cmdline[i + 1] == name.encode() and b"-b" in cmdline:
                return int(entry)
    return None
