"""Config: defaults, the sample file, and every refusal path (file, key and reason named)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from vx11d import config, confload
from vx11d.confload import parse_duration, parse_size
from vx11d.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def refuse(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        config.parse(text, "/etc/vx11/vx11.yml")
    assert "/etc/vx11/vx11.yml" in str(ei.value)
    return ei.value


def test_empty_file_gives_all_defaults():
    cfg = config.parse("", "x.yml")
    assert cfg.gateway.listen_port == 8000
    assert cfg.madre.profile == "solo_madre"
    assert cfg.hermes.idle_unload == 7200
    assert cfg.rotate.keep_days == 7
    assert cfg.db.path == "/var/lib/vx11/vx11.db"


def test_missing_default_file_means_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("VX11_CONFIG", raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.yml"))
    assert config.load().gateway.listen_port == 8000


def test_missing_explicit_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        config.load(str(tmp_path / "absent.yml"))


def test_sample_file_is_current_and_valid():
    shipped = (REPO / "packaging" / "vx11.yml").read_text()
    assert shipped == config.sample(), "regenerate: vx11ctl config sample > packaging/vx11.yml"
    assert config.parse(shipped, "packaging/vx11.yml") == config.parse("", "packaging/vx11.yml")


def _defaults(cls) -> dict:
    """Every key of ``cls`` with its default, from the dataclasses themselves (the schema
    the daemons parse with), as YAML would load it."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name == "path" and cls is config.Config:
            continue  # set by the loader, not a key of the file
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out[f.name] = _defaults(tp)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = confload._plain(default)
    return out


def test_shipped_config_has_every_key_commented_out_with_its_real_default():
    """The shipped conffile sets nothing: every key is there as '#key: default', so an
    edited /etc/vx11/vx11.yml no longer pins old defaults across upgrades (the 0.1.0 ->
    0.1.1 trap). Deleting every such '#' gives exactly the schema's defaults."""
    shipped = (REPO / "packaging" / "vx11.yml").read_text()
    assert yaml.safe_load(shipped) is None  # nothing set
    uncommented = re.sub(r"(?m)^( *)#(?=[^\s#])", r"\1", shipped)
    assert yaml.safe_load(uncommented) == _defaults(config.Config)
    assert config.parse(uncommented, "x.yml") == config.parse("", "x.yml")


@pytest.mark.parametrize("text,key,reason", [
    ("bogus: 1", "bogus", "unknown key"),
    ("gateway:\n  listen_prot: 80", "gateway.listen_prot", "unknown key"),
    ("gateway:\n  listen_port: '8000'", "gateway.listen_port", "must be an integer"),
    ("gateway:\n  listen_port: true", "gateway.listen_port", "must be an integer"),
    ("gateway:\n  listen_port: 70000", "gateway.listen_port", "not a TCP port"),
    ("gateway: [1, 2]", "gateway", "must be a mapping"),
    ("gateway:\n  metrics_address: 0.0.0.0", "gateway.metrics_address", "loopback"),
    ("gateway:\n  max_body: 12Q", "gateway.max_body", "expected a size"),
    ("gateway:\n  max_body: 10", "gateway.max_body", ">= 1024"),
    ("gateway:\n  token_file: relative/token", "gateway.token_file", "absolute path"),
    ("madre:\n  profile: everything", "madre.profile", "one of"),
    ("madre:\n  tick: soon", "madre.tick", "expected a duration"),
    ("madre:\n  tick: .nan", "madre.tick", "finite"),
    ("madre:\n  port_range: [30000, 20000]", "madre", "port_range"),
    ("madre:\n  templates:\n    web:\n      command: [python3]", "madre.templates.web",
     "absolute path"),
    ("madre:\n  templates:\n    web:\n      command: [/bin/true]\n      max_ttl: 10\n"
     "      default_ttl: 20", "madre.templates.web", "default_ttl"),
    ("madre:\n  templates:\n    Bad Name:\n      command: [/bin/true]", "madre",
     "template name"),
    ("madre:\n  templates:\n    web:\n      command: [/bin/true]\n      bogus: 1",
     "madre.templates.web.bogus", "unknown key"),
    ("madre:\n  templates:\n    web: {}", "madre.templates.web.command", "is required"),
    ("reaper:\n  rules:\n  - name: r\n    comm: '('", "reaper.rules[0].comm",
     "regular expression"),
    ("reaper:\n  rules:\n  - name: r", "reaper.rules[0]", "matches everything"),
    ("reaper:\n  rules:\n  - name: r\n    comm: x\n    action: nuke", "reaper.rules[0].action",
     "one of"),
    ("reaper:\n  interval: -1", "reaper.interval", ">= 0.1"),
    ("rotate:\n  compression_level: 10", "rotate.compression_level", "<= 9"),
    ("rotate:\n  roots: /srv/audit", "rotate.roots", "must be a list"),
    ("switch:\n  rules:\n  - name: a\n    answer: b", "switch.rules[0]", "exactly one"),
    ("remote:\n  base_url: ftp://x", "remote", "http(s) URL"),
    ("log_level: loud", "log_level", "one of"),
    ("path: /x", "path", "unknown key"),
    ("db:\n  path: \"/var/lib/\\0x\"", "db.path", "NUL"),
])
def test_refusals_name_the_key_and_reason(text, key, reason):
    e = refuse(text)
    assert e.key == key
    assert reason in e.reason


