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
  so a process's jobs keep their order.  The buffer (``overflow.py``) copies
  the frames into chunks of memory the feeder has faulted in ahead, so a
  raise that buffers takes no page fault and leaves no object per job.
  A direct write cannot wait, so a sync raise makes it holding the GIL
  (``write_holding_gil``): other threads of the process do not take the
  raising thread's turn while it is in the kernel, and it is back to wait
  for its reply sooner.  Async raises keep ``os.write``, the cheaper call.
* Because every write is one whole frame, the pipe always holds whole
  frames.  The worker asks how many bytes are there (``FIONREAD``) and reads
  exactly that many in one ``read``: many jobs per system call, and the pipe
  is left at a frame boundary, so a worker killed between two reads leaves
  nothing torn for its successor.  Frames of a job whose writer died
  half-way are dropped after a while.
* A job's payload is bytes the caller encodes (``workers.channel.sender``); this
  module only frames, carries and counts them.
* A process that exits with jobs still in its overflow buffer (a recycled
  gunicorn worker, a stopping front-end) must neither wait for the worker
  (a server does not replace a worker until it is gone, so waiting stalls
  it) nor lose them: ``spool_unsent()`` writes their frames to a file in
  the spool folder (made pre-fork) and the process exits at once.  The
  worker reads spool files like the pipe, after reading what the pipe holds
  (the exited process's earlier jobs are there), so order is kept.  Their
  slots stay taken until the worker reads them, like jobs in the pipe.
* A process SIGKILLed with jobs in its overflow buffer hands nothing over;
  what frees their slots is the writers' table, one more piece of shared
  memory made pre-fork.  A process claims an entry (its pid and start time)
  the first time it buffers a job and keeps there how many of its buffered
  jobs hold a slot with no frame in the pipe yet, lowering the count before
  a write and raising it after one that failed, so a kill between the two can
  leak a slot but never free one twice.  The reader looks at the table
  about once a second (``reclaim_dead_writers()``): an entry whose process
  is gone (no such pid, a zombie, or a newer process with that pid) has its
  slots freed and its jobs counted as ``lost_with_dead_frontends`` and
  logged.  A job partly in the pipe is not in the count: its torn frames
  are dropped and its slot freed as for any writer that died half-way.
* The ledger, a few counters in shared memory made pre-fork, says what the
  reader holds: jobs it took out of the pipe (``taken``) and jobs it is done
  with (``finished``, counted by the worker).  If the reader dies, the
  difference is what died with it; ``settle_dead_reader()`` moves it to
  ``lost`` before the next reader attaches (``readers`` counts them).
  Only the reader writes ``taken`` and ``finished``, so no lock is needed.
"""

from __future__ import annotations

import _thread
import collections
import errno
import fcntl
import itertools
import logging
import mmap
import os
import select
import struct
import termios
import threading
import time

from workers.base import forks
from workers.channel.overflow import HEADER as _HEADER, OverflowBuffer, prefaulted

log = logging.getLogger(__name__)

_PIPE_BUF = 4096
_CHUNK = _PIPE_BUF - _HEADER.size
_STALE_PARTIAL = 10.0  # seconds after which an unfinished multi-frame job is dropped
_WANTED_PIPE_SIZE = 8 << 20
_F_SETPIPE_SZ, _F_GETPIPE_SZ = 1031, 1032
TAKEN, FINISHED, LOST, READERS, SPOOLED, DEAD_WRITERS = range(6)  # the ledger's u64 counters
# The writers' table: WRITERS entries of (pid, start time in clock ticks since boot, slots held).
WRITERS = 256  # processes that have buffered jobs and may still be alive; more go unwatched (logged)
_PID, _START, _HELD = range(3)
RECLAIM_EVERY = 1.0  # seconds between two looks at the writers' table
SPOOL_LOOK_EVERY = 1.0  # seconds between two looks at the spool folder when no writer said it wrote


class _Local:
    """One process's side of the queue: job ids, overflow buffer, feeder."""

    def __init__(self):
        self.pid = os.getpid()
        self.ids = itertools.count()
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        # The frames themselves, copied into big chunks: no object per job for the garbage
        # collector to walk, and no page fault in the raising thread (overflow.py).
        self.overflow = OverflowBuffer(on_new_chunk=self._ring)
        self.feeder: threading.Thread | None = None
        self.bell = -1  # an eventfd: the feeder waiting for the pipe also wakes when a chunk is started
        self.entry = -1  # its index in the writers' table (u64 offset), once it has buffered a job

    def _ring(self) -> None:
        if self.bell >= 0:
            os.eventfd_write(self.bell, 1)


class JobQueue:
    def __init__(self, ctx, maxsize: int, spool_dir: str | None = None):
        # Pre-fork: the pipe, the slot count, the ledger; the spool folder is the caller's.
        self.maxsize = maxsize
        self.spool_dir = spool_dir
        self._read_fd, self._write_fd = os.pipe()
        # Every writer shares this end: non-blocking, so a full pipe is EAGAIN, never a wait.
        os.set_blocking(self._write_fd, False)
        self.capacity = _grow_pipe(self._write_fd)
        self._slots = ctx.Semaphore(maxsize)
        self._ledger_map = mmap.mmap(-1, mmap.PAGESIZE)  # anonymous and shared: inherited by the fork
        self.ledger = memoryview(self._ledger_map).cast("Q")
        self._writers_map = mmap.mmap(-1, WRITERS * 3 * 8)  # the writers' table, shared like the ledger
        self.writers = memoryview(self._writers_map).cast("Q")
        self._writers_lock = ctx.Lock()  # only to claim an entry, once per process that buffers
        self._reclaim_look = 0.0  # worker side: when it last looked at the writers' table
        self.on_first_overflow = None  # called in a process the first time it buffers a job
        self._local: _Local | None = None
        self._local_lock = threading.Lock()
        _QUEUES.add(self)
        self._partial = {}  # worker side: job id -> (first seen, frames so far)
        self._ready: collections.deque = collections.deque()  # worker side: jobs read ahead
        self._spool_seen = 0  # worker side: the SPOOLED count at its last look
        self._spool_look = 0.0  # worker side: when it last looked at the folder
        self.unspooled = 0  # worker side: jobs read from spool files
        self.torn = 0  # worker side: jobs dropped because their writer died half-way

    # ---- the front-end end -------------------------------------------------------

    def put(self, parts, sync: bool = False) -> bool:
        """Put one job, the concatenation of the byte strings ``parts``, without
        waiting; ``False`` when the queue is full.

        ``sync``: the caller will wait for this job's reply (a sync raise).
        Its write then keeps the GIL when the process runs other threads
        (``write_holding_gil``); an async raise keeps ``os.write``, the cheaper call.
        """
        if not self._slots.acquire(False):
            return False
        local = self._here()
        data = b"".join(parts)
        # Chosen once for the job's one or more frames.
        write = write_holding_gil if sync and _other_threads() else os.write
        with local.lock:
            job_id = (local.pid << 32) | (next(local.ids) & 0xFFFFFFFF)
            buffer = local.overflow
            frames = None
            if len(data) <= _CHUNK:
                frame = _HEADER.pack(len(data), job_id, 0, 1) + data
                if not buffer.jobs:
                    try:
                        write(self._write_fd, frame)  # the usual case: one whole frame, one write
                        return True
                    except BlockingIOError:
                        pass
            else:
                frames = _frames(data, job_id)
                if not buffer.jobs:
                    frames = _write_some(self._write_fd, frames, write)
                    if not frames:
                        return True
            if local.feeder is None:
                self._start_feeder(local)
            if frames is None:
                buffer.add(frame)
                unbegun = True
            else:
                buffer.add_frames(frames)
                unbegun = _unbegun(frames[0])  # a big job partly written: its slot went with frame 0
            if local.entry >= 0 and unbegun:
                self.writers[local.entry + _HELD] += 1  # after the add: a kill in between leaks, never frees twice
            if buffer.jobs == 1:
                local.wake.notify()  # the feeder sleeps only on an empty buffer: a longer one has it awake
        return True

    def _start_feeder(self, local: _Local) -> None:
        # In the process that buffers, the first time it does (post-fork by nature).
        self._claim_entry(local)
        try:
            local.bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            local.overflow.give_spare(prefaulted())  # the first chunk, before the first job is added to it
        except OSError as exc:  # no descriptor or no memory now: the buffer still works, its raises fault
            log.warning("process %d's overflow buffer cannot map its memory ahead (%s): raises that "
                        "buffer jobs may take page faults", local.pid, exc.strerror or exc)
        local.feeder = threading.Thread(target=self._feed, args=(local,), name="opsevent-feeder", daemon=True)
        local.feeder.start()
        if self.on_first_overflow is not None:
            self.on_first_overflow()

    def _here(self) -> _Local:
        # A forked child finds None here (_after_fork_in_child): it must not
        # use its parent's buffer or thread.  No getpid() per put.
        local = self._local
        if local is None:
            with self._local_lock:
                if self._local is None:
                    self._local = _Local()
                local = self._local
        return local

    def _feed(self, local: _Local) -> None:
        # The overflow path, in this thread only: wait for room, write frames, and have
        # memory ready for the raising thread's next chunk.
        fd = self._write_fd
        poller = select.poll()  # poll(), not select(): select() cannot watch a descriptor numbered 1024 or more
        poller.register(fd, select.POLLOUT)
        if local.bell >= 0:
            poller.register(local.bell, select.POLLIN)
        while True:
            _restock(local)
            # The writes never block, so they are made under the lock: a
            # buffer taken by discard_unsent() is never half-written behind it.
            with local.lock:
                while not local.overflow.jobs:
                    local.wake.wait()
                wrote = self._write_front(fd, local)
            if not wrote:
                if any(ready == local.bell for ready, _ in poller.poll(1000)):
                    os.eventfd_read(local.bell)

    def _write_front(self, fd: int, local: _Local) -> bool:
        """Write the frames at the front of this process's buffer, as many whole frames as
        one atomic pipe write takes (``PIPE_BUF`` bytes); False when the pipe had no room.

        One write per batch, not per job: while the worker is behind, the
        feeder thread takes the GIL once per ~20 jobs instead of for each."""
        batch, fresh, ended = local.overflow.front(_PIPE_BUF)  # fresh: first frames, whose slots pass to the pipe
        held = fresh if local.entry >= 0 else 0
        if held:  # counted out before the write: a kill in between leaks a slot, never frees one twice
            self.writers[local.entry + _HELD] -= held
        with batch:  # released on the way out: no view outlives the write
            try:
                os.write(fd, batch)  # at most PIPE_BUF: all, or EAGAIN
            except BlockingIOError:
                if held:
                    self.writers[local.entry + _HELD] += held  # nothing written: still ours
                return False
            local.overflow.pop(batch.nbytes, ended)
        return True

    def depth(self) -> int:
        """Jobs queued: in the pipe, in overflow buffers, or read by the worker and not yet taken."""
        return self.maxsize - self._slots.get_value() + len(self._ready)

    def unsent(self) -> int:
        """Jobs of this process still in its overflow buffer (at least one frame not in the pipe)."""
        local = self._local
        if local is None or local.pid != os.getpid():
            return 0
        with local.lock:  # the feeder writes, then takes off what it wrote: never count a job in both places
            return local.overflow.jobs

    def spool_unsent(self) -> int:
        """This process is exiting: write its buffered jobs to a spool file for the worker.

        Returns how many jobs it spooled (0: nothing buffered).  Raises
        ``OSError`` when the file cannot be written (no spool folder, disk
        full): the jobs are then still buffered, for ``discard_unsent()``.
        """
        local = self._local
        if local is None or local.pid != os.getpid() or self.spool_dir is None:
            if self.unsent():
                raise OSError("this queue has no spool folder")
            return 0
        with local.lock:
            if not local.overflow.jobs:
                return 0
            name = os.path.join(self.spool_dir, f"{time.time():.6f}-{local.pid}-{next(local.ids)}")
            with open(name + ".tmp", "wb") as f:
                for run in local.overflow.runs():
                    f.write(run)
            if local.entry >= 0:
                self.writers[local.entry + _HELD] = 0  # the file will hold their slots (a kill now leaks them)
            os.rename(name + ".tmp", name + ".jobs")  # whole, or not there
            count = local.overflow.jobs
            local.overflow.clear()
        self.ledger[SPOOLED] += 1  # a hint for the reader; it also looks every SPOOL_LOOK_EVERY
        return count

    def discard_unsent(self) -> list[bytes]:
        """Give up this process's buffered jobs: free their slots, return their payloads.

        A job already partly in the pipe keeps its slot: the reader drops
        its torn frames after a while and frees it then.
        """
        local = self._local
        if local is None or local.pid != os.getpid():
            return []
        with local.lock:
            payloads = _unbegun_payloads(local.overflow.frames())
            local.overflow.clear()
            if local.entry >= 0:
                self.writers[local.entry + _HELD] = 0  # before the releases below
        for _ in payloads:
            self._slots.release()
        return payloads

    def _claim_entry(self, local: _Local) -> None:
        """This process's entry in the writers' table, claimed the first time it buffers a job."""
        start = _start_time(local.pid)
        if start is None or not self._writers_lock.acquire(timeout=1.0):
            log.warning("the job queue could not register process %d's overflow buffer: if it is "
                        "killed with jobs buffered, their queue slots stay taken", local.pid)
            return
        try:
            table = self.writers
            for at in range(0, len(table), 3):
                if table[at + _PID] == 0:
                    table[at + _HELD] = 0
                    table[at + _START] = start
                    table[at + _PID] = local.pid  # last: the reader skips entries without a pid
                    local.entry = at
                    return
        finally:
            self._writers_lock.release()
        log.warning("the job queue's table of %d processes with buffered jobs is full: if process %d "
                    "is killed with jobs buffered, their queue slots stay taken", WRITERS, local.pid)

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
        self.ledger[READERS] += 1

    def readers(self) -> int:
        """How many readers have attached so far: a change means the worker was replaced."""
        return self.ledger[READERS]

    def finished(self, n: int = 1) -> None:
        """Reader side: ``n`` jobs taken earlier are done with (published and resolved, or dropped)."""
        self.ledger[FINISHED] += n

    def held(self) -> int:
        """Jobs the reader took and is not done with."""
        return self.ledger[TAKEN] - self.ledger[FINISHED]

    def settle_dead_reader(self) -> int:
        """After the reader died, before the next attaches: what it held is lost; return how many."""
        held = self.held()
        self.ledger[LOST] += held
        self.ledger[FINISHED] = self.ledger[TAKEN]
        return held

    def lost(self) -> int:
        """Jobs that died with their readers, in all."""
        return self.ledger[LOST]

    def reclaim_dead_writers(self, now: float | None = None) -> int:
        """Worker side: free the slots of jobs buffered by processes gone without handing them over.

        Looks at most every ``RECLAIM_EVERY`` seconds (pass ``now=None`` to look
        now).  Returns how many jobs were lost this time; they are counted in
        ``lost_buffered()`` and logged.
        """
        if now is not None:
            if now - self._reclaim_look < RECLAIM_EVERY:
                return 0
            self._reclaim_look = now
        table, lost = self.writers, 0
        for at in range(0, len(table), 3):
            pid = table[at + _PID]
            if pid == 0 or _start_time(pid) == table[at + _START]:
                continue  # free, or its process still runs
            held = table[at + _HELD]
            table[at + _HELD] = 0
            table[at + _PID] = 0  # last: free for a claimer (no lock: nobody else writes a dead process's entry)
            if held:
                for _ in range(held):
                    self._slots.release()
                lost += held
                self.ledger[DEAD_WRITERS] += held
                log.error("process %d ended with %d queued events in its buffer, never handed over (killed, "
                          "or it exited without its at-exit hand-over): lost; their queue slots are free again",
                          pid, held)
        return lost

    def lost_buffered(self) -> int:
        """Jobs that died in the buffers of processes killed before they could hand them over, in all."""
        return self.ledger[DEAD_WRITERS]

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
            if len(ready) < limit and self.spooled():
                self._read_spool(ready)
        n = min(limit, len(ready))
        return [ready.popleft() for _ in range(n)]

    def spooled(self) -> bool:
        """Worker side: whether spool files may be waiting (a writer said so, or it is time to look)."""
        if self.spool_dir is None:
            return False
        return self.ledger[SPOOLED] != self._spool_seen or time.monotonic() - self._spool_look >= SPOOL_LOOK_EVERY

    def _read_spool(self, ready) -> None:
        self._spool_seen, self._spool_look = self.ledger[SPOOLED], time.monotonic()
        try:
            names = sorted(n for n in os.listdir(self.spool_dir) if n.endswith(".jobs"))
        except FileNotFoundError:
            return
        if not names:
            return
        self._read_pipe(ready)  # first what the pipe holds: the spooling process's earlier jobs are there
        for name in names:
            path = os.path.join(self.spool_dir, name)
            with open(path, "rb") as f:
                data = f.read()
            os.unlink(path)
            before = len(ready)
            self._parse(memoryview(data), ready)
            self.unspooled += len(ready) - before

    def _read_pipe(self, ready) -> None:
        size = _bytes_in(self._read_fd)
        if not size:
            return
        self._parse(memoryview(_read_exactly(self._read_fd, b"", size)), ready)

    def _parse(self, data: memoryview, ready) -> None:
        """Every job whose frames are now all in: into ``ready``, its slot freed, taken."""
        at, size, unpack = 0, len(data), _HEADER.unpack_from
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
            self.ledger[TAKEN] += 1

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
            self._slots.release()  # it was never taken: not in the ledger
            log.error("dropped a job whose writer died half-way through it (%d so far)", self.torn)

    def pending(self) -> bool:
        """Worker side: whether jobs wait, in the pipe, in spool files, or read ahead and not yet taken."""
        if self._ready or _bytes_in(self._read_fd) > 0:
            return True
        try:
            return any(n.endswith(".jobs") for n in os.listdir(self.spool_dir)) if self.spool_dir else False
        except FileNotFoundError:
            return False

    def _after_fork_in_child(self) -> None:
        # Another thread of the parent (a control-socket raise, say) may have held
        # this lock at the fork; in the child nobody would ever release it.
        self._local_lock = threading.Lock()
        if self._local is not None and self._local.bell >= 0:
            os.close(self._local.bell)  # the parent's feeder's doorbell: nobody here rings or hears it
        self._local = None  # the parent's buffer and feeder thread are not this process's

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        # The ledger stays mapped: processes still holding the queue may read it.


_QUEUES = forks.registry(JobQueue._after_fork_in_child)


def _frames(data: bytes, job_id: int) -> tuple[bytes, ...]:
    count = (len(data) + _CHUNK - 1) // _CHUNK or 1
    return tuple(_HEADER.pack(len(chunk), job_id, index, count) + chunk
                 for index, chunk in ((i, data[i * _CHUNK:(i + 1) * _CHUNK]) for i in range(count)))


def _unbegun(frame) -> bool:
    """Whether *frame*, the first of a job's left in the buffer, is its frame 0: then none of the
    job is in the pipe yet, and its slot is the buffer's, else the pipe's."""
    return _HEADER.unpack_from(frame)[2] == 0


def _unbegun_payloads(frames) -> list[bytes]:
    """The payloads of the jobs whose every frame is in *frames* (a buffer's, in order)."""
    payloads, parts = [], None
    for frame in frames:
        _, _, index, count = _HEADER.unpack_from(frame)
        if index == 0:
            parts = []
        if parts is not None:  # None: the rest of a job whose first frames are in the pipe
            parts.append(frame[_HEADER.size:])
            if index == count - 1:
                payloads.append(b"".join(parts))
                parts = None
    return payloads


def _restock(local: _Local) -> None:
    """Map the chunks the buffer wants ready, outside the lock: the raising thread runs on."""
    for _ in range(local.overflow.needs_spares()):
        try:
            memory = prefaulted()
        except OSError:
            return  # no memory now: the raising thread maps its own, as without spares
        with local.lock:
            local.overflow.give_spare(memory)


def _write_some(fd: int, frames: tuple[bytes, ...], write) -> tuple[bytes, ...]:
    """Write frames with ``write`` until the pipe is full; return those not written."""
    for i, frame in enumerate(frames):
        try:
            write(fd, frame)  # at most PIPE_BUF bytes: all of it, or EAGAIN and none
        except BlockingIOError:
            return frames[i:]
    return ()


def write_holding_gil(fd: int, frame: bytes) -> None:
    """``os.write(fd, frame)`` for a frame of at most ``PIPE_BUF`` bytes on a non-blocking
    pipe, without letting go of the GIL: all of it is written, or ``BlockingIOError``.

    Such a write cannot wait, yet ``os.write`` releases the GIL around it: with
    other threads of the process ready to run, one took the GIL and the raising
    thread then waited for it back (64 threads raising sync events: about 4.5
    context switches per raise with ``os.write``, 2.8 with this).  ctypes'
    ``PyDLL`` calls libc's ``write`` holding the GIL; without ctypes, os.write.
    """
    write = _libc_write or _load_libc_write()
    while True:
        written = write(fd, frame, len(frame))
        if written == len(frame):
            return
        if written >= 0:  # POSIX forbids it for <= PIPE_BUF bytes: never leave a torn frame unsaid
            raise OSError(errno.EIO, f"short write to the job pipe: {written} of {len(frame)} bytes")
        code = _get_errno()
        if code == errno.EAGAIN:
            raise BlockingIOError(code, os.strerror(code))
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code))


def _os_write(fd: int, frame: bytes, _size: int) -> int:
    return os.write(fd, frame)


# How many threads besides the main one run in this process (C, tens of ns): with none,
# nobody can take the GIL during a write, and os.write is the cheaper call.
_other_threads = getattr(_thread, "_count", lambda: 1)

_libc_write = None  # loaded on first use: a process that never needs it never imports ctypes
_get_errno = None


def _load_libc_write():
    global _libc_write, _get_errno
    try:
        import ctypes
        _get_errno = ctypes.get_errno
        # PyDLL: the call keeps the GIL.  No argtypes (they cost conversions per call): a
        # frame is bytes of at most PIPE_BUF, so the default int arguments and result are exact.
        _libc_write = ctypes.PyDLL(None, use_errno=True).write
    except (ImportError, AttributeError, OSError):  # no libc symbols to call: the plain write, GIL released
        _libc_write = _os_write
    return _libc_write


def _wait_for(fd: int, event: int) -> None:
    # poll(), not select(): select() cannot watch a descriptor numbered 1024 or more.
    poller = select.poll()
    poller.register(fd, event)
    poller.poll(1000)


def _start_time(pid: int) -> int | None:
    """When *pid* started (clock ticks since boot); None if there is no such process, or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


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
