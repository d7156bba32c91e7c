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
  on it (never inherited across a fork).  A reply is ``[seq, statuses]`` in
  JSON; the worker sends the replies of one loop turn to one process as one
  datagram (``Replier``), and holds them, bounded by their callers'
  deadlines, while that process's box is full, so no reply is dropped
  because many raises wait at once.  Each waiter takes only the reply whose
  ``seq`` is its own, so a late reply to a job that already timed out is
  discarded, never read by the next caller.  Any number of threads and
  asyncio tasks of one process may wait at once (``ReplyBox``).
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import logging
import math
import os
import select
import socket
import struct
import threading
import time

from opsevent import RabbitMQSocket, Status, Transport
from opsevent.messageid import new_message_id
from workers import job
from workers.base import forks
from workers.base.process import FORK_ONLY, run_at_exit
from workers.base.tally import Tally
from workers.job import SocketBytes

log = logging.getLogger(__name__)

# A reply is at most (seq, a few statuses with reasons); 64 KiB is far above
# anything the worker sends and is the datagram size we read with.
_MAX_REPLY = 65536


class _Waiter:
    """One sync raise waiting for its reply: a thread (``wake``) or an asyncio task (``future``)."""

    __slots__ = ("reply", "wake", "sleeping", "future", "loop")

    def __init__(self):
        self.reply = _PENDING
        self.wake: threading.Lock | None = None  # held while its thread sleeps; released to wake it
        self.sleeping = False
        self.future = None
        self.loop = None


class ReplyBox:
    """This process's reply pipe and the raises waiting on it (one box per process).

    Threads take turns reading (leader/follower): one waiter reads the
    socket and hands each reply to its own waiter, waking only that one;
    when its own reply has come it passes the reading on to one sleeping
    waiter.  A thousand waiting threads cost one wake-up per reply, not a
    thousand.  Asyncio tasks never block: each event loop with a task
    waiting here watches the socket itself (``add_reader``).
    """

    def __init__(self):
        self.pid = os.getpid()
        self.address = b"\0opsevent-reply-%d-%s" % (self.pid, os.urandom(6).hex().encode())
        self.sock = private_socket(self.address)
        # Room for many batches: the worker sends one datagram per turn to this process.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._lock = threading.Lock()
        self._waiting: dict[int, _Waiter] = {}
        self._leader = False  # a thread is reading the socket
        self._loops: dict = {}  # event loop -> its waiters here; each such loop watches the socket
        self.discarded = 0  # late replies to jobs whose caller gave up

    def expect(self, seq: int) -> None:
        with self._lock:
            self._waiting[seq] = _Waiter()

    def forget(self, seq: int) -> None:
        with self._lock:
            self._waiting.pop(seq, None)

    def wait(self, seq: int, deadline: float):
        """Return the statuses for ``seq``, or ``None`` when ``deadline`` passes."""
        lock = self._lock
        with lock:
            waiter = self._waiting[seq]
            try:
                while waiter.reply is _PENDING:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    if not self._leader:
                        self._lead(left)
                    else:
                        self._sleep(waiter, left)
                return waiter.reply
            finally:
                del self._waiting[seq]
                if not self._leader:
                    self._hand_over()

    def _lead(self, left: float) -> None:
        # Called with the lock held; reads without it.
        self._leader = True
        self._lock.release()
        try:
            datagrams = self._read(left)
        finally:
            self._lock.acquire()
            self._leader = False
        self._dispatch(datagrams)

    def _sleep(self, waiter: _Waiter, left: float) -> None:
        # Called with the lock held; sleeps without it until its reply, a
        # turn at reading, or the deadline.
        if waiter.wake is None:
            waiter.wake = threading.Lock()
            waiter.wake.acquire()
        waiter.sleeping = True
        self._lock.release()
        try:
            woken = waiter.wake.acquire(timeout=left)
        finally:
            self._lock.acquire()
        if waiter.sleeping:
            waiter.sleeping = False  # timed out, and nobody woke it since
        elif not woken:
            waiter.wake.acquire(False)  # woken just as it timed out: take that wake-up back

    def _wake(self, waiter: _Waiter) -> None:
        if waiter.sleeping:
            waiter.sleeping = False
            waiter.wake.release()

    def _hand_over(self) -> None:
        # Nobody reads now: give the turn to one sleeping thread, if any.
        for waiter in self._waiting.values():
            if waiter.sleeping and waiter.reply is _PENDING:
                self._wake(waiter)
                return

    def _read(self, left: float) -> list[bytes]:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        if not poller.poll(max(1, math.ceil(left * 1000))):
            return []
        return self._read_ready()

    def _read_ready(self) -> list[bytes]:
        datagrams = []
        for _ in range(256):
            try:
                data = receive_own(self.sock, _MAX_REPLY)
            except (BlockingIOError, InterruptedError):
                break
            if data is not None:
                datagrams.append(data)
        return datagrams

    def _dispatch(self, datagrams: list[bytes], loop=None) -> None:
        # Called with the lock held; ``loop``: the event loop running this call, if any.
        for data in datagrams:
            try:
                replies = json.loads(data)
            except ValueError:
                log.warning("ignored a malformed reply datagram (%d bytes)", len(data))
                continue
            for seq, statuses in replies:
                waiter = self._waiting.get(seq)
                if waiter is None or waiter.reply is not _PENDING:
                    self.discarded += 1
                    continue
                waiter.reply = tuple(map(tuple, statuses))
                if waiter.future is not None:
                    if waiter.loop is loop:
                        _resolve(waiter.future)  # its own loop's reader: no wake-up needed
                    else:
                        waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
                else:
                    self._wake(waiter)

    # ---- asyncio ------------------------------------------------------------------

    async def wait_async(self, seq: int, deadline: float):
        """``wait()`` for a coroutine: never blocks its event loop; cancellation forgets ``seq``."""
        import asyncio  # only processes that await a raise pay for importing it

        loop = asyncio.get_running_loop()
        with self._lock:
            waiter = self._waiting[seq]
            if waiter.reply is _PENDING:
                waiter.loop, waiter.future = loop, loop.create_future()
                self._watch(loop)
        try:
            if waiter.future is not None:
                try:
                    async with asyncio.timeout(deadline - time.monotonic()):
                        await waiter.future
                except TimeoutError:
                    pass
            return None if waiter.reply is _PENDING else waiter.reply
        finally:
            with self._lock:
                del self._waiting[seq]
                if waiter.future is not None:
                    self._unwatch(loop)
                if not self._leader:
                    self._hand_over()

    def _watch(self, loop) -> None:
        count = self._loops.get(loop, 0)
        if count == 0:
            loop.add_reader(self.sock.fileno(), self._on_readable, loop)
        self._loops[loop] = count + 1

    def _unwatch(self, loop) -> None:
        count = self._loops.pop(loop) - 1
        if count:
            self._loops[loop] = count
        else:
            loop.remove_reader(self.sock.fileno())

    def _on_readable(self, loop) -> None:
        datagrams = self._read_ready()
        with self._lock:
            self._dispatch(datagrams, loop)


