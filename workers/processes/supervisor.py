"""The Supervisor: OpenSIPS's main process, much smaller.

It forks one RabbitMQ worker (through a ``Service``) and N front-end
processes that each run ``target(rank, evi)``, watches them, and stops
everything in order: front-ends first, then the worker, which drains.

Signal handlers only record (the signal number goes into a list and a byte
into a wake-up socket); ``loop_once()`` acts on them.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time

from workers.processes.crashes import CrashWindow
from workers.processes.frontend import frontend_main
from workers.processes.service import Service

RESTART_POLICIES = ("on-failure", "always", "never")

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, evi, target, processes: int = 4, *, restart: str = "on-failure",
                 stop_grace: float = 3.0, install_logging: bool = False, quiet_pika: bool = False,
                 control_path: str | None = None, metrics_address: tuple[str, int] | None = None):
        """``restart`` says what happens when a front-end exits before a stop:
        ``"on-failure"`` (default) starts a new one if it crashed (non-zero exit),
        ``"always"`` also when it returned, ``"never"`` leaves it gone.  A rank
        that crashes ``CRASH_LIMIT`` times within ``CRASH_WINDOW`` s (``crashes.py``) is not
        restarted again.  ``control_path``: a unix socket (mode 0600) where the
        ``opsevent`` CLI manages subscriptions and reads stats while it runs.
        ``metrics_address``: ``(host, port)`` where this process serves
        Prometheus metrics over HTTP (see ``Service``), or None.
        ``install_logging`` and ``quiet_pika``: see ``Service``.  It installs
        handlers for SIGTERM and SIGINT while it runs (put back by ``stop()``),
        so run it in the main thread.
        Called pre-fork: configuration only.
        """
        if not callable(target):
            raise TypeError(f"target must be callable as target(rank, evi), got {target!r}")
        if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
            raise ValueError(f"processes must be a positive int, got {processes!r}")
        if restart not in RESTART_POLICIES:
            raise ValueError(f"restart must be one of {', '.join(RESTART_POLICIES)}, got {restart!r}")
        self.restart = restart
        self.crashes: dict[int, CrashWindow] = {}  # rank -> its deaths within the crash window
        self.evi = evi
        self.target = target
        self.processes = processes
        self.stop_grace = stop_grace
        self.service = Service(evi, install_logging=install_logging, quiet_pika=quiet_pika,
                               control_path=control_path, watch=False, metrics_address=metrics_address)
        self.ctx = multiprocessing.get_context("fork")
        self.frontends: dict[int, multiprocessing.Process] = {}
        self.exit_codes: dict[int, int] = {}
        self.stopping = False
        self._signals: list[int] = []
        self._old_handlers = {}
        self._wakeup = None

    # ---- life cycle -------------------------------------------------------------

    def run(self) -> dict[int, int]:
        """Run until every front-end has finished or a stop signal; return exit codes by rank."""
        self.start()
        try:
            while self.loop_once():
                pass
        finally:
            self.stop()
        return dict(self.exit_codes)

    def start(self) -> None:
        self._install_signals()
        self.service.start()
        for rank in range(1, self.processes + 1):
            self.spawn_frontend(rank)

    def loop_once(self, timeout: float = 0.5) -> bool:
        """Wait for a child to exit or a signal, then act; False when done."""
        waitables = [p.sentinel for p in self.frontends.values()]
        if self.service.process is not None:
            waitables.append(self.service.process.sentinel)
        multiprocessing.connection.wait(waitables + [self._wakeup[0]], timeout)
        self._drain_wakeup()
        while self._signals:
            self.handle_signal(self._signals.pop(0))
        self.reap_frontends()
        if not self.stopping:
            self.service.check_worker()
        return bool(self.frontends) and not self.stopping

    def stats(self) -> dict:
        """The RabbitMQ worker's latest counters; see ``Service.stats()``."""
        return self.service.stats()

    def health(self, worker_only: bool = False) -> dict:
        """Whether the worker runs and every broker is connected; see ``Service.health()``."""
        return self.service.health(worker_only)

    def handle_signal(self, signum: int) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        self.stopping = True

    def stop(self) -> None:
        """Stop front-ends (graceful, then forced), then drain and stop the worker."""
        self.stopping = True
        try:
            self.stop_frontends()
        finally:
            self.service.stop()
            self._restore_signals()

    # ---- front-ends ---------------------------------------------------------------

    def spawn_frontend(self, rank: int) -> None:
        process = self.ctx.Process(target=frontend_main, args=(rank, self.evi, self.target),
                                           name=f"frontend-{rank}")
        process.start()
        self.frontends[rank] = process

    def reap_frontends(self) -> None:
        for rank, process in list(self.frontends.items()):
            if process.exitcode is None:
                continue
            process.join()
            self.exit_codes[rank] = process.exitcode
            del self.frontends[rank]
            level = logging.INFO if process.exitcode == 0 else logging.ERROR
            log.log(level, "front-end %d (pid %d) exited with code %d", rank, process.pid, process.exitcode)
            if self._should_restart(rank, process.exitcode):
                self.spawn_frontend(rank)

    def _should_restart(self, rank: int, exitcode: int) -> bool:
        if self.stopping or self.restart == "never" or (exitcode == 0 and self.restart != "always"):
            return False
        crashes = self.crashes.setdefault(rank, CrashWindow())  # the worker's rule too (Service.check_worker)
        if crashes.died():
            log.error("front-end %d exited %d times within %g s; not restarting it", rank, crashes.count,
                      crashes.window)
            return False
        log.info("restarting front-end %d (restart=%s)", rank, self.restart)
        return True

    def stop_frontends(self) -> None:
        # SIGTERM asks; SIGINT interrupts a target that does not look; SIGKILL ends it.
        # A front-end whose target is done but which is still handing its jobs
        # over is waited for as long as the worker keeps taking them.
        for signum, wait in ((signal.SIGTERM, self.stop_grace), (signal.SIGINT, self.stop_grace),
                             (signal.SIGKILL, 5.0)):
            live = [p for p in self.frontends.values() if p.is_alive()]
            if not live:
                break
            if signum != signal.SIGTERM:
                log.warning("%d front-ends still running; sending %s", len(live), signal.Signals(signum).name)
            for process in live:
                _kill(process.pid, signum)
            self._wait_frontends(live, wait)
        self.reap_frontends()

    def _wait_frontends(self, live, wait: float) -> None:
        deadline, progress = time.monotonic() + wait, None
        while any(p.is_alive() for p in live) and time.monotonic() < deadline:
            multiprocessing.connection.wait([p.sentinel for p in live if p.is_alive()], 0.2)
            now_progress = self.service.stats().get("jobs")
            if now_progress != progress:
                progress, deadline = now_progress, max(deadline, time.monotonic() + wait)

    # ---- signals ----------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wakeup = socket.socketpair()
        for s in self._wakeup:
            s.setblocking(False)
        signal.set_wakeup_fd(self._wakeup[1].fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[signum] = signal.signal(signum, self._record_signal)

    def _record_signal(self, signum, _unused_frame) -> None:
        self._signals.append(signum)  # only record; loop_once acts

    def _drain_wakeup(self) -> None:
        try:
            while self._wakeup[0].recv(512):
                pass
        except BlockingIOError:
            pass

    def _restore_signals(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()
        signal.set_wakeup_fd(-1)
        if self._wakeup is not None:
            for s in self._wakeup:
                s.close()
            self._wakeup = None


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # already gone: the reap will see it
