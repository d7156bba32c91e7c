"""The RabbitMQ worker process and the shared job queue, owned by one object.

``Service`` is what a pre-fork server embeds: start it in the master before
forking the children that raise events, stop it after they are gone::

    evi = opsevent.EventInterface(sync_mode=True)
    evi.subscribe_event("E_SIP_MESSAGE", "rabbitmq:127.0.0.1/sipmsg")
    with workers.serve(evi):
        with multiprocessing.get_context("fork").Pool(4) as pool:
            pool.map(handle, requests)   # children call evi.raise_event(...)

The ``Supervisor`` uses the same object for its worker.

While it runs, the EventInterface's subscriptions live in shared memory
(``workers/shared.py``), so a subscription made in any process, before or
after the fork, is seen by every process's next raise; with a
``control_path`` it also answers the ``opsevent`` CLI there
(``workers/control.py``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import json
import shutil
import signal
import tempfile
import time

from workers import logs
from workers.channel import JobSender
from workers.commands import Commands
from workers.control import ControlServer
from workers.jobqueue import JobQueue
from workers.rabbitmq import worker_main
from workers.shared import TABLE_SIZE, SharedSubscriptions

log = logging.getLogger(__name__)

WORKER_NAME = "rabbitmq-worker"
CRASH_LIMIT, CRASH_WINDOW = 3, 10.0  # this many deaths within this many seconds: give up


class WorkerCrashLoop(RuntimeError):
    """The RabbitMQ worker keeps dying; restarting it again would not help."""


class Service:
    def __init__(self, evi, *, install_logging: bool = True, control_path: str | None = None,
                 table_size: int = TABLE_SIZE):
        """``control_path``: where to answer the ``opsevent`` CLI (a unix socket, mode 0600),
        or None for no control socket.  ``table_size``: the largest subscription table, in
        bytes (its shared memory holds two, so a write never overwrites the one being read).
        Pre-fork: configuration only; nothing exists until start().
        """
        self.evi = evi
        self.settings = evi.settings
        self.install_logging = install_logging
        self.control_path = control_path
        self.table_size = table_size
        self.control: ControlServer | None = None
        self.shared: SharedSubscriptions | None = None
        self.ctx = multiprocessing.get_context("fork")
        self.jobs = None
        self.process = None
        self.restarts = 0
        self._deaths: list[float] = []
        self.stats_path = None
        self._stats_dir = None
        self.final_stats: dict = {}  # the worker's last counters, kept after stop()
        self._owner_pid = None
        self._logging_installed = False
        self._attached = False  # our JobSender is the EventInterface's transport

    def start(self) -> "Service":
        if self.jobs is not None:
            raise RuntimeError("the RabbitMQ worker service is already started")
        # First the two things that may refuse (a table too big, a control
        # path in use), before anything is started.
        original = self.evi.subscriptions
        shared = SharedSubscriptions.create(original, self.table_size)
        try:
            if self.control_path is not None:
                self.control = ControlServer(self.control_path, Commands(self.evi, self.stats)).open()
            self.shared = self.evi.subscriptions = shared
            if self.install_logging:
                self._logging_installed = logs.install()
            self._owner_pid = os.getpid()
            self.jobs = JobQueue(self.ctx, self.settings.queue_size)
            self._stats_dir = tempfile.mkdtemp(prefix="opsevent-stats-")
            self.stats_path = os.path.join(self._stats_dir, "worker.json")
            # The worker's inbox for front-ends' refusal counts: an abstract
            # address fixed now, bound by each worker process it starts.
            self.inbox = b"\0opsevent-inbox-%d-%s" % (os.getpid(), os.urandom(6).hex().encode())
            self.evi.attach(JobSender(self.jobs, self.inbox))
            self._attached = True
            self.spawn_worker()
            if self.control is not None:
                self.control.start()
        except BaseException:
            # Leave nothing behind (no control socket file, no mapping, no
            # worker) and the EventInterface as it was, then say why.
            self._undo_start(shared, original)
            raise
        return self

    def _undo_start(self, shared: SharedSubscriptions, original) -> None:
        """Take back whatever a start() that failed half-way had made; each step bounded."""
        if self.control is not None:
            self.control.stop()
            self.control = None
        if self.process is not None and self.process.is_alive():
            self.process.kill()  # it has had no job: nothing to drain
            self.process.join(5.0)
        self.process = None
        if self._attached:
            self.evi.detach()
            self._attached = False
        if self.evi.subscriptions is shared:
            self.evi.subscriptions = original
        self.shared = None
        shared.close()
        if self.jobs is not None:
            self.jobs.close()
            self.jobs = None
        if self._stats_dir is not None:
            shutil.rmtree(self._stats_dir, ignore_errors=True)
        self.stats_path = self._stats_dir = None
        if self._logging_installed:
            logs.uninstall()
            self._logging_installed = False

    def spawn_worker(self) -> None:
        self.process = self.ctx.Process(target=worker_main, name=WORKER_NAME, daemon=False,
                                        args=(self.jobs, self.settings, self.stats_path, self.inbox))
        self.process.start()
        log.info("started %s pid %d", WORKER_NAME, self.process.pid)

    def check_worker(self) -> bool:
        """Start a new worker if the old one died; True when it did.

        Raises ``WorkerCrashLoop`` when workers keep dying at start-up, so a
        broken set-up halts instead of forking forever (gunicorn's boot-error rule).
        """
        if self.process is None or self.process.is_alive():
            return False
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < CRASH_WINDOW] + [now]
        if len(self._deaths) >= CRASH_LIMIT:
            raise WorkerCrashLoop(f"{WORKER_NAME} died {len(self._deaths)} times within {CRASH_WINDOW:g} s "
                                  f"(last exit code {self.process.exitcode}); see its log above")
        log.error("%s pid %d died (exit code %s); starting a new one",
                  WORKER_NAME, self.process.pid, self.process.exitcode)
        self.restarts += 1
        self.spawn_worker()
        return True

    def stats(self) -> dict:
        """The RabbitMQ worker's latest counters (refreshed every second and at exit).

        Keys: ``jobs``, one count per status (``confirmed``, ``failed``,
        ``unroutable``, ...), ``queue_depth`` (jobs waiting in the shared
        queue), ``brokers``: per broker (labelled without password) its
        ``state``, ``endpoint``, ``backlog`` (= ``pending`` + ``inflight``),
        ``published``, ``connects``, ``reconnects``, ``connection_lost``,
        ``republished``, ``failovers``, ``failbacks``, ``dropped_expired``,
        ``last_error``; and ``subscriptions``: one row per event and
        subscriber (socket text, password masked) with ``raised`` (=
        ``queued`` + ``dropped_queue_full`` + ``too_large``), ``queued``,
        ``published`` (republished copies included), ``confirmed``,
        ``nacked``, ``unroutable``, ``failed`` (of which
        ``dropped_expired``), ``timeout``.  ``{}`` until the worker's first
        snapshot.  Counters restart with a new worker process (a front-end's
        refusal counts come back with its next report).
        """
        try:
            with open(self.stats_path) as f:
                return json.load(f)
        except (FileNotFoundError, TypeError):
            return {}

    def stop(self) -> None:
        """Drain and stop the worker: bounded by the drain timeout plus a grace period."""
        if self.jobs is None or os.getpid() != self._owner_pid:
            return
        if self.control is not None:
            self.control.stop()
            self.control = None
        try:
            if self.process is not None and self.process.is_alive():
                os.kill(self.process.pid, signal.SIGTERM)
                self._wait_for_drain()
                if self.process.is_alive():
                    log.error("%s did not stop in time; killing it", WORKER_NAME)
                    self.process.kill()
                    self.process.join(5.0)
        finally:
            self.evi.detach()
            self._attached = False
            # What was subscribed at runtime stays, in a table of this process's own.
            self.evi.subscriptions = self.shared.detached()
            self.shared.close()
            self.shared = None
            self.jobs.close()
            self.jobs = None
            self.final_stats = self.stats()
            shutil.rmtree(self._stats_dir, ignore_errors=True)
            if self._logging_installed:
                logs.uninstall()
                self._logging_installed = False

    def _wait_for_drain(self) -> None:
        # Bounded like the worker's own drain: by the drain timeout without
        # progress (the stats file's counters), plus a grace for closing.
        grace = self.settings.drain_timeout + 5.0
        deadline, last = time.monotonic() + grace, None
        while self.process.is_alive() and time.monotonic() < deadline:
            self.process.join(0.2)
            stats = self.stats()
            progress = (stats.get("jobs"), stats.get("outstanding"))
            if progress != last:
                last, deadline = progress, time.monotonic() + grace

    def __enter__(self) -> "Service":
        return self if self.jobs is not None else self.start()

    def __exit__(self, *_unused_exc) -> None:
        self.stop()


def serve(evi, **options) -> Service:
    """Start the RabbitMQ worker for ``evi`` now; use as a context manager or call ``stop()``."""
    return Service(evi, **options).start()
