"""One measured run: forked processes released together, and a clock on the broker.

Every scenario and baseline has the same shape:

* ``parties`` forked processes (our front-ends or callers, or a baseline's
  publishers) get ready (connect, warm up), then wait on a start barrier;
* the *conductor*, a thread of the bench's main process, first waits until
  the warm-up events (if any) are in the broker, so our RabbitMQ worker is
  connected, then passes the barrier: that instant is the start of the clock;
* for a count-based run it polls the queues' message counts (passive
  declares over one connection) until they hold every expected message: that
  instant is the end of the clock ("in broker");
* it then sets ``done``: each process samples its own RSS, puts its result
  on the results queue and exits.  The conductor collects the results while
  the processes exit (a child's queue feeder must not block on a full pipe).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field

from bench.measure import QueueCounter, proc_private_kib, proc_status
from bench.target import DEFAULT_PREFIX

START_TIMEOUT = 120.0  # a process waits this long at the barrier
END_TIMEOUT = 600.0    # and this long for "done"
WARMUP_TIMEOUT = 30.0
POLL_INTERVAL = 0.004  # near the end of a run
SLOW_POLL = 0.1        # far from it


class Gate:
    """Created pre-fork; shared by the processes of one run and the conductor."""

    def __init__(self, ctx, parties: int):
        self.parties = parties
        self.barrier = ctx.Barrier(parties + 1)
        self.done = ctx.Event()
        self.results = ctx.Queue()
        # Per rank (from 1): how many events it handed over, once it has finished; -1 before.
        self.handed = ctx.Array("q", [-1] * (parties + 1), lock=False)
        # Per rank: events handed over so far, updated now and then while raising (the
        # conductor's "in transit" figure: handed over but not yet in the broker).
        self.progress = ctx.Array("q", [0] * (parties + 1), lock=False)

    # -- the children's side --------------------------------------------------------

    def wait_start(self) -> float:
        """Block until the conductor starts the clock; return the start time."""
        self.barrier.wait(START_TIMEOUT)
        return time.monotonic()

    def handed_over(self, rank: int, count: int) -> None:
        """Say how many events this process handed over (accepted raises, publishes): the
        conductor then waits for exactly those, not for the nominal count."""
        self.handed[rank] = count

    def handed_total(self) -> int | None:
        """Events handed over by all processes, or None while one is still at it."""
        counts = self.handed[1:]
        return None if any(c < 0 for c in counts) else sum(counts)

    def finish(self, result: dict) -> None:
        """Wait for the conductor's "done", then report ``result`` with this process's memory."""
        result["rss_raised"] = proc_status()
        self.done.wait(END_TIMEOUT)
        result["rss_end"] = proc_status()
        result["private_end_kib"] = proc_private_kib()
        result.setdefault("pid", os.getpid())
        self.results.put(result)

    def fail(self, what: str) -> None:
        """Report an error instead of a result (a child's ``except`` clause)."""
        try:
            self.barrier.abort()
        except Exception:
            pass
        self.results.put({"error": f"{what}:\n{traceback.format_exc()}", "pid": os.getpid()})


@dataclass
class Clock:
    """What the conductor measured."""

    start: float = 0.0
    end: float | None = None       # when the broker held every expected message
    final_seen: int = 0            # the last count the conductor saw
    max_in_transit: int = 0        # most messages handed over but not yet in the broker, as polled
    warmup_s: float = 0.0
    error: str = ""
    results: list = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass
class Target:
    """What the conductor waits for.

    ``queues``/``expected``: the in-broker clock (None: no clock, e.g. sync
    runs timed by the callers).  ``warmup``: ``(queue, count)`` to wait for
    before the start.  ``stall``: give up after this long without progress.
    """

    queues: tuple[str, ...] = ()
    expected: int | None = None
    warmup: tuple[str, int] | None = None
    stall: float = 10.0
    per_event: int = 1  # messages per handed-over event (fan-out)


def conduct(gate: Gate, broker, target: Target, *, on_start=None, on_end=None, progress=None,
            alive=None) -> Clock:
    """Run the conductor (in a thread of the main process); see the module docstring."""
    clock = Clock()
    counter = None
    try:
        counter = QueueCounter(broker)
        t_ready = time.monotonic()
        if target.warmup is not None:
            name, want = target.warmup
            _wait_until(lambda: counter.count([name]) >= want, gate, alive, WARMUP_TIMEOUT,
                        lambda: f"warm-up: fewer than {want} events in {name!r} after {WARMUP_TIMEOUT:g} s "
                                f"(is the RabbitMQ worker up?)")
        clock.warmup_s = time.monotonic() - t_ready
        _wait_ready(gate, alive)
        gate.barrier.wait(START_TIMEOUT)
        clock.start = time.monotonic()
        if on_start is not None:
            on_start()
        if target.expected is not None:
            _wait_in_broker(gate, counter, target, clock, progress)
            if on_end is not None:
                on_end()
    except Exception as exc:  # noqa: BLE001 - reported as the run's error
        clock.error = f"{type(exc).__name__}: {exc}"
        try:
            gate.barrier.abort()
        except Exception:
            pass
    finally:
        gate.done.set()
        if counter is not None:
            counter.close()
    clock.results = _collect(gate, alive)
    if target.expected is None and on_end is not None:
        on_end()  # no broker clock: the window ends when the last process has reported
    return clock


def _wait_ready(gate: Gate, alive) -> None:
    """Wait until every process waits at the barrier, or fail early if one is gone."""
    _wait_until(lambda: gate.barrier.n_waiting >= gate.parties, gate, alive, START_TIMEOUT,
                lambda: f"{gate.barrier.n_waiting} of {gate.parties} processes ready after {START_TIMEOUT:g} s")


def _wait_until(done, gate: Gate, alive, timeout: float, late) -> None:
    """Poll ``done()`` for at most ``timeout`` s; fail early if a process is gone (``late()`` says why when late)."""
    deadline = time.monotonic() + timeout
    while not done():
        if gate.barrier.broken or (alive is not None and not alive()):
            raise RuntimeError("a process failed or exited before the start (see its error)")
        if time.monotonic() > deadline:
            raise TimeoutError(late())
        time.sleep(POLL_INTERVAL)


def _wait_in_broker(gate: Gate, counter: QueueCounter, target: Target, clock: Clock, progress) -> None:
    """Poll the count until it reaches the target: slowly while far from it, every few ms near it.

    Each poll is a round trip and some CPU in this process and the broker, on
    a machine whose cores the measured processes need: the bench must not
    steal more than it measures.  Near the end (less than ~0.2 s to go at the
    current rate) it polls every POLL_INTERVAL, so the end is seen within a
    few milliseconds.  Once every process has said how many events it handed
    over (refused raises are not in the broker), that is what it waits for.
    """
    last_change = time.monotonic()
    last_count = -1
    last_report = 0.0
    prev = (clock.start, 0)
    while True:
        count = counter.count(target.queues)
        now = time.monotonic()
        clock.final_seen = count
        handed = gate.handed_total()
        want = target.expected if handed is None else min(target.expected, handed * target.per_event)
        so_far = handed if handed is not None else sum(gate.progress[1:])
        clock.max_in_transit = max(clock.max_in_transit, so_far * target.per_event - count)
        if count >= want:
            clock.end = now
            if progress is not None:
                progress(count, want)
            return
        if count != last_count:
            last_count, last_change = count, now
        elif now - last_change > target.stall:
            raise TimeoutError(f"stalled: {count:,} of {want:,} messages in the "
                               f"broker, no progress for {target.stall:g} s")
        if progress is not None and now - last_report > 0.1:
            progress(count, want)
            last_report = now
        speed = (count - prev[1]) / max(1e-6, now - prev[0])
        prev = (now, count)
        left = (want - count) / speed if speed > 0 else float("inf")
        time.sleep(POLL_INTERVAL if left < 0.2 else min(SLOW_POLL, max(POLL_INTERVAL, left / 4)))


def _collect(gate: Gate, alive) -> list[dict]:
    results = []
    quiet_since = time.monotonic()
    while len(results) < gate.parties:
        try:
            results.append(gate.results.get(timeout=0.2))
            quiet_since = time.monotonic()
        except queue.Empty:
            idle = time.monotonic() - quiet_since
            if (alive is not None and not alive() and idle > 2.0) or idle > 60.0:
                break
    return results


class Conductor:
    """``conduct`` in a thread: ``start()`` before blocking the main thread, ``join()`` after."""

    def __init__(self, gate: Gate, broker, target: Target, **kw):
        self.clock: Clock | None = None
        self._thread = threading.Thread(target=self._run, args=(gate, broker, target), kwargs=kw,
                                        name="bench-conductor", daemon=True)

    def _run(self, *args, **kw) -> None:
        self.clock = conduct(*args, **kw)

    def start(self) -> "Conductor":
        self._thread.start()
        return self

    def join(self, timeout: float = END_TIMEOUT) -> Clock:
        self._thread.join(timeout)
        if self.clock is None:
            self.clock = Clock(error="the conductor did not finish")
        return self.clock


def run_forked(ctx, gate: Gate, broker, target: Target, body, args=(), *, progress=None,
               sampler=None, names=None, beam_pid=None) -> Clock:
    """Fork ``gate.parties`` processes running ``body(rank, gate, *args)``; conduct; join."""
    procs = [ctx.Process(target=_child, args=(body, rank, gate, args), name=f"bench-{rank}", daemon=True)
             for rank in range(1, gate.parties + 1)]
    for p in procs:
        p.start()

    def on_start():
        if sampler is not None:
            for rank, p in enumerate(procs, 1):
                sampler.watch(f"{names or 'process'}-{rank}", p.pid)
            sampler.watch("main", os.getpid())
            sampler.watch("beam", beam_pid)
            sampler.mark_start()

    conductor = Conductor(gate, broker, target, on_start=on_start, progress=progress,
                          on_end=sampler.mark_end if sampler is not None else None,
                          alive=lambda: any(p.is_alive() for p in procs)).start()
    clock = conductor.join()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)
    return clock


