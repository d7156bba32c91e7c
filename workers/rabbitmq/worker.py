"""The RabbitMQ worker process (OpenSIPS's "RabbitMQ sender", ``rmq_process``).

It owns every AMQP connection.  One pika I/O loop waits on the shared job
queue's pipe and on every broker socket at once, so heartbeats are serviced
while idle, confirms stream in while new jobs arrive, and many publishes go
out in one socket write.

``loop_once()`` is one turn of that loop; ``run()`` is
``init_process() -> while not finished: loop_once() -> shutdown()``.
Shutdown (SIGTERM) drains: it keeps publishing what is queued and waits for
the broker's confirms until ``drain_timeout``, then closes the connections.

Every message gets its properties here (``workers.rabbitmq.amqp.MessageProperties``)
and every outcome is counted per subscription (``workers.rabbitmq.substats``); the
front-ends' refusals arrive on the worker's inbox, an AF_UNIX datagram socket.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import time

from pika.adapters.select_connection import IOLoop, PollEvents

from opsevent import RabbitMQSocket, Status
from workers.base import logs
from workers.channel import job
from workers.channel.jobqueue import FINISHED, JobQueue
from workers.channel.replies import Replier, private_socket, receive_own
from workers.rabbitmq import tls
from workers.rabbitmq.amqp import MessageProperties
from workers.rabbitmq.histogram import Histogram
from workers.rabbitmq.link import CLOSING, BrokerLink, Item
from workers.base.process import (accept_stop_signals, close_inherited_listeners, reset_signals,
                                  set_parent_death_signal, set_worker_gc)
from workers.base.tally import Tally
from workers.rabbitmq.substats import FRONTEND_COUNTERS, SubscriptionStats

log = logging.getLogger(__name__)

# The worker holds at most backlog_size unresolved publishes, or this many
# bytes of bodies; beyond that it stops reading, so the shared queue fills and
# raises get "queue full" at once instead of the worker's memory growing.
MAX_OUTSTANDING_BYTES = 8 << 20
JOBS_PER_READ = 64
JOBS_PER_TURN = 4096  # jobs read before pika gets a turn, so confirms and heartbeats keep flowing
TICK = 0.05  # seconds between sweeps for sync deadlines and silent brokers
DRAIN_QUIET = 0.3  # seconds the pipe must stay empty before a draining worker closes
STATS_EVERY = 1.0  # seconds between two snapshots in the stats file
TARGETS_CACHED = 4096  # distinct (event, subscribers) job shapes remembered
INBOX_MAX = 1 << 18  # bytes of one front-end report (JobSender keeps them under it)
CONTENT_TYPES = {"lines": "text/plain", "json": "application/json", "opensips": "text/x-opensips-event"}


class _Target:
    """One subscriber of a job as the worker sees it: where it goes, how, and its counters."""

    __slots__ = ("exchange", "routing_key", "link", "counts", "head")

    def __init__(self, exchange, routing_key, link, counts, head):
        self.exchange = exchange
        self.routing_key = routing_key
        self.link = link
        self.counts = counts
        self.head = head  # the fixed part of its messages' properties


class Job:
    """A job with more than one outcome to wait for: a sync job, or an async one with several subscribers."""

    __slots__ = ("seq", "reply", "statuses", "remaining", "deadline", "raised_at")

    def __init__(self, seq, reply, n, deadline=None, raised_at=0.0):
        self.seq = seq
        self.reply = reply  # the caller's reply address; None for async
        self.statuses = [None] * n
        self.remaining = n
        self.deadline = deadline
        self.raised_at = raised_at  # monotonic time of the raise, in the front-end (one clock per machine)


class RabbitMQWorker:
    def __init__(self, jobs: JobQueue, settings, stats_path: str | None = None, inbox: bytes | None = None,
                 quiet_pika: bool = False):
        # Called pre-fork: stores configuration only.
        self.jobs = jobs
        self.quiet_pika = quiet_pika
        self.inbox_address = inbox  # where front-ends send the raises they refused (JobSender)
        self.settings = settings
        self.stats_path = stats_path  # where a JSON snapshot of the counters goes every STATS_EVERY s
        self.links: dict[tuple, BrokerLink] = {}
        self.stats = collections.Counter()
        self.outstanding = 0  # publishes handed to links and not yet resolved
        self.outstanding_bytes = 0
        self.reading = True  # the shared queue's pipe is watched
        self.lingering = False  # unwatched for Settings.linger after a small turn (_linger)
        self.sync_read = False  # this turn read a sync job: no lingering after it
        self.stop_requested = False
        self.finished = False
        self._failures: dict[Status, Tally] = {}  # async failures by status, logged while they last
        self._targets: dict[tuple[bytes, bytes], tuple] = {}  # (event, sockets bytes) -> _Target per subscriber
        self.subscriptions = SubscriptionStats()
        self.sync_wait = Histogram()  # seconds from a sync raise to its reply, as the worker sees it

    # ---- life cycle ------------------------------------------------------------

    def init_process(self, install_signals: bool = True) -> None:
        """Post-fork set-up: signals, the I/O loop, the reply socket."""
        if install_signals:  # in its own forked process (tests drive it in theirs)
            set_worker_gc()  # the inherited heap out of its collections; fewer of them (workers/base/process.py)
            close_inherited_listeners()
            reset_signals()
            set_parent_death_signal(signal.SIGTERM)
            # Ctrl-C reaches the whole process group; the supervisor decides
            # when the worker stops, after the front-ends, so it can drain.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, self.handle_term)
            accept_stop_signals()  # a stop sent since the fork waited for the handler: it runs now
        if self.quiet_pika:
            # Asked for (Service(quiet_pika=True)), in this process only: pika
            # logs each failed connect several times over at ERROR; the links
            # report every failure once, with its broker and backlog.
            logging.getLogger("pika").setLevel(logging.CRITICAL)
        self.ppid = os.getppid()
        self.ioloop = IOLoop()
        self.ioloop.activate_poller()  # what IOLoop.start() would do; we turn the loop ourselves
        self.replier = Replier(lambda fd, callback: self.ioloop.add_handler(fd, callback, PollEvents.WRITE),
                               self.ioloop.remove_handler)
        self.properties = MessageProperties(self.settings.app_id, self.settings.event_header)
        self._wall_offset = time.time() - time.monotonic()
        self.inbox = None
        if self.inbox_address is not None:
            self.inbox = private_socket(self.inbox_address)  # abstract: a dead predecessor's is free
            self.ioloop.add_handler(self.inbox.fileno(), self._on_inbox, PollEvents.READ)
        self.jobs.attach_reader()
        self._ledger = self.jobs.ledger  # jobs finished are counted there, per message
        self.ioloop.add_handler(self.jobs.fileno(), self._on_jobs, PollEvents.READ)
        self._tick_timer = self.ioloop.call_later(TICK, self._tick)
        self._more_due = False
        self._drain_deadline = None
        self._stats_due = 0.0

    def handle_term(self, _unused_signum, _unused_frame) -> None:
        self.stop_requested = True  # only record; the loop acts

    def run(self) -> None:
        self.init_process()
        log.info("RabbitMQ worker started (heartbeat %d s, sync_mode %s)",
                 self.settings.heartbeat, self.settings.sync_mode)
        try:
            while not self.finished:
                self.loop_once()
        finally:
            self.shutdown()

    def loop_once(self) -> None:
        self.ioloop.poll()
        self.ioloop.process_timeouts()
        self.replier.flush()  # this turn's sync replies, one datagram per caller process
        if self.stop_requested and self._drain_deadline is None:
            self._start_drain()

    def shutdown(self) -> None:
        for link in self.links.values():
            if not link.closed:
                link.close()
                link.abort("worker exiting")
        self.replier.close()
        for tally in self._failures.values():
            tally.close()
        if self.inbox is not None:
            self._on_inbox(None, None)  # the last reports of exiting front-ends
            self.inbox.close()
        self.write_stats()
        log.info("RabbitMQ worker stopped: %s", _format_stats(self.stats))
        logs.before_child_exit(self.ppid)

    # ---- jobs --------------------------------------------------------------------

    def _on_jobs(self, _unused_fd, _unused_events) -> None:
        # Small batches, checking the bounds between them: a batch of big or
        # widely fanned-out jobs must not overshoot the memory bound.
        self.sync_read = False
        handled = 0
        for _ in range(JOBS_PER_TURN // JOBS_PER_READ):
            room = self.settings.backlog_size - self.outstanding  # exact for one subscriber per job
            if room <= 0:
                break
            want = min(JOBS_PER_READ, room)
            jobs = self.jobs.receive(want)
            for payload in jobs:
                self.handle(payload)
            handled += len(jobs)
            if len(jobs) < want or self._saturated():
                break
        for link in self.links.values():
            link.flush()
        if self._saturated():
            # Level-triggered poller: stop watching the pipe, or it would spin.
            self._unwatch_jobs()
            self.stats["paused_reading"] += 1
        elif handled < JOBS_PER_READ and not self.sync_read and self.settings.linger and not self.stop_requested:
            self._linger()
        else:
            self._more_if_waiting()

    def _linger(self) -> None:
        # A few async jobs: every one of them had woken this process and cost
        # a publish write and a broker read.  Unwatched a moment, the pipe
        # gathers the next ones for one read and one batch (Settings.linger).
        self._unwatch_jobs()
        self.lingering = True
        self.stats["lingered"] += 1
        self.ioloop.call_later(self.settings.linger, self._end_linger)

    def _end_linger(self) -> None:
        # Nothing else watches the pipe again while it lingers (_resume_reading waits for this).
        self.lingering = False
        if not self._saturated():  # saturated: confirms resume it (_resume_reading)
            self._watch_jobs()

    def _unwatch_jobs(self) -> None:
        self.ioloop.remove_handler(self.jobs.fileno())
        self.reading = False

    def _watch_jobs(self) -> None:
        self.ioloop.add_handler(self.jobs.fileno(), self._on_jobs, PollEvents.READ)
        self.reading = True
        self._more_if_waiting()

    def _more_if_waiting(self) -> None:
        # Jobs already read from the pipe wake no poller: take them next turn,
        # after pika has had its turn (confirms, heartbeats).
        if self.jobs.waiting() and not self._more_due:
            self._more_due = True
            self.ioloop.call_later(0, self._more_jobs)

    def _more_jobs(self) -> None:
        self._more_due = False
        if self.reading:
            self._on_jobs(None, None)

    def _saturated(self) -> bool:
        return (self.outstanding >= self.settings.backlog_size
                or self.outstanding_bytes >= MAX_OUTSTANDING_BYTES)

    def _resume_reading(self) -> None:
        if not self.reading and not self.lingering and self.outstanding <= self.settings.backlog_size // 2 \
                and self.outstanding_bytes <= MAX_OUTSTANDING_BYTES // 2:
            self._watch_jobs()

    def handle(self, payload) -> None:
        seq, reply, event, message_id, sockets, body, raised_at = job.decode(payload)
        self.stats["jobs"] += 1
        targets = self._targets.get((event, sockets)) or self._new_targets(event, sockets)
        n = len(targets)
        deadline = None
        if reply is not None:
            self.sync_read = True  # its caller waits: no lingering after this turn
            # Answer a little before the caller gives up, so it gets the reason.
            timeout = self.settings.sync_timeout
            deadline = raised_at + timeout - min(0.05, timeout / 10)
        # Nobody waits for an async job's statuses: one shared record serves
        # every single-subscriber one; it is done when its one item is.
        record = _ASYNC if reply is None and n == 1 else Job(seq, reply, n, deadline, raised_at)
        if reply is not None:
            if deadline <= time.monotonic():
                for i, t in enumerate(targets):
                    t.counts["queued"] += 1
                    t.counts[Status.TIMEOUT.value] += 1
                    self._finish(record, i, Status.TIMEOUT, "the caller gave up before the worker read the job")
                return
        self.outstanding += n
        self.outstanding_bytes += n * len(body)
        # The message id (the front-end's) names the event: the same for each subscriber's copy
        # and for a copy published again after a reconnect or a nack, so consumers can drop duplicates.
        tail = self.properties.tail(message_id, int(raised_at + self._wall_offset))
        for i, t in enumerate(targets):
            t.counts["queued"] += 1
            t.link.submit(Item(record, i, t.exchange, t.routing_key, body, t.head + tail, t.counts,
                               raised_at, deadline))

    def _new_targets(self, event: bytes, sockets: bytes) -> tuple:
        """Where and how a job of these subscribers goes; cached by the job's bytes."""
        if len(self._targets) >= TARGETS_CACHED:
            self._targets.clear()  # the counters live on in self.subscriptions
        targets = []
        name = event.decode("utf-8", "replace")
        for wire in job.load_sockets(sockets):
            sock = RabbitMQSocket(*wire)
            link = self.links.get(sock.broker)
            if link is None:
                link = self.links[sock.broker] = BrokerLink(
                    sock.broker, sock.broker_label, tls.settings_for(self.settings, sock), self.ioloop, self._done,
                    self._confirmed)
            counts = self.subscriptions.counts(name, str(sock))
            body_format = sock.format or self.settings.format
            head = self.properties.head(event, CONTENT_TYPES[body_format], sock.persistent or self.settings.persistent)
            targets.append(_Target(sock.exchange, sock.routing_key, link, counts, head))
        targets = self._targets[(event, sockets)] = tuple(targets)
        return targets

    def _done(self, item: Item, status: Status, reason: str) -> None:
        if status is _CONFIRMED:
            self._confirmed((item,))
            return
        item.counts[status._value_] += 1  # not the enum's .value property
        self.outstanding -= 1
        self.outstanding_bytes -= len(item.body)
        if not self.reading:
            self._resume_reading()
        self._finish(item.job, item.index, status, reason)

    def _confirmed(self, items) -> None:
        """The broker took *items*: counted in bulk (a link calls this once per ack), the usual outcome."""
        size = finished = 0
        for item in items:
            item.counts[_CONFIRMED_VALUE] += 1
            size += len(item.body)
            if item.job is _ASYNC:
                finished += 1
            else:
                self._finish(item.job, item.index, _CONFIRMED, "")
        self.outstanding -= len(items)
        self.outstanding_bytes -= size
        self.stats[_CONFIRMED_VALUE] += finished  # _finish counted the others
        self._ledger[FINISHED] += finished
        if not self.reading:
            self._resume_reading()

    def _finish(self, job: Job, index: int, status: Status, reason: str) -> None:
        self.stats[status._value_] += 1
        if job.reply is None and status is not Status.CONFIRMED:
            self._log_async_failure(status, reason)
        if job is _ASYNC:
            self.jobs.finished()
            return
        job.statuses[index] = (status._value_, reason)
        job.remaining -= 1
        if job.remaining == 0:
            self.jobs.finished()
            if job.reply is not None:
                self.sync_wait.observe(time.monotonic() - job.raised_at)
                self.replier.add(job.reply, job.seq, job.statuses, job.deadline)

    def _on_inbox(self, _unused_fd, _unused_events) -> None:
        for _ in range(64):
            try:
                data = receive_own(self.inbox, INBOX_MAX)
            except (BlockingIOError, InterruptedError):
                return
            if data is None:
                continue
            try:
                report = json.loads(data)
                table = {(event, sock): {what: int(report_row.get(what, 0)) for what in FRONTEND_COUNTERS}
                         for event, sock, report_row in report["counts"]}
                self.subscriptions.report(int(report["pid"]), table)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # A report is advisory: never let one stop the worker.
                log.warning("ignored a malformed front-end report (%d bytes): %s", len(data), exc)

    def _log_async_failure(self, status: Status, reason: str) -> None:
        # Counted per kind and summarised while it lasts (workers/base/tally.py): a
        # dead broker must not turn every event into a log line.
        tally = self._failures.get(status)
        if tally is None:
            tally = self._failures[status] = Tally(log, f"async events {status.value}")
        tally.add(reason)

    # ---- time and shutdown ----------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        if os.getppid() != self.ppid:  # orphaned (its parent-death signal missed): drain; per tick, not per turn
            self.stop_requested = True
        for link in self.links.values():
            link.sweep(now)
        self.jobs.reclaim_dead_writers(now)
        if self.reading and self.jobs.spooled():
            self._on_jobs(None, None)  # spool files wake no poller
        for tally in self._failures.values():
            tally.tick(now)
        if self._drain_deadline is not None:
            self._drain_step(now)
        self.replier.sweep()
        if now >= self._stats_due:
            self._stats_due = now + STATS_EVERY
            self._wall_offset = time.time() - now  # follows clock steps for message timestamps
            self.write_stats()
        self._tick_timer = self.ioloop.call_later(TICK, self._tick)

    def snapshot(self) -> dict:
        """Every counter as plain data: totals by status, per broker and per subscription."""
        return {"pid": os.getpid(), "time": time.time(), "outstanding": self.outstanding, **self.stats,
                "queue_depth": self.jobs.depth(), "replies_sent": self.replier.sent,
                "replies_lost": self.replier.lost, "held": self.jobs.held(), "unspooled": self.jobs.unspooled,
                "lost_with_dead_workers": self.jobs.lost(), "lost_with_dead_frontends": self.jobs.lost_buffered(),
                "worker_starts": self.jobs.readers(),
                "brokers": {link.label: link.snapshot() for link in self.links.values()},
                "subscriptions": self.subscriptions.rows(), "sync_wait": self.sync_wait.snapshot()}

    def write_stats(self) -> None:
        if self.stats_path is None:
            return
        # Write-then-rename: a reader never sees half a file.
        tmp = f"{self.stats_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.snapshot(), f)
        os.replace(tmp, self.stats_path)

    def _start_drain(self) -> None:
        self._quiet_since = time.monotonic()
        self._drain_progress = None
        self._drain_reported = False
        self._drain_deadline = time.monotonic() + self.settings.drain_timeout
        log.info("RabbitMQ worker draining (at most %.1f s)", self.settings.drain_timeout)

    def _drain_step(self, now: float) -> None:
        # The drain timeout bounds a drain that makes no progress; one that
        # keeps reading jobs and getting confirms goes on (the queue's size
        # bounds how long that can take).
        progress = (self.stats["jobs"], self.outstanding)
        if progress != self._drain_progress:
            self._drain_progress = progress
            self._drain_deadline = now + self.settings.drain_timeout
        queued = self.jobs.pending()
        if queued:
            self._quiet_since = now
        # Front-ends hand over their last jobs as they exit; wait for a quiet pipe.
        quiet = now - self._quiet_since >= DRAIN_QUIET
        busy = not quiet or any(not link.idle for link in self.links.values())
        if busy and now < self._drain_deadline:
            return
        if busy and not self._drain_reported:
            self._drain_reported = True
            left = sum(len(link.pending) + len(link.inflight) for link in self.links.values())
            log.error("drain timeout: no progress for %.1f s; %d events not confirmed by the broker%s",
                      self.settings.drain_timeout, left, " and jobs still queued" if queued else "")
        for link in self.links.values():
            if link.state is not CLOSING and not link.closed:
                link.close()
            elif now > self._drain_deadline + 2.0:
                link.abort("close handshake timed out")
        if all(link.closed for link in self.links.values()):
            self.finished = True


_ASYNC = Job(0, None, 0)
_CONFIRMED = Status.CONFIRMED
_CONFIRMED_VALUE = _CONFIRMED.value


def _format_stats(stats) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) or "no jobs"


def worker_main(jobs: JobQueue, settings, stats_path: str | None = None, inbox: bytes | None = None,
                quiet_pika: bool = False) -> None:
    """The body of the RabbitMQ worker process."""
    RabbitMQWorker(jobs, settings, stats_path, inbox, quiet_pika).run()
