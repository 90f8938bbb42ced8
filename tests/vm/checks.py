"""What only a real kernel with pure cgroup v2 shows, checked on each release's guest.

The test functions here are imported by ``test_bookworm.py`` and ``test_trixie.py``, so
each runs once per release on that module's guest (fixture ``vx11_guest``: the package
installed, the sandbox's templates configured, the set up).
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.support import poll_for

from .conftest import DAEMONS, goal, journal, run, show

MB = 1024 * 1024
HERMES = "vx11-hermes.service"
HERMES_SOCK = "/run/vx11-hermes/hermes.sock"
HERMES_CG = "/sys/fs/cgroup/system.slice/vx11-hermes.service"
HIJAS_CG = "/sys/fs/cgroup/vx11.slice/vx11-hijas.slice"
CHAT = json.dumps({"messages": [{"role": "user", "content": "Name a colour."}],
                   "max_tokens": 8, "temperature": 0})


def spawn(host, template: str, ttl: str, **args: str) -> dict:
    argv = ["vx11ctl", "hijas", "spawn", template, "--ttl", ttl, "--wait", "30", "--json"]
    for k, v in args.items():
        argv += ["--arg", f"{k}={v}"]
    r = run(host, *argv, ok=False, timeout=120)
    row = json.loads(r.stdout)
    assert row.get("id"), r.stdout + r.stderr
    return row


def hija(host, hid: str) -> dict:
    rows = json.loads(run(host, "vx11ctl", "hijas", "list", "--limit", "200", "--json").stdout)
    return next(r for r in rows if r["id"] == hid)


def ended(host, hid: str, timeout: float = 90) -> dict:
    def row():
        h = hija(host, hid)
        return h if h["status"] not in ("requested", "starting", "running") else None
    return poll_for(row, timeout=timeout, interval=1, what=f"hija {hid} ended")


def unit_log(host, unit: str) -> str:
    return "\n".join(str(e.get("MESSAGE", "")) for e in journal(host, f"_SYSTEMD_UNIT={unit}"))


def metrics(host, port: int, address: str = "127.0.0.1") -> str:
    return run(host, "curl", "-sf", f"http://{address}:{port}/metrics").stdout


def test_the_guest_is_a_real_kernel_on_pure_cgroup_v2(vx11_guest):
    host = vx11_guest
    assert run(host, "stat", "-fc", "%T", "/sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    assert run(host, "test", "-e", "/sys/fs/cgroup/unified", ok=False).returncode != 0
    controllers = run(host, "cat", "/sys/fs/cgroup/cgroup.controllers").stdout.split()
    assert {"cpu", "memory", "pids", "io"} <= set(controllers), controllers
    # the scorecard and the sandbox status say which hierarchy is in use
    card = json.loads(run(host, "vx11ctl", "scorecard", "--json", ok=False).stdout)
    rows = {c["name"]: c for c in card["checks"]}
    assert rows["cgroup_hierarchy"]["detail"].startswith("unified (cgroup v2)"), rows


def test_a_hija_over_memory_max_is_oom_from_result_oom_kill_under_it_expires(vx11_guest):
    host = vx11_guest
    hog = spawn(host, "hog", "60s", mb="200")
    small = spawn(host, "hog", "4s", mb="16")
    h = ended(host, hog["id"])
    assert h["status"] == "oom", h
    # what systemd itself says on cgroup v2 (on v1 it is signal 9 and the probe tells)
    assert h["result"] == "oom-kill", h
    assert h["memory_max"] == 32 * MB
    assert 24 * MB < h["memory_peak"] <= 32 * MB, h  # its own cgroup's memory.peak
    assert h["reason"].startswith("killed by the kernel: out of memory (peak "), h["reason"]
    s = ended(host, small["id"])
    assert s["status"] == "expired" and 0 < s["memory_peak"] < 32 * MB, s
    j = journal(host, "VX11_EVENT=hija_oom_killed", f"VX11_HIJA_ID={hog['id']}")
    assert j and int(j[0]["VX11_MEMORY_PEAK"]) > 24 * MB, j
    m = metrics(host, 9712)
    line = [ln for ln in m.splitlines()
            if ln.startswith('vx11_hijas_ended_total{reason="oom",template="hog"}')]
    assert line and float(line[0].split()[-1]) >= 1, line
    listing = run(host, "vx11ctl", "hijas", "list", "--status", "oom").stdout
    assert any(ln.startswith(hog["id"]) and "of 32M" in ln for ln in listing.splitlines()), \
        listing


def test_tasks_max_and_cpu_quota_bite_in_hijas(vx11_guest):
    host = vx11_guest
    forker = spawn(host, "forker", "20s")
    busy = ended(host, spawn(host, "busy", "60s", seconds="3")["id"])

    def fifth() -> str | None:
        text = unit_log(host, forker["unit"])
        return text if "task 5" in text else None

    log = poll_for(fifth, timeout=30, interval=1, what="the fifth fork's outcome")
    assert "task 4: started" in log and "task 5: fork failed: [Errno 11]" in log, log
    assert busy["status"] == "exited", busy
    out = [ln for ln in unit_log(host, busy["unit"]).splitlines() if ln.startswith("busy: ")]
    assert out, unit_log(host, busy["unit"])
    cpu, wall = float(out[0].split()[1].rstrip("s")), float(out[0].split()[4].rstrip("s"))
    assert wall >= 3.0 and 0.1 * wall <= cpu <= 0.3 * wall, out[0]  # CPUQuota=20%


PROBE = ("import ctypes, os, socket\n"
         "libc = ctypes.CDLL(None, use_errno=True)\n"
         "def tried(f):\n"
         "    try:\n"
         "        f()\n"
         "        return 'open'\n"
         "    except OSError:\n"
         "        return 'refused'\n"
         "nnp = [ln.split()[1] for ln in open('/proc/self/status')\n"
         "       if ln.startswith('NoNewPrivs')]\n"
         "print('probe user=' + str(os.getuid()) + ' nnp=' + nnp[0]"
         " + ' inet=' + tried(lambda: socket.socket(socket.AF_INET).close())"
         " + ' userns=' + ('refused' if libc.unshare(0x10000000) != 0 else 'open')"
         " + ' etc=' + tried(lambda: open('/etc/vx11-probe', 'w'))"
         " + ' tmp=' + str(len(os.listdir('/tmp'))), flush=True)\n"
         "import time\n"
         "time.sleep(3600)\n")


def test_every_sandboxing_property_madre_sets_is_enforced(vx11_guest):
    host = vx11_guest
    r = run(host, "sh", "-c", "touch /tmp/host-tmp-file && getent passwd vx11-hija")
    hija_uid = r.stdout.split(":")[2]
    seen = {}
    for template in ("probe_basic", "probe_strict"):
        h = spawn(host, template, "30s")
        seen[template] = poll_for(
            lambda h=h: next((ln for ln in unit_log(host, h["unit"]).splitlines()
                              if ln.startswith("probe ")), None),
            timeout=30, interval=1, what=f"{template}'s report")
        p = show(host, h["unit"], "RuntimeMaxUSec", "ControlGroup")
        assert p["RuntimeMaxUSec"] == "30s", p
        # the limits madre set are the cgroup's, as the kernel holds them
        cg = f"/sys/fs/cgroup{p['ControlGroup']}"
        assert run(host, "cat", f"{cg}/memory.max").stdout.strip() == str(64 * MB)
        assert run(host, "cat", f"{cg}/pids.max").stdout.strip() == "8"
    basic, strict = seen["probe_basic"], seen["probe_strict"]
    # basic: its own user, no new privileges, no Internet socket, no namespaces
    assert f"user={hija_uid} nnp=1 inet=refused userns=refused" in basic, basic
    assert "etc=refused" in basic  # an unprivileged user
    # strict adds its own /tmp (the host's file is not there) and a read-only system
    assert "nnp=1 inet=refused userns=refused etc=refused tmp=0" in strict, strict


def test_memory_high_throttles_hermes_before_memory_max_then_the_rss_guard(vx11_guest):
    """The order of Hermes's memory limits on a real cgroup v2: above MemoryHigh= the
    kernel reclaims and throttles the worker, which stays alive and answers (no OOM kill,
    MemoryMax= far away); then its own RSS guard finishes the request and exits 75.

    llama.cpp repacks the quantized weights into anonymous memory, which cannot be
    reclaimed without swap (the unit has MemorySwapMax=0), so MemoryHigh= is set live
    just below the loaded worker's anonymous memory: every page it charges while
    answering is over the line. (Set below its whole usage instead, the kernel reclaimed
    the file pages at once, got under the line, and two short answers on Debian 12's
    kernel charged too little to cross it again.)"""
    host = vx11_guest

    def chat() -> str:
        """A short answer through Hermes's socket; "200", or what went wrong."""
        r = run(host, "curl", "-s", "-w", "\n%{http_code}", "--max-time", "600",
                "--unix-socket", HERMES_SOCK, "http://h/v1/chat/completions",
                "-H", "Content-Type: application/json", "-d", CHAT, timeout=700, ok=False)
        code = r.stdout.rsplit("\n", 1)[-1]
        if code == "200":
            return code
        log = run(host, "journalctl", "-u", HERMES, "-n", "30", "--no-pager", ok=False).stdout
        return f"{code}: {r.stdout[-800:]} {r.stderr[-300:]}\n{log}"

    def cgroup(name: str) -> str:
        return run(host, "cat", f"{HERMES_CG}/{name}").stdout

    def events() -> dict[str, int]:
        return {k: int(v) for k, v in (ln.split() for ln in cgroup("memory.events")
                                       .splitlines())}

    def restarts() -> int:
        return int(show(host, HERMES, "NRestarts")["NRestarts"])

    def rss_limit(value: str) -> None:
        run(host, "sed", "-i", "-e", "/^  rss_limit:/d", "-e",
            f"s|^hermes:$|hermes:\\n  rss_limit: {value}|", "/etc/vx11/vx11.yml")

    try:
        run(host, "vx11ctl", "activate", "hermes", "--for", "30m")
        poll_for(lambda: show(host, HERMES, "ActiveState")["ActiveState"] == "active", 120,
                 interval=1, what="Hermes started in its window")
        said = chat()  # loads the model
        assert said == "200", said
        before = restarts()
        # 1. MemoryHigh= live, a little below the loaded worker's anonymous memory;
        # MemoryMax= 1G
        anon = int(dict(ln.split() for ln in cgroup("memory.stat").splitlines())["anon"])
        high = anon - 4 * MB
        run(host, "systemctl", "set-property", "--runtime", HERMES, f"MemoryHigh={high}",
            "MemoryMax=1G")
        assert int(cgroup("memory.high")) == high and int(cgroup("memory.max")) == 1 << 30
        for _ in range(2):
            said = chat()
            assert said == "200", said  # throttled, alive, answering
        ev = events()
        assert ev["high"] > 0 and ev["max"] == 0 and ev["oom_kill"] == 0, ev
        assert restarts() == before and \
            show(host, HERMES, "ActiveState")["ActiveState"] == "active"
        psi = metrics(host, 9712)
        waited = [ln for ln in psi.splitlines() if ln.startswith(
            'vx11_pressure_waiting_seconds_total{resource="memory",unit="vx11-hermes.service"}')]
        assert waited and float(waited[0].split()[-1]) > 0, waited
        # 2. then the worker's own guard, set below its RSS by a reload: it drains, exits
        # 75 and systemd starts it again; still no kill by the kernel
        rss = int(run(host, "sh", "-c", f"grep VmRSS /proc/$(systemctl show -P MainPID "
                      f"{HERMES})/status").stdout.split()[1]) * 1024
        rss_limit(f"{max(rss // MB - 16, 48)}M")
        run(host, "systemctl", "reload", HERMES)
        poll_for(lambda: restarts() > before, 120, interval=1, what="the RSS guard's restart")
        assert journal(host, "-u", HERMES, "--grep", "status=75")
        assert journal(host, "-u", HERMES, "--grep", "above the guard")
        assert not journal(host, "-u", HERMES, "--grep", "status=9/KILL")
    finally:
        run(host, "systemctl", "revert", HERMES, ok=False)
        run(host, "sed", "-i", "/^  rss_limit:/d", "/etc/vx11/vx11.yml", ok=False)
        run(host, "vx11ctl", "deactivate", "hermes", ok=False)
        run(host, "systemctl", "stop", HERMES, ok=False)


