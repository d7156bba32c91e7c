"""One subscription table for every process: opsevent's table in shared memory.

Theory of operation:

* ``SharedSubscriptions.create()`` runs pre-fork (``Service.start()``): it
  makes an anonymous shared ``mmap`` and an unlinked lock file, and copies
  the EventInterface's table into the region. Forked children share both.
* The region is a ``generation`` (u64), then two slots, each a ``length``
  (u32) and room for ``size`` bytes of ``Subscriptions.dump()``: JSON holding
  the sockets with their passwords. Generation *g*'s table is in slot
  ``g % 2``. It is process memory, like the EventInterface itself; nothing
  here prints or logs it.
* Readers never lock (a seqlock): read the generation, copy its slot, read
  the generation again; a change means a writer overwrote that slot
  meanwhile, so retry, bounded. A writer fills the slot readers are *not*
  using and only then publishes generation + 1, so a writer killed half-way
  leaves the last table whole and the generation unchanged.
* Each process keeps its own decoded copy and the generation it was decoded
  from. ``get()``, the raise path, reads the shared generation (one
  ``memoryview`` index) and reloads only when it changed; otherwise it costs
  what ``Subscriptions.get()`` costs, a few hundred ns.
* Writers, from any process (the control server, or a child's own
  ``evi.subscribe_event``), take ``fcntl.lockf`` on the lock file: a POSIX
  record lock belongs to a process, and the kernel releases it when that
  process dies, so a front-end SIGKILLed mid-write stops no later write (a
  ``multiprocessing.Lock`` would stay held forever). Under it a write
  reloads the latest table, changes it and publishes it, unless nothing
  changed (an unsubscribe that found nothing), which publishes nothing. A
  table that would not fit is refused with ``SubscriptionTableFull``, and
  the table is left as it was.
* Expiry needs no write: every process holds the same deadlines
  (``CLOCK_MONOTONIC`` is system-wide on Linux) and drops expired
  subscribers from its own copy on its next raise. Writes drop them from
  the shared bytes.
* Lock order is thread lock, then the file lock: a record lock does not
  exclude the other threads of its own process. The thread lock is made
  again in a process that did not create it, since a fork may copy it held.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import struct
import tempfile
import threading
import time

from opsevent import OpseventError, Subscriptions
from workers.base.process import FORK_ONLY

GENERATION = struct.Struct("<Q")  # the region's header: the published table's generation
LENGTH = struct.Struct("<I")  # each slot's header: the length of its table's bytes
TABLE_SIZE = 1 << 20  # largest table, in bytes of dump(); the region holds two (touched only as used)
WRITE_LOCK_TIMEOUT = 2.0  # a write that cannot have the lock by then fails, saying why
READ_TIMEOUT = 0.05  # a raise that cannot copy a whole table by then uses its copy, retries next raise
_RETRY_PAUSE = 0.0005  # between tries of a read or of the writers' lock (doubling, up to 20 ms)

log = logging.getLogger(__name__)


class SubscriptionTableFull(OpseventError, ValueError):
    """The subscription table would not fit in its shared memory region."""


class SharedSubscriptions(Subscriptions):
    """``opsevent.Subscriptions`` backed by a shared memory region; see the module docstring."""

    def __init__(self, region: mmap.mmap, lockfile, clock=time.monotonic) -> None:
        # Use create(); this only wires an existing region and lock file.
        super().__init__(clock)
        self._region = region
        self._lockfile = lockfile  # an open file, shared with every forked child; fcntl.lockf on it
        self._generation = memoryview(region)[:GENERATION.size].cast("Q")
        self._loaded = 0  # the generation this process's copy was decoded from
        self._pid = os.getpid()

    @classmethod
    def create(cls, initial: Subscriptions | None = None,
               size: int = TABLE_SIZE) -> "SharedSubscriptions":
        """Pre-fork: a new region for tables of up to *size* bytes, holding *initial*'s subscriptions."""
        if size <= 0:
            raise ValueError(f"table size must be a positive number of bytes, not {size}")
        region = mmap.mmap(-1, GENERATION.size + 2 * (LENGTH.size + size))
        table = cls(region, tempfile.TemporaryFile(prefix="opsevent-table-lock-"))
        if initial is not None:
            with table._thread_lock():
                table._load(initial.dump())
        table._publish()  # generation 1: no process ever sees the empty generation 0
        return table

    @property
    def capacity(self) -> int:
        """Bytes available for the table's ``dump()``."""
        return (len(self._region) - GENERATION.size) // 2 - LENGTH.size

    def get(self, event: str):
        # The raise path: Subscriptions.get() inlined, behind one generation check.
        if self._generation[0] != self._loaded:
            self._reload()
        deadline = self._next_expiry
        if deadline is not None and deadline <= self._clock():
            self._expire()
        return self._table.get(event, ())

    def _expire_due(self) -> None:
        # Before every listing (events, items, entries): the latest table first.
        if self._generation[0] != self._loaded:
            self._reload()
        super()._expire_due()

    def load(self, data: bytes) -> None:
        """Replace the shared table, for every process, with one from :meth:`dump`."""
        # Through the shared write path: Subscriptions.load() would change
        # only this process's copy, undone at its next reload.
        with self._writing():
            self._load(data)

    def __reduce__(self):
        raise TypeError(FORK_ONLY)

    def detached(self) -> Subscriptions:
        """A process-local copy of the current table (what a stopped service leaves behind)."""
        self._expire_due()
        copy = Subscriptions(self._clock)
        copy.load(self.dump())
        return copy

    def close(self) -> None:
        """Unmap the region and close the lock file in this process; the object must not be used afterwards."""
        self._generation.release()
        self._region.close()
        self._lockfile.close()

    def __repr__(self) -> str:
        return super().__repr__().replace("<Subscriptions:", "<SharedSubscriptions:")

    # ---- internals -------------------------------------------------------------------

    def _thread_lock(self) -> threading.Lock:
        if self._pid != os.getpid():
            # Inherited across a fork, maybe held by a thread that is not here.
            self._lock, self._pid = threading.Lock(), os.getpid()
        return self._lock

    @contextlib.contextmanager
    def _writing(self):
        deadline = time.monotonic() + WRITE_LOCK_TIMEOUT
        lock = self._thread_lock()
        if not lock.acquire(timeout=WRITE_LOCK_TIMEOUT):
            raise TimeoutError(
                f"could not take the shared subscription table's lock within "
                f"{WRITE_LOCK_TIMEOUT:g} s: another thread of this process is still writing it")
        try:
            self._lock_writers(deadline)
            try:
                self._load_latest()
                before = (self._table, self._deadlines)
                yield
                # A write that changed nothing leaves the same objects (Subscriptions
                # swaps in new ones on every change): no new generation, no reloads.
                if self._table is not before[0] or self._deadlines is not before[1]:
                    try:
                        self._publish()
                    except SubscriptionTableFull:
                        self._set(*before)
                        raise
            finally:
                fcntl.lockf(self._lockfile, fcntl.LOCK_UN)
        finally:
            lock.release()

    def _lock_writers(self, deadline: float) -> None:
        """Take the writers' file lock by *deadline* (the thread lock held), else TimeoutError."""
        pause = _RETRY_PAUSE
        while True:
            try:
                # Non-blocking and retried: F_SETLKW has no timeout of its own.
                fcntl.lockf(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"could not take the shared subscription table's lock within "
                    f"{WRITE_LOCK_TIMEOUT:g} s: another process is still writing it (a process "
                    f"that dies releases it, so that one is alive and stuck)")
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.02)

    def _slot(self, generation: int) -> int:
        """The offset of the slot that holds *generation*'s table."""
        return GENERATION.size + (generation % 2) * (LENGTH.size + self.capacity)

    def _copy(self, generation: int) -> bytes | None:
        """The bytes in *generation*'s slot; None if its length is impossible (a torn read)."""
        offset = self._slot(generation)
        (length,) = LENGTH.unpack_from(self._region, offset)
        if length > self.capacity:
            return None
        start = offset + LENGTH.size
        return self._region[start:start + length]

    def _reload(self) -> None:
        lock = self._thread_lock()
        if not lock.acquire(timeout=READ_TIMEOUT):
            return  # another thread is reloading or writing: this copy serves one more raise
        try:
            deadline, pause = time.monotonic() + READ_TIMEOUT, _RETRY_PAUSE
            while True:
                generation = self._generation[0]
                data = self._copy(generation)
                if data is not None and self._generation[0] == generation:
                    break  # no writer touched that slot while it was copied
                if time.monotonic() >= deadline:
                    return  # writes keep coming: this copy serves one more raise
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
            if generation != self._loaded:
                self._load(data)
                self._loaded = generation
        finally:
            lock.release()

    def _load_latest(self) -> None:
        """Decode the published table if it is newer than this copy (both locks held: no writer runs)."""
        generation = self._generation[0]
        if generation != self._loaded:
            self._load(self._copy(generation))
            self._loaded = generation

    def _publish(self) -> None:
        """Write this copy's table to the unused slot, then publish its generation (writers' lock held)."""
        data = self.dump()
        if len(data) > self.capacity:
            raise SubscriptionTableFull(
                f"the subscription table would take {len(data):,} bytes, over the "
                f"{self.capacity:,} bytes of shared memory it has (Service(table_size=...)); "
                f"nothing was changed")
        generation = self._generation[0] + 1
        offset = self._slot(generation)
        LENGTH.pack_into(self._region, offset, len(data))
        start = offset + LENGTH.size
        self._region[start:start + len(data)] = data
        # Last, one aligned 8-byte store: readers switch slots only now.
        self._generation[0] = generation
        self._loaded = generation
