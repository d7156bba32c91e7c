"""The front-end end of the job channel: ``JobSender``, opsevent's ``Transport``.

Theory of operation (OpenSIPS ``rabbitmq_send.c``'s writer side):

* One shared ``JobQueue`` (``jobqueue.py``) carries jobs from every
  front-end to the one RabbitMQ worker.  It is created pre-fork by whoever
  owns the worker (a ``Supervisor`` or ``workers.serve``) and inherited by the
  children.  It is bounded; a raise that finds it full fails at once with
  ``queue full`` instead of blocking the caller.
* A job is plain data, built by the front-end: the event name, the
  subscriber sockets, the body, the raise time and, for a sync raise, the
  reply address and a sequence number (``job.py`` has its bytes).
* A sync raise then waits, bounded, for the reply carrying its own sequence
  number on this process's reply pipe (``replies.py``).
* Raises refused before the queue (queue full, too large) are counted here,
  per subscription, and reported to the worker's inbox as JSON.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import socket
import threading
import time

from opsevent import RabbitMQSocket, Status, Transport
from opsevent.messageid import new_message_id
from workers.base import forks
from workers.base.process import FORK_ONLY, run_at_exit
from workers.channel import job
from workers.channel.job import SocketBytes
from workers.channel.replies import ReplyBox

log = logging.getLogger(__name__)


class JobSender(Transport):
    """The front-end end of the channel: opsevent's ``Transport``.

    Safe to share between threads and asyncio tasks, and inherited by forked
    children: the reply pipe is (re)made in whichever process first waits
    for a reply.  Fork only: pickled (a ``spawn`` or ``forkserver`` child)
    it raises ``TypeError`` saying what to do instead.

    Raises refused here (queue full) or before it (too large) never reach
    the worker, so this process counts them per subscription and sends its
    totals to the worker's inbox (``inbox``, an AF_UNIX datagram address):
    with the next raise the queue takes (at most every ``REPORT_EVERY``
    seconds), at once for a too-large raise, and at exit.

    At exit (``at_exit``, run by ``atexit`` and multiprocessing's exit
    hooks in any process that has something to hand over, whoever forked
    it), the jobs still in this process's overflow buffer are handed to the
    worker through a spool file, without waiting for it.
    """

    REPORT_EVERY = 0.5

    def __init__(self, job_queue, inbox: bytes | None = None, drain_timeout: float = 5.0):
        self._queue = job_queue
        self._seq = itertools.count(1)
        self._box: ReplyBox | None = None
        self._box_lock = threading.Lock()
        _SENDERS.add(self)
        self._sockets = SocketBytes()
        job_queue.on_first_overflow = _arm_exit_hook
        self.queue_full = 0  # async and sync raises refused because the queue was full
        self.drain_timeout = drain_timeout
        self._inbox = inbox
        self._counts = _Counts()
        # Made once, before the fork, and shared by the children: a datagram
        # socket that only sends needs nothing per process.
        self._report_sock = None
        if inbox is not None:
            self._report_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._report_sock.setblocking(False)
            # Bound now: the inbox asks for credentials, and the kernel would
            # otherwise bind the sender (autobind) at its first report, which
            # took a refused raise up to a millisecond.
            self._report_sock.bind(b"\0opsevent-report-%d-%s" % (os.getpid(), os.urandom(6).hex().encode()))

    def __reduce__(self):
        raise TypeError(FORK_ONLY)

    def submit(self, event, sockets, body, sync, timeout, message_id=None):
        ev = event.encode("utf-8")
        # The EventInterface made or checked the id (1..255 UTF-8 bytes).
        mid = (message_id or new_message_id()).encode("utf-8")
        if not sync:
            if self._queue.put(job.encode(0, None, ev, mid, self._sockets(sockets), body, time.monotonic())):
                if self._counts.unsent:
                    self._report()
                return _queued(len(sockets))
            return self._refused(event, sockets)
        box, seq, now, readers = self._put_sync(ev, mid, sockets, body)
        if box is None:
            return self._refused(event, sockets)
        return self._sync_result(box.wait(seq, now + timeout), sockets, timeout, readers)

    async def asubmit(self, event, sockets, body, sync, timeout, message_id=None):
        """``submit()`` for a coroutine: waits for a sync reply without blocking the event loop."""
        if not sync:
            return self.submit(event, sockets, body, sync, timeout, message_id)  # never waits
        mid = (message_id or new_message_id()).encode("utf-8")
        box, seq, now, readers = self._put_sync(event.encode("utf-8"), mid, sockets, body)
        if box is None:
            return self._refused(event, sockets)
        return self._sync_result(await box.wait_async(seq, now + timeout), sockets, timeout, readers)

    def _put_sync(self, ev, mid, sockets, body):
        """Queue a sync job; ``(box, seq, time, worker generation)``, or box None when the queue is full."""
        box = self._reply_box()
        seq = next(self._seq)
        now = time.monotonic()
        readers = self._queue.readers()
        box.expect(seq)  # before the put: the reply may come before put() returns
        if not self._queue.put(job.encode(seq, box.address, ev, mid, self._sockets(sockets), body, now), sync=True):
            box.forget(seq)
            return None, seq, now, readers
        if self._counts.unsent:
            self._report()
        return box, seq, now, readers

    def _sync_result(self, statuses, sockets, timeout, readers):
        if statuses is not None:
            return statuses  # Statuses already (ReplyBox)
        if self._queue.readers() != readers:
            reason = (f"outcome unknown: no status within {timeout:g} s, and the RabbitMQ worker was replaced "
                      f"meanwhile; the event may or may not be published")
        else:
            reason = (f"outcome unknown: no status from the RabbitMQ worker within {timeout:g} s; "
                      f"the event may still be published")
        return ((Status.TIMEOUT, reason),) * len(sockets)

    def note(self, event, sockets, status) -> None:
        """Count a raise that opsevent refused before the transport (``too large``)."""
        self._counts.add(os.getpid(), event, sockets, status.name.lower())
        self._report()

    def flush(self, timeout: float) -> int:
        """Hand over this process's buffered jobs (see ``JobQueue.flush``); how many are left."""
        left = self._queue.flush(timeout)
        if self._counts.unsent:
            self._report(force=True)
        return left

    def at_exit(self) -> None:
        """This process is ending: hand its buffered jobs over at once, and send its counts.

        The jobs go to a spool file the worker reads (``JobQueue.spool_unsent``),
        so the exit never waits for the worker; only when that file cannot be
        written are they counted as ``dropped_at_exit``, logged, and their
        queue slots freed.
        """
        try:
            spooled = self._queue.spool_unsent()
            if spooled:
                log.info("process %d exits with %d queued events; handed to the RabbitMQ worker in a spool file",
                         os.getpid(), spooled)
        except OSError as exc:
            self._drop_unsent(exc)
        self._last_report()

    def _drop_unsent(self, why) -> None:
        dropped = self._queue.discard_unsent()
        for payload in dropped:
            _seq, _reply, event, _id, sockets, _body, _raised = job.decode(payload)
            self._counts.add(os.getpid(), event.decode("utf-8", "replace"),
                             [RabbitMQSocket(*wire) for wire in job.load_sockets(sockets)], "dropped_at_exit")
        log.error("process %d is exiting with %d queued events it cannot hand to the RabbitMQ worker (%s); "
                  "they are dropped and counted (dropped_at_exit)", os.getpid(), len(dropped), why)

    def _last_report(self) -> None:
        # A worker being replaced has no inbox for a moment: try for a second.
        deadline = time.monotonic() + 1.0
        while self._counts.unsent and time.monotonic() < deadline:
            self._report(force=True)
            if self._counts.unsent:
                time.sleep(0.05)

    def _refused(self, event, sockets):
        self.queue_full += 1
        if self.queue_full == 1 or self.queue_full % 10000 == 0:
            log.warning("job queue full (%d jobs): %d raises refused so far in this process",
                        self._queue.maxsize, self.queue_full)
        # Counted only: the report goes with the next raise the queue takes,
        # or at exit, so that a refused raise stays as cheap as it can be.
        self._counts.add(os.getpid(), event, sockets, "dropped_queue_full")
        reason = "the shared job queue is full; the RabbitMQ worker is not keeping up"
        return ((Status.QUEUE_FULL, reason),) * len(sockets)

    def _report(self, force: bool = False) -> None:
        counts = self._counts
        now = time.monotonic()
        if self._inbox is None or (now < counts.due and not force):
            return
        if counts.pid != os.getpid():  # inherited across a fork: the parent's to report
            counts.__init__()
            return
        counts.due, counts.unsent = now + self.REPORT_EVERY, False
        # JSON, not pickle: the worker must never run what a datagram says.
        data = json.dumps({"pid": counts.pid, "counts": [[event, sock, row] for (event, sock), row
                                                         in counts.table.items()]}).encode()
        try:
            self._report_sock.sendto(data, self._inbox)
        except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
            counts.unsent = True  # the worker is restarting or busy: the next report carries it
        except OSError as exc:
            if not counts.failed:  # e.g. a table too big for one datagram: say so once
                log.warning("cannot report this process's refused raises to the RabbitMQ worker "
                            "(%d subscriptions, %d bytes): %s", len(counts.table), len(data), exc)
            counts.failed = True

    def _reply_box(self) -> ReplyBox:
        box = self._box
        if box is None or box.pid != os.getpid():
            with self._box_lock:
                box = self._box
                if box is None or box.pid != os.getpid():
                    # A box inherited across fork belongs to the parent: never read it.
                    box = self._box = ReplyBox()
        return box


