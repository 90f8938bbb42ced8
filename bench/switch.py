"""Benchmark: Switch decision latency and how fast arithmetic bombs are refused.

    .venv/bin/python bench/switch.py [--quick]

In process, no I/O: ``Switch.decide`` on a mix of arithmetic, exact and pattern rules
and an unanswerable query (p50/p99 over N decisions), then each bomb of the unit
tests' list (``9**9**9``, ``factorial(100000)``, 200 nested parentheses, ...) refused
R times (the worst time per bomb). These timing goals were single-shot asserts in
tests/unit/switch/test_switch.py; the tests keep the functional checks.

Goals: decision p99 < 1 ms; every bomb refused in < 10 ms.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vx11d import config  # noqa: E402
from vx11d.switch import Switch, SwitchRefused  # noqa: E402

RULES = """
switch:
  rules:
    - {name: greet, exact: hello, answer: "hi, this is vx11"}
    - {name: capital, pattern: "capital of (\\\\w+)", answer: "no idea about {1}"}
"""
QUERIES = ["2+2", "hello", "capital of Peru", "tell me a story", "sqrt(2)*3"]
BOMBS = ["9**9**9", "10**10**10", "2**10000000", "factorial(100000)", "factorial(10**10)",
         "(10**4000)*(10**4000)", "1e308*10", "(" * 200 + "1" + ")" * 200, "-" * 1500 + "1",
         "+".join(["1"] * 500), "9" * 3000]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions; < 10 s")
    args = ap.parse_args()
    n, reps = (5_000, 5) if args.quick else (100_000, 50)
    sw = Switch(config.parse(RULES, "bench.yml").switch)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        sw.decide(QUERIES[i % len(QUERIES)])
        times.append(time.perf_counter() - t0)
    times.sort()
    p50, p99 = times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000
    worst: dict[str, float] = {}
    for bomb in BOMBS:
        for _ in range(reps):
            t0 = time.perf_counter()
            try:
                sw.decide(bomb)
            except SwitchRefused:
                pass
            else:
                raise SystemExit(f"bomb {bomb[:20]!r} was not refused")
            took = (time.perf_counter() - t0) * 1000
            worst[bomb[:24]] = max(worst.get(bomb[:24], 0.0), took)
    bomb_max = max(worst.values())
    print(f"decisions: {n}, p50 {p50:.4f} ms, p99 {p99:.4f} ms (goal < 1 ms)")
    for b, t in worst.items():
        print(f"  bomb {b!r:30} worst {t:8.3f} ms")
    print(f"worst bomb {bomb_max:.3f} ms (goal < 10 ms)")
    print(json.dumps({"bench": "switch", "quick": args.quick, "decide_p50_ms": round(p50, 4),
                      "decide_p99_ms": round(p99, 4), "bomb_worst_ms": round(bomb_max, 3),
                      "goal_met": p99 < 1.0 and bomb_max < 10.0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
