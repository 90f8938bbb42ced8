"""The Switch decision: pattern rules from config, then arithmetic; an answer or None.

Order is deterministic: the config's rules first, in file order (an ``exact`` rule
matches the trimmed, case-folded query; a ``pattern`` rule is a regex searched with
``fullmatch`` semantics off — ``re.search`` — whose groups fill ``{1}``, ``{2}``...
in the answer), then arithmetic. A query Switch cannot answer gives ``None`` (the chain
goes on to Hermes); a query that *is* arithmetic but exceeds a limit raises
:class:`SwitchRefused` with the reason (the chain reports it, it does not forward a
bomb to an LLM).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from ..errors import Vx11Error
from .arith import ArithError, evaluate, format_number

# Looks like arithmetic: digits, operators, parentheses, the known function names.
_ARITH_SHAPE = re.compile(r"^[\d\s.+\-*/%()_,eE]*(?:(?:sqrt|abs|factorial|min|max|round)"
                          r"[\d\s.+\-*/%()_,eE]*)*$")
_PREFIX = re.compile(r"^\s*(?:what\s+is|what's|calc(?:ulate)?|compute|eval)\s+",
                     re.IGNORECASE)
_GROUP = re.compile(r"\{(\d+)\}")


class SwitchRefused(Vx11Error):
    """The query is arithmetic Switch will not compute (a limit); carries the reason."""


@dataclass(frozen=True)
class Decision:
    """What Switch answered and by which rule (``arith`` or the rule's name)."""

    answer: str
    rule: str
    latency_ms: float


class Switch:
    """The deterministic router built from ``cfg.switch``."""

    def __init__(self, cfg) -> None:
        self.max_chars = cfg.max_query_chars
        self.exact: dict[str, tuple[int, str, str]] = {}
        self.rules: list[tuple[int, str, re.Pattern | None, str, str]] = []
        for i, r in enumerate(cfg.rules):
            if r.exact:
                self.exact.setdefault(r.exact.strip().casefold(), (i, r.name, r.answer))
            else:
                self.rules.append((i, r.name, re.compile(r.pattern), r.answer, ""))

    def decide(self, query: str) -> Decision | None:
        """Switch's answer to ``query``, None when it has no rule for it."""
        t0 = time.perf_counter()
        if len(query) > self.max_chars:
            raise SwitchRefused(f"query longer than {self.max_chars} characters")
        hit = self._rule(query)
        if hit is not None:
            return Decision(hit[1], hit[0], (time.perf_counter() - t0) * 1000)
        expr = _PREFIX.sub("", query).strip().rstrip("?= ").strip()
        if not expr or not _ARITH_SHAPE.match(expr) or not any(c.isdigit() for c in expr):
            return None
        try:
            value = evaluate(expr, self.max_chars)
        except ArithError as e:
            if _looks_like_bomb(str(e)):
                raise SwitchRefused(str(e)) from e
            return None
        return Decision(format_number(value), "arith", (time.perf_counter() - t0) * 1000)

    def _rule(self, query: str) -> tuple[str, str] | None:
        key = query.strip().casefold()
        exact = self.exact.get(key)
        for idx, name, rx, answer, _ in self.rules:
            if exact is not None and exact[0] < idx:
                break
            m = rx.search(query)
            if m is not None:
                return name, _fill(answer, m.groups())
        if exact is not None:
            return exact[1], exact[2]
        return None


def _fill(answer: str, groups: tuple) -> str:
    def one(g: re.Match) -> str:
        i = int(g.group(1))
        return (groups[i - 1] or "") if 0 < i <= len(groups) else g.group(0)
    return _GROUP.sub(one, answer)


def _looks_like_bomb(reason: str) -> bool:
    return not reason.startswith("not an arithmetic") and not reason.startswith("not allowed")
