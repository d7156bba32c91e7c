"""One subscription table for every process: opsevent's table in shared memory.

Theory of operation:

* ``SharedSubscriptions.create()`` runs pre-fork (``Service.start()``): it
  makes an anonymous shared ``mmap`` and a cross-process lock, and copies the
  EventInterface's table into the region. Forked children share both.
* The region is a header, ``generation`` (u64) and ``length`` (u32), then
  ``length`` bytes of ``Subscriptions.dump()``: JSON holding the sockets with
  their passwords. It is process memory, like the EventInterface itself;
  nothing here prints or logs it.
* Each process keeps its own decoded copy and the generation it was decoded
  from. ``get()``, the raise path, reads the shared generation (one
  ``memoryview`` index) and reloads, under the lock, only when it changed;
  otherwise it costs what ``Subscriptions.get()`` costs, a few hundred ns.
* A write, from any process (the control server, or a child's own
  ``evi.subscribe_event``), takes the lock, reloads the latest table, changes
  it, writes the bytes and then the header with the generation + 1. A table
  that would not fit is refused with ``SubscriptionTableFull``, and the
  table is left as it was.
* Expiry needs no write: every process holds the same deadlines
  (``CLOCK_MONOTONIC`` is system-wide on Linux) and drops expired
  subscribers from its own copy on its next raise. Writes drop them from
  the shared bytes.
* Lock order is process lock, then thread lock. The thread lock is made
  again in a process that did not create it, since a fork may copy it held.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading
import time

from opsevent import OpseventError, Subscriptions

HEADER = struct.Struct("<QI")  # generation, length of the table's bytes
TABLE_SIZE = 1 << 20  # bytes of shared memory for the table (touched only as used)
WRITE_LOCK_TIMEOUT = 2.0  # a write that cannot have the lock by then fails, saying why
READ_LOCK_TIMEOUT = 0.05  # a raise that cannot reload by then uses its copy, retries next raise


class SubscriptionTableFull(OpseventError, ValueError):
    """The subscription table would not fit in its shared memory region."""


class SharedSubscriptions(Subscriptions):
    """``opsevent.Subscriptions`` backed by a shared memory region; see the module docstring."""

    def __init__(self, region: mmap.mmap, lock, clock=time.monotonic) -> None:
        # Use create(); this only wires an existing region and lock.
        super().__init__(clock)
        self._region = region
        self._plock = lock  # a multiprocessing.Lock, shared with every forked child
        self._generation = memoryview(region)[:8].cast("Q")
        self._loaded = 0  # the generation this process's copy was decoded from
        self._pid = os.getpid()

    @classmethod
    def create(cls, ctx, initial: Subscriptions | None = None,
               size: int = TABLE_SIZE) -> "SharedSubscriptions":
        """Pre-fork: a new region of *size* bytes holding *initial*'s subscriptions."""
        if size <= HEADER.size:
            raise ValueError(f"table size must be more than {HEADER.size} bytes, not {size}")
        table = cls(mmap.mmap(-1, size), ctx.Lock())
        if initial is not None:
            with table._thread_lock():
                table._load(initial.dump())
        table._publish()
        return table

    @property
    def capacity(self) -> int:
        """Bytes available for the table's ``dump()``."""
        return len(self._region) - HEADER.size

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

    def detached(self) -> Subscriptions:
        """A process-local copy of the current table (what a stopped service leaves behind)."""
        self._expire_due()
        copy = Subscriptions(self._clock)
        copy.load(self.dump())
        return copy

    def close(self) -> None:
        """Unmap the region in this process; the object must not be used afterwards."""
        self._generation.release()
        self._region.close()

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
        if not self._plock.acquire(timeout=WRITE_LOCK_TIMEOUT):
            raise TimeoutError(
                f"could not take the shared subscription table's lock within "
                f"{WRITE_LOCK_TIMEOUT:g} s (a process killed while writing it would hold it)")
        try:
            with self._thread_lock():
                self._load_shared()
                before = (self._table, self._deadlines)
                yield
                try:
                    self._publish()
                except SubscriptionTableFull:
                    self._set(*before)
                    raise
        finally:
            self._plock.release()

    def _reload(self) -> None:
        if not self._plock.acquire(timeout=READ_LOCK_TIMEOUT):
            return  # a writer is slow or died holding it: this copy serves one more raise
        try:
            with self._thread_lock():
                self._load_shared()
        finally:
            self._plock.release()

    def _load_shared(self) -> None:
        """Decode the region's table if it is newer than this copy (both locks held)."""
        generation, length = HEADER.unpack_from(self._region, 0)
        if generation != self._loaded:
            self._load(self._region[HEADER.size:HEADER.size + length])
            self._loaded = generation

    def _publish(self) -> None:
        """Write this copy's table to the region, then the header (the process lock held)."""
        data = self.dump()
        if len(data) > self.capacity:
            raise SubscriptionTableFull(
                f"the subscription table would take {len(data):,} bytes, over the "
                f"{self.capacity:,} bytes of shared memory it has (Service(table_size=...)); "
                f"nothing was changed")
        self._region[HEADER.size:HEADER.size + len(data)] = data
        generation = HEADER.unpack_from(self._region, 0)[0] + 1
        HEADER.pack_into(self._region, 0, generation, len(data))
        self._loaded = generation
