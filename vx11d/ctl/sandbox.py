"""``vx11ctl sandbox``: a throwaway real systemd in a systemd-nspawn container.

The container boots on the host's read-only ``/usr`` with everything else on a fresh
tmpfs (``--volatile=yes``), its own network namespace (``--private-network``: only a
loopback, so several sandboxes never fight over :8000; or, with ``netns=``, a namespace
the caller made, as the fleet test does to join several on one bridge) and these binds:

* the checkout at its own path (the virtualenv's scripts point into it);
* the virtualenv at ``/opt/vx11d``, where the units expect the installed package;
* a staging dir at ``/etc/systemd/system`` holding links to ``units/*``;
* a staging dir at ``/etc/vx11`` holding the config and a 0600 API token;
* a fixed ``/etc/machine-id``, so systemd does not treat the boot as a first boot
  and enable every preset unit found in ``/usr``;
* its own writable memory, pids, cpu and cpuacct cgroups (``cgroups.py``), so the
  container's systemd really enforces ``MemoryMax=``, ``TasksMax=`` and ``CPUQuota=``.
  ``up`` measures that with a probe unit and refuses a sandbox that would not.

Nothing of the host's own systemd is used or touched, booted with systemd or not.

Why it is in the package and not under tests/: ``vx11ctl sandbox up|exec|down|status``
is the command the Makefile's ``demo``, ``up-core``, ``up-full-test`` and ``smoke``
targets run from a checkout, and ``vx11ctl demo`` walks through it. The test fixtures
use the same class; what only they need (taking down the sandboxes of killed test
sessions) is in tests/infra/orphans.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import SandboxError
from . import cgroups

STATE_ROOT = Path(os.environ.get("VX11_SANDBOX_STATE", "/run/vx11-sandbox"))
INSTALL_PREFIX = "/opt/vx11d"
CONTAINER_PATH = f"{INSTALL_PREFIX}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
# Units found in /usr that cannot work in this container and would turn it "degraded":
# host services whose user or state the volatile root lacks, and the machine-id commit
# (/etc/machine-id is a read-only bind here, on purpose).
MASKED = ("prometheus.service", "systemd-machine-id-commit.service")
REPO = Path(__file__).resolve().parents[2]


def default_name() -> str:
    """The sandbox name in force: ``$VX11_SANDBOX`` or ``vx11``."""
    return os.environ.get("VX11_SANDBOX") or "vx11"


def check_name(name: str, what: str = "sandbox") -> str:
    """``name`` if it can name a container and its dirs: letters, digits and '-', at most
    40 characters; else a SandboxError."""
    if not name.replace("-", "").isalnum() or len(name) > 40:
        raise SandboxError(f"bad {what} name {name!r}: letters, digits and '-'")
    return name


class Sandbox:
    """One named sandbox: its state dir on the host and its container."""

    def __init__(self, name: str | None = None, *, repo: Path = REPO,
                 venv: str | None = None, die_with_caller: bool = False,
                 limits: bool = True, netns: str | None = None,
                 masked: tuple[str, ...] = MASKED):
        self.name = check_name(name or default_name())
        self.repo = repo
        self.venv = Path(venv or sys.prefix)
        self.state = STATE_ROOT / self.name
        self.etc_vx11 = self.state / "etc-vx11"
        # A test session's sandbox powers off when the session's process dies, even by
        # SIGKILL (nspawn turns SIGTERM into a clean poweroff of the container).
        self.die_with_caller = die_with_caller
        # False only to show what a sandbox without delegated controllers does: refuse.
        self.limits = limits
        # A network namespace made by the caller (a path such as /run/netns/NAME) instead
        # of a private loopback-only one: the fleet test joins several sandboxes this way.
        self.netns = netns
        # Units masked on the kernel command line (a monitoring host of the fleet test
        # runs the host's prometheus.service, so it passes its own list).
        self.masked = masked

    # --- inspection ------------------------------------------------------------------

    def nspawn_pid(self) -> int | None:
        """PID of this sandbox's systemd-nspawn process, if it is up."""
        try:
            pid = int((self.state / "nspawn.pid").read_text())
        except (OSError, ValueError):
            pid = None
        if pid is not None and is_nspawn_of(pid, self.name):
            return pid
        # No (or a stale) pid file: find it by its command line, so a sandbox whose
        # state dir was lost can still be found and taken down.
        for entry in os.listdir("/proc"):
            if entry.isdigit() and is_nspawn_of(int(entry), self.name):
                return int(entry)
        return None

    def leader(self) -> int | None:
        """PID (on the host) of the container's systemd, PID 1 inside."""
        pid = self.nspawn_pid()
        return None if pid is None else systemd_child(pid)

    def is_up(self) -> bool:
        return self.leader() is not None

    # --- life ------------------------------------------------------------------------

    def up(self, timeout: float = 90.0, config: str | None = None) -> None:
        """Boot the sandbox (or reuse the running one) and wait until systemd is up."""
        if not shutil.which("systemd-nspawn"):
            raise SandboxError("systemd-nspawn not found: apt-get install systemd-container")
        if os.geteuid() != 0:
            raise SandboxError("the sandbox needs root (systemd-nspawn)")
        deadline = time.monotonic() + timeout
        booted = self.nspawn_pid() is None
        if booted:
            cgroups.cleanup_stale()
            self._prepare(config)
            self._boot()
            try:
                self._wait_running(deadline)
            except SandboxError as first:
                # One more boot if nspawn died at once (seen once, with an empty log,
                # right after another container was killed); the second error is final.
                if self.nspawn_pid() is not None or self._log_tail().count("\n") > 3:
                    raise
                log_first = str(first)
                self._prepare(config)
                self._boot()
                try:
                    self._wait_running(deadline)
                except SandboxError as second:
                    raise SandboxError(f"{second}\n(first attempt: {log_first})") from first
        else:
            self._wait_running(deadline)
        enforced = self.enforced()
        if not all(enforced.values()):
            missing = ", ".join(c for c, ok in enforced.items() if not ok)
            reason = (f"sandbox {self.name}: systemd inside does not enforce {missing} "
                      "limits (a probe unit's limits never reached the kernel)")
            if not booted:  # someone's running sandbox, booted without delegation
                raise SandboxError(f"{reason}; it was booted without delegated cgroups: "
                                   f"vx11ctl sandbox --name {self.name} down, then up")
            with contextlib.suppress(SandboxError):
                self.down()
            raise SandboxError(f"{reason}; the cgroup controllers could not be made "
                               "writable for the container (see docs/sandbox.md)")
        self._provision()

    def enforced(self) -> dict[str, bool]:
        """Which limits the container's systemd enforces, measured with a probe unit."""
        return cgroups.probe(lambda argv: self.exec(argv, timeout=60))

    def _prepare(self, config: str | None) -> None:
        if self.state.exists():
            shutil.rmtree(self.state)
        units = self.state / "etc-systemd-system"
        units.mkdir(parents=True)
        self.etc_vx11.mkdir(mode=0o755)
        for unit in sorted((self.repo / "units").iterdir()):
            if unit.is_file():
                (units / unit.name).symlink_to(unit)
        # The dev virtualenv's scripts and editable install point into the checkout; a
        # checkout under /tmp or /root would vanish behind PrivateTmp=/ProtectHome= in the
        # hardened units, so every vx11-* service gets it bound back in (read-only).
        dropin = units / "vx11-.service.d"
        dropin.mkdir()
        (dropin / "sandbox-source.conf").write_text(
            "# written by vx11ctl sandbox: the checkout this sandbox runs\n[Service]\n"
            + "".join(f"BindReadOnlyPaths={p}\n" for p in self._source_paths()))
        cfg_text = config if config is not None else (
            self.repo / "packaging" / "sandbox" / "vx11.yml").read_text()
        (self.etc_vx11 / "vx11.yml").write_text(cfg_text)
        fd = os.open(self.etc_vx11 / "token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        (self.state / "machine-id").write_text(secrets.token_hex(16) + "\n")

    def _source_paths(self) -> list[Path]:
        """Host paths the container needs at their own path: checkout, venv, Python."""
        paths = [self.repo]
        if not self.venv.resolve().is_relative_to(self.repo):
            paths.append(self.venv)
        base = Path(os.path.realpath(sys.base_prefix))
        if not base.is_relative_to("/usr"):
            paths.append(base)
        return paths

    def _boot(self) -> None:
        binds = [f"--bind={self.repo}", f"--bind={self.venv}:{INSTALL_PREFIX}",
                 f"--bind={self.state / 'etc-systemd-system'}:/etc/systemd/system",
                 f"--bind={self.etc_vx11}:/etc/vx11",
                 f"--bind-ro={self.state / 'machine-id'}:/etc/machine-id"]
        binds += [f"--bind-ro={p}" for p in self._source_paths()[1:]]
        deleg = self._delegate()
        cmd = ["systemd-nspawn", "-D", "/", "--volatile=yes", "--register=no", "--keep-unit",
               "-M", self.name, "--console=passive",
               f"--network-namespace-path={self.netns}" if self.netns else "--private-network",
               *deleg.nspawn_args(), *binds,
               "-b", "systemd.firstboot=off", *[f"systemd.mask={u}" for u in self.masked]]

        def preexec() -> None:
            deleg.preexec()
            if self.die_with_caller:
                term_on_parent_death()

        with open(self.state / "nspawn.log", "wb") as logf:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=preexec)
        (self.state / "nspawn.pid").write_text(str(proc.pid))

    def _delegate(self) -> cgroups.Delegation:
        """This sandbox's own cgroups (left-overs of an earlier boot removed first)."""
        cgroups.remove_trees(cgroups.find(self.name), timeout=5)
        if not self.limits:
            return cgroups.Delegation(self.name)
        return cgroups.delegate(self.name)

    def _wait_running(self, deadline: float) -> None:
        state = ""
        while time.monotonic() < deadline:
            if self.nspawn_pid() is None:
                raise SandboxError(
                    f"systemd-nspawn exited; see {self.state / 'nspawn.log'}:\n"
                    + (self._log_tail() or "(empty log: if several containers run, "
                       "fs.inotify.max_user_instances may be exhausted)"))
            if self.leader() is not None:
                r = self.exec(["systemctl", "is-system-running", "--wait"], timeout=30)
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.1)
        raise SandboxError(f"sandbox {self.name} not up in time (state {state or 'unknown'})")

    def _provision(self) -> None:
        """Create users and dirs from packaging/, as the .deb's postinst would."""
        sysusers = self.repo / "packaging" / "sysusers.d" / "vx11.conf"
        tmpfiles = self.repo / "packaging" / "tmpfiles.d" / "vx11.conf"
        for argv in (["systemd-sysusers", str(sysusers)],
                     ["systemd-tmpfiles", "--create", str(tmpfiles)]):
            if Path(argv[-1]).exists():
                r = self.exec(argv, timeout=60)
                if r.returncode != 0:
                    raise SandboxError(f"{' '.join(argv)} failed: {r.stderr.strip()}")

    def _log_tail(self) -> str:
        try:
            return (self.state / "nspawn.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def exec(self, argv: list[str], *, timeout: float | None = None, input: str | None = None,
             capture: bool = True, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container; returns its exit status and output."""
        leader = self.leader()
        if leader is None:
            raise SandboxError(f"sandbox {self.name} is not up (vx11ctl sandbox up)")
        base_env = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "HOME": "/root",
                    "TERM": os.environ.get("TERM", "dumb"), "SYSTEMD_PAGER": "",
                    "SYSTEMD_COLORS": "0"}
        base_env.update(env or {})
        cmd = ["nsenter", "-t", str(leader), "-a", "env", "-i",
               *[f"{k}={v}" for k, v in base_env.items()], *argv]
        return subprocess.run(cmd, text=True, input=input, timeout=timeout,
                              capture_output=capture, check=False)

    def write_config(self, text: str) -> None:
        """Replace the sandbox's /etc/vx11/vx11.yml (daemons see it on restart or reload)."""
        tmp = self.etc_vx11 / ".vx11.yml.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.etc_vx11 / "vx11.yml")

    def token(self) -> str:
        return (self.etc_vx11 / "token").read_text().strip()

    def down(self, timeout: float = 30.0) -> None:
        """Power the container off and remove its state; leaves nothing running.

        Steps, each only if the previous one did not end it within its share of
        ``timeout``: ``systemctl poweroff`` inside, SIGTERM to nspawn (which also asks
        the container to power off), then SIGKILL to the container's PID 1 (which ends
        its whole PID namespace) and to nspawn.
        """
        pid = self.nspawn_pid()
        if pid is not None:
            leader = self.leader()
            if leader is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.exec(["systemctl", "poweroff", "--no-block"], timeout=10)
            if not self._gone(pid, timeout / 2):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            if not self._gone(pid, timeout / 2):
                for victim in (leader, pid):
                    if victim is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(victim, signal.SIGKILL)
                if not self._gone(pid, 10):
                    raise SandboxError(f"sandbox {self.name}: nspawn {pid} does not exit")
        if self.state.exists():
            shutil.rmtree(self.state, ignore_errors=True)
        left = cgroups.remove_trees(cgroups.find(self.name), timeout=10)
        if left:
            raise SandboxError(f"sandbox {self.name}: cgroups still in use after power-off: "
                               f"{', '.join(left[:3])}; end the processes in their "
                               "cgroup.procs, then run vx11ctl sandbox down again")

    def _gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while is_nspawn_of(pid, self.name):
            _reap(pid)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def describe(self) -> dict[str, object]:
        """What ``vx11ctl sandbox status`` shows."""
        info: dict[str, object] = {"name": self.name, "up": False, "state_dir": str(self.state)}
        leader = self.leader()
        if leader is not None:
            r = self.exec(["systemctl", "is-system-running"], timeout=10)
            info.update(up=True, leader_pid=leader, nspawn_pid=self.nspawn_pid(),
                        system_state=r.stdout.strip())
            try:
                info["limits_enforced"] = self.enforced()
            except SandboxError as e:
                info["limits_enforced"] = dict.fromkeys(("memory", "pids", "cpu"), False)
                info["limits_error"] = str(e)
            info["cgroups"] = [str(p) for p in cgroups.find(self.name)]
            fs = self.exec(["stat", "-fc", "%T", "/sys/fs/cgroup"], timeout=10).stdout.strip()
            info["cgroup_hierarchy"] = ("unified (cgroup v2)" if fs == "cgroup2fs" else
                                        "hybrid (legacy cgroup v1 controllers)")
        return info


def term_on_parent_death() -> None:
    """In the child before exec: get SIGTERM when the parent dies (PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def systemd_child(pid: int) -> int | None:
    """The child of nspawn ``pid`` named systemd: the container's PID 1, seen from here."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                return int(child)
        except OSError:
            continue
    return None


def is_nspawn_of(pid: int, name: str) -> bool:
    """Is ``pid`` a live (not zombie) systemd-nspawn running the machine ``name``?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if not cmdline or not cmdline[0].endswith(b"systemd-nspawn"):
        return False
    if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
        return False
    try:
        i = cmdline.index(b"-M")
    except ValueError:
        return False
    return i + 1 < len(cmdline) and cmdline[i + 1] == name.encode()


def _reap(pid: int) -> None:
    """Collect the nspawn process if this process started it (else it is not our child)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# --- vx11ctl sandbox ----------------------------------------------------------------

def register(sub) -> None:  # type: ignore[no-untyped-def]
    """Add ``vx11ctl sandbox up|exec|down|status``."""
    p = sub.add_parser("sandbox", help="a throwaway real systemd to try vx11d in")
    p.add_argument("--name", help="sandbox name (default: $VX11_SANDBOX or vx11)")
    s = p.add_subparsers(dest="sandbox_command", required=True)
    s.add_parser("up", help="boot it (or reuse it) and wait until systemd runs"
                 ).set_defaults(func=_cmd_up)
    e = s.add_parser("exec", help="run a command inside; its exit status is passed through")
    e.add_argument("argv", nargs=argparse.REMAINDER)
    e.set_defaults(func=_cmd_exec)
    s.add_parser("down", help="power it off and remove its state").set_defaults(func=_cmd_down)
    st = s.add_parser("status", help="is it up, and in which state")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_cmd_status)


