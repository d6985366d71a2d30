"""Requests and errors per minute: the dashboard's traffic over the last hour.

Each server process counts in memory the API requests it answers (the metrics middleware
calls ``COUNTS.note``) and the requests its HTTP protocol refuses before the app sees them
(408, 414, 431, a busy 503). Every ``FLUSH_S`` the service's ``TrafficRecorder`` takes
those counts and writes one row per minute that has any to the ``traffic`` table, in a
thread; workers and replicas that share a database add up, and the dashboard sums the
rows per minute. Counting costs a lock and a few integer additions per request.

What counts is the API people and programs call: every ``/api/`` route except the
dashboard's own polling (``/api/v1/stats``). Pages, static files, health checks and
``/metrics`` scrapes are left out, so an open dashboard does not make its own traffic.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select
from starlette.concurrency import run_in_threadpool

from digitrec.db import Database
from digitrec.db.tables import TrafficRow, utcnow
from digitrec.errors import DigitrecError
from digitrec.tasks import cancel

log = logging.getLogger(__name__)

FLUSH_S = 5.0  # how often a process writes its counts
RETENTION = timedelta(hours=25)  # rows older than this are deleted
PURGE_EVERY_S = 600.0
KEEP_MINUTES = 120  # unwritten minutes kept while the database is unavailable
NOT_COUNTED = frozenset({"/api/v1/stats"})

Counts = tuple[int, int, int]  # requests, client errors (4xx), server errors (5xx)


def counted(route: str) -> bool:
    """Is a request to this route template part of the traffic?"""
    return route.startswith("/api/") and route not in NOT_COUNTED


class TrafficCounts:
    """This process's counts per minute (minutes since the epoch), until written.

    Nothing is kept while no recorder runs (a server without a database), so the counts
    never grow without bound.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._minutes: dict[int, list[int]] = {}
        self.recorders = 0

    def note(self, status: int, at: float | None = None) -> None:
        if not self.recorders:
            return
        minute = int((time.time() if at is None else at) // 60)
        with self._lock:
            row = self._minutes.get(minute)
            if row is None:
                row = self._minutes[minute] = [0, 0, 0]
            row[0] += 1
            if 400 <= status < 500:
                row[1] += 1
            elif status >= 500:
                row[2] += 1

    def take(self) -> dict[int, Counts]:
        """The counts so far, which are forgotten here."""
        with self._lock:
            taken, self._minutes = self._minutes, {}
        return {minute: (r[0], r[1], r[2]) for minute, r in taken.items()}

    def put_back(self, taken: dict[int, Counts]) -> None:
        """Counts that could not be written: kept for the next try (the newest minutes)."""
        with self._lock:
            for minute, counts in taken.items():
                row = self._minutes.setdefault(minute, [0, 0, 0])
                for i, n in enumerate(counts):
                    row[i] += n
            for minute in sorted(self._minutes)[:-KEEP_MINUTES]:
                del self._minutes[minute]


COUNTS = TrafficCounts()  # this process's


def _minute_start(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, UTC)


def write(db: Database, taken: dict[int, Counts]) -> None:
    """Blocking: one row per minute, in one transaction."""
    rows = [
        {"minute": _minute_start(m), "requests": r, "client_errors": c, "server_errors": s}
        for m, (r, c, s) in sorted(taken.items())
    ]
    if rows:
        with db.session() as session:
            session.execute(insert(TrafficRow), rows)


def per_minute(db: Database, since: datetime) -> dict[int, Counts]:
    """Blocking: every process's counts added up, per minute since the epoch."""
    t = TrafficRow
    query = (
        select(t.minute, func.sum(t.requests), func.sum(t.client_errors), func.sum(t.server_errors))
        .where(t.minute >= since)
        .group_by(t.minute)
    )
    with db.session() as session:
        return {
            int(minute.timestamp()) // 60: (int(r or 0), int(c or 0), int(s or 0))
            for minute, r, c, s in session.execute(query)
        }


def purge(db: Database, now: datetime | None = None) -> int:
    """Blocking: delete rows older than ``RETENTION``; how many."""
    with db.session() as session:
        before = (now or utcnow()) - RETENTION
        result = session.execute(delete(TrafficRow).where(TrafficRow.minute < before))
        return int(getattr(result, "rowcount", 0) or 0)


class TrafficRecorder:
    """Writes this process's counts every ``flush_s`` (an asyncio task, writes in a thread)."""

    def __init__(self, db: Database, counts: TrafficCounts = COUNTS, flush_s: float = FLUSH_S):
        self.db, self.counts, self.flush_s = db, counts, flush_s
        self._task: asyncio.Task[None] | None = None
        self._next_purge = 0.0

    async def start(self) -> None:
        if self._task is None:
            self.counts.recorders += 1
            self._task = asyncio.create_task(self._run(), name="traffic-recorder")

    async def stop(self) -> None:
        """Write what was counted, then stop."""
        if self._task is None:
            return
        await cancel(self._task)
        self._task = None
        self.counts.recorders -= 1
        await run_in_threadpool(self.flush)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await run_in_threadpool(self.flush)

    def flush(self) -> None:
        """Blocking: write the counts so far (kept for later if the database fails)."""
        taken = self.counts.take()
        try:
            write(self.db, taken)
        except DigitrecError as exc:
            self.counts.put_back(taken)
            log.warning("traffic counts not written (will retry): %s", exc.message)
            return
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + PURGE_EVERY_S
            try:
                purge(self.db)
            except DigitrecError as exc:
                log.warning("old traffic rows not deleted: %s", exc.message)
