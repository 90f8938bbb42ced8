"""Audit dir and archive names: ``20260103T120000Z`` or ``20260103T120000Z_label``.

The name is the record of when the audit ran, so a dir's age comes from its name, never
from an mtime that a copy or a touch can change. The clock is a parameter.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass

ARCHIVE_SUFFIX = ".tar.gz"
TEMP_PREFIX = ".vx11-rotate-tmp."
_NAME_RE = re.compile(r"(\d{8}T\d{6}Z)(?:_([A-Za-z0-9][A-Za-z0-9._+-]{0,99}))?", re.ASCII)


@dataclass(frozen=True)
class Stamp:
    """A parsed audit name: the name itself and its UTC time in epoch seconds."""

    name: str
    ts: float

    def age(self, now: float) -> float:
        """Seconds from the name's timestamp to ``now`` (negative if in the future)."""
        return now - self.ts


def parse(name: str) -> Stamp | None:
    """The timestamp of an audit dir name, or None if the name is not one."""
    m = _NAME_RE.fullmatch(name)  # not match(): "$" would accept a final newline
    if not m:
        return None
    try:
        tm = time.strptime(m.group(1), "%Y%m%dT%H%M%SZ")
    except ValueError:
        return None
    return Stamp(name, float(calendar.timegm(tm)))


def parse_archive(name: str) -> Stamp | None:
    """The timestamp of an archive file name ``<audit name>.tar.gz``, or None."""
    if not name.endswith(ARCHIVE_SUFFIX):
        return None
    return parse(name[: -len(ARCHIVE_SUFFIX)])


def archive_name(name: str) -> str:
    return name + ARCHIVE_SUFFIX


def temp_name(name: str) -> str:
    """The temp file an archive is written to before it is verified and renamed."""
    return TEMP_PREFIX + name + ARCHIVE_SUFFIX


def is_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def printable(name: str) -> str:
    """A name safe for one report line: control chars and undecodable bytes escaped."""
    raw = name.encode("utf-8", "surrogateescape")
    out = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in out)
