"""Chaos soak: SIGKILL the daemons and break the state disk under load; nothing may be lost.

    .venv/bin/python bench/chaos.py [--quick] [--kills N] [--seed S] [--keep]

Boots a sandbox (a real systemd in systemd-nspawn, named ``vx11t-chaos-<pid>``, powered
off if this process dies) with its own small tmpfs as the state dir ``/var/lib/vx11``
(so a full disk costs a few MB), starts madre, the gateway socket and the reaper on the
sandbox config plus an audit root, and runs this file inside it (``--inside``):

- load: a steady stream of ``POST /vx11/spawn`` (short TTLs) from a client thread; a
  spawn is *acknowledged* when the gateway answered 201/202 with an id.
- rotation: old-named audit dirs are created and ``vx11-rotate.service`` is started
  every few seconds.
- kills: ``SIGKILL`` to the main process of madre, the gateway or the reaper (chosen at
  random, at most 3 kills of one unit per 10 s so the test does not itself drive a unit
  into its start limit), each after a random pause once the last one has recovered.
- faults, a few times, in turn: fill the state disk (``dd`` until ENOSPC) and free it;
  flip the state dir read-only (the daemons are killed first: a remount needs no writer)
  and back; ``vx11ctl db restore`` of a backup taken earlier in the run (``vx11ctl db
  backup``, under the same load), then a fresh backup for the next restore.
- recovery time: from the kill (or the fault's removal) until the unit is active again
  and serving (madre and the reaper: active with a new main PID and, after a fault, no
  "degraded" in madre's STATUS; the gateway: ``/health`` answers).

After each restore, ``vx11ctl db check`` (``restore_malformed`` counts the failures).
Then, with the load stopped and every hija past its TTL: ``integrity_check`` and
``foreign_key_check`` (``integrity_ok``); every acknowledged spawn has a row, or was
listed by a restore's report as not in its backup (``lost_records`` counts the others;
``restore_not_in_backup`` the listed ones), and a row's status agrees with what systemd
logged for its unit (``status_mismatches``: a ``lost`` row, a live row without an
active unit, an ended row whose result disagrees with the unit's logged result); no
hija unit was ever seen
active past its TTL + grace (``overdue_hijas``, sampled all along); every audit dir
created is still there or in its archive with all its files (``audit_dirs_lost``);
``units_failed_at_end`` counts the daemon units (and the socket) left failed.
Last line: one JSON object with those figures, ``kills``, ``faults_injected``,
``spawns_acked`` and ``recovery_s_p99``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

from _sandboxed import print_rows

REPO = Path(__file__).resolve().parents[1]
STATE = "/var/lib/vx11"
DB = f"{STATE}/vx11.db"
AUDIT = f"{STATE}/audit"
DAEMONS = {"madre": "vx11-madre.service", "gateway": "vx11-gateway.service",
           "reaper": "vx11-reaper.service"}
WATCHED = [*DAEMONS.values(), "vx11-gateway.socket"]
GRACE = 3.0 + 2.0  # backstop_grace of the sandbox config + slack for a loaded machine
TTLS = (2.0, 3.0, 4.0)
RECOVERY_TIMEOUT = 30.0
UNIT_SUCCESS = "7ad2d189f7e94e70a38c781354912448"
UNIT_FAILURE_RESULT = "d9b373ed55a64feb8242e02dbe79a49c"


def sh(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=False, env={**os.environ, "SYSTEMD_PAGER": "",
                                            "SYSTEMD_COLORS": "0"})


def show(unit: str, *props: str) -> dict[str, str]:
    r = sh("systemctl", "show", "-p", ",".join(props), unit)
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


# --- inside the sandbox -------------------------------------------------------------------

class Client:
    """HTTP to the gateway; a fresh connection after any error."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body=None, timeout: float = 10.0):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", 8000, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["X-VX11-Token"] = self.token
        try:
            self.conn.request(method, path, None if body is None else json.dumps(body),
                              headers)
            r = self.conn.getresponse()
            raw = r.read()
        except (OSError, http.client.HTTPException):
            self.close()
            return 0, None
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Load(threading.Thread):
    """A steady spawn stream; remembers every acknowledged spawn (id -> ttl)."""

    def __init__(self, token: str, period: float) -> None:
        super().__init__(daemon=True)
        self.client = Client(token)
        self.period = period
        self.acked: dict[str, float] = {}
        self.answers: dict[int, int] = {}
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.rng = random.Random(7)

    def run(self) -> None:
        while not self.stop.is_set():
            if self.paused.is_set():
                self.client.close()
                time.sleep(0.05)
                continue
            ttl = self.rng.choice(TTLS)
            st, body = self.client.call("POST", "/vx11/spawn",
                                        {"template": "sleeper", "ttl_s": ttl})
            self.answers[st] = self.answers.get(st, 0) + 1
            if st in (201, 202) and isinstance(body, dict) and body.get("id"):
                self.acked[body["id"]] = ttl
            self.stop.wait(self.period)
        self.client.close()