def test_invalid_yaml_names_the_line():
    e = refuse("gateway:\n  listen_port: [\n")
    assert "not valid YAML" in e.reason
    assert e.key.startswith("line")


def test_top_level_must_be_mapping():
    assert "must be a mapping" in refuse("- a\n- b\n").reason


def test_non_utf8_and_oversized_files_refused(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_bytes(b"log_level: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(str(bad))
    big = tmp_path / "big.yml"
    big.write_text("# " + "x" * (config.MAX_CONFIG_BYTES + 10))
    with pytest.raises(ConfigError, match="larger than"):
        config.load(str(big))


def test_yaml_tags_are_not_executed(tmp_path):
    e = refuse("log_level: !!python/object/apply:os.system ['true']")
    assert "not valid YAML" in e.reason


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("5m", 300), ("2h", 7200), ("7d", 604800),
                                          (12, 12), ("250ms", 0.25), (1.5, 1.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text,n", [("512M", 512 * 1024**2), ("6G", 6 * 1024**3),
                                    ("6GiB", 6 * 1024**3), (100, 100), ("1k", 1024)])
def test_sizes(text, n):
    assert parse_size(text) == n


def test_config_is_immutable():
    cfg = config.parse("", "x.yml")
    with pytest.raises(AttributeError):
        cfg.gateway.listen_port = 1  # type: ignore[misc]


def test_vx11ctl_config_check_exit_codes(tmp_path):
    good, bad = tmp_path / "good.yml", tmp_path / "bad.yml"
    good.write_text("reaper:\n  interval: 5s\n")
    bad.write_text("reaper:\n  intervall: 5s\n")
    ok = subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "config", "check",
                         "--path", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    no = subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "config", "check",
                         "--path", str(bad)], capture_output=True, text=True)
    assert no.returncode == 78
    assert "reaper.intervall" in no.stderr and "unknown key" in no.stderr


