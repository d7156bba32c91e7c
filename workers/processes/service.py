"""The RabbitMQ worker process and the shared job queue, owned by one object.

``Service`` is what a pre-fork server embeds: start it in the master before
forking the children that raise events, stop it after they are gone::

    evi = opsevent.EventInterface(sync_mode=True)
    evi.subscribe_event("E_SIP_MESSAGE", "rabbitmq:127.0.0.1/sipmsg")
    with workers.serve(evi):
        with multiprocessing.get_context("fork").Pool(4) as pool:
            pool.map(handle, requests)   # children call evi.raise_event(...)

The ``Supervisor`` uses the same object for its worker.

Theory of operation:

* ``start()`` makes, pre-fork, everything the children inherit: the job
  queue (with its ledger), the shared subscription table, the worker's inbox
  address and the stats file's path; it attaches a ``JobSender`` to the
  EventInterface, then starts the worker.
* The worker is watched through a pidfd (``workers.base.process.Child``), not
  ``waitpid``: inside gunicorn the arbiter reaps every child, ours too.
  ``serve()`` runs a watcher thread that forks the worker (every time: a
  child's parent-death signal follows the thread that forked it, so that
  thread lives as long as the service) and replaces a dead one at once.  The
  ``Supervisor`` drives ``check_worker()`` from its own loop instead.
* A replaced worker's successor reads on from the same queue: raises made
  meanwhile wait there.  What the dead one had taken and not finished is
  in the queue's ledger: it is counted (``lost_with_dead_workers``) and
  logged, never silently gone.
* ``stop()`` (or the atexit hook, if the application never called it)
  sends SIGTERM: the worker drains.  A SIGTERM sent before the worker has
  installed its handler waits, blocked, instead of killing it.

While it runs, the EventInterface's subscriptions live in shared memory
(``workers/channel/shared.py``), so a subscription made in any process, before or
after the fork, is seen by every process's next raise; with a
``control_path`` it also answers the ``opsevent`` CLI there
(``workers/control/server.py``).
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time

from workers.base import logs
from workers.base.process import Child, wait_readable
from workers.channel.jobqueue import JobQueue
from workers.channel.sender import JobSender
from workers.channel.shared import TABLE_SIZE, SharedSubscriptions
from workers.control import health
from workers.control.commands import Commands
from workers.control.server import ControlServer
from workers.processes.crashes import CrashWindow
from workers.rabbitmq.worker import worker_main

log = logging.getLogger(__name__)

WORKER_NAME = "rabbitmq-worker"
CRASH_BACKOFF_MAX = 30.0  # serve(): longest pause between two workers while they keep dying
WATCH_TICK = 1.0  # seconds between two looks of the watcher when nothing happens
SPAWN_TIMEOUT = 10.0  # how long start() waits for the watcher to fork the first worker


class WorkerCrashLoop(RuntimeError):
    """The RabbitMQ worker keeps dying; restarting it again would not help."""


class AlreadyServed(RuntimeError):
    """This EventInterface already has a running RabbitMQ worker service."""


class Service:
    def __init__(self, evi, *, install_logging: bool = False, quiet_pika: bool = False,
                 control_path: str | None = None, table_size: int = TABLE_SIZE, watch: bool = True,
                 metrics_address: tuple[str, int] | None = None):
        """``install_logging``: route every forked process's log records to this
        process's root handlers (``workers/base/logs.py``); off by default, when each
        process logs through its own inherited handlers.  ``quiet_pika``: in the
        RabbitMQ worker only, silence pika's own logger (it logs each failed
        connect several times over at ERROR; the worker logs each failure once).
        ``control_path``: where to answer the ``opsevent`` CLI (a unix socket,
        mode 0600), or None.  ``table_size``: the largest subscription table, in
        bytes.  ``watch``: a thread of this process forks the worker and
        replaces it when it dies (``serve()``); False leaves that to the caller's
        loop (``check_worker()``, as the ``Supervisor`` does).
        ``metrics_address``: ``(host, port)`` where a thread of this process
        serves the worker's counters to Prometheus over HTTP
        (``workers/control/metrics.py``; needs the ``metrics`` extra), or None.
        Pre-fork: configuration only; nothing exists until start().
        """
        self.evi = evi
        self.settings = evi.settings
        self.install_logging = install_logging
        self.quiet_pika = quiet_pika
        self.control_path = control_path
        self.table_size = table_size
        self.watch = watch
        self.metrics_address = metrics_address
        self.metrics = None  # the MetricsServer while it serves
        self.control: ControlServer | None = None
        self.shared: SharedSubscriptions | None = None
        self.jobs: JobQueue | None = None
        self.process: Child | None = None
        self.sender: JobSender | None = None
        self.restarts = 0
        self._crashes = CrashWindow()  # the worker's deaths within the crash window
        self.stats_path = None
        self._stats_dir = None
        self.final_stats: dict = {}  # the worker's last counters, kept after stop()
        self._owner_pid = None
        self._logging_installed = False
        self._attached = False  # our JobSender is the EventInterface's transport
        self._watcher: threading.Thread | None = None
        self._wake = None  # (read fd, write fd): wakes the watcher
        self._stopping = False
        self._spawned = threading.Event()
        self._spawn_error: BaseException | None = None
        self._lock = threading.Lock()  # one of the watcher and the caller handles the worker at a time

    # ---- start ------------------------------------------------------------------

    def start(self) -> "Service":
        if self.jobs is not None:
            raise RuntimeError("the RabbitMQ worker service is already started")
        _refuse_if_served(self.evi)
        # First the things that may refuse (logging set-up, a table too big, a
        # control path in use), before anything is started.
        if self.install_logging:
            self._logging_installed = logs.install()
        original = self.evi.subscriptions
        try:
            shared = SharedSubscriptions.create(original, self.table_size)
        except BaseException:
            self._undo_logging()
            raise
        try:
            if self.control_path is not None:
                self.control = ControlServer(self.control_path, Commands(self.evi, self.stats, self.health)).open()
            if self.metrics_address is not None:
                self.metrics = _metrics_server(self.metrics_address, self)
            self.shared = self.evi.subscriptions = shared
            self._owner_pid = os.getpid()
            self._stats_dir = tempfile.mkdtemp(prefix="opsevent-")
            self.stats_path = os.path.join(self._stats_dir, "worker.json")
            spool = os.path.join(self._stats_dir, "spool")
            os.mkdir(spool, 0o700)
            self.jobs = JobQueue(multiprocessing.get_context("fork"), self.settings.queue_size, spool)
            # The worker's inbox for front-ends' refusal counts: an abstract
            # address fixed now, bound by each worker process it starts.
            self.inbox = b"\0opsevent-inbox-%d-%s" % (os.getpid(), os.urandom(6).hex().encode())
            self.sender = JobSender(self.jobs, self.inbox, self.settings.drain_timeout)
            self.sender.service = self  # how a second serve() of this EventInterface knows
            self.evi.attach(self.sender)
            self._attached = True
            if self.watch:
                self._start_watcher()
            else:
                self.spawn_worker()
            if self.control is not None:
                self.control.start()
        except BaseException:
            # Leave nothing behind (no control socket file, no mapping, no
            # worker) and the EventInterface as it was, then say why.
            self._undo_start(shared, original)
            raise
        atexit.register(self._stop_at_exit)
        return self

    def _start_watcher(self) -> None:
        self._wake = os.pipe()
        self._stopping = False
        self._watcher = threading.Thread(target=self._watch, name="opsevent-service", daemon=True)
        self._watcher.start()
        if not self._spawned.wait(SPAWN_TIMEOUT):
            raise RuntimeError(f"the service's watcher did not start {WORKER_NAME} within {SPAWN_TIMEOUT:g} s")
        if self._spawn_error is not None:
            raise self._spawn_error

    def _undo_start(self, shared: SharedSubscriptions, original) -> None:
        """Take back whatever a start() that failed half-way had made; each step bounded."""
        self._stop_servers()
        self._stop_watcher()
        if self.process is not None:
            if self.process.kill():  # it has had no job: nothing to drain
                self.process.join(5.0)
            self.process.close()
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
        self._undo_logging()

    def _undo_logging(self) -> None:
        if self._logging_installed:
            logs.uninstall()
            self._logging_installed = False

    # ---- the worker -----------------------------------------------------------------

    def spawn_worker(self) -> None:
        self.process = Child(worker_main, (self.jobs, self.settings, self.stats_path, self.inbox, self.quiet_pika),
                             name=WORKER_NAME)
        self.process.start()
        log.info("started %s pid %d", WORKER_NAME, self.process.pid)

    def check_worker(self) -> bool:
        """Start a new worker if the old one died; True when it did.

        Raises ``WorkerCrashLoop`` when workers keep dying, so a broken
        set-up halts the Supervisor instead of forking forever (gunicorn's
        boot-error rule); the watcher of ``serve()`` backs off instead.
        """
        with self._lock:
            if self.process is None or self.process.is_alive() or self._stopping:
                return False
            dead = self.process
            crash_loop = self._crashes.died()
            held = self.jobs.settle_dead_reader()
            how = dead.describe_exit()
            dead.close()
            if crash_loop:
                self.process = None
                raise WorkerCrashLoop(f"{WORKER_NAME} died {self._crashes.count} times within "
                                      f"{self._crashes.window:g} s "
                                      f"(last: {how}, holding {held} events); see its log above")
            log.error("%s pid %d died (%s) holding %d events it had taken from the queue and not seen "
                      "confirmed (they may or may not have reached the broker; %d lost this way in all); "
                      "starting a new one", WORKER_NAME, dead.pid, how, held, self.jobs.lost())
            self.restarts += 1
            self.spawn_worker()
            return True

    def _watch(self) -> None:
        """The watcher thread: fork the worker, and a new one whenever it dies."""
        try:
            with self._lock:
                self.spawn_worker()
        except BaseException as exc:
            self._spawn_error = exc
            return
        finally:
            self._spawned.set()
        backoff = 1.0
        while not self._stopping:
            process = self.process
            fds = [self._wake[0]] + ([process.sentinel] if process is not None else [])
            wait_readable(fds, WATCH_TICK)
            if self._stopping:
                break
            try:
                if self.process is None:  # given up after a crash loop: try again after a pause
                    with self._lock:
                        if not self._stopping:
                            self.spawn_worker()
                elif self.check_worker():
                    backoff = 1.0
            except WorkerCrashLoop as exc:
                log.error("%s; trying again in %g s", exc, backoff)
                self._sleep(backoff)
                backoff = min(backoff * 2, CRASH_BACKOFF_MAX)
            except Exception:
                log.exception("the service's watcher failed; trying again in %g s", backoff)
                self._sleep(backoff)

    def _sleep(self, seconds: float) -> None:
        wait_readable([self._wake[0]], seconds)

    def _stop_watcher(self) -> None:
        self._stopping = True
        if self._watcher is not None:
            os.write(self._wake[1], b"x")
            self._watcher.join(10.0)
            self._watcher = None
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    # ---- stats ----------------------------------------------------------------------

    def stats(self) -> dict:
        """The RabbitMQ worker's latest counters (refreshed every second and at exit).

        Keys: ``jobs``, one count per status (``confirmed``, ``failed``,
        ``unroutable``, ...), ``queue_depth`` (jobs waiting in the shared
        queue), ``held`` (jobs the worker took and has not finished),
        ``lost_with_dead_workers`` (jobs that died with a killed worker, in
        all), ``worker_starts``, ``unspooled`` (jobs handed over in spool
        files by processes that exited with jobs still buffered), ``replies_sent`` and ``replies_lost`` (sync
        replies that could not be delivered: caller gone or given up),
        ``brokers``: per broker (labelled without password) its ``state``,
        ``endpoint``, ``backlog`` (= ``pending`` + ``inflight``),
        ``published``, ``connects``, ``reconnects``, ``connection_lost``,
        ``republished``, ``failovers``, ``failbacks``, ``dropped_expired``,
        ``last_error``, ``confirm_latency`` (a histogram: ``{bounds, counts,
        sum}``, seconds from writing a publish to its ack or nack,
        ``workers/rabbitmq/histogram.py``); ``sync_wait`` (the same, from a sync raise to
        its reply); and ``subscriptions``: one row per event and
        subscriber (socket text, password masked) with ``raised`` (=
        ``queued`` + ``dropped_at_exit`` + ``dropped_queue_full`` +
        ``too_large``), ``queued``,
        ``published`` (republished copies included), ``confirmed``,
        ``nacked``, ``unroutable``, ``failed`` (of which
        ``dropped_expired``), ``timeout``, ``dropped_at_exit`` (accepted,
        but still buffered in a process that exited before the worker could
        take it).  ``{}`` until
        the worker's first snapshot.  Counters restart with a new worker
        process (a front-end's refusal counts come back with its next report).
        Readable from any process that inherited the service.
        """
        try:
            with open(self.stats_path) as f:
                return json.load(f)
        except (FileNotFoundError, TypeError):
            return {}

    def health(self, worker_only: bool = False) -> dict:
        """Whether the worker runs and every broker it knows is connected (``workers/control/health.py``).

        ``{"healthy": bool, "reasons": [why not, ...], "pid", "age", "brokers": {label: state}}``;
        ``worker_only`` leaves the brokers out (for a liveness probe).  Reads
        the stats file, and in the serving process also looks at the worker
        process itself: never waits more than a second.
        """
        if self.jobs is None:
            return {"healthy": False, "reasons": ["the RabbitMQ worker service is not running"],
                    "pid": None, "age": None, "brokers": {}}
        verdict = health.judge(self.stats(), worker_only=worker_only)
        if os.getpid() == self._owner_pid and self._lock.acquire(timeout=1.0):
            try:  # the watcher may be replacing the process: look while it cannot
                alive = self.process is not None and self.process.is_alive()
            finally:
                self._lock.release()
            if not alive:
                verdict["reasons"].insert(0, f"{WORKER_NAME} is not running (being replaced, or given up)")
                verdict["healthy"] = False
        return verdict

    # ---- stop -------------------------------------------------------------------------

    def stop(self) -> None:
        """Drain and stop the worker: bounded by the drain timeout plus a grace period.

        Only the process that started the service stops it; elsewhere (a
        forked child that inherited it) this does nothing.
        """
        if self.jobs is None or os.getpid() != self._owner_pid:
            return
        atexit.unregister(self._stop_at_exit)
        self._stop_servers()
        # This process's own buffered jobs (control-socket raises, say) first.
        self.sender.at_exit()
        self._stop_watcher()
        self._stopping = True
        try:
            with self._lock:
                self._stop_worker()
        finally:
            self.evi.detach()
            self._attached = False
            # What was subscribed at runtime stays, in a table of this process's own.
            self.evi.subscriptions = self.shared.detached()
            self.shared.close()
            self.shared = None
            self.final_stats = self.stats()
            self.jobs.close()
            self.jobs = None
            shutil.rmtree(self._stats_dir, ignore_errors=True)
            self._undo_logging()

    def _stop_servers(self) -> None:
        """The control socket and the metrics endpoint, each bounded."""
        if self.control is not None:
            self.control.stop()
            self.control = None
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None

    def _stop_worker(self) -> None:
        process = self.process
        if process is None:
            return
        if process.terminate():
            self._wait_for_drain(process)
            if process.is_alive():
                log.error("%s did not stop in time; killing it", WORKER_NAME)
                process.kill()
                process.join(5.0)
        held = self.jobs.settle_dead_reader()
        if held:
            log.error("%s exited holding %d events it had not seen confirmed (they may or may not have "
                      "reached the broker)", WORKER_NAME, held)
        left = self.jobs.depth()
        if left:
            log.error("%d events were still queued when %s stopped; they are lost", left, WORKER_NAME)
        process.close()
        self.process = None

    def _wait_for_drain(self, process: Child) -> None:
        # Bounded like the worker's own drain: by the drain timeout without
        # progress (the stats file's counters), plus a grace for closing.
        grace = self.settings.drain_timeout + 5.0
        deadline, last = time.monotonic() + grace, None
        while process.is_alive() and time.monotonic() < deadline:
            process.join(0.2)
            stats = self.stats()
            progress = (stats.get("jobs"), stats.get("outstanding"))
            if progress != last:
                last, deadline = progress, time.monotonic() + grace

    def _stop_at_exit(self) -> None:
        # The application never called stop(): do it now, so that what was
        # queued is published (a library must not lose events at exit).
        if self.jobs is not None and os.getpid() == self._owner_pid:
            log.info("stopping the RabbitMQ worker service at exit (stop() was not called)")
            self.stop()

    def __enter__(self) -> "Service":
        return self if self.jobs is not None else self.start()

    def __exit__(self, *_unused_exc) -> None:
        self.stop()

    @property
    def serving(self) -> bool:
        """True while started and not stopped (in the process that started it)."""
        return self.jobs is not None


def _metrics_server(address, service: Service):
    """The metrics endpoint for *service*, bound and serving; a clear error without prometheus-client."""
    try:
        from workers.control.metrics import Collector, MetricsServer
    except ImportError as exc:
        raise ImportError(f"metrics_address needs prometheus-client ({exc}): pip install 'opsevent[metrics]'") \
            from None
    return MetricsServer(address, Collector(service)).start()


def _refuse_if_served(evi) -> None:
    service = getattr(evi.transport, "service", None)
    if service is not None and service.serving:
        where = ("this process" if service._owner_pid == os.getpid()
                 else f"process {service._owner_pid}, whose child this process is")
        raise AlreadyServed(f"this EventInterface is already served by a RabbitMQ worker service started in "
                            f"{where}; stop that one first, or serve another EventInterface")


def serve(evi, **options) -> Service:
    """Start the RabbitMQ worker for ``evi`` now; use as a context manager or call ``stop()``.

    ``options`` are ``Service``'s.  Call it in the process that forks the
    ones that raise (a server's master, before it forks its workers); the
    service stops at exit if ``stop()`` was not called.
    """
    return Service(evi, **options).start()