class Overdue(threading.Thread):
    """Samples live hija units: any active past its TTL + grace is overdue."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.overdue: set[str] = set()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.sample()

    def sample(self) -> None:
        r = sh("systemctl", "list-units", "--plain", "--no-legend", "--state=active",
               "vx11-hija-*")
        units = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
        if not units:
            return
        r = sh("systemctl", "show", "-p", "Id,ActiveEnterTimestampMonotonic,RuntimeMaxUSec",
               "--timestamp=unix", *units)
        now_us = time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6
        for block in r.stdout.split("\n\n"):
            p = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            try:
                enter = int(p.get("ActiveEnterTimestampMonotonic") or 0)
            except ValueError:
                continue
            ttl_s = _seconds(p.get("RuntimeMaxUSec", ""))
            if enter and ttl_s and now_us - enter > (ttl_s + GRACE) * 1e6:
                self.overdue.add(p.get("Id", "?"))


def _seconds(text: str) -> float | None:
    """systemd's timespan text (``3s``, ``1min 30s``, ``infinity``) in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600}
    total = 0.0
    for part in text.split():
        num = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = part[len(num):]
        if not num or unit not in units:
            return None
        total += float(num) * units[unit]
    return total or None


class Audit:
    """Old-named audit dirs with known content; checks none is lost."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.dirs: dict[str, dict[str, str]] = {}  # name -> {rel: sha256}
        self.n = 0

    def make(self, count: int) -> None:
        for _ in range(count):
            self.n += 1
            day = 1 + self.n % 28
            name = f"2026{1 + (self.n // 28) % 9:02d}{day:02d}T{self.n % 24:02d}0000Z_c{self.n}"
            d = Path(AUDIT) / name
            files = {}
            try:
                d.mkdir(parents=True)
                os.chmod(d, 0o2770)  # group vx11 (the rotator's) may remove what is in it
                for i in range(4):
                    data = os.urandom(256) * (1 + i)
                    (d / f"f{i}.bin").write_bytes(data)
                    files[f"f{i}.bin"] = hashlib.sha256(data).hexdigest()
            except OSError:  # the disk is full or read-only right now: not created
                continue
            self.dirs[name] = files

    def lost(self) -> list[str]:
        out = []
        for name, files in self.dirs.items():
            d = Path(AUDIT) / name
            if d.is_dir() and all(_sha(d / rel) == h for rel, h in files.items()):
                continue
            arch = Path(AUDIT) / "archive" / f"{name}.tar.gz"
            try:
                with tarfile.open(arch) as tf:
                    got = {}
                    for m in tf.getmembers():
                        if m.isfile():
                            f = tf.extractfile(m)
                            if f is not None:
                                got[m.name.split("/", 1)[-1]] = hashlib.sha256(
                                    f.read()).hexdigest()
                if all(got.get(rel) == h for rel, h in files.items()):
                    continue
            except (OSError, tarfile.TarError):
                pass
            out.append(name)
        return out


def _sha(p: Path) -> str | None:
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        return None


def serving(name: str, old_pid: str, health: Client, after_fault: bool) -> bool:
    """Is this daemon back: active again (new main PID) and answering?"""
    unit = DAEMONS[name]
    if name == "gateway":
        st, body = health.call("GET", "/health", timeout=3.0)
        return st in (200, 503) and isinstance(body, dict)
    p = show(unit, "ActiveState", "MainPID", "StatusText")
    if p.get("ActiveState") != "active" or p.get("MainPID") in ("0", "", old_pid):
        return False
    return not (after_fault and "degraded" in p.get("StatusText", ""))


def wait_recovered(names: list[str], old: dict[str, str], health: Client,
                   after_fault: bool) -> float:
    t0 = time.monotonic()
    pending = list(names)
    while pending and time.monotonic() - t0 < RECOVERY_TIMEOUT:
        pending = [n for n in pending if not serving(n, old.get(n, ""), health, after_fault)]
        if pending:
            time.sleep(0.05)
    return time.monotonic() - t0 if not pending else RECOVERY_TIMEOUT


def kill(name: str) -> str:
    pid = show(DAEMONS[name], "MainPID").get("MainPID", "0")
    sh("systemctl", "kill", "-s", "KILL", "--kill-who=main", DAEMONS[name])
    return pid


def fill_and_free(hold: float, health: Client) -> float:
    sh("dd", "if=/dev/zero", f"of={STATE}/chaos-filler", "bs=64k", timeout=60)
    time.sleep(hold)
    os.unlink(f"{STATE}/chaos-filler")
    return wait_recovered(["madre", "gateway", "reaper"], {}, health, after_fault=True)


def read_only_flip(hold: float, load: Load, health: Client) -> tuple[bool, float]:
    """Kill the writers, remount ro (retried: they restart within a second), hold, back."""
    load.paused.set()
    health.close()
    ok = False
    try:
        for _ in range(40):
            for n in DAEMONS:
                kill(n)
            sh("systemctl", "kill", "-s", "KILL", "vx11-rotate.service")
            if sh("mount", "-o", "remount,ro", STATE).returncode == 0:
                ok = True
                break
            time.sleep(0.02)
        if ok:
            load.paused.clear()
            time.sleep(hold)
            load.paused.set()
    finally:
        rw = sh("mount", "-o", "remount,rw", STATE)
        load.paused.clear()
    if rw.returncode != 0:
        raise RuntimeError(f"cannot remount {STATE} rw: {rw.stderr}")
    return ok, wait_recovered(["madre", "gateway", "reaper"], {}, health, after_fault=True)


BACKUP = "/root/chaos-backup.db"
VX11CTL = "/opt/vx11d/bin/vx11ctl"


def take_backup() -> bool:
    return sh(VX11CTL, "db", "backup", BACKUP, timeout=120).returncode == 0


def restore(health: Client) -> tuple[list[str] | None, bool, float, float]:
    """Put the backup back under load: (hija ids its report lists as not in the backup,
    or None if refused; `db check` ok after it; seconds it took; recovery seconds)."""
    t0 = time.monotonic()
    r = sh(VX11CTL, "db", "restore", BACKUP, "--json", timeout=300)
    took = time.monotonic() - t0
    listed = None
    try:
        rep = json.loads(r.stdout)
        if r.returncode == 0 and isinstance(rep, dict):
            listed = list(rep.get("not_in_backup", {}).get("spawner_hijas", []))
    except ValueError:
        pass
    sound = sh(VX11CTL, "db", "check", timeout=120).returncode == 0
    rec = wait_recovered(["madre", "gateway", "reaper"], {}, health, after_fault=True)
    return listed, sound, took, rec


def unit_results() -> dict[str, str]:
    """unit -> the result systemd logged for its end (success, timeout, ...)."""
    out: dict[str, str] = {}
    r = sh("journalctl", "-o", "json", "--no-pager", "_PID=1",
           f"MESSAGE_ID={UNIT_SUCCESS}", f"MESSAGE_ID={UNIT_FAILURE_RESULT}", timeout=120)
    for line in r.stdout.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        unit = e.get("UNIT", "")
        if unit.startswith("vx11-hija-"):
            out[unit] = e.get("UNIT_RESULT") or "success"
    return out


def agrees(status: str, result: str | None, active: bool) -> bool:
    """Does a row's status match what systemd says of its unit?"""
    if status in ("requested", "starting", "running"):
        return active
    if active:
        return False
    if status == "lost":
        return False  # systemd knew how it ended; a lost row lost that
    if result is None:  # never started (refused) or its end not logged yet
        return status in ("failed", "stopped")
    return {"expired": result == "timeout", "exited": result == "success",
            "stopped": True, "failed": result not in ("success", "timeout")}.get(status,
                                                                                 False)


