"""The job channel between front-end processes and the RabbitMQ worker.

Theory of operation (OpenSIPS ``rabbitmq_send.c`` + ``ipc.c`` sync replies):

* One shared ``JobQueue`` (``workers/jobqueue.py``) carries jobs from every
  front-end to the one RabbitMQ worker.  It is created pre-fork by whoever
  owns the worker (a ``Supervisor`` or ``workers.serve``) and inherited by the
  children.  It is bounded; a raise that finds it full fails at once with
  ``queue full`` instead of blocking the caller.
* A job is plain data, built by the front-end::

      (seq, reply_addr, sockets, body, raised_at)

  ``sockets`` is a tuple of ``dataclasses.astuple(RabbitMQSocket)`` values,
  ``body`` the payload bytes, ``raised_at`` the ``time.monotonic()`` of the
  raise (CLOCK_MONOTONIC is system-wide on Linux, so the worker can age jobs),
  ``reply_addr`` ``None`` for async jobs.
* Sync replies travel over a per-process *reply pipe*: an ``AF_UNIX`` datagram
  socket in the abstract namespace, created lazily in the process that waits
  on it (never inherited across a fork).  A reply is ``(seq, statuses)``; each
  waiter takes only the reply whose ``seq`` is its own, so a late reply to a
  job that already timed out is discarded, never read by the next caller.
  Several threads of one process may wait at once: whichever holds the read
  lock reads and hands other threads' replies over (leader/follower).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import pickle
import socket
import threading
import time
from dataclasses import astuple

from opsevent import Status

log = logging.getLogger(__name__)

# A reply is at most (seq, a few statuses with reasons); 64 KiB is far above
# anything the worker sends and is the datagram size we read with.
_MAX_REPLY = 65536


class ReplyBox:
    """This process's reply pipe and the waiters on it (one per process)."""

    def __init__(self):
        self.pid = os.getpid()
        self.address = b"\0opsevent-reply-%d-%s" % (self.pid, os.urandom(6).hex().encode())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(self.address)
        self._cond = threading.Condition()
        self._waiting: dict[int, object] = {}  # seq -> reply, or _PENDING
        self._reading = False
        self.discarded = 0  # late replies to jobs whose caller gave up

    def expect(self, seq: int) -> None:
        with self._cond:
            self._waiting[seq] = _PENDING

    def wait(self, seq: int, deadline: float):
        """Return the statuses for ``seq``, or ``None`` when ``deadline`` passes."""
        with self._cond:
            try:
                while True:
                    reply = self._waiting[seq]
                    if reply is not _PENDING:
                        return reply
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    if self._reading:
                        self._cond.wait(left)
                    else:
                        self._lead(left)
            finally:
                del self._waiting[seq]

    def _lead(self, left: float) -> None:
        # Called with the lock held; reads one datagram without it.
        self._reading = True
        self._cond.release()
        try:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(_MAX_REPLY)
            except (socket.timeout, BlockingIOError, InterruptedError):
                data = None
        finally:
            self._cond.acquire()
            self._reading = False
        if data is not None:
            seq, statuses = pickle.loads(data)
            if self._waiting.get(seq) is _PENDING:
                self._waiting[seq] = statuses
            else:
                self.discarded += 1
        self._cond.notify_all()


_PENDING = object()


class JobSender:
    """The front-end end of the channel: opsevent's ``Transport``.

    Safe to share between threads, and inherited by forked children: the
    reply pipe is (re)made in whichever process first waits for a reply.
    """

    def __init__(self, job_queue):
        self._queue = job_queue
        self._seq = itertools.count(1)
        self._box: ReplyBox | None = None
        self._box_lock = threading.Lock()
        self._wire: dict[int, tuple] = {}  # id(socket) -> (socket, wire tuple)
        self.queue_full = 0  # async and sync raises refused because the queue was full

    def submit(self, sockets, body, sync, timeout):
        wire = self._wire_sockets(sockets)
        if not sync:
            if self._queue.put((0, None, wire, body, time.monotonic())):
                return _queued(len(sockets))
            return self._refused(len(sockets))
        return self._submit_sync(wire, body, timeout)

    def _submit_sync(self, wire, body, timeout):
        box = self._reply_box()
        seq = next(self._seq)
        now = time.monotonic()
        box.expect(seq)
        if not self._queue.put((seq, box.address, wire, body, now)):
            box.wait(seq, now)  # forget the seq
            return self._refused(len(wire))
        statuses = box.wait(seq, now + timeout)
        if statuses is None:
            reason = f"no status from the RabbitMQ worker within {timeout:g} s"
            return ((Status.TIMEOUT, reason),) * len(wire)
        return tuple((Status(code), reason) for code, reason in statuses)

    def flush(self, timeout: float) -> int:
        """Called as a front-end exits: hand over its buffered jobs (see ``JobQueue.flush``)."""
        return self._queue.flush(timeout)

    def _refused(self, n: int):
        self.queue_full += 1
        if self.queue_full == 1 or self.queue_full % 10000 == 0:
            log.warning("job queue full (%d jobs): %d raises refused so far in this process",
                        self._queue.maxsize, self.queue_full)
        reason = "the shared job queue is full; the RabbitMQ worker is not keeping up"
        return ((Status.QUEUE_FULL, reason),) * n

    def _reply_box(self) -> ReplyBox:
        box = self._box
        if box is None or box.pid != os.getpid():
            with self._box_lock:
                box = self._box
                if box is None or box.pid != os.getpid():
                    # A box inherited across fork belongs to the parent: never read it.
                    box = self._box = ReplyBox()
        return box

    def _wire_sockets(self, sockets) -> tuple:
        wire = []
        for s in sockets:
            hit = self._wire.get(id(s))
            if hit is None or hit[0] is not s:
                hit = self._wire[id(s)] = (s, astuple(s))
            wire.append(hit[1])
        return tuple(wire)


@functools.lru_cache(maxsize=64)
def _queued(n: int) -> tuple:
    # The async success answer is the same tuple every time; build it once.
    return ((Status.QUEUED, ""),) * n


class Replier:
    """The worker's end of the reply pipes: non-blocking, never waits on a caller."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.lost = 0  # replies nobody could receive (caller gone or its pipe full)

    def send(self, address: bytes, seq: int, statuses) -> bool:
        data = pickle.dumps((seq, statuses), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.sock.sendto(data, address)
            return True
        except OSError as exc:
            # The caller exited or stopped reading; its raise has timed out.
            self.lost += 1
            log.debug("reply %d to a gone caller lost: %s", seq, exc)
            return False

    def close(self) -> None:
        self.sock.close()
