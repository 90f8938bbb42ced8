"""A fresh Debian host on a real kernel: an image root of ``freshhost.ensure_image(vm=True)``
booted by qemu, with systemd as PID 1 on pure cgroup v2.

The life of one host (:class:`QemuHost`):

* ``create()`` makes its root (an overlay on the cached image root) and ``put()`` copies
  files into it, before the first boot, as :class:`tests.infra.freshhost.FreshHost` does;
* the first ``boot()`` turns that root into the host's disk (``mkfs.ext4 -d``, ~2 s, no
  loop mount) and boots the image's own kernel from it on an emulated NVMe disk (built
  into Debian's cloud kernel: no initrd); later boots reuse the disk, so a poweroff and a
  boot are a reboot that keeps the host's state;
* ``exec()`` runs a command inside over ssh (a ControlMaster: ~0.25 s a command), the
  only way in: qemu's user network is ``restrict=on``, so the guest reaches nothing but
  the forwarded loopback port;
* ``poweroff()`` asks systemd, then ends qemu; ``destroy()`` removes everything.

KVM is used where ``/dev/kvm`` works (a bounded probe: a kernel that must panic within
20 s); otherwise TCG, 8-9x slower for CPU work (shared/notes: real-kernel-vm).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.infra.freshhost import HOST_PATH, HOSTS, destroy_dir, make_copy
from vx11d.ctl.sandbox import check_name, term_on_parent_death
from vx11d.errors import SandboxError

MEMORY_MB = int(os.environ.get("VX11_VM_MEM", "2048"))
CPUS = int(os.environ.get("VX11_VM_SMP", "2"))
DISK = os.environ.get("VX11_VM_DISK", "4G")


def kernel_of(root: Path) -> Path:
    """The image's kernel (``/boot/vmlinuz-*``): the same release the root's modules are."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise SandboxError(f"{root}: no /boot/vmlinuz-*: not a VM image")
    return kernels[-1]