def check_db(acked: dict[str, float], listed: set[str]) -> dict:
    c = sqlite3.connect(f"file:{DB}?mode=ro", uri=True, timeout=30)
    c.row_factory = sqlite3.Row
    integrity = [r[0] for r in c.execute("PRAGMA integrity_check")]
    fk = list(c.execute("PRAGMA foreign_key_check"))
    rows = {r["id"]: dict(r) for r in c.execute("SELECT * FROM spawner_hijas")}
    c.close()
    results = unit_results()
    r = sh("systemctl", "list-units", "--plain", "--no-legend", "--state=active",
           "vx11-hija-*")
    active = {line.split()[0] for line in r.stdout.splitlines() if line.strip()}
    lost = [h for h in acked if h not in rows and h not in listed]
    mismatched = []
    for hid in acked:
        row = rows.get(hid)
        if row is None:
            continue
        if not agrees(row["status"], results.get(row["unit"]), row["unit"] in active):
            mismatched.append({"id": hid, "status": row["status"],
                               "systemd": results.get(row["unit"]),
                               "active": row["unit"] in active})
    return {"integrity_ok": integrity == ["ok"] and not fk, "lost_records": len(lost),
            "restore_not_in_backup": len([h for h in acked if h not in rows and h in listed]),
            "lost_ids": lost[:20], "status_mismatches": len(mismatched),
            "mismatch_examples": mismatched[:10], "rows": len(rows)}