FLEET_NET = {"host": "192.0.2.1", "prometheus": "192.0.2.10", "other": "192.0.2.20"}
UDP_FROM_UNIT = (
    "import os, socket, sys\n"
    "open(sys.argv[1] + '/cgroup.procs', 'w').write(str(os.getpid()))\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for dest in sys.argv[2:]:\n"
    "    try:\n"
    "        s.sendto(b'x', (dest, 9))\n"
    "        print(dest, 'sent')\n"
    "    except OSError as e:\n"
    "        print(dest, 'errno', e.errno)\n")


def test_the_fleet_drop_in_admits_its_prometheus_and_drops_every_other_address(vx11_guest):
    """The shipped drop-in (packaging/fleet) on madre and the reaper, their metrics on a
    monitoring address: the BPF address policy of the units, enforced by the kernel."""
    host = vx11_guest
    net = FLEET_NET
    config = "/etc/vx11/vx11.yml"
    saved = run(host, "cat", config).stdout
    units = ["vx11-madre.service", "vx11-reaper.service"]
    try:
        run(host, "ip", "link", "add", "mon0", "type", "dummy")
        for addr in net.values():
            run(host, "ip", "addr", "add", f"{addr}/24", "dev", "mon0")
        run(host, "ip", "link", "set", "mon0", "up")
        for u in units:
            run(host, "install", "-D", "-m", "0644",
                "/usr/share/vx11d/fleet/vx11-metrics-remote.conf",
                f"/etc/systemd/system/{u}.d/metrics-remote.conf")
        fleet = yaml.safe_load(saved)
        for daemon in ("madre", "reaper"):
            fleet.setdefault(daemon, {})["metrics_address"] = net["host"]
        run(host, "install", "-m", "0640", "-g", "vx11", "/dev/stdin", config,
            input=yaml.safe_dump(fleet, sort_keys=False))
        run(host, "systemctl", "daemon-reload")
        run(host, "systemctl", "restart", *units)
        poll_for(lambda: run(host, "systemctl", "is-active", *units, ok=False).stdout.split()
                 == ["active"] * 2, 60, interval=1, what="madre and the reaper restarted")
        for port in (9712, 9713):
            # the allowed Prometheus scrapes
            r = poll_for(lambda port=port: (x := run(
                host, "curl", "-sf", "--max-time", "10", "--interface", net["prometheus"],
                f"http://{net['host']}:{port}/metrics", ok=False)).returncode == 0 and x,
                30, interval=1, what=f"a scrape of :{port} from the allowed address")
            assert "vx11_build_info" in r.stdout
            # any other address gets nothing: the SYN is dropped, the connect times out
            r = run(host, "curl", "-s", "--max-time", "4", "--interface", net["other"],
                    f"http://{net['host']}:{port}/metrics", ok=False)
            assert r.returncode == 28, (port, r.returncode, r.stderr)  # timeout, not refused
        # the control: a port with no listener refuses that address at once (exit 7)
        r = run(host, "curl", "-s", "--max-time", "4", "--interface", net["other"],
                f"http://{net['host']}:9/", ok=False)
        assert r.returncode == 7, r
        # from inside madre's cgroup, a datagram to a denied address is EPERM
        cg = "/sys/fs/cgroup" + show(host, "vx11-madre.service", "ControlGroup")["ControlGroup"]
        r = run(host, "python3", "-c", UDP_FROM_UNIT, cg, net["prometheus"], net["other"])
        assert r.stdout.split("\n")[:2] == [f"{net['prometheus']} sent",
                                            f"{net['other']} errno 1"], r.stdout
    finally:
        for u in units:
            run(host, "rm", "-rf", f"/etc/systemd/system/{u}.d", ok=False)
        run(host, "install", "-m", "0640", "-g", "vx11", "/dev/stdin", config, input=saved,
            ok=False)
        run(host, "ip", "link", "del", "mon0", ok=False)
        run(host, "systemctl", "daemon-reload", ok=False)
        run(host, "systemctl", "restart", *units, ok=False)