def _resolve(future) -> None:
    if not future.done():  # a cancelled task's future stays cancelled
        future.set_result(None)


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
        if not self._queue.put(job.encode(seq, box.address, ev, mid, self._sockets(sockets), body, now)):
            box.forget(seq)
            return None, seq, now, readers
        if self._counts.unsent:
            self._report()
        return box, seq, now, readers

    def _sync_result(self, statuses, sockets, timeout, readers):
        if statuses is not None:
            return tuple((Status(code), reason) for code, reason in statuses)
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


class Replier:
    """The worker's end of the reply pipes: batched, never blocking, never losing a reply silently.

    Replies finished in one turn of the worker's loop go out together, one
    datagram per caller process (``flush``).  A caller's box holds only
    ``net.unix.max_dgram_qlen`` datagrams (10 by default): when it is full
    the reply waits here, on a socket connected to that box whose
    writability the kernel reports when the box has room again, until its
    caller's deadline.  A reply that cannot be delivered (caller gone, or its
    deadline passed) is counted in ``lost`` and logged at WARNING: at once,
    then summarised while it lasts (``workers.base.tally``).
    """

    MAX_DATAGRAM = 32768  # bytes of JSON per datagram; a bigger batch is split

    def __init__(self, watch_writable=None, unwatch=None):
        # watch_writable(fd, callback) / unwatch(fd): the worker's I/O loop.
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self._watch, self._unwatch = watch_writable, unwatch
        self._batches: dict[bytes, list] = {}  # address -> [[seq, statuses], ...] of this turn
        self._deadlines: dict[bytes, float] = {}  # address -> latest deadline among this turn's replies
        self._stuck: dict[bytes, _Stuck] = {}  # address -> replies waiting for room in its box
        self.sent = 0  # replies delivered
        self.lost = 0  # replies nobody could receive (caller gone, or its deadline passed)
        self.tally = Tally(log, "sync replies not delivered")

    def add(self, address: bytes, seq: int, statuses, deadline: float) -> None:
        """Queue a reply for this turn's ``flush``."""
        batch = self._batches.get(address)
        if batch is None:
            batch = self._batches[address] = []
        batch.append((seq, statuses))
        if deadline > self._deadlines.get(address, 0.0):
            self._deadlines[address] = deadline

    def flush(self) -> None:
        """Send this turn's replies: one datagram per caller process (split if big)."""
        if not self._batches:
            return
        batches, self._batches = self._batches, {}
        deadlines, self._deadlines = self._deadlines, {}
        for address, replies in batches.items():
            for data, count in _datagrams(replies, self.MAX_DATAGRAM):
                self._send(address, data, count, deadlines[address])

    def _send(self, address: bytes, data: bytes, count: int, deadline: float) -> None:
        stuck = self._stuck.get(address)
        if stuck is not None:  # keep this caller's replies in order
            stuck.queue.append((data, count, deadline))
            return
        try:
            self.sock.sendto(data, address)
            self.sent += count
        except BlockingIOError:
            self._hold(address, (data, count, deadline))
        except OSError as exc:
            self._lose(count, f"caller gone ({exc.strerror or exc})")

    def _hold(self, address: bytes, item) -> None:
        # The caller's box is full: wait for room on a socket connected to it
        # (an unconnected socket's writability says nothing about the box).
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            self._lose(item[1], f"caller gone ({exc.strerror or exc})")
            return
        stuck = self._stuck[address] = _Stuck(sock, collections.deque([item]))
        if self._watch is not None:
            self._watch(sock.fileno(), lambda *_unused: self._retry(address))
        else:
            self._retry(address)

    def _retry(self, address: bytes) -> None:
        stuck = self._stuck[address]
        queue, now = stuck.queue, time.monotonic()
        while queue:
            data, count, deadline = queue[0]
            if deadline <= now:
                queue.popleft()
                self._lose(count, "the caller's deadline passed while its reply box was full")
                continue
            try:
                stuck.sock.send(data)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lose(sum(c for _d, c, _t in queue), f"caller gone ({exc.strerror or exc})")
                queue.clear()
                break
            queue.popleft()
            self.sent += count
        self._release(address)

    def sweep(self) -> None:
        """Drop held replies whose callers have given up (called every tick); summarise what was lost."""
        for address in list(self._stuck):
            self._retry(address)
        self.tally.tick(time.monotonic())

    def _release(self, address: bytes) -> None:
        stuck = self._stuck.pop(address)
        if self._unwatch is not None:
            self._unwatch(stuck.sock.fileno())
        stuck.sock.close()

    def _lose(self, count: int, why: str) -> None:
        self.lost += count
        self.tally.add(why, count)

    def close(self) -> None:
        self.flush()
        for address in list(self._stuck):
            self._retry(address)
        for address in list(self._stuck):
            stuck = self._stuck[address]
            self._lose(sum(c for _d, c, _t in stuck.queue), "the worker is exiting")
            self._release(address)
        self.tally.close()
        self.sock.close()