def inside(kills_goal: int, faults_goal: int, seed: int) -> dict:
    rng = random.Random(seed)
    token = Path("/etc/vx11/token").read_text().strip()
    health = Client(None)
    load = Load(token, period=0.15)
    over = Overdue()
    audit = Audit(rng)
    audit.make(12)
    load.start()
    over.start()
    recoveries: list[float] = []
    kills = faults = 0
    fault_kinds: dict[str, int] = {}
    recent: dict[str, list[float]] = {n: [] for n in DAEMONS}
    fault_every = max(1, kills_goal // (faults_goal + 1)) if faults_goal else 0
    next_rotation = time.monotonic()
    t_start = time.monotonic()
    listed: set[str] = set()
    restores = restore_malformed = 0
    restore_took: list[float] = []
    time.sleep(1.0)  # some load first: the backup is taken under it
    have_backup = take_backup()
    while kills < kills_goal:
        now = time.monotonic()
        if now >= next_rotation:
            audit.make(3)
            sh("systemctl", "start", "--no-block", "vx11-rotate.service")
            next_rotation = now + 6.0
        if fault_every and kills and kills % fault_every == 0 and faults < faults_goal:
            kind = ("disk_full", "read_only", "restore")[faults % 3]
            if kind == "restore" and not have_backup:
                have_backup = take_backup()
                kind = "restore_skipped"
                faults += 1
            elif kind == "restore":
                ids, sound, took, rec = restore(health)
                if ids is None:
                    kind = "restore_refused"
                else:
                    listed.update(ids)
                    restores += 1
                    restore_took.append(took)
                    recoveries.append(rec)
                restore_malformed += 0 if sound else 1
                faults += 1
                have_backup = take_backup()
            elif kind == "disk_full":
                recoveries.append(fill_and_free(2.0, health))
                faults += 1
            else:
                ok, took = read_only_flip(2.0, load, health)
                if ok:
                    recoveries.append(took)
                    faults += 1
                else:
                    kind = "read_only_skipped"
            fault_kinds[kind] = fault_kinds.get(kind, 0) + 1
        choices = [n for n in DAEMONS if len([t for t in recent[n] if now - t < 10]) < 3]
        name = rng.choice(choices or list(DAEMONS))
        time.sleep(rng.uniform(0.05, 0.3))
        old = kill(name)
        kills += 1
        recent[name] = [t for t in recent[name] if time.monotonic() - t < 10]
        recent[name].append(time.monotonic())
        recoveries.append(wait_recovered([name], {name: old}, health, after_fault=False))
    chaos_s = time.monotonic() - t_start
    load.stop.set()
    load.join(30)
    # settle: every acked hija past its TTL + grace, the rotation done, madre caught up
    time.sleep(max(TTLS) + GRACE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = show("vx11-madre.service", "StatusText", "ActiveState")
        rot = show("vx11-rotate.service", "ActiveState")
        if "degraded" not in m.get("StatusText", "") and \
                rot.get("ActiveState") not in ("activating", "deactivating"):
            break
        time.sleep(0.5)
    over.stop.set()
    over.join(10)
    over.sample()
    sh("systemctl", "start", "vx11-rotate.service", timeout=300)  # one last, undisturbed
    db = check_db(load.acked, listed)
    failed = [u for u in WATCHED if show(u, "ActiveState").get("ActiveState") == "failed"]
    rot_failed = show("vx11-rotate.service", "ActiveState").get("ActiveState") == "failed"
    rot_why = sh("journalctl", "-u", "vx11-rotate.service", "-n", "6", "-o", "cat",
                 "--no-pager").stdout.strip().splitlines() if rot_failed else []
    recoveries.sort()
    p99 = recoveries[min(len(recoveries) - 1, int(0.99 * len(recoveries)))] \
        if recoveries else 0.0
    return {"kills": kills, "faults_injected": faults, "fault_kinds": fault_kinds,
            "spawns_acked": len(load.acked), "spawn_answers": {str(k): v for k, v in
                                                              sorted(load.answers.items())},
            "lost_records": db["lost_records"], "status_mismatches": db["status_mismatches"],
            "mismatch_examples": db["mismatch_examples"], "lost_ids": db["lost_ids"],
            "overdue_hijas": len(over.overdue), "audit_dirs": len(audit.dirs),
            "audit_dirs_lost": len(audit.lost()), "integrity_ok": db["integrity_ok"],
            "units_failed_at_end": len(failed), "failed_units": failed,
            "rotate_failed_at_end": rot_failed, "rotate_last_lines": rot_why,
            "recovery_s_p50": round(statistics.median(recoveries), 3) if recoveries else 0,
            "recovery_s_p99": round(p99, 3), "recovery_s_max": round(max(recoveries or [0]), 3),
            "restores": restores, "restore_malformed": restore_malformed,
            "restore_not_in_backup": db["restore_not_in_backup"],
            "restore_s_max": round(max(restore_took or [0]), 3),
            "chaos_s": round(chaos_s, 1)}


# --- on the host --------------------------------------------------------------------------

CONFIG_EXTRA = """
rotate:
  roots:
    - path: /var/lib/vx11/audit
  keep_days: 1
  workers: 1
"""


def prepare(sb) -> None:  # type: ignore[no-untyped-def]
    """madre, the gateway socket and the reaper on a 32 MB tmpfs state dir."""
    cfg = (REPO / "packaging" / "sandbox" / "vx11.yml").read_text() + CONFIG_EXTRA
    sb.write_config(cfg)
    tmpfiles = str(REPO / "packaging" / "tmpfiles.d" / "vx11.conf")
    for argv in (["systemctl", "stop", "vx11-madre.service", "vx11-gateway.socket",
                  "vx11-gateway.service", "vx11-reaper.service"],
                 ["mount", "-t", "tmpfs", "-o", "size=32m,mode=0770", "tmpfs", STATE],
                 ["chgrp", "vx11", STATE], ["systemd-tmpfiles", "--create", tmpfiles],
                 ["systemctl", "daemon-reload"],
                 ["systemctl", "start", "vx11-madre.service", "vx11-gateway.socket",
                  "vx11-reaper.service"]):
        r = sb.exec(argv, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")


def run(quick: bool, kills: int | None, seed: int, keep: bool, name: str | None) -> dict:
    """Boot the sandbox, run the soak inside, return its figures (with total_s)."""
    sys.path.insert(0, str(REPO))
    from vx11d.ctl.sandbox import Sandbox

    kills = kills if kills is not None else (50 if quick else 1000)
    faults = 4 if quick else 20
    sb = Sandbox(name or f"vx11t-chaos-{os.getpid()}", die_with_caller=not keep)
    t0 = time.monotonic()
    sb.up()
    try:
        prepare(sb)
        r = sb.exec(["/opt/vx11d/bin/python", str(Path(__file__).resolve()), "--inside",
                     "--kills", str(kills), "--faults", str(faults), "--seed", str(seed)],
                    timeout=600 if quick else 4 * 3600)
        if r.returncode != 0:
            raise RuntimeError(f"chaos run failed inside the sandbox:\n{r.stdout[-3000:]}"
                               f"\n{r.stderr[-3000:]}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        if not keep:
            sb.down()
    res["total_s"] = round(time.monotonic() - t0, 1)
    return res


GOALS = {"lost_records": 0, "status_mismatches": 0, "overdue_hijas": 0,
         "audit_dirs_lost": 0, "units_failed_at_end": 0, "restore_malformed": 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50 kills, 4 faults (< 3 min)")
    ap.add_argument("--kills", type=int, default=None, help="override the number of kills")
    ap.add_argument("--faults", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="leave the sandbox up")
    ap.add_argument("--name", default=None, help="sandbox name (default vx11t-chaos-PID)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        print(json.dumps(inside(args.kills or 50, args.faults, args.seed)))
        return 0
    res = run(args.quick, args.kills, args.seed, args.keep, args.name)
    rows = [("kills / faults injected", f"{res['kills']} / {res['faults_injected']} "
             f"{res['fault_kinds']}"),
            ("spawns acknowledged", f"{res['spawns_acked']} (answers {res['spawn_answers']})"),
            ("lost records (goal 0)", res["lost_records"]),
            ("status mismatches (goal 0)", res["status_mismatches"]),
            ("hijas alive past TTL + grace (goal 0)", res["overdue_hijas"]),
            ("audit dirs lost (goal 0)", f"{res['audit_dirs_lost']} of {res['audit_dirs']}"),
            ("integrity_check + foreign_key_check", "ok" if res["integrity_ok"] else "FAIL"),
            ("restores under load / malformed after one (goal 0)",
             f"{res['restores']} / {res['restore_malformed']} (slowest "
             f"{res['restore_s_max']} s; {res['restore_not_in_backup']} acked spawns listed "
             "as not in the backup)"),
            ("units failed at end (goal 0)", f"{res['units_failed_at_end']} "
             f"{res['failed_units'] or ''}"),
            ("recovery p50 / p99 / max (s) (goal p99 <= 5)",
             f"{res['recovery_s_p50']} / {res['recovery_s_p99']} / {res['recovery_s_max']}"),
            ("chaos phase / total time (s)", f"{res['chaos_s']} / {res['total_s']}")]
    print_rows(rows)
    print(json.dumps(res, sort_keys=True))
    ok = all(res[k] == v for k, v in GOALS.items()) and res["integrity_ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
