"""The one shared job queue: front-ends put, the RabbitMQ worker takes.

Theory of operation.  A ``multiprocessing.Queue`` hands every ``put`` to a
feeder thread: a thread wake-up and a GIL hand-over per event (tens of
microseconds of CPU in the caller's process, milliseconds at the tail).
This queue writes the job into the shared pipe in the caller's own thread
when the pipe has room, which is nearly always, and only falls back to a
per-process overflow buffer and feeder thread when it has not.

* The pipe is created pre-fork and inherited; its capacity is raised with
  ``F_SETPIPE_SZ`` as far as allowed.  A semaphore counts the jobs in the
  pipe and in every overflow buffer (``maxsize``); ``put`` never waits for a
  slot: no slot, no job (``False``, "queue full").
* POSIX makes a pipe write of at most ``PIPE_BUF`` (4096) bytes atomic even
  with many writers, so no lock is shared between processes (a preempted
  lock holder would stall every front-end).  A job is written as frames of at
  most 4096 bytes, each in one ``write``::

      frame = length:u32  job-id:u64  index:u16  count:u16  payload:length

  A small job is one frame; a big one (up to the 16 KiB body limit) is a
  few, which may interleave with other writers' frames and are put back
  together by job id (the writer's pid and a per-process counter).
* The write end is non-blocking, so a direct write either puts a whole
  frame in the pipe or fails with ``EAGAIN`` (pipe full) and writes nothing:
  then the job (or the rest of a multi-frame job) joins this process's
  overflow buffer, in order, and the feeder thread writes it when the worker
  has made room.  While the buffer is not empty every job goes through it,
  so a process's jobs keep their order.
* Because every write is one whole frame, the pipe always holds whole
  frames.  The worker asks how many bytes are there (``FIONREAD``) and reads
  exactly that many in one ``read``: many jobs per system call, and the pipe
  is left at a frame boundary, so a worker killed between two reads leaves
  nothing torn for its successor.  Frames of a job whose writer died
  half-way are dropped after a while.
* A job's payload is bytes the caller encodes (``workers.channel``); this
  module only frames, carries and counts them.
"""

from __future__ import annotations

import collections
import fcntl
import itertools
import logging
import os
import select
import struct
import termios
import threading
import time
import weakref

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!IQHH")
_PIPE_BUF = 4096
_CHUNK = _PIPE_BUF - _HEADER.size
_STALE_PARTIAL = 10.0  # seconds after which an unfinished multi-frame job is dropped
_WANTED_PIPE_SIZE = 8 << 20
_F_SETPIPE_SZ, _F_GETPIPE_SZ = 1031, 1032


class _Local:
    """One process's side of the queue: job ids, overflow buffer, feeder."""

    def __init__(self):
        self.pid = os.getpid()
        self.ids = itertools.count()
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.overflow: collections.deque[list[bytes]] = collections.deque()
        self.feeder: threading.Thread | None = None