@pytest.mark.parametrize("unit", ["vx11-gateway.service", "vx11-madre.service",
                                  "vx11-reaper.service", "vx11-rotate.service",
                                  "vx11-hermes.service"])
def test_security_exposure_of_each_unit_within_its_goal(vx11_guest, unit):
    r = run(vx11_guest, "systemd-analyze", "security", "--no-pager", unit, ok=False)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert m, r.stdout[-800:] + r.stderr
    assert float(m.group(1)) <= goal(vx11_guest, unit), m.group(0)


def test_pressure_of_the_hijas_slice_is_exported(vx11_guest):
    host = vx11_guest
    assert run(host, "test", "-r", f"{HIJAS_CG}/memory.pressure", ok=False).returncode == 0
    m = metrics(host, 9712)
    for resource in ("cpu", "memory", "io"):
        line = [ln for ln in m.splitlines() if ln.startswith(
            f'vx11_pressure_waiting_seconds_total{{resource="{resource}",'
            'unit="vx11-hijas.slice"}')]
        assert line, (resource, [ln for ln in m.splitlines() if "pressure" in ln])
    # the hog above spent time in reclaim before the kernel killed it; the busy loop
    # waited for its quota
    waited = {ln.split('resource="')[1].split('"')[0]: float(ln.split()[-1])
              for ln in m.splitlines()
              if ln.startswith("vx11_pressure_waiting_seconds_total") and "hijas" in ln}
    assert waited["memory"] > 0 or waited["cpu"] > 0, waited


def test_the_daemons_stayed_up_through_the_checks(vx11_guest):
    """No daemon crashed or was restarted by systemd while the limits bit around it."""
    for u in DAEMONS[:2]:
        p = show(vx11_guest, u, "ActiveState", "NRestarts")
        assert p == {"ActiveState": "active", "NRestarts": "0"}, (u, p)
