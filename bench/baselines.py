"""The baselines, measured in the same run, on the same broker, with the same body.

B1  one process: pika ``BlockingConnection.basic_publish`` in a loop (no IPC);
    with fan-out k, k publishes (one per queue) per event.
B2  P processes, each with its own ``BlockingConnection``, publishing in the
    caller (the per-process design some SIP servers use): throughput until the
    broker holds everything, and each publish's blocking time.
B3  one process: ``BlockingConnection`` + ``confirm_delivery()``, each publish
    waiting for its ack (the naive sync publisher); in a loop, or paced on an
    absolute schedule.

Same queue type as ours (a transient classic queue without consumers), same
message properties (``content_type text/plain``), the body our
``raise_event`` encodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pika
import pika.exceptions

from bench.harness import Gate, Target, Ticker, rate, run_forked, share
from bench.measure import (
    ProcSampler,
    Schedule,
    body_of,
    declare_queues,
    delete_queues,
    merge_encoded,
    new_hist,
    summarize,
)

PROPERTIES = pika.BasicProperties(content_type="text/plain")


@dataclass
class PublishSpec:
    processes: int
    events: int                # in total, over every process
    params: tuple
    fanout: int = 1
    timed: bool = False        # record each publish into a histogram (B2)


@dataclass
class ConfirmSpec:
    duration: float
    params: tuple
    rate: float | None = None  # events/s on an absolute schedule; None: a loop


def run_publish(env, spec: PublishSpec, progress=None) -> dict:
    """B1 (one process) and B2 (P processes, timed)."""
    queues = tuple(env.queue(f"q{i}") for i in range(spec.fanout))
    declare_queues(env.broker, queues)
    gate = Gate(env.ctx, spec.processes)
    expected = spec.events * spec.fanout
    sampler = ProcSampler().start()
    clock = run_forked(env.ctx, gate, env.broker, Target(queues, expected), _publisher,
                       (env.broker, queues, spec), progress=progress, sampler=sampler,
                       names="publisher", beam_pid=env.beam_pid)
    memory = sampler.stop()
    final = env.count(queues)
    delete_queues(env.broker, queues)
    results = [r for r in clock.results if "error" not in r]
    errors = [r["error"] for r in clock.results if "error" in r]
    if clock.error:
        errors.insert(0, clock.error)
    published = sum(r["published"] for r in results)
    out = {
        "kind": "baseline", "processes": spec.processes, "fanout": spec.fanout,
        "events": spec.events, "body_bytes": len(body_of(spec.params)),
        "published": published, "in_broker": final,
        "missing": max(0, published - final), "extra": max(0, final - published),
        "seconds": clock.seconds,
        "events_per_s": rate(spec.events, clock.seconds),
        "messages_per_s": rate(expected, clock.seconds),
        "publish_phase_s": (round(max(r["t_end"] for r in results) - clock.start, 4)
                            if results else None),
        "memory": memory, "cpu": sampler.cpu(memory, spec.events),
        "errors": errors,
    }
    if spec.timed:
        out["caller_us"] = summarize(merge_encoded([r["hist"] for r in results]))
    return out


def _publisher(rank: int, gate: Gate, broker, queues, spec: PublishSpec) -> None:
    n = share(spec.events, spec.processes, rank)
    body = body_of(spec.params)
    conn = broker.connect()
    ch = conn.channel()
    publish = ch.basic_publish
    hist = new_hist()
    gate.wait_start()
    t_start = time.monotonic()
    if spec.timed:
        record = hist.record_value
        clock = time.perf_counter_ns
        for _ in range(n):
            for q in queues:
                t0 = clock()
                publish("", q, body, PROPERTIES)
                record(clock() - t0 or 1)
    else:
        for _ in range(n):
            for q in queues:
                publish("", q, body, PROPERTIES)
    t_end = time.monotonic()
    gate.handed_over(rank, n * len(queues))
    result = {"rank": rank, "published": n * len(queues), "t_start": t_start, "t_end": t_end}
    if spec.timed:
        result["hist"] = hist.encode()
    gate.finish(result)
    conn.close()


def run_confirm(env, spec: ConfirmSpec, progress=None) -> dict:
    """B3: one process, each publish waiting for the broker's ack."""
    q = env.queue("b3")
    declare_queues(env.broker, (q,))
    gate = Gate(env.ctx, 1)
    sampler = ProcSampler().start()
    ticker = Ticker(progress, spec.duration)
    clock = run_forked(env.ctx, gate, env.broker, Target(), _confirmer, (env.broker, q, spec),
                       sampler=sampler, names="publisher", beam_pid=env.beam_pid)
    ticker.stop()
    memory = sampler.stop()
    final = env.count((q,))
    delete_queues(env.broker, (q,))
    results = [r for r in clock.results if "error" not in r]
    errors = [r["error"] for r in clock.results if "error" in r]
    if clock.error:
        errors.insert(0, clock.error)
    r = results[0] if results else {"confirmed": 0, "failed": 0, "t_end": clock.start}
    seconds = r["t_end"] - clock.start if results else None
    out = {
        "kind": "baseline", "processes": 1, "duration_s": spec.duration,
        "body_bytes": len(body_of(spec.params)),
        "offered_per_s": spec.rate,
        "confirmed": r["confirmed"], "refused": r["failed"], "in_broker": final,
        "missing": max(0, r["confirmed"] - final), "extra": max(0, final - r["confirmed"] - r["failed"]),
        "seconds": seconds,
        "confirmed_per_s": rate(r["confirmed"], seconds),
        "memory": memory, "cpu": sampler.cpu(memory, r["confirmed"]),
        "errors": errors,
    }
    if results:
        out["latency_us"] = summarize(merge_encoded([r["hist"]]))
        if spec.rate:
            out["latency_from_schedule_us"] = summarize(merge_encoded([r["hist_sched"]]))
            out["behind_schedule_max_ms"] = r["behind_max_ms"]
    return out


def _confirmer(rank: int, gate: Gate, broker, q: str, spec: ConfirmSpec) -> None:
    body = body_of(spec.params)
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    publish = ch.basic_publish
    hist = new_hist()
    record = hist.record_value
    confirmed = failed = 0
    t_start = gate.wait_start()
    extra = {}
    if spec.rate is None:
        clock = time.perf_counter_ns
        deadline = clock() + int(spec.duration * 1e9)
        while True:
            t0 = clock()
            try:
                publish("", q, body, PROPERTIES)
                confirmed += 1
            except (pika.exceptions.NackError, pika.exceptions.UnroutableError):
                failed += 1
            t1 = clock()
            record(t1 - t0 or 1)
            if t1 >= deadline:
                break
    else:
        schedule = Schedule(int(t_start * 1e9), int(1e9 / spec.rate), int(spec.duration * spec.rate))
        for scheduled, now in schedule:
            try:
                publish("", q, body, PROPERTIES)
                confirmed += 1
            except (pika.exceptions.NackError, pika.exceptions.UnroutableError):
                failed += 1
            t1 = time.monotonic_ns()
            record(t1 - now or 1)
            schedule.done(scheduled, t1)
        extra = schedule.figures()
    t_end = time.monotonic()
    gate.finish({"rank": rank, "confirmed": confirmed, "failed": failed, "hist": hist.encode(),
                 "t_start": t_start, "t_end": t_end, **extra})
    conn.close()