@functools.cache
def accel(kernel: str) -> str:
    """``kvm`` when a kernel boots under it (to its expected panic) within 20 s, else ``tcg``."""
    if os.environ.get("VX11_VM_ACCEL") in ("kvm", "tcg"):
        return os.environ["VX11_VM_ACCEL"]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    try:
        r = subprocess.run(["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256",
                            "-nodefaults", "-no-user-config", "-display", "none",
                            "-serial", "stdio", "-no-reboot", "-kernel", kernel,
                            "-append", "console=ttyS0 panic=1 root=/dev/nonexistent"],
                           capture_output=True, text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "tcg"
    return "kvm" if "Kernel panic" in r.stdout else "tcg"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QemuHost:
    """One copy of a VM image root, booted (and re-booted) by qemu on its own kernel."""

    def __init__(self, image: Path, name: str, *, hosts: Path = HOSTS):
        self.image = image
        self.name = check_name(name, "host")
        self.dir = hosts / name
        self.root = self.dir / "root"
        self.disk = self.dir / "disk.img"
        self.key = self.dir / "id_ed25519"
        self.ssh_config = self.dir / "ssh_config"
        self.proc: subprocess.Popen[bytes] | None = None
        self.boots = 0
        self.kernel = kernel_of(image)
        self.accel = accel(str(self.kernel))

    # --- the copy (before the first boot) --------------------------------------------

    def create(self) -> QemuHost:
        """This host's root: an overlay on the image (a copy where overlayfs fails)."""
        make_copy(self.dir, self.image)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.name,
                        "-f", str(self.key)], check=True)
        ssh_dir = self.root / "root" / ".ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copyfile(f"{self.key}.pub", ssh_dir / "authorized_keys")
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        return self

    def put(self, src: Path | str, dest: str, mode: int = 0o644) -> str:
        """Copy a file into the root at ``dest``: before the first boot only (the disk is
        made from the root then); afterwards use :meth:`send`."""
        if self.disk.exists():
            raise SandboxError(f"host {self.name} has booted: put() no longer reaches it")
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        os.chmod(target, mode)
        return dest

    def send(self, src: Path | str, dest: str, mode: int = 0o644) -> str:
        """Copy a file into the running host (over ssh)."""
        with open(src, "rb") as f:
            r = subprocess.run(self._ssh(f"install -D -m {mode:o} /dev/stdin "
                                         f"{shlex.quote(dest)}"), stdin=f,
                               capture_output=True, timeout=300, check=False)
        if r.returncode != 0:
            raise SandboxError(f"cannot copy {src} to {self.name}:{dest}: "
                               f"{r.stderr.decode(errors='replace').strip()}")
        return dest

    def _make_disk(self) -> None:
        subprocess.run(["truncate", "-s", DISK, str(self.disk)], check=True)
        r = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "vmroot", "-E",
                            "lazy_itable_init=1,lazy_journal_init=1", "-d", str(self.root),
                            str(self.disk)], capture_output=True, text=True, timeout=600,
                           check=False)
        if r.returncode != 0:
            raise SandboxError(f"mkfs.ext4 -d {self.root}: {r.stderr.strip()}")
        # the root's content now lives in the disk; the overlay is not needed any more
        destroy_dir_root(self.dir)

    # --- boot and power off ----------------------------------------------------------

    def boot(self, timeout: float = 300.0) -> float:
        """Boot and wait until ``is-system-running`` settles; seconds from exec to up."""
        if self.is_up():
            raise SandboxError(f"host {self.name} is already up")
        if not self.disk.exists():
            self._make_disk()
        port = _free_port()
        self.ssh_config.write_text(
            f"Host vm\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
            f"  IdentityFile {self.key}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 20\n"
            f"  ControlMaster auto\n  ControlPath {self.dir}/ssh-%C\n  ControlPersist 600\n"
            "  ServerAliveInterval 5\n  ServerAliveCountMax 6\n")
        cpu = ["-cpu", "host"] if self.accel == "kvm" else ["-cpu", "max"]
        accel = ["-accel", "kvm"] if self.accel == "kvm" else ["-accel", "tcg,thread=multi"]
        cmd = ["qemu-system-x86_64", *accel, *cpu, "-smp", str(CPUS), "-m", str(MEMORY_MB),
               "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
               "-serial", f"file:{self.dir / f'console{self.boots + 1}.log'}",
               "-no-reboot", "-kernel", str(self.kernel), "-append",
               "root=/dev/nvme0n1 rw console=ttyS0 panic=1 quiet systemd.firstboot=off "
               "net.ifnames=1",
               "-drive", f"file={self.disk},if=none,id=d0,format=raw,cache=unsafe,"
               "discard=unmap", "-device", "nvme,drive=d0,serial=vmroot",
               "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
               "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-rng-pci"]
        self.boots += 1
        start = time.monotonic()
        with open(self.dir / "qemu.err", "ab") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True,
                                         preexec_fn=term_on_parent_death)
        (self.dir / "qemu.pid").write_text(str(self.proc.pid))
        deadline = start + timeout
        while True:
            if self.proc.poll() is not None:
                raise SandboxError(f"host {self.name}: qemu exited "
                                   f"(status {self.proc.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                r = subprocess.run(["ssh", "-F", str(self.ssh_config), "-o",
                                    "ConnectTimeout=3", "vm", "true"], capture_output=True,
                                   timeout=30, check=False)
                if r.returncode == 0:
                    break
            if time.monotonic() > deadline:
                raise SandboxError(f"host {self.name}: no ssh in {timeout:g}s:\n"
                                   + self.log_tail())
            time.sleep(0.5)
        r = self.exec(["systemctl", "is-system-running", "--wait"],
                      timeout=max(30.0, deadline - time.monotonic()))
        if r.stdout.strip() not in ("running", "degraded"):
            raise SandboxError(f"host {self.name}: system {r.stdout.strip() or 'unknown'}")
        return time.monotonic() - start

    def log_tail(self) -> str:
        try:
            text = (self.dir / f"console{self.boots}.log").read_text(errors="replace")
        except OSError:
            text = ""
        return text[-2000:]

    def is_up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poweroff(self, timeout: float = 120.0) -> None:
        """``systemctl poweroff`` inside; SIGTERM then SIGKILL to qemu if it hangs."""
        if not self.is_up():
            self.proc = None
            return
        with contextlib.suppress(subprocess.TimeoutExpired, SandboxError):
            self.exec(["systemctl", "poweroff", "--no-block"], timeout=20)
        assert self.proc is not None
        for sig, wait in ((None, timeout), (signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
                break
        else:
            raise SandboxError(f"host {self.name}: qemu {self.proc.pid} does not exit")
        subprocess.run(["ssh", "-F", str(self.ssh_config), "-O", "exit", "vm"],
                       capture_output=True, timeout=10, check=False)
        self.proc = None

    def reboot(self, timeout: float = 300.0) -> float:
        """Power off and boot the same disk again; seconds the second boot took."""
        self.poweroff()
        return self.boot(timeout)

    def destroy(self) -> None:
        try:
            self.poweroff()
        finally:
            destroy_dir(self.dir)

    # --- inside ----------------------------------------------------------------------

    def _ssh(self, command: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), "vm", "--", command]

    def exec(self, argv: list[str], *, timeout: float | None = 120, input: str | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the booted host as root, output captured."""
        if not self.is_up():
            raise self._gone()
        base = {"PATH": HOST_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb",
                "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0",
                "DEBIAN_FRONTEND": "noninteractive"}
        base.update(env or {})
        command = shlex.join(["env", "-i", *[f"{k}={v}" for k, v in base.items()], *argv])
        r = subprocess.run(self._ssh(command), text=True, input=input, timeout=timeout,
                           capture_output=True, check=False,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if r.returncode == 255 and self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)  # ssh lost the guest: was it qemu that ended?
            if not self.is_up():
                raise self._gone(" ".join(argv))
        return r

    def _gone(self, during: str = "") -> SandboxError:
        """The guest is not running: how qemu ended and the console's last lines (a
        panic, an OOM kill of PID 1), read before the host dir goes."""
        if self.proc is None:
            return SandboxError(f"host {self.name} is not up")
        err = ""
        with contextlib.suppress(OSError):
            err = (self.dir / "qemu.err").read_text(errors="replace")[-1000:]
        return SandboxError(f"host {self.name}: qemu exited (status {self.proc.returncode})"
                            + (f" during `{during}`" if during else "")
                            + f"\nqemu stderr: {err.strip() or '(empty)'}"
                            + f"\nconsole (boot {self.boots}):\n{self.log_tail()}")


def destroy_dir_root(d: Path) -> None:
    """Unmount and remove a host dir's root copy (its disk image stays)."""
    root = d / "root"
    if str(root) in Path("/proc/mounts").read_text():
        subprocess.run(["umount", "-l", str(root)], capture_output=True, check=False)
    for sub in ("root", "upper", "work"):
        shutil.rmtree(d / sub, ignore_errors=True)


def clean_stale(prefix: str, hosts: Path = HOSTS) -> list[str]:
    """End the qemu of, and remove, host dirs whose owning process is gone."""
    removed = []
    if not hosts.exists():
        return removed
    for d in sorted(hosts.glob(f"{prefix}*")):
        try:
            owner = int((d / "owner").read_text())
        except (OSError, ValueError):
            owner = -1
        if owner > 0 and os.path.exists(f"/proc/{owner}"):
            continue
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            pid = int((d / "qemu.pid").read_text())
            if b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        destroy_dir(d)
        removed.append(d.name)
    return removed
