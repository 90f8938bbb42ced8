"""The code blocks of a runbook (docs/*.md) as a test runs them: literally, from the file.

A block a test runs is marked by an HTML comment on the line before its fence
(``<!-- test: NAME -->``), which Markdown does not render. ``block`` gives its text
(dedented: a block inside a list item is indented), ``commands`` splits a shell block into
the commands a sysadmin types one after the other (a ``\\``-continued line and a here
document are one command).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
_MARKED = re.compile(r"^([ \t]*)<!-- test: ([\w-]+) -->\n[ \t]*```[\w-]*\n(.*?)^[ \t]*```",
                     re.M | re.S)
_HEREDOC = re.compile(r"<<-?\s*'?\"?(\w+)'?\"?")


def blocks(doc: str) -> dict[str, str]:
    """Every marked block of ``docs/<doc>.md`` by name."""
    text = (DOCS / f"{doc}.md").read_text()
    found: dict[str, str] = {}
    for m in _MARKED.finditer(text):
        name = m.group(2)
        assert name not in found, f"docs/{doc}.md marks two blocks '{name}'"
        found[name] = textwrap.dedent(m.group(3))
    return found


def block(doc: str, name: str) -> str:
    found = blocks(doc)
    assert name in found, f"docs/{doc}.md has no block marked <!-- test: {name} -->"
    return found[name]


def commands(text: str) -> list[str]:
    """The commands of a shell block, in order; blank and comment-only lines dropped."""
    out: list[str] = []
    cur: list[str] = []
    until: str | None = None
    for line in text.splitlines():
        if until is not None:
            cur.append(line)
            if line.strip() == until:
                until = None
                out.append("\n".join(cur))
                cur = []
            continue
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur.append(line)
        m = _HEREDOC.search(line)
        if m:
            until = m.group(1)
        elif not line.rstrip().endswith("\\"):
            out.append("\n".join(cur))
            cur = []
    assert until is None and not cur, f"unfinished command in block:\n{text}"
    return out


def lines(text: str) -> list[str]:
    """A text block's non-blank lines, stripped (an expected output listing)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip()]
