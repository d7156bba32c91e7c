"""Trouble that comes in floods, reported while it lasts and totalled when it stops.

A dead broker, or a cluster that nacks every publish for a while, can turn
every event into a failure.  A log line per event would drown the log; one
line per interval, written only when the next failure comes, never reports
the tail of a burst.  A ``Tally`` per kind of trouble logs:

* the first occurrence at once, with its reason;
* while more come, at most one summary every ``every`` seconds: how many
  since the last line, how many in the episode, and the latest reason;
* once none has come for ``every`` seconds (or at ``close``), the episode's
  total, if anything was counted after the first line.

The owner calls ``tick(now)`` regularly (the worker's sweep, every 50 ms);
``add`` and ``tick`` never block and cost a few attribute updates.
"""

from __future__ import annotations

import time

SUMMARY_EVERY = 5.0  # seconds between two lines about the same kind of trouble


class Tally:
    def __init__(self, log, what: str, every: float = SUMMARY_EVERY, level: str = "warning"):
        self.log = getattr(log, level)
        self.what = what  # e.g. "async events nacked": the lines' subject
        self.every = every
        self.total = 0  # in the current episode
        self._unsaid = 0  # counted since the last line
        self._reason = ""
        self._began = self._said = self._last = 0.0

    def add(self, reason: str, n: int = 1, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._reason, self._last = reason, now
        if self.total == 0:
            self.total, self._began, self._said = n, now, now
            self.log("%s: %s (counting: a summary every %g s while this lasts)", self.what, reason, self.every)
            return
        self.total += n
        self._unsaid += n

    def tick(self, now: float) -> None:
        if not self.total:
            return
        if now - self._last >= self.every:
            self._end(now)
        elif self._unsaid and now - self._said >= self.every:
            self.log("%s: %d more in the last %.1f s, %d since this began %.1f s ago; latest: %s",
                     self.what, self._unsaid, now - self._said, self.total, now - self._began, self._reason)
            self._unsaid, self._said = 0, now

    def close(self) -> None:
        """Say the total of an episode still going (at exit)."""
        if self.total:
            self._end(time.monotonic())

    def _end(self, now: float) -> None:
        if self.total > 1:
            self.log("%s: over; %d in all in %.1f s (the last %d since the previous line); latest: %s",
                     self.what, self.total, self._last - self._began, self._unsaid, self._reason)
        self.total = self._unsaid = 0