def _reset_lock(sender: JobSender) -> None:
    # A thread of the parent may have held the lock at the fork (see JobQueue).
    sender._box_lock = threading.Lock()


_SENDERS = forks.registry(_reset_lock)


def _arm_exit_hook() -> None:
    """This process has something to hand over at exit (buffered jobs, refusal counts)."""
    run_at_exit(_at_exit)


def _at_exit() -> None:
    for sender in list(_SENDERS):
        try:
            sender.at_exit()
        except Exception:
            log.exception("handing this process's queued events to the RabbitMQ worker failed at exit")


class _Counts:
    """This process's refusals per subscription: ``{(event, socket text): {what: n}}``, cumulative."""

    def __init__(self):
        self.pid = None
        self.table: dict[tuple[str, str], dict[str, int]] = {}
        self.unsent = False  # counted since the last report
        self.due = 0.0  # monotonic time the next report may go
        self.failed = False  # a report could not be sent (logged once)
        self._texts: dict[int, tuple] = {}  # id(socket) -> (socket, its text): str() once per socket

    def add(self, pid: int, event: str, sockets, what: str) -> None:
        if pid != self.pid:  # a forked child starts its own count, and reports it at exit
            self.__init__()
            self.pid = pid
            _arm_exit_hook()
        for s in sockets:
            hit = self._texts.get(id(s))
            if hit is None or hit[0] is not s:
                if len(self._texts) >= 4096:
                    self._texts.clear()  # subscribers churned: start over
                hit = self._texts[id(s)] = (s, str(s))
            row = self.table.setdefault((event, hit[1]), {})
            row[what] = row.get(what, 0) + 1
        self.unsent = True


@functools.lru_cache(maxsize=64)
def _queued(n: int) -> tuple:
    # The async success answer is the same tuple every time; build it once.
    return ((Status.QUEUED, ""),) * n