def _cmd_up(args) -> int:  # type: ignore[no-untyped-def]
    sb = Sandbox(args.name)
    sb.up()
    print(f"sandbox {sb.name} is up (systemd pid {sb.leader()} on the host); "
          f"try: vx11ctl sandbox exec systemctl status 'vx11-*'")
    return 0


def _cmd_exec(args) -> int:  # type: ignore[no-untyped-def]
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise SandboxError("exec needs a command")
    r = Sandbox(args.name).exec(argv, capture=False)
    return r.returncode


def _cmd_down(args) -> int:  # type: ignore[no-untyped-def]
    sb = Sandbox(args.name)
    sb.down()
    print(f"sandbox {sb.name} is down")
    return 0


def _cmd_status(args) -> int:  # type: ignore[no-untyped-def]
    from .main import emit

    info = Sandbox(args.name).describe()
    text = f"sandbox {info['name']}: down"
    if info["up"]:
        lim = info.get("limits_enforced") or {}
        on = [c for c, ok in lim.items() if ok]
        off = [c for c, ok in lim.items() if not ok]
        text = (f"sandbox {info['name']}: up, systemd {info.get('system_state')}\n"
                f"cgroup hierarchy: {info.get('cgroup_hierarchy')}\n"
                f"limits enforced: {', '.join(on) or 'none'}"
                + (f"; NOT enforced: {', '.join(off)}" if off else ""))
    emit(args, info, text)
    return 0 if info["up"] else 3