def _child(body, rank, gate, args) -> None:
    try:
        body(rank, gate, *args)
    except BaseException:
        gate.fail(f"process {rank}")
        raise


class Env:
    """What every run shares: the broker, the fork context, unique queue names."""

    def __init__(self, broker, ctx, run_id: str | None = None):
        self.broker = broker
        self.ctx = ctx
        # Unique on a broker other benches may share: pid, time and a random part.
        self.run_id = run_id or f"{os.getpid()}-{int(time.time())}-{os.urandom(2).hex()}"
        self.prefix = getattr(broker, "prefix", DEFAULT_PREFIX)
        self._n = 0
        self._beam_pid = False

    @property
    def beam_pid(self) -> int | None:
        """The broker's beam.smp pid, when it is on this machine and ours to read."""
        if self._beam_pid is False:
            try:
                self._beam_pid = self.broker.beam_pid()
            except Exception:  # noqa: BLE001 - a broker elsewhere: no CPU figures for it
                self._beam_pid = None
        return self._beam_pid

    def queue(self, what: str) -> str:
        self._n += 1
        return f"{self.prefix}-{self.run_id}-{self._n}-{what}"

    def count(self, queues) -> int:
        counter = QueueCounter(self.broker)
        try:
            return counter.count(queues)
        finally:
            counter.close()

    @staticmethod
    def body_len(params) -> int:
        from bench.measure import body_of
        return len(body_of(params))


def share(total: int, parties: int, rank: int) -> int:
    """Rank's part of ``total`` (ranks from 1), the parts summing to ``total``."""
    return total // parties + (1 if rank <= total % parties else 0)


def rate(count: int, seconds: float | None) -> float | None:
    if not seconds or seconds <= 0:
        return None
    return round(count / seconds, 1)


class Ticker:
    """Progress for a run timed by its callers: elapsed out of the duration."""

    def __init__(self, progress, duration: float):
        self.progress = progress
        self.duration = duration
        self._stop = threading.Event()
        self._thread = None
        if progress is not None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="bench-ticker")
            self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(0.2):
            self.progress(min(time.monotonic() - t0, self.duration), self.duration)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1)
