"""Counters per subscription, kept by the RabbitMQ worker.

A subscription is an event name and a subscriber socket's text (password
masked).  The worker counts what became of the events it was given
(``WORKER_COUNTERS``); the front-ends count the raises that never reached it
(``FRONTEND_COUNTERS``: refused by a full queue, too large, or accepted but
still in the process's overflow buffer when it exited and the worker could
not take it in time) and send their cumulative counts, per process, to the
worker's inbox (``JobSender``).  A row adds both: ``raised = queued +
dropped_at_exit + dropped_queue_full + too_large``.
"""

from __future__ import annotations

from opsevent import Status

WORKER_COUNTERS = ("queued", "published") + tuple(s.value for s in Status if s not in (
    Status.QUEUED, Status.QUEUE_FULL, Status.TOO_LARGE, Status.NOT_RUNNING)) + ("dropped_expired",)
FRONTEND_COUNTERS = ("dropped_queue_full", "too_large", "dropped_at_exit")


class SubscriptionStats:
    def __init__(self):
        self._worker: dict[tuple[str, str], dict[str, int]] = {}
        self._frontends: dict[int, dict] = {}  # pid -> its latest report: {(event, socket text): {what: n}}

    def counts(self, event: str, socket_text: str) -> dict[str, int]:
        """The worker's own counters of one subscription, to increment in place."""
        key = (event, socket_text)
        counts = self._worker.get(key)
        if counts is None:
            counts = self._worker[key] = dict.fromkeys(WORKER_COUNTERS, 0)
        return counts

    def report(self, pid: int, table: dict) -> None:
        """A front-end's cumulative refusals: replaces its previous report."""
        self._frontends[pid] = table

    def rows(self) -> list[dict]:
        """One row per subscription, sorted by event and socket."""
        rows = {key: {**counts, **dict.fromkeys(FRONTEND_COUNTERS, 0)} for key, counts in self._worker.items()}
        for table in self._frontends.values():
            for key, counts in table.items():
                row = rows.get(key)
                if row is None:
                    row = rows[key] = {**dict.fromkeys(WORKER_COUNTERS, 0), **dict.fromkeys(FRONTEND_COUNTERS, 0)}
                for what in FRONTEND_COUNTERS:
                    row[what] += counts.get(what, 0)
        return [{"event": event, "socket": sock,
                 "raised": row["queued"] + row["dropped_at_exit"] + row["dropped_queue_full"] + row["too_large"],
                 **row}
                for (event, sock), row in sorted(rows.items())]
