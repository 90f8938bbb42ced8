"""``vx11_hijas_failed_streak{template}``: how many of a template's last hijas failed in a row.

A state, not a counter: it drops to 0 as soon as one hija of that template ends well, so
an alert on it (VX11HijasFailingRepeatedly) resolves on the fix instead of a window later.
Read from the DB at scrape time (the DB is the record, so the value survives a madre
restart); one label value per configured template, never a hija id (bounded series).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..db import Database
from ..errors import Vx11Error
from ..hijas import ENDED_SQL, HijaStatus

log = logging.getLogger("vx11.madre")

FAILED = (HijaStatus.FAILED, HijaStatus.OOM)  # oom: killed by the kernel for its memory limit
CAP = 20  # LIMIT in SQL: a longer streak reads as 20, enough for any alert threshold

SQL = ("SELECT status FROM spawner_hijas WHERE template = ? AND status IN "  # noqa: S608
       + ENDED_SQL + " ORDER BY ended_at DESC, rowid DESC LIMIT 20")


def streak(statuses: list[str]) -> int:
    """Leading failures in ``statuses`` (newest first)."""
    n = 0
    for s in statuses:
        if s not in FAILED:
            break
        n += 1
    return n


class FailedStreakCollector(Collector):
    """Collects the failed streak of every configured template from a read-only DB."""

    def __init__(self, db: Database, templates: Callable[[], list[str]]):
        self.db, self.templates = db, templates  # templates: read at each scrape (reload)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("vx11_hijas_failed_streak", "consecutive most recent hijas of "
                              f"a template that failed (capped at {CAP}; 0 after one ends "
                              "well)", labels=["template"])
        try:
            for name in self.templates():
                rows = self.db.query(SQL, (name,))
                g.add_metric([name], streak([r[0] for r in rows]))
        except Vx11Error as e:  # no DB yet or a DB fault: the metric is absent this scrape
            log.debug("failed streak not read: %s", e)
            return
        yield g