class JobQueue:
    def __init__(self, ctx, maxsize: int):
        # Pre-fork: the pipe and the slot count, nothing else.
        self.maxsize = maxsize
        self._read_fd, self._write_fd = os.pipe()
        # Every writer shares this end: non-blocking, so a full pipe is EAGAIN, never a wait.
        os.set_blocking(self._write_fd, False)
        self.capacity = _grow_pipe(self._write_fd)
        self._slots = ctx.Semaphore(maxsize)
        self._local: _Local | None = None
        self._local_lock = threading.Lock()
        _QUEUES.add(self)
        self._partial = {}  # worker side: job id -> (first seen, frames so far)
        self._ready: collections.deque = collections.deque()  # worker side: jobs read ahead
        self.torn = 0  # worker side: jobs dropped because their writer died half-way

    # ---- the front-end end -------------------------------------------------------

    def put(self, parts) -> bool:
        """Put one job, the concatenation of the byte strings ``parts``, without
        waiting; ``False`` when the queue is full."""
        if not self._slots.acquire(False):
            return False
        local = self._here()
        with local.lock:
            job_id = (local.pid << 32) | (next(local.ids) & 0xFFFFFFFF)
            size = sum(map(len, parts))
            if size <= _CHUNK:
                frames = [b"".join((_HEADER.pack(size, job_id, 0, 1), *parts))]
            else:
                frames = _frames(b"".join(parts), job_id)
            if not local.overflow:
                frames = _write_some(self._write_fd, frames)
                if not frames:
                    return True
            local.overflow.append(frames)
            if local.feeder is None:
                local.feeder = threading.Thread(target=self._feed, args=(local,), name="opsevent-feeder",
                                                daemon=True)
                local.feeder.start()
            local.wake.notify()
        return True

    def _here(self) -> _Local:
        local = self._local
        if local is None or local.pid != os.getpid():
            with self._local_lock:  # a child must not use its parent's buffer or thread
                if self._local is None or self._local.pid != os.getpid():
                    self._local = _Local()
                local = self._local
        return local

    def _feed(self, local: _Local) -> None:
        # The overflow path, in this thread only: wait for room, write frames.
        fd = self._write_fd
        while True:
            with local.lock:
                while not local.overflow:
                    local.wake.wait()
                frames = local.overflow[0]
            left = _write_some(fd, frames)
            with local.lock:
                if left:
                    local.overflow[0] = left
                else:
                    local.overflow.popleft()
            if left:
                _wait_for(fd, select.POLLOUT)

    def depth(self) -> int:
        """Jobs queued: in the pipe, in overflow buffers, or read by the worker and not yet taken."""
        return self.maxsize - self._slots.get_value() + len(self._ready)

    def unsent(self) -> int:
        """Jobs of this process still in its overflow buffer."""
        local = self._local
        return len(local.overflow) if local is not None and local.pid == os.getpid() else 0

    def flush(self, timeout: float) -> int:
        """Wait while the worker takes this process's buffered jobs; return how many are left.

        Bounded by ``timeout`` seconds without progress.
        """
        left, deadline = self.unsent(), time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            time.sleep(0.01)
            if self.unsent() < left:
                left, deadline = self.unsent(), time.monotonic() + timeout
        return self.unsent()

    # ---- the worker end: one reader at a time -----------------------------------------

    def fileno(self) -> int:
        return self._read_fd

    def attach_reader(self) -> None:
        """Post-fork, in the worker.  Front-ends only ask this end how full it is."""
        os.set_blocking(self._read_fd, False)

    def receive(self, limit: int) -> list:
        """Up to ``limit`` whole job payloads; never waits for one.

        Jobs read from the pipe beyond ``limit`` wait in the worker, at most
        one pipe's worth more (the pipe is read only when fewer than
        ``limit`` wait).  Their queue slots are freed as they leave the pipe:
        like a job the worker is publishing, a job read ahead belongs to this
        worker now, and a worker that dies must not take slots with it.
        """
        ready = self._ready
        if len(ready) < limit:
            self._read_pipe(ready)
        n = min(limit, len(ready))
        return [ready.popleft() for _ in range(n)]

    def _read_pipe(self, ready) -> None:
        size = _bytes_in(self._read_fd)
        if not size:
            return
        data = memoryview(_read_exactly(self._read_fd, b"", size))
        at, unpack = 0, _HEADER.unpack_from
        while at < size:
            length, job_id, index, count = unpack(data, at)
            at += _HEADER.size
            payload = data[at:at + length]
            at += length
            if count > 1:
                payload = self._assemble(job_id, index, count, bytes(payload))
                if payload is None:
                    continue
            ready.append(payload)
            self._slots.release()

    def waiting(self) -> int:
        """Worker side: jobs read from the pipe and not yet handed out."""
        return len(self._ready)

    def _assemble(self, job_id: int, index: int, count: int, payload: bytes):
        _unused_started, frames = self._partial.setdefault(job_id, (time.monotonic(), {}))
        frames[index] = payload
        if len(frames) < count:
            if len(self._partial) > 1:
                self._drop_stale()
            return None
        del self._partial[job_id]
        return b"".join(frames[i] for i in range(count))

    def _drop_stale(self) -> None:
        now = time.monotonic()
        for job_id in [j for j, (t, _) in self._partial.items() if now - t > _STALE_PARTIAL]:
            del self._partial[job_id]
            self.torn += 1
            self._slots.release()
            log.error("dropped a job whose writer died half-way through it (%d so far)", self.torn)

    def pending(self) -> bool:
        """Worker side: whether jobs wait, in the pipe or read ahead and not yet taken."""
        return bool(self._ready) or _bytes_in(self._read_fd) > 0

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def _frames(data: bytes, job_id: int) -> list[bytes]:
    count = (len(data) + _CHUNK - 1) // _CHUNK or 1
    return [_HEADER.pack(len(chunk), job_id, index, count) + chunk
            for index, chunk in ((i, data[i * _CHUNK:(i + 1) * _CHUNK]) for i in range(count))]


_QUEUES: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Another thread of the parent (a control-socket raise, say) may have held
    # this lock at the fork; in the child nobody would ever release it.
    for queue in list(_QUEUES):
        queue._local_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _write_some(fd: int, frames: list[bytes]) -> list[bytes]:
    """Write frames until the pipe is full; return those not written."""
    for i, frame in enumerate(frames):
        try:
            os.write(fd, frame)  # at most PIPE_BUF bytes: all of it, or EAGAIN and none
        except BlockingIOError:
            return frames[i:]
    return []


def _wait_for(fd: int, event: int) -> None:
    # poll(), not select(): select() cannot watch a descriptor numbered 1024 or more.
    poller = select.poll()
    poller.register(fd, event)
    poller.poll(1000)


def _bytes_in(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _grow_pipe(fd: int) -> int:
    """Make the pipe as big as allowed (up to 8 MiB); return its capacity."""
    try:
        return fcntl.fcntl(fd, _F_SETPIPE_SZ, _WANTED_PIPE_SIZE)
    except PermissionError:
        pass  # above /proc/sys/fs/pipe-max-size without CAP_SYS_RESOURCE
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return fcntl.fcntl(fd, _F_SETPIPE_SZ, int(f.read()))
    except (OSError, ValueError):
        return fcntl.fcntl(fd, _F_GETPIPE_SZ)


def _read_exactly(fd: int, data: bytes, size: int) -> bytes:
    # The writer is in the middle of this very frame (one write call): the
    # rest is a moment away.  Wait rather than tear the stream.
    while len(data) < size:
        try:
            chunk = os.read(fd, size - len(data))
        except BlockingIOError:
            _wait_for(fd, select.POLLIN)
            continue
        if not chunk:
            raise EOFError("the job queue's pipe was closed in the middle of a job")
        data += chunk
    return data
