"""What a run does: the steps of a full or a smoke run, in order.

Ours and the baselines are interleaved, so that a noisy neighbour on this
shared machine hits both sides of a ratio alike.  Every step has an id
(``async.p4``, ``b2.p4``, ``sync.fixed``...), a group (``--only``) and a kind
(``ours`` or ``baseline``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench import b4, baselines, scenarios
from bench.measure import params_for_size

GROUPS = ("throughput", "sync", "body", "fanout", "memory")

FULL = dict(frontends=(1, 2, 4, 8, 16), sync_callers=(1, 8, 32), sync_seconds=5.0,
            fixed_callers=8, fixed_rate=125.0, fixed_seconds=10.0,
            body_sizes=(100, 1024, 16384), fanouts=(1, 4, 16), rss_events=1_000_000)
SMOKE = dict(frontends=(1, 4), sync_callers=(1, 8), sync_seconds=0.5,
             fixed_callers=8, fixed_rate=25.0, fixed_seconds=1.0,
             body_sizes=(100, 1024, 16384), fanouts=(1, 4, 16), rss_events=5_000)
FULL_EVENTS, SMOKE_EVENTS = 200_000, 2_000
KEY_FRONTENDS = 4  # the throughput and caller-cost targets are at 4 front-ends
KEY_CALLERS = 8    # the sync target is at 8 callers
# B4's windows (most messages unconfirmed): the async worker's backlog, and 8
# sync callers each waiting for one confirm.
B4_ASYNC_WINDOW, B4_SYNC_WINDOW = 10_000, KEY_CALLERS
SYNC_THREADS, SYNC_AWAITS = 64, 256  # in one process: "no collapse" against KEY_CALLERS processes


@dataclass
class Step:
    id: str
    group: str
    kind: str           # "ours" or "baseline"
    label: str
    run: object         # run(env, progress) -> dict
    unit: str = "events"
    meta: dict = field(default_factory=dict)


def build(smoke: bool, events: int | None, only: set[str] | None, rss_events: int | None = None) -> list[Step]:
    cfg = SMOKE if smoke else FULL
    n = events or (SMOKE_EVENTS if smoke else FULL_EVENTS)
    groups = (("throughput", _throughput_steps), ("sync", _sync_steps), ("body", _body_steps),
              ("fanout", _fanout_steps), ("memory", _memory_steps))
    steps: list[Step] = []
    for group, make in groups:
        if not only or group in only:
            steps += make(cfg, n, rss_events)
    return steps


def _throughput_steps(cfg: dict, n: int, _unused_rss_events) -> list[Step]:
    std = params_for_size(None)
    b1 = Step("b1", "throughput", "baseline", f"B1: 1 process, basic_publish loop, {n:,} events",
              _publish(1, n, std))
    steps = [] if KEY_FRONTENDS in cfg["frontends"] else [b1]
    for p in cfg["frontends"]:
        if p == KEY_FRONTENDS:
            steps.append(b1)
        steps.append(Step(f"async.p{p}", "throughput", "ours", f"async, {p} front-end(s), {n:,} events",
                          _async(p, n, std), meta={"frontends": p}))
        if p == KEY_FRONTENDS:
            steps.append(_b4_step("throughput", n, B4_ASYNC_WINDOW, std))
            # The cost of the event-name header, measured: it is the broker's.
            steps.append(Step(f"async.p{p}.noheader", "throughput", "ours",
                              f"async, {p} front-ends, event_header=False, {n:,} events",
                              _async(p, n, std, settings={"event_header": False}), meta={"frontends": p}))
        steps.append(Step(f"b2.p{p}", "throughput", "baseline", f"B2: {p} process(es), own connection each, "
                          f"{n:,} events", _publish(p, n, std, timed=True), meta={"processes": p}))
    return steps


def _sync_steps(cfg: dict, n: int, _unused_rss_events) -> list[Step]:
    std, secs = params_for_size(None), cfg["sync_seconds"]
    steps = [Step("b3", "sync", "baseline", f"B3: 1 process, confirm each publish, {secs:g} s",
                  _confirm(secs, std), unit="seconds")]
    for c in cfg["sync_callers"]:
        steps.append(Step(f"sync.p{c}", "sync", "ours", f"sync, {c} caller(s) in a loop, {secs:g} s",
                          _sync(c, secs, std), unit="seconds", meta={"callers": c}))
        if c == KEY_CALLERS:
            steps += [
                _b4_step("sync", n, B4_SYNC_WINDOW, std),
                Step(f"sync.t{SYNC_THREADS}", "sync", "ours",
                     f"sync, {SYNC_THREADS} threads of 1 process in a loop, {secs:g} s",
                     _sync(1, secs, std, threads=SYNC_THREADS), unit="seconds"),
                Step(f"sync.a{SYNC_AWAITS}", "sync", "ours",
                     f"sync, {SYNC_AWAITS} asyncio tasks of 1 process awaiting araise_event, {secs:g} s",
                     _sync(1, secs, std, awaits=SYNC_AWAITS), unit="seconds")]
    fc, fr, fs = cfg["fixed_callers"], cfg["fixed_rate"], cfg["fixed_seconds"]
    offered = fc * fr
    return steps + [
        Step("sync.fixed", "sync", "ours", f"sync, {offered:,.0f} events/s offered by {fc} callers, {fs:g} s",
             _sync(fc, fs, std, rate=fr), unit="seconds", meta={"offered": offered}),
        Step("b3.fixed", "sync", "baseline", f"B3 at {offered:,.0f} events/s offered, {fs:g} s",
             _confirm(fs, std, rate=offered), unit="seconds", meta={"offered": offered})]


def _body_steps(cfg: dict, n: int, _unused_rss_events) -> list[Step]:
    steps = []
    for size in cfg["body_sizes"]:
        count = max(200, n // 20) if size > 4096 else max(200, n // 2)
        params = params_for_size(size)
        steps.append(Step(f"b1.body{size}", "body", "baseline", f"B1, {size:,} B bodies, {count:,} events",
                          _publish(1, count, params), meta={"body": size}))
        steps.append(Step(f"async.body{size}", "body", "ours",
                          f"async, {KEY_FRONTENDS} front-ends, {size:,} B bodies, {count:,} events",
                          _async(KEY_FRONTENDS, count, params), meta={"body": size}))
    return steps


def _fanout_steps(cfg: dict, n: int, _unused_rss_events) -> list[Step]:
    std, steps = params_for_size(None), []
    for k in cfg["fanouts"]:
        count = max(100, n // k)
        steps.append(Step(f"b1.fanout{k}", "fanout", "baseline", f"B1, {k} publishes per event, {count:,} events",
                          _publish(1, count, std, fanout=k), meta={"fanout": k}))
        steps.append(Step(f"async.fanout{k}", "fanout", "ours",
                          f"async, {KEY_FRONTENDS} front-ends, {k} subscriber(s), {count:,} events",
                          _async(KEY_FRONTENDS, count, std, fanout=k), meta={"fanout": k}))
    return steps


def _memory_steps(cfg: dict, _unused_n, rss_events: int | None) -> list[Step]:
    m = rss_events or cfg["rss_events"]
    return [Step("memory.frontend", "memory", "ours", f"1 front-end raising {m:,} async events (paced)",
                 _rss(m, params_for_size(None)), meta={"events": m})]


def _async(p, n, params, fanout=1, settings=None):
    return lambda env, progress, results: scenarios.run_async(
        env, scenarios.AsyncSpec(p, n, params, fanout=fanout, settings=settings or {}), progress)


def _sync(c, secs, params, rate=None, threads=1, awaits=0):
    return lambda env, progress, results: scenarios.run_sync(
        env, scenarios.SyncSpec(c, secs, params, rate=rate, threads=threads, awaits=awaits), progress)


def _b4_step(group, n, window, params) -> Step:
    return Step(f"b4.w{window}", group, "baseline",
                f"B4: rabbitmq-c, confirms streamed ({window:,} unconfirmed at most), mandatory, "
                f"our properties, {n:,} events",
                lambda env, progress, results: b4.run_b4(env, b4.B4Spec(n, window, params), progress),
                meta={"window": window})


def _publish(p, n, params, fanout=1, timed=False):
    return lambda env, progress, results: baselines.run_publish(
        env, baselines.PublishSpec(p, n, params, fanout=fanout, timed=timed), progress)


def _confirm(secs, params, rate=None):
    return lambda env, progress, results: baselines.run_confirm(
        env, baselines.ConfirmSpec(secs, params, rate=rate), progress)


RSS_RATE_DEFAULT, RSS_RATE_MIN, RSS_RATE_MAX = 15_000.0, 12_000.0, 30_000.0
RSS_PACE = 0.6  # of async.p1's events/s in this run


def _rss(m, params):
    def run(env, progress, results):
        # Paced well below what one front-end reached in this run, so the worker
        # keeps up (on a quiet machine): the figure is growth, not a backlog.
        measured = (results.get("async.p1") or {}).get("events_per_s")
        rate = RSS_RATE_DEFAULT if not measured else min(RSS_RATE_MAX, max(RSS_RATE_MIN, RSS_PACE * measured))
        out = scenarios.run_async(env, scenarios.AsyncSpec(1, m, params, rate=rate, retry_full=False),
                                  progress)
        out["paced_rate_reason"] = (f"{RSS_PACE:g} x async.p1's events/s in this run" if measured
                                    else "default (async.p1 not run)")
        return out
    return run
