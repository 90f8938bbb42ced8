"""Rules for text a sysadmin reads: each finds one kind of misleading line.

Every rule takes lines (or, for the journal, entries) and returns findings, one
``"rule: line"`` string each; an empty list means the text passes. The rules:

- ``epoch``: an epoch time as a number (``1765090000.42``): times are ISO 8601 or
  relative ("in 12s", "3m ago") in prose.
- ``repr``: a Python repr (``None``, ``True``/``False``, ``{'``, ``('``, ``[]``,
  ``<... object at 0x...>``).
- ``doubled``: a phrase of three words said twice in one line; or two lines of the
  same source within ``window`` seconds that share a phrase of two content words
  (one event logged twice in two wordings).
- ``contradiction``: one snapshot that states two different numbers of running
  hijas, or gives one hija two states.
- ``self``: the output of a command telling you to run that same command.

Used by tests/system/test_bad_day_text_systemd.py; each rule has its bad example in
tests/unit/test_textcheck.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# 2001-09-09 .. 2033-05-18 in epoch seconds, with or without a fraction; not part of a
# longer number, an id or a version.
_EPOCH = re.compile(r"(?<![\w.:/-])1[0-9]{9}(?:\.[0-9]+)?(?![\w.:-]*\w)")
_REPR = [
    (re.compile(r"\bNone\b"), "None"),
    (re.compile(r"\b(?:True|False)\b"), "True/False"),
    (re.compile(r"\{'"), "{'"),
    (re.compile(r"\('"), "('"),
    (re.compile(r"\[\]"), "[]"),
    (re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>"), "object repr"),
]
_WORD = re.compile(r"[A-Za-z][A-Za-z_'-]*")
_STOP_WORDS = """a an the of to in on at by for from with and or but not no is are was
were be been it its this that these those as if then than so do does did has have had will
would can could may might must shall should into out up down over under after before all
any each every some one two per via"""
STOP = frozenset(_STOP_WORDS.split())
STATES = ("requested", "starting", "running", "expired", "exited", "stopped", "failed",
          "oom", "lost")
# a hija id: 10 of [a-z0-9] (vx11d.hijas.new_id); one with a digit, so words are not ids
_HIJA_ID = re.compile(r"\b(?=[a-z]*[0-9])([a-z0-9]{10})\b")
_RUNNING_N = re.compile(r"\b(\d+) hijas? running\b")
# "hijas 1 expired, 2 running" (not when it says the DB lags: "... as last recorded")
_HIJAS_COUNTS = re.compile(r"\bhijas ((?:\d+ [a-z]+(?:, )?)+)(?! as last recorded)")
_COMMAND = re.compile(r"`(vx11ctl [^`]+)`|\brun (vx11ctl(?: [a-z][\w-]*)+)")


@dataclass(frozen=True)
class Entry:
    """One journal entry: who said it, when (epoch seconds), what."""

    source: str
    ts: float
    text: str


def epoch(lines: Iterable[str]) -> list[str]:
    return [f"epoch: {ln}" for ln in lines if _EPOCH.search(ln)]


def reprs(lines: Iterable[str]) -> list[str]:
    out = []
    for ln in lines:
        for pat, name in _REPR:
            if pat.search(ln):
                out.append(f"repr {name}: {ln}")
                break
    return out


def _words(text: str) -> list[str]:
    """The words of ``text``; paths, unit names, commands and numbers left out (a path
    or a list of units repeats by nature)."""
    text = re.sub(r"`[^`]*`", " ", text)
    kept = [t for t in text.split() if not re.search(r"[/.\d@{}]", t.strip(",;:()'"))]
    return [w.lower() for w in _WORD.findall(" ".join(kept).replace("_", " "))]


def doubled_in_line(lines: Iterable[str], n: int = 3) -> list[str]:
    """A run of ``n`` words (at least two of them content words) said twice in a line."""
    out = []
    for ln in lines:
        w = _words(ln)
        seen: set[tuple[str, ...]] = set()
        for i in range(len(w) - n + 1):
            gram = tuple(w[i:i + n])
            if sum(x not in STOP for x in gram) < 2:
                continue
            if gram in seen:
                out.append(f"doubled phrase '{' '.join(gram)}': {ln}")
                break
            seen.add(gram)
    return out


def _content(text: str) -> set[str]:
    return {"db" if x == "database" else x for x in _words(text)
            if x not in STOP and len(x) > 1}


def doubled_lines(entries: Sequence[Entry], window: float = 2.0,
                  overlap: float = 0.5) -> list[str]:
    """Two different lines of one source, ``window`` seconds apart at most, about the
    same hija (or none), that share ``overlap`` of their content words: one event told
    twice in two wordings."""
    out = []
    for i, a in enumerate(entries):
        wa, ida = _content(a.text), set(_HIJA_ID.findall(a.text))
        for b in entries[i + 1:]:
            if b.ts - a.ts > window:
                break
            if b.source != a.source or b.text == a.text or \
                    ida != set(_HIJA_ID.findall(b.text)):
                continue
            wb = _content(b.text)
            if wa and wb and len(wa & wb) / len(wa | wb) >= overlap:
                out.append(f"doubled lines: {a.text} || {b.text}")
    return out


def contradictions(lines: Sequence[str]) -> list[str]:
    """Lines of one snapshot that disagree: on how many hijas run, or on one hija's state."""
    out = []
    running: dict[int, str] = {}
    for ln in lines:
        for m in _RUNNING_N.finditer(ln):
            running.setdefault(int(m.group(1)), ln)
        for m in _HIJAS_COUNTS.finditer(ln):
            said = dict((s, int(n)) for n, s in
                        (p.split(" ", 1) for p in m.group(1).rstrip(", ").split(", ")))
            if any(s in STATES for s in said):
                running.setdefault(said.get("running", 0), ln)
    if len(running) > 1:
        out.append("contradiction: running hijas " + " vs ".join(
            f"{n} ({ln})" for n, ln in sorted(running.items())))
    states: dict[str, tuple[str, str]] = {}
    for ln in lines:
        ids = _HIJA_ID.findall(ln)
        if len(ids) != 1:
            continue
        said = [s for s in STATES if re.search(rf"\b{s}\b", ln)]
        if len(said) != 1:
            continue
        old = states.setdefault(ids[0], (said[0], ln))
        if old[0] != said[0]:
            out.append(f"contradiction: hija {ids[0]} {old[0]} ({old[1]}) and "
                       f"{said[0]} ({ln})")
    return out


def self_command(command: str, lines: Iterable[str]) -> list[str]:
    """The output of ``command`` naming ``command`` itself as the thing to run."""
    me = command.split()
    out = []
    for ln in lines:
        for m in _COMMAND.finditer(ln):
            named = (m.group(1) or m.group(2)).split()
            if named[:len(me)] == me[:len(named)] and len(named) >= min(len(me), 3):
                out.append(f"self: `{command}` says to run `{' '.join(named)}`: {ln}")
    return out


def prose(lines: Sequence[str]) -> list[str]:
    """The rules every line of prose must pass alone."""
    return epoch(lines) + reprs(lines) + doubled_in_line(lines)


def snapshot(command: str, lines: Sequence[str]) -> list[str]:
    """One command's output: prose rules, its own contradictions, no self-reference."""
    return prose(lines) + contradictions(lines) + self_command(command, lines)
