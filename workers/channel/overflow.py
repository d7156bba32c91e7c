"""A front-end's overflow buffer: the frames the job pipe had no room for, in order.

Theory of operation.  While the RabbitMQ worker is behind, a flooding
front-end buffers jobs as fast as it raises them, and the buffer grows by
megabytes.  Kept as one Python object per job, each new page the allocator
touched was a page fault in the raising thread: about one raise in ten, each
fault 4-40 µs on this project's virtual machine, most of the caller's p99.
Here the frames are copied into a few big chunks of anonymous memory, and
the pages of the chunks to come are faulted in ahead of time by the job
queue's feeder thread (``prefaulted()``: ``mmap`` with ``MAP_POPULATE``,
which runs without the GIL), so the raising thread only copies bytes into
memory that is already there.  A
chunk the feeder has emptied is kept as a spare (up to ``SPARES``), so a
buffer that grows and shrinks again and again faults nothing after its
first round; the others are unmapped, and the memory goes back.

Each frame keeps the job queue's header (``jobqueue.py``)::

    frame = length:u32  job-id:u64  index:u16  count:u16  payload:length

which is all the buffer needs: the frames are read back from the bytes, so
nothing per job lives outside the chunks.  A job is counted from the call
that adds its frames (all of them, or the rest of a job the pipe took the
first frames of) until its last frame is taken off.  Frames never straddle
two chunks.

Not thread-safe: the job queue calls it under its per-process lock; only
``prefaulted()`` runs outside it, and ``give_spare`` hands its chunk over.
"""

from __future__ import annotations

import collections
import mmap
import struct

HEADER = struct.Struct("!IQHH")
CHUNK = 256 << 10  # bytes per chunk: 64 pages, about 950 of the bench's 274-byte frames
SPARES = 2  # emptied or pre-faulted chunks kept ready for the raising thread


class _Chunk:
    __slots__ = ("memory", "start", "end")

    def __init__(self, memory: mmap.mmap):
        self.memory = memory
        self.start = 0  # the first byte not yet taken off
        self.end = 0  # the first free byte


class OverflowBuffer:
    def __init__(self, on_new_chunk=None):
        self._on_new_chunk = on_new_chunk  # called, under the lock, when the raising thread starts a chunk
        self.jobs = 0  # jobs with at least one frame here
        self.faulted = 0  # chunks the raising thread had to map itself (no spare ready)
        self._chunks: collections.deque[_Chunk] = collections.deque()
        self._spares: list[mmap.mmap] = []

    # -- adding (the raising thread) --------------------------------------------------

    def add(self, frame: bytes) -> None:
        """One whole job of one frame."""
        self._copy(frame)
        self.jobs += 1

    def add_frames(self, frames) -> None:
        """One job's frames: all of them, or those the pipe did not take."""
        for frame in frames:
            self._copy(frame)
        self.jobs += 1

    def _copy(self, frame: bytes) -> None:
        chunk = self._chunks[-1] if self._chunks else None
        if chunk is None or chunk.end + len(frame) > CHUNK:
            chunk = self._new_chunk()
        end = chunk.end + len(frame)
        chunk.memory[chunk.end:end] = frame
        chunk.end = end

    def _new_chunk(self) -> _Chunk:
        if self._spares:
            memory = self._spares.pop()
        else:
            memory = mmap.mmap(-1, CHUNK)  # its pages fault in here, one by one, as before
            self.faulted += 1
        if self._on_new_chunk is not None:
            self._on_new_chunk()
        chunk = _Chunk(memory)
        self._chunks.append(chunk)
        return chunk

    # -- taking off (the feeder thread) -------------------------------------------------

    def front(self, limit: int) -> tuple[memoryview, int, int]:
        """The whole frames at the front that fit in *limit* bytes (at least one frame):
        ``(bytes, frames that begin a job, frames that end one)``."""
        chunk = self._chunks[0]
        memory, start, end = chunk.memory, chunk.start, chunk.end
        pos, first, last = start, 0, 0
        unpack = HEADER.unpack_from
        while pos < end:
            length, _, index, count = unpack(memory, pos)
            if pos + HEADER.size + length - start > limit:
                break
            pos += HEADER.size + length
            first += index == 0
            last += index == count - 1
        return memoryview(memory)[start:pos], first, last

    def pop(self, size: int, ended: int) -> None:
        """Take *size* bytes off the front, which ended *ended* jobs (``front()``'s figures)."""
        chunk = self._chunks[0]
        chunk.start += size
        self.jobs -= ended
        if chunk.start == chunk.end:
            if len(self._chunks) == 1:
                chunk.start = chunk.end = 0  # the only chunk: reused in place
            else:
                self._chunks.popleft()
                if len(self._spares) < SPARES:
                    self._spares.append(chunk.memory)  # already faulted in: the best spare

    def needs_spares(self) -> int:
        return SPARES - len(self._spares)

    def give_spare(self, memory: mmap.mmap) -> None:
        self._spares.append(memory)

    # -- all at once (exit, discard) ---------------------------------------------------------

    def frames(self):
        """Every frame, in order, as memoryviews."""
        unpack = HEADER.unpack_from
        for chunk in self._chunks:
            memory = memoryview(chunk.memory)
            pos = chunk.start
            while pos < chunk.end:
                length = unpack(memory, pos)[0]
                yield memory[pos:pos + HEADER.size + length]
                pos += HEADER.size + length

    def runs(self):
        """The buffered bytes, in order, one memoryview per chunk (for a spool file)."""
        for chunk in self._chunks:
            yield memoryview(chunk.memory)[chunk.start:chunk.end]

    def clear(self) -> None:
        self._chunks.clear()
        self.jobs = 0


def prefaulted() -> mmap.mmap:
    """A chunk whose pages are already in memory: ``MAP_POPULATE`` faults them in the kernel,
    and Python's ``mmap`` releases the GIL meanwhile, so the raising thread runs on."""
    return mmap.mmap(-1, CHUNK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
