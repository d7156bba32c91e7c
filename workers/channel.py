"""The job channel between front-end processes and the RabbitMQ worker.

Theory of operation (OpenSIPS ``rabbitmq_send.c`` + ``ipc.c`` sync replies):

* One shared ``JobQueue`` (``workers/jobqueue.py``) carries jobs from every
  front-end to the one RabbitMQ worker.  It is created pre-fork by whoever
  owns the worker (a ``Supervisor`` or ``workers.serve``) and inherited by the
  children.  It is bounded; a raise that finds it full fails at once with
  ``queue full`` instead of blocking the caller.
* A job is plain data, built by the front-end: the event name, the
  subscriber sockets, the body, the raise time and, for a sync raise, the
  reply address and a sequence number (``workers/job.py`` has its bytes).
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
import json
import logging
import math
import os
import pickle
import select
import socket
import struct
import threading
import time
import weakref

from opsevent import Status
from opsevent.messageid import new_message_id
from workers import job
from workers.job import SocketBytes

log = logging.getLogger(__name__)

# A reply is at most (seq, a few statuses with reasons); 64 KiB is far above
# anything the worker sends and is the datagram size we read with.
_MAX_REPLY = 65536


class ReplyBox:
    """This process's reply pipe and the waiters on it (one per process)."""

    def __init__(self):
        self.pid = os.getpid()
        self.address = b"\0opsevent-reply-%d-%s" % (self.pid, os.urandom(6).hex().encode())
        self.sock = private_socket(self.address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        # Non-blocking for good, waited on with poll(): settimeout() before
        # each read would cost two fcntl() calls per sync raise.
        self._poll = select.poll()
        self._poll.register(self.sock.fileno(), select.POLLIN)
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
            data = None
            if self._poll.poll(max(1, math.ceil(left * 1000))):
                try:
                    data = receive_own(self.sock, _MAX_REPLY)
                except (BlockingIOError, InterruptedError):
                    pass
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


def private_socket(address: bytes) -> socket.socket:
    """A non-blocking AF_UNIX datagram socket bound to ``address``, told each sender's uid.

    Abstract addresses have no file permissions and are listed in
    /proc/net/unix: anyone on the host can send to them.  ``receive_own``
    keeps only what this user's processes (or root's) sent.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.setblocking(False)
    sock.bind(address)
    return sock


_CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid
_CMSG_SIZE = socket.CMSG_SPACE(_CREDENTIALS.size)


def receive_own(sock: socket.socket, size: int) -> bytes | None:
    """One datagram from a process of this user or root; None (dropped) from anyone else."""
    data, ancillary, _flags, _address = sock.recvmsg(size, _CMSG_SIZE)
    for level, kind, cdata in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            _pid, uid, _gid = _CREDENTIALS.unpack_from(cdata)
            if uid in (os.getuid(), 0):
                return data
    global _foreign
    _foreign += 1
    if _foreign == 1 or _foreign % 1000 == 0:
        log.warning("dropped a datagram from another user's process (%d so far)", _foreign)
    return None


_foreign = 0  # datagrams dropped by receive_own in this process


class JobSender:
    """The front-end end of the channel: opsevent's ``Transport``.

    Safe to share between threads, and inherited by forked children: the
    reply pipe is (re)made in whichever process first waits for a reply.

    Raises refused here (queue full) or before it (too large) never reach
    the worker, so this process counts them per subscription and sends its
    totals to the worker's inbox (``inbox``, an AF_UNIX datagram address):
    with the next raise the queue takes (at most every ``REPORT_EVERY``
    seconds), at once for a too-large raise, and at exit (``flush``).  The
    worker adds them to its per-subscription stats.
    """

    REPORT_EVERY = 0.5

    def __init__(self, job_queue, inbox: bytes | None = None):
        self._queue = job_queue
        self._seq = itertools.count(1)
        self._box: ReplyBox | None = None
        self._box_lock = threading.Lock()
        _SENDERS.add(self)
        self._sockets = SocketBytes()
        self.queue_full = 0  # async and sync raises refused because the queue was full
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
        return self._submit_sync(event, ev, mid, sockets, body, timeout)

    def _submit_sync(self, event, ev, mid, sockets, body, timeout):
        box = self._reply_box()
        seq = next(self._seq)
        now = time.monotonic()
        box.expect(seq)
        if not self._queue.put(job.encode(seq, box.address, ev, mid, self._sockets(sockets), body, now)):
            box.wait(seq, now)  # forget the seq
            return self._refused(event, sockets)
        if self._counts.unsent:
            self._report()
        statuses = box.wait(seq, now + timeout)
        if statuses is None:
            reason = (f"outcome unknown: no status from the RabbitMQ worker within {timeout:g} s; "
                      f"the event may still be published")
            return ((Status.TIMEOUT, reason),) * len(sockets)
        return tuple((Status(code), reason) for code, reason in statuses)

    def note(self, event, sockets, status) -> None:
        """Count a raise that opsevent refused before the transport (``too large``)."""
        self._counts.add(os.getpid(), event, sockets, status.name.lower())
        self._report()

    def flush(self, timeout: float) -> int:
        """Called as a front-end exits: hand over its buffered jobs (see ``JobQueue.flush``)."""
        left = self._queue.flush(timeout)
        if self._counts.unsent:
            self._report(force=True)
        return left

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


_SENDERS: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A thread of the parent may have held the lock at the fork (see JobQueue).
    for sender in list(_SENDERS):
        sender._box_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


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
        if pid != self.pid:  # a forked child starts its own count
            self.__init__()
            self.pid = pid
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
