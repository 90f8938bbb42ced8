"""The vx11d configuration: one YAML file, a section per daemon, refused whole if wrong.

Path: ``/etc/vx11/vx11.yml``, overridden by ``$VX11_CONFIG``. A missing file means
"all defaults". ``vx11ctl config sample`` prints every key with its default and
meaning (that output is ``packaging/vx11.yml``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Literal

from .confload import (
    Duration,
    Size,
    build,
    check_abs_path,
    check_regex,
    describe,
    load_yaml,
    opt,
)
from .errors import ConfigError

DEFAULT_PATH = "/etc/vx11/vx11.yml"
MAX_CONFIG_BYTES = 1024 * 1024

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _check_name(value: str) -> str | None:
    if not _NAME_RE.match(value):
        return "must match [a-z][a-z0-9_-]{0,31}"
    return None


def _check_hija_user(value: str) -> str | None:
    if value == "":
        return None
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,30}", value):
        return "must be a user name ([a-z_][a-z0-9_-]{0,30}) or empty (DynamicUser)"
    if value in ("root", "vx11"):
        return f"{value!r} is not a hija user: hijas must not get root or the daemons' DB access"
    return None


def _check_sha256(value: str) -> str | None:
    if value and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return "must be 64 hex digits or empty"
    return None


def _check_port(value: int) -> str | None:
    if not 0 <= value <= 65535:
        return f"not a TCP port: {value}"
    return None


METRICS_ADDRESS_HELP = ("metrics listen address: loopback, or one address of this host for a "
                        "fleet Prometheus (docs/fleet.md)")


def _check_metrics_address(value: str) -> str | None:
    """Loopback (the default), or one address of this host for a fleet Prometheus to
    scrape (docs/fleet.md); never a wildcard, which would open it on every interface."""
    if value == "localhost":
        return None
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return f"not an IP address: {value!r} (loopback, or this host's monitoring address)"
    if addr.is_unspecified or addr.is_multicast:
        return (f"metrics listen on loopback or on one address of this host; got {value!r} "
                "(a wildcard opens them on every interface)")
    return None


@dataclass(frozen=True, kw_only=True)
class DbConfig:
    path: str = opt("/var/lib/vx11/vx11.db", "SQLite database file shared by all daemons",
                    check=check_abs_path)
    busy_timeout_ms: int = opt(1000, "how long one statement waits for a lock (with "
                               "write_deadline: at most 40% of the units' WatchdogSec)",
                               lo=10, hi=600_000)
    write_deadline: Duration = opt(Duration(3), "how long a write transaction is retried "
                                   "while the database stays locked", lo=0.1, hi=3600)


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    listen_address: str = opt("127.0.0.1", "address to bind when not socket-activated "
                              "(loopback until TLS is configured: docs/security.md)")
    listen_port: int = opt(8000, "port to bind when not socket-activated", check=_check_port)
    metrics_address: str = opt("127.0.0.1", METRICS_ADDRESS_HELP,
                               check=_check_metrics_address)
    metrics_port: int = opt(9711, "/metrics port", check=_check_port)
    credentials_dir: str = opt("/etc/vx11/credentials.d", "named credentials with scopes, "
                               "one file each (vx11ctl token add); digests only",
                               check=check_abs_path)
    token_credential: str = opt("token", "name of the systemd credential holding the "
                                "legacy token (the credential named admin)")
    token_file: str = opt("/etc/vx11/token", "legacy token file, the credential named admin "
                          "(must be mode 0600; empty: revoked)", check=check_abs_path)
    tls_cert_file: str = opt("", "TLS certificate (PEM, chain after it) when not handed "
                             "in as the systemd credential tls.crt; empty: no TLS",
                             check=check_abs_path)
    tls_key_file: str = opt("", "TLS private key (PEM, unencrypted, 0600) when not handed "
                            "in as the systemd credential tls.key", check=check_abs_path)
    plain_http_beyond_loopback: bool = opt(False, "serve peers beyond loopback over plain "
                                           "HTTP, credentials in clear (only behind a "
                                           "TLS-terminating proxy; loud: STATUS, journal, "
                                           "metric, scorecard FAIL)")
    max_body: Size = opt(Size(1024 * 1024), "largest accepted request body", lo=1024,
                         hi=64 * 1024**2)
    keepalive_timeout: Duration = opt(Duration(15), "idle keep-alive connection timeout",
                                      lo=1, hi=3600)
    request_timeout: Duration = opt(Duration(30), "per-request deadline", lo=1, hi=3600)
    auth_fail_limit: int = opt(10, "failed token attempts from one client before 429",
                               lo=1, hi=100_000)
    auth_fail_window: Duration = opt(Duration(60), "window for counting failed attempts",
                                     lo=1, hi=86400)
    spawn_wait: Duration = opt(Duration(10), "how long POST /vx11/spawn waits for madre to "
                               "start the hija", lo=0.1, hi=300)
    hermes_socket: str = opt("/run/vx11-hermes/hermes.sock", "Hermes worker UNIX socket",
                             check=check_abs_path)
    madre_wake_socket: str = opt("/run/vx11/madre.sock", "madre's wake-up datagram socket",
                                 check=check_abs_path)


@dataclass(frozen=True, kw_only=True)
class HijaArg:
    type: Literal["str", "int"] = opt("str", "argument type")
    pattern: str = opt(r"^[A-Za-z0-9._-]{1,64}$", "regex a str argument must fully match",
                       check=check_regex)
    min: int = opt(0, "smallest int value")
    max: int = opt(2**31 - 1, "largest int value")
    required: bool = opt(False, "whether the argument must be given")
    default: str = opt("", "value used when the argument is not given")


@dataclass(frozen=True, kw_only=True)
class HijaTemplate:
    command: list[str] = opt(doc="argv; {name} is replaced by argument name, {port} by the "
                             "allocated port")
    args: dict[str, HijaArg] = opt(doc="the arguments a spawn request may pass",
                                   factory=dict)
    default_ttl: Duration = opt(Duration(60), "TTL when the request gives none", lo=1,
                                hi=7 * 86400)
    max_ttl: Duration = opt(Duration(3600), "largest TTL a request may ask for", lo=1,
                            hi=7 * 86400)
    needs_port: bool = opt(False, "allocate a port from madre.port_range and pass $PORT")
    memory_max: Size = opt(Size(512 * 1024**2), "MemoryMax= of the hija unit", lo=1024**2)
    cpu_quota_percent: int = opt(100, "CPUQuota= of the hija unit, in percent", lo=1, hi=10000)
    tasks_max: int = opt(64, "TasksMax= of the hija unit", lo=1, hi=100_000)
    sandboxing: Literal["strict", "basic"] = opt(
        "strict", "basic: own user, no new privileges, no capabilities, a system-call "
        "allow list, no namespaces, Internet sockets only with needs_port (exposure "
        "3.0); strict: also private /tmp, /dev, users and (without needs_port) network, "
        "read-only system, no /home, hidden /proc, protected kernel (exposure 0.6-1.3; "
        "mount namespace: about 100 ms more per spawn). See docs/madre.md")
    dynamic_user: bool = opt(False, "run each hija under its own DynamicUser=yes UID "
                             "instead of madre.hija_user (stronger isolation between "
                             "hijas; implies a private /tmp and a read-only system, a "
                             "mount namespace: about 10 ms more per spawn)")

    def validate(self) -> str | None:
        if not self.command or not self.command[0].startswith("/"):
            return "command must be a non-empty list whose first item is an absolute path"
        if self.default_ttl > self.max_ttl:
            return "default_ttl must be <= max_ttl"
        return None


@dataclass(frozen=True, kw_only=True)
class MadreConfig:
    metrics_address: str = opt("127.0.0.1", METRICS_ADDRESS_HELP,
                               check=_check_metrics_address)
    metrics_port: int = opt(9712, "/metrics port", check=_check_port)
    profile: Literal["solo_madre", "full"] = opt("solo_madre", "solo_madre: core only; "
                                                 "full: also keeps Hermes up")
    port_range: list[int] = opt(doc="first and last port handed to hijas",
                                factory=lambda: (20000, 20999))
    tick: Duration = opt(Duration(1), "least time between two timed passes (expiry backstop, "
                         "window ends, retries)",
                         lo=0.05, hi=60)
    backstop_grace: Duration = opt(Duration(5), "how long past expiry madre lets systemd act "
                                   "before it stops a hija itself", lo=0, hi=3600)
    stop_timeout: Duration = opt(Duration(5), "TimeoutStopSec= of hija units", lo=1, hi=600)
    max_activation: Duration = opt(Duration(86400), "longest activation window", lo=60,
                                   hi=30 * 86400)
    min_ttl: Duration = opt(Duration(1), "shortest TTL a spawn or an activation window may "
                            "ask for (a shorter one is refused, 422)", lo=0.01, hi=3600)
    hija_user: str = opt("vx11-hija", "dedicated static user hijas run as (created by "
                         "packaging/sysusers.d/vx11.conf; not in group vx11); empty means "
                         "DynamicUser=yes for every template", check=_check_hija_user)
    templates: dict[str, HijaTemplate] = opt(doc="hija templates by name", factory=dict)

    def validate(self) -> str | None:
        if len(self.port_range) != 2 or not 1024 <= self.port_range[0] <= self.port_range[1] \
                <= 65535:
            return "port_range must be [first, last] with 1024 <= first <= last <= 65535"
        for name, tpl in self.templates.items():
            if _check_name(name):
                return f"template name {name!r} must match [a-z][a-z0-9_-]{{0,31}}"
            if tpl.max_ttl < self.min_ttl:
                return f"template {name!r}: max_ttl {tpl.max_ttl:g}s is below min_ttl " \
                       f"{self.min_ttl:g}s"
        return None


# What a host can't lose: the reaper never signals a process in these units/slices
# (matched against every name on its cgroup path) or with these names, whatever a rule says.
DEFAULT_PROTECTED_UNITS = (
    "-.slice", "init.scope", "systemd-*", "dbus.service", "dbus-broker.service",
    "dbus.socket", "polkit.service", "user@*.service", "user-runtime-dir@*.service",
    "getty@*.service", "serial-getty@*.service", "console-getty.service",
    "container-getty@*.service", "autovt@*.service", "ssh.service", "sshd.service",
    "sshd@*.service", "vx11-gateway.service", "vx11-madre.service", "vx11-reaper.service",
    "vx11-hermes.service", "vx11-rotate.service")
DEFAULT_PROTECTED_COMMS = (
    "systemd", "systemd-*", "(sd-pam)", "init", "dbus-daemon", "dbus-broker*", "polkitd",
    "agetty", "getty", "mingetty", "login", "sshd", "sshd-session", "sshd-auth")


@dataclass(frozen=True, kw_only=True)
class ReaperRule:
    name: str = opt(doc="rule name (a metric label; keep it short)", check=_check_name)
    comm: str = opt("", "regex on the process name (comm)", check=check_regex)
    cmdline: str = opt("", "regex on the command line (args joined by spaces)",
                       check=check_regex)
    user: str = opt("", "user name or uid the process must run as")
    min_age: Duration = opt(Duration(0), "minimum process age", lo=0)
    orphan: bool = opt(False, "only processes re-parented to PID 1 or a subreaper")
    zombie_parent: bool = opt(False, "only parents that leak zombies")
    min_zombies: int = opt(1, "with zombie_parent: how many zombies make a leak", lo=1)
    cgroup: str = opt("", "regex on the process's cgroup path", check=check_regex)
    action: Literal["observe", "terminate"] = opt("observe", "observe only, or terminate")
    grace: Duration = opt(Duration(10), "seconds between SIGTERM and SIGKILL", lo=0, hi=3600)

    def validate(self) -> str | None:
        if not (self.comm or self.cmdline or self.user or self.cgroup or self.orphan
                or self.zombie_parent):
            return f"rule {self.name!r} matches everything; give at least one condition"
        return None


@dataclass(frozen=True, kw_only=True)
class ReaperConfig:
    metrics_address: str = opt("127.0.0.1", METRICS_ADDRESS_HELP,
                               check=_check_metrics_address)
    metrics_port: int = opt(9713, "/metrics port", check=_check_port)
    interval: Duration = opt(Duration(30), "time between scans", lo=0.1, hi=86400)
    max_kills_per_scan: int = opt(10, "circuit breaker: most processes signalled per scan",
                                  lo=0, hi=100_000)
    observe_log_interval: Duration = opt(Duration(600), "a finding is logged again only "
                                         "after this long", lo=0, hi=7 * 86400)
    protected_units: list[str] = opt(doc="glob patterns of units/slices never touched (the "
                                     "default set; add yours in extra_protected_units)",
                                     factory=lambda: DEFAULT_PROTECTED_UNITS)
    protected_comms: list[str] = opt(doc="glob patterns of process names (comm) never "
                                     "touched (the default set; add yours in "
                                     "extra_protected_comms)",
                                     factory=lambda: DEFAULT_PROTECTED_COMMS)
    extra_protected_units: list[str] = opt(doc="more unit/slice globs never touched, on top "
                                           "of protected_units", factory=tuple)
    extra_protected_comms: list[str] = opt(doc="more process-name globs never touched, on "
                                           "top of protected_comms", factory=tuple)
    breaker_max_share: float = opt(0.25, "circuit breaker: a rule that would signal more "
                                   "than this share of all processes in one scan stops "
                                   "enforcement", lo=0.001, hi=1.0)
    breaker_min_matches: int = opt(10, "circuit breaker: ... and at least this many",
                                   lo=1, hi=10_000_000)
    breaker_max_signals: int = opt(50, "circuit breaker: more processes signalled than this "
                                   "within breaker_window stops enforcement", lo=1,
                                   hi=10_000_000)
    breaker_window: Duration = opt(Duration(600), "circuit breaker: the window for "
                                   "breaker_max_signals", lo=1, hi=7 * 86400)
    breaker_file: str = opt("/var/lib/vx11/reaper-breaker.json", "where a stopped breaker "
                            "is remembered across restarts until `vx11ctl reaper rearm`",
                            check=check_abs_path)
    hija_enforce: bool = opt(True, "terminate hija processes whose DB record has ended")
    hija_grace: Duration = opt(Duration(5), "grace for ended-hija processes", lo=0, hi=3600)
    rules: list[ReaperRule] = opt(doc="policy rules, first match wins", factory=tuple)
    tracking: Literal["events", "poll"] = opt(
        "events", "events: read each process once and learn exits from pidfds (falls back "
        "to poll above the open-file limit); poll: re-read every process every scan")
    new_process_check: Duration = opt(Duration(0.5), "with tracking: events, how often "
                                      "new PIDs are looked for (zombie detection delay; 4x "
                                      "longer after 10 s with no new PID and no exit)",
                                      lo=0.05, hi=60)
    full_rescan_every: int = opt(20, "with tracking: events, re-read every process every "
                                 "this many scans (catches exec and setuid)", lo=1, hi=100_000)


@dataclass(frozen=True, kw_only=True)
class RotateRoot:
    path: str = opt(doc="an audit output root", check=check_abs_path)
    archive_dir: str = opt("", "where archives go (default: <path>/archive)",
                           check=check_abs_path)


@dataclass(frozen=True, kw_only=True)
class RotateConfig:
    roots: list[RotateRoot] = opt(doc="audit roots to rotate", factory=tuple)
    keep_days: float = opt(7.0, "archive dirs older than this many days", lo=0, hi=36500)
    aggressive_days: float = opt(90.0, "with --aggressive, delete archives older than this",
                                 lo=1, hi=36500)
    hard_exclude: list[str] = opt(doc="extra glob patterns never archived or deleted "
                                  "(SCORECARD.json, DB_SCHEMA*, DB_MAP* always are)",
                                  factory=tuple)
    size_budget: Size = opt(Size(10 * 1024**3), "the audit roots' total size the scorecard "
                            "allows (vx11ctl scorecard: audit_size_budget)", lo=1024**2)
    compression_level: int = opt(6, "gzip level", lo=1, hi=9)
    workers: int = opt(2, "archives written at once (worker processes)", lo=1, hi=64)
    compress_threads: int = opt(0, "compression threads per archive (0: the CPUs shared "
                                "among the archives written at once)", lo=0, hi=64)
    textfile_dir: str = opt("/var/lib/prometheus/node-exporter",
                            "node_exporter textfile collector dir", check=check_abs_path)
    lock_file: str = opt("/var/lib/vx11/rotate.lock", "flock()ed so only one rotation runs "
                         "at a time (outside the roots, so --dry-run changes nothing there)",
                         check=check_abs_path)

    def validate(self) -> str | None:
        for pat in self.hard_exclude:
            if not pat or "/" in pat or "\0" in pat:
                return f"hard_exclude pattern {pat!r} must be a non-empty file-name glob " \
                       "without '/' (it matches names at any depth)"
        paths = [r.path.rstrip("/") for r in self.roots]
        if len(set(paths)) != len(paths):
            return "roots: the same path is listed twice"
        adirs = [(r.archive_dir or r.path.rstrip("/") + "/archive").rstrip("/")
                 for r in self.roots]
        if len(set(adirs)) != len(adirs):
            return "roots: two roots share one archive_dir (their archives could collide)"
        return None


@dataclass(frozen=True, kw_only=True)
class HermesConfig:
    socket: str = opt("/run/vx11-hermes/hermes.sock", "UNIX socket the worker serves on",
                      check=check_abs_path)
    metrics_address: str = opt("127.0.0.1", METRICS_ADDRESS_HELP,
                               check=_check_metrics_address)
    metrics_port: int = opt(0, "extra loopback /metrics port (0: none). The unit has "
                            "PrivateNetwork=yes, so scrape through the gateway's "
                            "/vx11/hermes/metrics; /metrics is always on the socket",
                            check=_check_port)
    model_path: str = opt("/var/lib/vx11/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                          "GGUF model file (the default one: vx11ctl model fetch)",
                          check=check_abs_path)
    model_sha256: str = opt("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                            "expected sha256 of the model (empty: not checked)",
                            check=_check_sha256)
    max_model_size: Size = opt(Size(8 * 1024**3), "largest model file accepted", lo=1024)
    n_ctx: int = opt(4096, "context length", lo=16, hi=131072)
    n_threads: int = opt(0, "inference threads (0: all cores)", lo=0, hi=1024)
    max_tokens: int = opt(512, "cap on generated tokens per request", lo=1, hi=32768)
    idle_unload: Duration = opt(Duration(7200), "unload the model after this long unused",
                                lo=1, hi=7 * 86400)
    rss_limit: Size = opt(Size(int(5.5 * 1024**3)), "RSS guard: above it, finish and restart",
                          lo=16 * 1024**2)
    parallel: int = opt(0, "requests decoded together in one batch (continuous batching); "
                        "they share the n_ctx cells of the KV cache. 0: one per 1024 cells "
                        "of n_ctx, at most 2 per core and 4", lo=0, hi=64)
    queue_max: int = opt(8, "requests waiting beyond the running ones before 503", lo=0,
                         hi=10_000)
    request_timeout: Duration = opt(Duration(120), "per-request deadline", lo=0.1, hi=3600)
    chat_format: str = opt("", "llama-cpp-python chat format; empty: the chat template "
                           "in the GGUF's metadata (llama-2 when it has none)")
    prompt_cache: Size = opt(Size(256 * 1024**2), "RAM for saved prompt states, so "
                             "several conversations each reuse their evaluated prefix "
                             "(0: only the last prompt's prefix is reused)", lo=0,
                             hi=64 * 1024**3)
    mmap: bool = opt(False, "map the model file instead of reading it. Off: llama.cpp "
                     "repacks most int4 weights for the CPU into memory of its own, and "
                     "with the file mapped too a 7B model's RSS counted both during the "
                     "load (measured: +1.2 GiB, a false RSS-guard exit under 6G)")
    kv_cache_type: Literal["auto", "f16", "q8_0", "q4_0"] = opt(
        "auto", "type of the KV cache's keys and values. auto: q8_0 with flash_attn for "
        "a model whose attention heads are a multiple of 32 wide (every common one), "
        "else f16. q8_0 (needs flash_attn) has half the memory of f16 and one attention "
        "kernel for every decode, so a lone long conversation needs no pad row (measured in "
        "a 500-token conversation: 0.64-0.67x llama-server's tokens/s with f16, "
        "1.13-1.25x with q8_0)")
    flash_attn: bool = opt(True, "llama.cpp's fused attention kernel (measured ~14 % "
                           "faster generation on CPU); off if a model's answers go wrong "
                           "with it")
    window: Duration = opt(Duration(7200), "default activation window", lo=60, hi=30 * 86400)

    def validate(self) -> str | None:
        if self.kv_cache_type not in ("auto", "f16") and not self.flash_attn:
            return f"kv_cache_type {self.kv_cache_type} needs flash_attn: true (llama.cpp " \
                   "quantizes the V cache only with flash attention)"
        return None


@dataclass(frozen=True, kw_only=True)
class SwitchRule:
    name: str = opt(doc="rule name", check=_check_name)
    exact: str = opt("", "answer when the query equals this (case-insensitive, trimmed)")
    pattern: str = opt("", "answer when this regex matches; groups fill {1}, {2}...",
                       check=check_regex)
    answer: str = opt(doc="answer text or template")

    def validate(self) -> str | None:
        if bool(self.exact) == bool(self.pattern):
            return f"switch rule {self.name!r} needs exactly one of exact or pattern"
        return None


@dataclass(frozen=True, kw_only=True)
class SwitchConfig:
    rules: list[SwitchRule] = opt(doc="pattern rules, tried in order", factory=tuple)
    max_query_chars: int = opt(2000, "longest query Switch looks at", lo=1, hi=1_000_000)
    window: Duration = opt(Duration(3600), "default activation window", lo=60, hi=30 * 86400)


@dataclass(frozen=True, kw_only=True)
class RemoteConfig:
    base_url: str = opt("", "OpenAI-compatible base URL (empty: no remote route)")
    api_key_file: str = opt("", "file holding the remote API key", check=check_abs_path)
    model: str = opt("", "model name sent to the remote API")
    timeout: Duration = opt(Duration(30), "remote request timeout", lo=0.1, hi=600)

    def validate(self) -> str | None:
        if self.base_url and not re.match(r"^https?://[^\s/]+", self.base_url):
            return f"base_url must be an http(s) URL; got {self.base_url!r}"
        return None


@dataclass(frozen=True, kw_only=True)
class Config:
    log_level: Literal["debug", "info", "warning", "error"] = opt("info", "log level")
    db: DbConfig = opt(doc="the shared SQLite database", factory=DbConfig)
    gateway: GatewayConfig = opt(doc="tentaculo_link, the HTTP entrypoint",
                                 factory=GatewayConfig)
    madre: MadreConfig = opt(doc="madre, the hija supervisor", factory=MadreConfig)
    reaper: ReaperConfig = opt(doc="the zombie and orphan reaper", factory=ReaperConfig)
    rotate: RotateConfig = opt(doc="the audit rotator", factory=RotateConfig)
    hermes: HermesConfig = opt(doc="the Hermes LLM worker", factory=HermesConfig)
    switch: SwitchConfig = opt(doc="the deterministic router", factory=SwitchConfig)
    remote: RemoteConfig = opt(doc="the remote API fallback", factory=RemoteConfig)
    path: str = opt("", "(set by the loader: the file this came from)")


# WatchdogSec= of the shipped daemon units; a drop-in may change it, and each daemon
# checks again against the WATCHDOG_USEC systemd gives it (check_db_fits_watchdog).
SHIPPED_WATCHDOG_S = 10.0
# A daemon loop may wait on the DB at most this share of its watchdog period.
DB_WATCHDOG_SHARE = 0.4


def check_db_fits_watchdog(cfg: Config, watchdog_s: float, where: str = "WatchdogSec") -> None:
    """ConfigError (exit 78) when one DB wait (lock timeout + write retries) cannot fit.

    A write waits up to ``busy_timeout_ms`` inside SQLite and is retried until
    ``write_deadline``; a loop doing that must still ping the watchdog in time.
    """
    wait = cfg.db.busy_timeout_ms / 1000 + float(cfg.db.write_deadline)
    limit = DB_WATCHDOG_SHARE * watchdog_s
    if wait > limit + 1e-9:
        key = "db.write_deadline" if float(cfg.db.write_deadline) >= \
            cfg.db.busy_timeout_ms / 1000 else "db.busy_timeout_ms"
        raise ConfigError(cfg.path, key, f"a DB wait of up to {wait:g}s (busy_timeout_ms + "
                          f"write_deadline) does not fit {where}={watchdog_s:g}s: keep the "
                          f"sum at most {limit:g}s")


def config_path(explicit: str | None = None) -> str:
    """The config file in force: an explicit path, ``$VX11_CONFIG``, or the default."""
    return explicit or os.environ.get("VX11_CONFIG") or DEFAULT_PATH


def parse(text: str, path: str) -> Config:
    """Config from YAML text; ConfigError naming the key on any problem."""
    data = load_yaml(text, path)
    if data is None:
        data = {}
    if isinstance(data, dict) and "path" in data:
        raise ConfigError(path, "path", "unknown key")
    cfg = _replace_path(build(Config, data, path), path)
    check_db_fits_watchdog(cfg, SHIPPED_WATCHDOG_S, "the units' WatchdogSec")
    return cfg


def load(explicit: str | None = None) -> Config:
    """Load the config in force; a missing default file means all defaults."""
    path = config_path(explicit)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as e:
        if explicit or os.environ.get("VX11_CONFIG"):
            raise ConfigError(path, "", "file not found") from e
        return _replace_path(Config(), path)
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(path, "", f"larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, "", f"not UTF-8 (byte {e.start})") from e
    return parse(text, path)


def _replace_path(cfg: Config, path: str) -> Config:
    import dataclasses

    return dataclasses.replace(cfg, path=path)


def sample() -> str:
    """The documented sample config (the shipped /etc/vx11/vx11.yml): every key with its
    default, commented out (``#key: value``), so a conffile the admin edited sets only
    what the admin set and a new release's defaults still apply. A line that is a key or
    a list item right after ``#`` is a default: delete the ``#`` to set it."""
    head = ["# vx11d configuration (/etc/vx11/vx11.yml). Every key is optional and shown",
            "# with its default, commented out: '#key: value' is a default (delete the '#'",
            "# to set it, with the section line above it), '# text' says what the key below",
            "# it means. Durations: 30s, 5m, 2h, 7d or seconds. Sizes: 512M, 6G or bytes.",
            "# Unknown keys, bad values and a key given twice stop the daemons with exit 78.",
            ""]
    body = [ln for ln in describe(Config) if not ln.startswith(("path:", "# (set by"))]
    return "\n".join(head + [_commented(ln) for ln in body]) + "\n"


def _commented(line: str) -> str:
    """``  key: v`` -> ``  #key: v`` (deleting the ``#`` gives the line back); comment
    lines stay as they are."""
    text = line.lstrip(" ")
    return line if text.startswith("#") else line[:len(line) - len(text)] + "#" + text
