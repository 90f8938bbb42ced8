"""Ports for hijas: the lowest free port of ``madre.port_range``, inside the caller's write.

The partial unique index ``spawner_hijas_live_port`` makes a double allocation
impossible even if two writers raced; allocating inside ``BEGIN IMMEDIATE`` means
madre never even tries one.
"""

from __future__ import annotations

import sqlite3

from ..errors import Vx11Error
from ..hijas import LIVE_SQL


class PortsExhausted(Vx11Error):
    """Every port of the range is held by a live hija."""


_HELD = ("SELECT port FROM spawner_hijas WHERE port IS NOT NULL AND status IN "  # noqa: S608
         + LIVE_SQL)
_IN_USE = ("SELECT count(*) FROM spawner_hijas WHERE port IS NOT NULL AND status IN "  # noqa: S608
           + LIVE_SQL)


def allocate(conn: sqlite3.Connection, first: int, last: int) -> int:
    """The lowest port in [first, last] no live hija holds (call inside a write)."""
    held = {r[0] for r in conn.execute(_HELD)}
    for port in range(first, last + 1):
        if port not in held:
            return port
    raise PortsExhausted(f"all {last - first + 1} ports of {first}-{last} are in use")


def in_use(conn: sqlite3.Connection) -> int:
    """How many ports live hijas hold."""
    return int(conn.execute(_IN_USE).fetchone()[0])