def _shortened(reply) -> bytes:
    """One reply too big for a caller's read (thousands of subscribers, long reasons): the
    reasons are cut, and logged here whole, so the caller still gets every status."""
    seq, statuses = reply
    log.warning("the reply to sync raise %d is over %d bytes; its reasons are cut, here they are whole: %s",
                seq, _MAX_REPLY, "; ".join(reason for _code, reason in statuses if reason))
    cut = [(code, reason[:40] + " ... (cut: see the worker's log)" if len(reason) > 40 else reason)
           for code, reason in statuses]
    return json.dumps([[seq, cut]], separators=(",", ":")).encode()


class _Stuck:
    __slots__ = ("sock", "queue")

    def __init__(self, sock, queue):
        self.sock = sock
        self.queue = queue  # (datagram, replies in it, latest deadline)


def _datagrams(replies: list, limit: int):
    """``(json bytes, count)`` for ``replies``, each at most ``limit`` bytes unless one reply is bigger."""
    data = json.dumps(replies, separators=(",", ":")).encode()
    if len(data) <= limit or len(replies) == 1:
        if len(data) > _MAX_REPLY:
            data = _shortened(replies[0])
        yield data, len(replies)
        return
    half = len(replies) // 2
    yield from _datagrams(replies[:half], limit)
    yield from _datagrams(replies[half:], limit)
