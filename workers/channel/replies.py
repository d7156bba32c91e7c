"""Sync replies: the worker's answer to a caller waiting in another process.

Theory of operation (OpenSIPS ``ipc.c``'s sync replies, without its hazard):

* Each process that waits for a reply has a *reply pipe*: an ``AF_UNIX``
  datagram socket in the abstract namespace, created lazily in that process
  (never inherited across a fork) and owned by its ``ReplyBox``.  A reply is
  ``[seq, statuses]`` in JSON, plain data only: never pickle.
* The worker sends the replies of one loop turn to one process as one
  datagram (``Replier``), and holds them, bounded by their callers'
  deadlines, while that process's box is full, so no reply is dropped
  because many raises wait at once.
* Each waiter takes only the reply whose ``seq`` is its own, so a late reply
  to a job that already timed out is discarded, never read by the next
  caller ("cannot overlap with a different task", ``ipc.h``).  Any number of
  threads and asyncio tasks of one process may wait at once.
* Abstract addresses have no file permissions: ``private_socket`` asks the
  kernel for each sender's credentials and ``receive_own`` keeps only what
  this user's processes (or root's) sent.  The worker's inbox for the
  front-ends' refusal counts is one of these too.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import os
import select
import socket
import struct
import threading
import time

from opsevent import Status
from workers.base.tally import Tally

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
        self._sleepers = 0  # threads asleep in wait(): none, and a hand-over has nobody to look for
        self._poller = select.poll()  # the leader's; one leader at a time uses it
        self._poller.register(self.sock.fileno(), select.POLLIN)

    def expect(self, seq: int) -> None:
        with self._lock:
            self._waiting[seq] = _Waiter()

    def forget(self, seq: int) -> None:
        with self._lock:
            self._waiting.pop(seq, None)

    def wait(self, seq: int, deadline: float):
        """Return ``((Status, reason), ...)`` for ``seq``, or ``None`` when ``deadline`` passes."""
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
        self._sleepers += 1
        self._lock.release()
        try:
            woken = waiter.wake.acquire(timeout=left)
        finally:
            self._lock.acquire()
        if waiter.sleeping:
            waiter.sleeping = False  # timed out, and nobody woke it since
            self._sleepers -= 1
        elif not woken:
            waiter.wake.acquire(False)  # woken just as it timed out: take that wake-up back

    def _wake(self, waiter: _Waiter) -> None:
        if waiter.sleeping:
            waiter.sleeping = False
            self._sleepers -= 1
            waiter.wake.release()

    def _hand_over(self) -> None:
        # Nobody reads now: give the turn to one sleeping thread, if any.
        # (Awaiting tasks never sleep here: without threads, no scan of them all.)
        if not self._sleepers:
            return
        for waiter in self._waiting.values():
            if waiter.sleeping and waiter.reply is _PENDING:
                self._wake(waiter)
                return

    def _read(self, left: float) -> list[bytes]:
        # The leader's read: one wait, then one datagram, which usually holds
        # the leader's own reply.  Only when other raises of this process wait
        # too is the socket read dry (the EAGAIN that ends it costs an
        # exception, a third of a lone caller's read).
        if not self._poller.poll(max(1, math.ceil(left * 1000))):
            return []
        if len(self._waiting) > 1:
            return self._read_ready()
        try:
            data = receive_own(self.sock, _MAX_REPLY)
        except (BlockingIOError, InterruptedError):
            return []
        return [] if data is None else [data]

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
                for seq, statuses in _decode(data.decode())[0]:
                    waiter = self._waiting.get(seq)
                    if waiter is None or waiter.reply is not _PENDING:
                        self.discarded += 1
                        continue
                    waiter.reply = _statuses(tuple(map(tuple, statuses)))
                    if waiter.future is not None:
                        if waiter.loop is loop:
                            _resolve(waiter.future)  # its own loop's reader: no wake-up needed
                        else:
                            waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
                    elif waiter.sleeping:
                        self._wake(waiter)
            except (ValueError, TypeError):  # not UTF-8, not JSON, or not [[seq, [[status, reason], ...]], ...]
                log.warning("ignored a malformed reply datagram (%d bytes)", len(data))

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

# json.loads without its checks for bytes and for trailing text: the worker
# writes these datagrams (encode_replies) and a sync raise reads one each.
_decode = json.JSONDecoder().raw_decode


@functools.lru_cache(maxsize=256)
def _statuses(pairs: tuple) -> tuple:
    """A reply's ``((status, reason), ...)`` as Statuses; ValueError or TypeError if it is not one.

    Cached: replies repeat (all confirmed, mostly), and the same tuple each
    time spares the caller building it and lets the EventInterface hand back
    the result it built last time for it."""
    answer = tuple((Status(code), reason) for code, reason in pairs)
    if not all(type(reason) is str for _status, reason in answer):
        raise TypeError("a reason that is not text")
    return answer


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
        self._stuck[address] = _Stuck(sock, collections.deque([item]))
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


_STRING = json.encoder.encode_basestring_ascii  # json's own C string encoder


def encode_replies(replies) -> bytes:
    """``json.dumps(replies, separators=(",", ":")).encode()``, byte for byte, for the one
    shape replies have (``[[seq, [[code, reason], ...]], ...]``), at a fifth of its cost:
    it runs once per reply datagram, and json.dumps's generality was most of a sync reply's
    cost in the worker."""
    return ("[" + ",".join(
        f"[{seq:d},[" + ",".join(f"[{_STRING(code)},{_STRING(reason)}]" for code, reason in statuses) + "]]"
        for seq, statuses in replies) + "]").encode()


def _shortened(reply) -> bytes:
    """One reply too big for a caller's read (thousands of subscribers, long reasons): the
    reasons are cut, and logged here whole, so the caller still gets every status."""
    seq, statuses = reply
    log.warning("the reply to sync raise %d is over %d bytes; its reasons are cut, here they are whole: %s",
                seq, _MAX_REPLY, "; ".join(reason for _code, reason in statuses if reason))
    cut = [(code, reason[:40] + " ... (cut: see the worker's log)" if len(reason) > 40 else reason)
           for code, reason in statuses]
    return encode_replies([[seq, cut]])


class _Stuck:
    __slots__ = ("sock", "queue")

    def __init__(self, sock, queue):
        self.sock = sock
        self.queue = queue  # (datagram, replies in it, latest deadline)


def _datagrams(replies: list, limit: int):
    """``(json bytes, count)`` for ``replies``, each at most ``limit`` bytes unless one reply is bigger."""
    data = encode_replies(replies)
    if len(data) <= limit or len(replies) == 1:
        if len(data) > _MAX_REPLY:
            data = _shortened(replies[0])
        yield data, len(replies)
        return
    half = len(replies) // 2
    yield from _datagrams(replies[:half], limit)
    yield from _datagrams(replies[half:], limit)
