"""The crash-window rule, once, for every process we restart.

A process that dies ``CRASH_LIMIT`` times within ``CRASH_WINDOW`` seconds is
in a crash loop: that death is the last one followed by a restart, as
gunicorn halts on a boot error rather than fork for ever.  What happens
then is the owner's to say: the ``Supervisor`` gives a front-end's rank up,
and its RabbitMQ worker halts it (``WorkerCrashLoop``); the watcher of
``serve()`` tries the worker again after a growing pause.
"""

from __future__ import annotations

import time

CRASH_LIMIT, CRASH_WINDOW = 3, 10.0  # this many deaths within this many seconds: a crash loop


class CrashWindow:
    """The deaths of one process (a front-end's rank, the RabbitMQ worker) within the window."""

    def __init__(self, limit: int = CRASH_LIMIT, window: float = CRASH_WINDOW):
        self.limit = limit
        self.window = window
        self._deaths: list[float] = []  # monotonic times, the oldest first

    def died(self, now: float | None = None) -> bool:
        """Count one death; True when it is the ``limit``-th within the window: do not restart."""
        now = time.monotonic() if now is None else now
        self._deaths = [t for t in self._deaths if now - t < self.window] + [now]
        return len(self._deaths) >= self.limit

    @property
    def count(self) -> int:
        """Deaths within the window, as of the last one."""
        return len(self._deaths)