def test_daemon_with_bad_config_exits_78_with_one_line(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("gateway:\n  listen_port: eighty\n")
    r = subprocess.run([sys.executable, "-m", "vx11d", "reaper"], capture_output=True,
                       text=True, env={"VX11_CONFIG": str(bad), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 78
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "gateway.listen_port" in lines[0] and str(bad) in lines[0]


@pytest.mark.parametrize("text,first,again,key", [
    ("madre:\n  tick: 1s\n  backstop_grace: 2s\n  tick: 2s\n", 2, 4, "tick"),
    ("madre: {}\ngateway: {}\nmadre: {profile: full}\n", 1, 3, "madre"),
    ("reaper:\n  rules:\n    - {name: a, comm: x, name: b}\n", 3, 3, "name"),
])
def test_duplicate_key_is_refused_with_the_line_of_both(text, first, again, key):
    err = refuse(text)
    assert err.key == f"line {again}"
    assert f"key {key!r} given twice (first on line {first})" in err.reason


def test_merge_keys_may_override_what_they_merge():
    cfg = config.parse("madre:\n  templates:\n"
                       "    a: &base {command: [/bin/true], default_ttl: 10s, max_ttl: 60s}\n"
                       "    b:\n      <<: *base\n      max_ttl: 30s\n", "t.yml")
    assert cfg.madre.templates["b"].max_ttl == 30
    assert cfg.madre.templates["b"].command == ("/bin/true",)


def alias_bomb(levels: int = 8, fan: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * fan) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]"
              for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_before_it_expands():
    err = refuse(alias_bomb())  # 10**8 values if expanded; a 300-byte file
    assert "expands to more than 20000 values" in err.reason and err.key.startswith("line ")


def test_one_rule_repeated_116436_times_through_aliases_is_refused(tmp_path):
    text = ("reaper:\n  rules:\n    - &r {name: leaky, comm: '^x$'}\n"
            + "    - *r\n" * 116_436)
    path = tmp_path / "big.yml"
    path.write_text(text)
    assert path.stat().st_size <= config.MAX_CONFIG_BYTES
    with pytest.raises(ConfigError, match="more than 1000 entries"):
        config.load(str(path))


@pytest.mark.parametrize("text,reason", [
    ("x: " + "[" * 40 + "]" * 40, "nested deeper than 32 levels"),
    ("reaper:\n  protected_units: [" + ", ".join(["a"] * 1001) + "]\n",
     "more than 1000 entries"),
    ("madre:\n  templates:\n" + "".join(f"    t{i}: {{command: [/bin/true]}}\n"
                                       for i in range(1001)), "more than 1000 entries"),
])
def test_depth_and_list_lengths_are_bounded(text, reason):
    assert reason in refuse(text).reason


def test_a_thousand_rules_written_out_are_accepted():
    rule = "    - {name: r, comm: '^x$', action: observe, grace: 5s, cmdline: 'a.*b'}\n"
    cfg = config.parse("reaper:\n  rules:\n" + rule * 1000, "t.yml")
    assert len(cfg.reaper.rules) == 1000


def test_db_timeouts_that_cannot_fit_the_watchdog_are_refused():
    """Issue 10 finding 4: busy_timeout 5 s + write_deadline 30 s against WatchdogSec=10s."""
    with pytest.raises(ConfigError) as e:
        config.parse("db:\n  write_deadline: 30s\n", "t.yml")
    assert e.value.key == "db.write_deadline" and "WatchdogSec=10s" in str(e.value)
    with pytest.raises(ConfigError) as e:
        config.parse("db:\n  busy_timeout_ms: 5000\n  write_deadline: 1s\n", "t.yml")
    assert e.value.key == "db.busy_timeout_ms"
    config.parse("db:\n  busy_timeout_ms: 1000\n  write_deadline: 3s\n", "t.yml")


def test_daemon_refuses_db_timeouts_over_its_own_watchdog_with_exit_78(tmp_path):
    cfg = tmp_path / "vx11.yml"
    cfg.write_text("db:\n  busy_timeout_ms: 1000\n  write_deadline: 3s\n")
    r = subprocess.run([sys.executable, "-m", "vx11d", "gateway"], capture_output=True,
                       text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
                       env={"PATH": "/usr/bin:/bin", "VX11_CONFIG": str(cfg),
                            "WATCHDOG_USEC": "4000000"})  # WatchdogSec=4s in a drop-in
    assert r.returncode == 78, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "db.write_deadline" in lines[0] and "WatchdogSec=4s" in \
        lines[0], r.stderr


@pytest.mark.parametrize("text, kv", [
    ("", "auto"),  # resolved per model when it loads (tests/unit/hermes/test_hermes_kv_type)
    ("hermes: {flash_attn: false}", "auto"),
    ("hermes: {kv_cache_type: f16}", "f16"),
    ("hermes: {kv_cache_type: q4_0}", "q4_0"),
])
def test_kv_cache_type_is_auto_unless_set(text, kv):
    assert config.parse(text, "vx11.yml").hermes.kv_cache_type == kv


def test_a_quantized_kv_cache_without_flash_attention_is_refused():
    with pytest.raises(config.ConfigError) as ei:
        config.parse("hermes: {kv_cache_type: q8_0, flash_attn: false}", "vx11.yml")
    assert "kv_cache_type q8_0 needs flash_attn: true" in str(ei.value)
