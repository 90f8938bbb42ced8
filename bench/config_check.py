"""Benchmark: ``vx11ctl config check`` on hostile and large config files of at most 1 MB.

    .venv/bin/python bench/config_check.py [--quick]

Each file is written to a temp dir and checked in process (``config.load``, what
``vx11ctl config check`` and every daemon's start run) several times; the median and
the worst time per file are reported, with whether it was accepted or refused. Files:
an alias file (one reaper rule repeated 116,436 times through an alias, 1 MB, which
once took 23 s), a billion-value alias bomb, 1 MB of flat list, deep nesting, duplicate keys, and
the largest configs that are accepted (1000 reaper rules; 1000 rules with 900-character
regexes; 300 hija templates).

Goal: every file <= 1 MB checked in under a second (``worst_s`` < 1.0).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vx11d import config  # noqa: E402
from vx11d.errors import ConfigError  # noqa: E402

RULE = "    - {name: r, comm: '^x$', action: observe, grace: 5s, min_age: 1m, cmdline: 'a.*b'}\n"


def files() -> dict[str, str]:
    bomb = ["a0: &a0 [" + ", ".join(["x"] * 10) + "]"]
    bomb += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    long_rule = "    - {name: r, comm: '^" + "x" * 900 + "$', cmdline: 'a.*b'}\n"
    tpl = ("    t{i}: {{command: [/usr/bin/sleep, '{{n}}'], max_ttl: 60s, memory_max: 32M, "
           "sandboxing: basic, args: {{n: {{type: int, min: 1, max: 99}}}}}}\n")
    return {
        "alias_rules_116436": "reaper:\n  rules:\n    - &r {name: leaky, comm: '^x$'}\n"
                              + "    - *r\n" * 116_436,
        "alias_bomb_1e9": "\n".join(bomb) + "\n",
        "flat_list_1mb": "reaper:\n  protected_units: [" + ", ".join(["a"] * 340_000) + "]\n",
        "deep_nesting": "x: " + "- " * 400_000 + "x\n",
        "duplicate_keys": "madre:\n  tick: 1s\n" + "  # filler\n" * 80_000 + "  tick: 2s\n",
        "rules_1000": "reaper:\n  rules:\n" + RULE * 1000,
        "rules_1000_long_regex": "reaper:\n  rules:\n" + long_rule * 1000,
        "templates_300": "madre:\n  templates:\n" + "".join(tpl.format(i=i)
                                                            for i in range(300)),
    }


def check(path: str) -> str:
    try:
        config.load(path)
        return "accepted"
    except ConfigError:
        return "refused"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions; < 30 s")
    args = ap.parse_args()
    reps = 3 if args.quick else 11
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files().items():
            path = Path(tmp) / f"{name}.yml"
            path.write_text(text)
            size = path.stat().st_size
            assert size <= config.MAX_CONFIG_BYTES, (name, size)
            times, outcome = [], ""
            for _ in range(reps):
                t0 = time.perf_counter()
                outcome = check(str(path))
                times.append(time.perf_counter() - t0)
            rows.append({"file": name, "bytes": size, "outcome": outcome,
                         "median_s": round(statistics.median(times), 4),
                         "worst_s": round(max(times), 4)})
    print(f"{'file':24} {'bytes':>9} {'outcome':>9} {'median_s':>9} {'worst_s':>8}")
    for r in rows:
        print(f"{r['file']:24} {r['bytes']:>9} {r['outcome']:>9} {r['median_s']:>9.4f} "
              f"{r['worst_s']:>8.4f}")
    worst = max(r["worst_s"] for r in rows)
    print(f"goal: every file <= 1 MB checked in under 1 s: worst {worst:.3f} s "
          f"({'met' if worst < 1.0 else 'NOT met'})")
    print(json.dumps({"bench": "config_check", "quick": args.quick, "worst_s": worst,
                      "goal_met": worst < 1.0,
                      "files": {r["file"]: {"outcome": r["outcome"], "median_s": r["median_s"]}
                                for r in rows}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
