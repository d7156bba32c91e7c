"""Our side: opsevent front-ends and callers raising events through the RabbitMQ worker.

``run_async``: a ``workers.Supervisor`` with P front-ends raising async
events as fast as they can (or paced), each raise timed into an HdrHistogram,
clocked until the broker holds every event.  ``run_sync``: ``workers.serve``
with P forked callers raising sync events in a loop for a fixed time (each
from one thread, from many threads, or from many asyncio tasks awaiting
``araise_event``), or at a fixed offered load on an absolute schedule
(latency measured from the scheduled time as well as from the call, against
coordinated omission).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import os
import threading
import time
from dataclasses import dataclass, field

import opsevent
import workers
from opsevent import Status

from bench.harness import Conductor, Gate, Target, Ticker, rate, run_forked, share
from bench.measure import (
    EVENT,
    WARMUP_EVENT,
    WARMUP_PARAMS,
    ProcSampler,
    Schedule,
    declare_queues,
    delete_queues,
    merge_encoded,
    new_hist,
    peek_message,
    proc_status,
    summarize,
)

QUEUE_SIZE_MIN = 200_000
DRAIN_TIMEOUT = 60.0
PACE_BATCH = 500  # paced raising checks the schedule every this many events
RETRY_PAUSE = 0.0005  # seconds a flooding front-end waits after "queue full" before raising again


@dataclass
class AsyncSpec:
    frontends: int
    events: int                 # in total, over every front-end
    params: tuple
    fanout: int = 1             # subscribers per event (one queue each)
    rate: float | None = None   # events/s per front-end; None: as fast as possible
    retry_full: bool = True     # on "queue full", pause RETRY_PAUSE and raise the event again
    settings: dict = field(default_factory=dict)  # more EventInterface settings


@dataclass
class SyncSpec:
    callers: int                # processes
    duration: float             # seconds each caller raises
    params: tuple
    rate: float | None = None   # events/s per caller on an absolute schedule; None: a loop
    threads: int = 1            # threads raising in a loop in each caller process
    awaits: int = 0             # or: asyncio tasks awaiting araise_event in a loop, in each


# -- async -------------------------------------------------------------------------------------

def run_async(env, spec: AsyncSpec, progress=None) -> dict:
    broker = env.broker
    queues = tuple(env.queue(f"q{i}") for i in range(spec.fanout))
    warm = env.queue("warmup")
    declare_queues(broker, queues + (warm,))
    evi = opsevent.EventInterface(queue_size=max(QUEUE_SIZE_MIN, spec.events + 1000),
                                  drain_timeout=DRAIN_TIMEOUT, **spec.settings)
    for q in queues:
        evi.subscribe_event(EVENT, broker.socket(q))
    evi.subscribe_event(WARMUP_EVENT, broker.socket(warm))
    gate = Gate(env.ctx, spec.frontends)
    options = {"install_logging": False}
    if "restart" in inspect.signature(workers.Supervisor).parameters:
        options["restart"] = "never"  # a crashed front-end is an error of the run, not restarted
    sup = _Supervisor(evi, _async_target(gate, spec), processes=spec.frontends, **options)
    sampler = ProcSampler().start()
    sampler.probe(lambda: _worker_backlog(sup.service))

    def on_start():
        sampler.watch("worker", sup.service.process.pid)
        for rank, p in list(sup.frontends.items()):
            sampler.watch(f"frontend-{rank}", p.pid)
        sampler.watch("main", os.getpid())
        sampler.watch("beam", env.beam_pid)
        sampler.mark_start()

    expected = spec.events * spec.fanout
    conductor = Conductor(gate, broker, Target(queues, expected, warmup=(warm, 1), per_event=spec.fanout),
                          on_start=on_start, on_end=sampler.mark_end, progress=progress,
                          alive=lambda: not sup.exit_codes or bool(sup.frontends)).start()
    worker_pid = None
    try:
        exit_codes = sup.run()
        worker_pid = sup.service.process.pid if sup.service.process else None
    finally:
        clock = conductor.join()
        memory = sampler.stop()
    if sup.signalled:  # the Supervisor took a SIGINT/SIGTERM meant for the whole bench
        delete_queues(broker, queues + (warm,))
        raise KeyboardInterrupt
    final = env.count(queues)
    message = peek_message(broker, queues[0])
    delete_queues(broker, queues + (warm,))

    results = [r for r in clock.results if "error" not in r]
    errors = [r["error"] for r in clock.results if "error" in r]
    if clock.error:
        errors.insert(0, clock.error)
    if any(code != 0 for code in exit_codes.values()):
        errors.append(f"front-end exit codes {exit_codes}")
    if len(results) != spec.frontends:
        errors.append(f"{len(results)} of {spec.frontends} front-ends reported")
    accepted = sum(r["ok"] for r in results)
    refused = sum(sum(r["failed"].values()) for r in results)
    failed_by_status = sum((collections.Counter(r["failed"]) for r in results), collections.Counter())
    hist = merge_encoded([r["hist"] for r in results])
    out = {
        "kind": "ours", "mode": "async", "frontends": spec.frontends, "fanout": spec.fanout,
        "events": spec.events, "body_bytes": env.body_len(spec.params),
        "paced_rate_per_frontend": spec.rate, "raised_again_when_full": spec.retry_full,
        "accepted": accepted, "refused": refused, "refused_by_status": dict(failed_by_status),
        "expected_in_broker": accepted * spec.fanout, "in_broker": final,
        "missing": max(0, accepted * spec.fanout - final),
        "extra": max(0, final - accepted * spec.fanout),
        "seconds": clock.seconds, "warmup_s": round(clock.warmup_s, 3),
        "max_in_transit": clock.max_in_transit,
        "events_per_s": rate(accepted, clock.seconds),
        "messages_per_s": rate(accepted * spec.fanout, clock.seconds),
        "raise_phase_s": _raise_phase(results, clock.start),
        "caller_us": summarize(hist),
        "worker_pid": worker_pid, "worker_restarts": sup.service.restarts,
        "worker_backlog_max": dict(sampler.probe_max),
        "worker_stats": _final_stats(sup.service),
        "memory": memory, "cpu": sampler.cpu(memory, spec.events),
        "frontend_rss": [_fe_memory(r) for r in sorted(results, key=lambda r: r["rank"])],
        "properties": message, "errors": errors,
    }
    return out


class _Supervisor(workers.Supervisor):
    """Remembers a stop signal (Ctrl-C): the Supervisor handles it, the bench must stop too."""

    signalled = None

    def handle_signal(self, signum: int) -> None:
        self.signalled = signum
        super().handle_signal(signum)


def _async_target(gate: Gate, spec: AsyncSpec):
    def target(rank, evi):
        try:
            _async_frontend(rank, evi, gate, spec)
        except BaseException:
            gate.fail(f"front-end {rank}")
            raise
    return target


def _async_frontend(rank: int, evi, gate: Gate, spec: AsyncSpec) -> None:
    n = share(spec.events, spec.frontends, rank)
    params = spec.params
    hist = new_hist()
    record = hist.record_value
    clock = time.perf_counter_ns
    raise_event = evi.raise_event
    failed = collections.Counter()
    if rank == 1:
        # Makes the worker connect before the clock starts; the conductor waits for it.
        if not evi.raise_event(WARMUP_EVENT, WARMUP_PARAMS):
            raise RuntimeError("the warm-up event was refused")
    ok = 0
    queue_full = Status.QUEUE_FULL
    retry = spec.retry_full
    sleep = time.sleep

    def one():
        # One event: raised again after a pause while the queue is full (when retrying).
        nonlocal ok
        while True:
            t0 = clock()
            result = raise_event(EVENT, params)
            record(clock() - t0 or 1)
            if result:
                ok += 1
                return
            failures = result.failures
            failed.update(d.status.value for d in failures)
            if not retry or any(d.status is not queue_full for d in failures):
                return
            sleep(RETRY_PAUSE)

    rss_start = proc_status()
    t_start = gate.wait_start()
    progress = gate.progress
    if spec.rate is None:
        for i in range(n):
            one()
            if not i & 1023:
                progress[rank] = ok
                if workers.stopping():
                    break
    else:
        # Paced: an absolute schedule, checked every PACE_BATCH events.
        interval = 1.0 / spec.rate
        done = 0
        while done < n and not workers.stopping():
            ahead = t_start + done * interval - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            for _ in range(min(PACE_BATCH, n - done)):
                one()
            done += PACE_BATCH
            progress[rank] = ok
    gate.handed_over(rank, ok)
    t_end = time.monotonic()
    gate.finish({"rank": rank, "ok": ok, "failed": dict(failed), "hist": hist.encode(),
                 "t_start": t_start, "t_end": t_end, "rss_start": rss_start})


# -- sync --------------------------------------------------------------------------------------------

def run_sync(env, spec: SyncSpec, progress=None) -> dict:
    broker = env.broker
    q, warm = env.queue("sync"), env.queue("warmup")
    declare_queues(broker, (q, warm))
    evi = opsevent.EventInterface(sync_mode=True, queue_size=QUEUE_SIZE_MIN,
                                  drain_timeout=DRAIN_TIMEOUT)
    evi.subscribe_event(EVENT, broker.socket(q))
    evi.subscribe_event(WARMUP_EVENT, broker.socket(warm))
    gate = Gate(env.ctx, spec.callers)
    sampler = ProcSampler().start()
    with workers.serve(evi, install_logging=False) as service:
        worker_pid = service.process.pid
        sampler.watch("worker", worker_pid)
        sampler.probe(lambda: _worker_backlog(service))
        ticker = Ticker(progress, spec.duration)
        clock = run_forked(env.ctx, gate, broker, Target(warmup=(warm, spec.callers)), _sync_caller,
                           (evi, spec), sampler=sampler, names="caller", beam_pid=env.beam_pid)
        ticker.stop()
        restarts = service.restarts
    memory = sampler.stop()
    worker_stats = _final_stats(service)
    final = env.count((q,))
    delete_queues(broker, (q, warm))

    results = [r for r in clock.results if "error" not in r]
    errors = [r["error"] for r in clock.results if "error" in r]
    if clock.error:
        errors.insert(0, clock.error)
    if len(results) != spec.callers:
        errors.append(f"{len(results)} of {spec.callers} callers reported")
    confirmed = sum(r["confirmed"] for r in results)
    failed = sum((collections.Counter(r["failed"]) for r in results), collections.Counter())
    raised = confirmed + sum(failed.values())
    seconds = (max(r["t_end"] for r in results) - clock.start) if results else None
    out = {
        "kind": "ours", "mode": "sync", "callers": spec.callers, "threads": spec.threads,
        "awaits": spec.awaits, "duration_s": spec.duration,
        "body_bytes": env.body_len(spec.params), "offered_per_s": (spec.rate * spec.callers
                                                                   if spec.rate else None),
        "raised": raised, "confirmed": confirmed, "failed_by_status": dict(failed),
        "refused": sum(failed.values()),
        "in_broker": final, "missing": max(0, confirmed - final),
        "extra": max(0, final - raised),
        "seconds": seconds, "warmup_s": round(clock.warmup_s, 3),
        "confirmed_per_s": rate(confirmed, seconds),
        "latency_us": summarize(merge_encoded([r["hist"] for r in results])),
        "worker_pid": worker_pid, "worker_restarts": restarts,
        "worker_backlog_max": dict(sampler.probe_max), "worker_stats": worker_stats,
        "memory": memory, "cpu": sampler.cpu(memory, confirmed),
        "errors": errors,
    }
    if spec.rate:
        out["latency_from_schedule_us"] = summarize(merge_encoded([r["hist_sched"] for r in results]))
        out["behind_schedule_max_ms"] = max((r["behind_max_ms"] for r in results), default=None)
    return out


def _sync_caller(rank: int, gate: Gate, evi, spec: SyncSpec) -> None:
    # Warm-up: makes this process's reply pipe, and the worker's connection.
    warm = evi.raise_event(WARMUP_EVENT, WARMUP_PARAMS)
    if not warm:
        raise RuntimeError(f"warm-up raise failed: {warm.failures[0].status} {warm.failures[0].reason}")
    extra = {}
    if spec.rate is not None:
        t_start, tallies, extra = _raise_on_schedule(rank, gate, evi, spec)
    elif spec.awaits:
        t_start, tallies = _raise_awaiting(gate, evi, spec)
    else:
        t_start, tallies = _raise_in_threads(gate, evi, spec)
    t_end = time.monotonic()
    hist = tallies[0].hist
    for tally in tallies[1:]:
        hist.add(tally.hist)
    gate.finish({"rank": rank, "confirmed": sum(t.confirmed for t in tallies),
                 "failed": dict(sum((t.failed for t in tallies), collections.Counter())),
                 "hist": hist.encode(), "t_start": t_start, "t_end": t_end, **extra})


class _Tally:
    """What one raising thread (or one process's asyncio tasks) saw: outcomes and latency."""

    def __init__(self):
        self.hist = new_hist()
        self.confirmed = 0
        self.failed = collections.Counter()

    def count(self, result, t0: int, t1: int) -> None:
        self.hist.record_value(t1 - t0 or 1)
        if result.deliveries and all(d.status is Status.CONFIRMED for d in result.deliveries):
            self.confirmed += 1
        else:
            self.failed.update(d.status.value for d in result.deliveries if d.status is not Status.CONFIRMED)


def _raise_loop(raise_event, params, deadline: int, tally: _Tally) -> None:
    clock = time.perf_counter_ns
    while True:
        t0 = clock()
        result = raise_event(EVENT, params)
        t1 = clock()
        tally.count(result, t0, t1)
        if t1 >= deadline:
            return


def _raise_in_threads(gate: Gate, evi, spec: SyncSpec):
    """``spec.threads`` threads of this process raising in a loop (one: this thread alone)."""
    tallies = [_Tally() for _ in range(spec.threads)]
    go, deadline, errors = threading.Event(), [0], []

    def thread(tally):
        go.wait()
        try:
            _raise_loop(evi.raise_event, spec.params, deadline[0], tally)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the process's main thread
            errors.append(exc)

    # Started before the barrier, so that the clock does not count their start.
    threads = [threading.Thread(target=thread, args=(t,), daemon=True) for t in tallies[1:]]
    for t in threads:
        t.start()
    t_start = gate.wait_start()
    deadline[0] = time.perf_counter_ns() + int(spec.duration * 1e9)
    go.set()
    _raise_loop(evi.raise_event, spec.params, deadline[0], tallies[0])
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return t_start, tallies


def _raise_awaiting(gate: Gate, evi, spec: SyncSpec):
    """``spec.awaits`` asyncio tasks of this process, each awaiting ``araise_event`` in a loop."""
    tally = _Tally()

    async def task(deadline):
        clock, araise, params = time.perf_counter_ns, evi.araise_event, spec.params
        while True:
            t0 = clock()
            result = await araise(EVENT, params)
            t1 = clock()
            tally.count(result, t0, t1)
            if t1 >= deadline:
                return

    async def main():
        t_start = gate.wait_start()  # blocks the loop, which has nothing to run yet
        deadline = time.perf_counter_ns() + int(spec.duration * 1e9)
        await asyncio.gather(*(task(deadline) for _ in range(spec.awaits)))
        return t_start

    return asyncio.run(main()), [tally]


def _raise_on_schedule(rank: int, gate: Gate, evi, spec: SyncSpec):
    """Absolute schedule, callers staggered evenly; latency also from the scheduled time."""
    tally = _Tally()
    t_start = gate.wait_start()
    interval = int(1e9 / spec.rate)
    first = int(t_start * 1e9) + (rank - 1) * interval // spec.callers
    schedule = Schedule(first, interval, int(spec.duration * spec.rate))
    for scheduled, now in schedule:
        result = evi.raise_event(EVENT, spec.params)
        t1 = time.monotonic_ns()
        tally.count(result, now, t1)
        schedule.done(scheduled, t1)
    return t_start, [tally], schedule.figures()


# -- helpers ---------------------------------------------------------------------------------

def _raise_phase(results, start: float) -> float | None:
    """Seconds from the start until the last front-end had handed over its last event."""
    if not results:
        return None
    return round(max(r["t_end"] for r in results) - start, 4)


def _worker_backlog(service) -> dict:
    """Events the worker holds (pending + in flight), from its stats file (about once a second)."""
    stats = service.stats() if hasattr(service, "stats") else {}
    brokers = (stats or {}).get("brokers") or {}
    return {"inflight": sum(b.get("inflight", 0) for b in brokers.values()),
            "pending": sum(b.get("pending", 0) for b in brokers.values())}


def _final_stats(service) -> dict:
    """The worker's last counters (``Service.final_stats``, kept after stop), without per-broker detail."""
    stats = getattr(service, "final_stats", None) or {}
    return {k: v for k, v in stats.items() if k not in ("brokers", "pid", "time")}


def _fe_memory(r: dict) -> dict:
    start, raised, end = r.get("rss_start", {}), r.get("rss_raised", {}), r.get("rss_end", {})
    return {"rank": r["rank"], "pid": r.get("pid"),
            "rss_start_kib": start.get("VmRSS"), "rss_raised_kib": raised.get("VmRSS"),
            "rss_end_kib": end.get("VmRSS"), "hwm_kib": end.get("VmHWM"),
            "private_end_kib": r.get("private_end_kib"),
            "growth_kib": (end.get("VmRSS", 0) - start.get("VmRSS", 0)) if start and end else None}
