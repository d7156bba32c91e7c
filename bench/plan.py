"""What a run does: the steps of a full or a smoke run, in order.

Ours and the baselines are interleaved, so that a noisy neighbour on this
shared machine hits both sides of a ratio alike.  Every step has an id
(``async.p4``, ``b2.p4``, ``sync.fixed``...), a group (``--only``) and a kind
(``ours`` or ``baseline``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench import baselines, scenarios
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
    std = params_for_size(None)
    steps: list[Step] = []
    add = steps.append

    if _want("throughput", only):
        for p in cfg["frontends"]:
            if p == KEY_FRONTENDS:
                add(Step("b1", "throughput", "baseline", f"B1: 1 process, basic_publish loop, {n:,} events",
                         _publish(1, n, std)))
            add(Step(f"async.p{p}", "throughput", "ours", f"async, {p} front-end(s), {n:,} events",
                     _async(p, n, std), meta={"frontends": p}))
            if p == KEY_FRONTENDS:
                # The cost of the event-name header, measured: it is the broker's.
                add(Step(f"async.p{p}.noheader", "throughput", "ours",
                         f"async, {p} front-ends, event_header=False, {n:,} events",
                         _async(p, n, std, settings={"event_header": False}), meta={"frontends": p}))
            add(Step(f"b2.p{p}", "throughput", "baseline",
                     f"B2: {p} process(es), own connection each, {n:,} events",
                     _publish(p, n, std, timed=True), meta={"processes": p}))
        if KEY_FRONTENDS not in cfg["frontends"]:
            add(Step("b1", "throughput", "baseline", f"B1: 1 process, basic_publish loop, {n:,} events",
                     _publish(1, n, std)))

    if _want("sync", only):
        secs = cfg["sync_seconds"]
        add(Step("b3", "sync", "baseline", f"B3: 1 process, confirm each publish, {secs:g} s",
                 _confirm(secs, std), unit="seconds"))
        for c in cfg["sync_callers"]:
            add(Step(f"sync.p{c}", "sync", "ours", f"sync, {c} caller(s) in a loop, {secs:g} s",
                     _sync(c, secs, std), unit="seconds", meta={"callers": c}))
        fc, fr, fs = cfg["fixed_callers"], cfg["fixed_rate"], cfg["fixed_seconds"]
        offered = fc * fr
        add(Step("sync.fixed", "sync", "ours", f"sync, {offered:,.0f} events/s offered by {fc} callers, {fs:g} s",
                 _sync(fc, fs, std, rate=fr), unit="seconds", meta={"offered": offered}))
        add(Step("b3.fixed", "sync", "baseline", f"B3 at {offered:,.0f} events/s offered, {fs:g} s",
                 _confirm(fs, std, rate=offered), unit="seconds", meta={"offered": offered}))

    if _want("body", only):
        for size in cfg["body_sizes"]:
            count = max(200, n // 20) if size > 4096 else max(200, n // 2)
            params = params_for_size(size)
            add(Step(f"b1.body{size}", "body", "baseline", f"B1, {size:,} B bodies, {count:,} events",
                     _publish(1, count, params), meta={"body": size}))
            add(Step(f"async.body{size}", "body", "ours",
                     f"async, {KEY_FRONTENDS} front-ends, {size:,} B bodies, {count:,} events",
                     _async(KEY_FRONTENDS, count, params), meta={"body": size}))

    if _want("fanout", only):
        for k in cfg["fanouts"]:
            count = max(100, n // k)
            add(Step(f"b1.fanout{k}", "fanout", "baseline",
                     f"B1, {k} publishes per event, {count:,} events", _publish(1, count, std, fanout=k),
                     meta={"fanout": k}))
            add(Step(f"async.fanout{k}", "fanout", "ours",
                     f"async, {KEY_FRONTENDS} front-ends, {k} subscriber(s), {count:,} events",
                     _async(KEY_FRONTENDS, count, std, fanout=k), meta={"fanout": k}))

    if _want("memory", only):
        m = rss_events or cfg["rss_events"]
        add(Step("memory.frontend", "memory", "ours", f"1 front-end raising {m:,} async events (paced)",
                 _rss(m, std), meta={"events": m}))
    return steps


def _want(group: str, only: set[str] | None) -> bool:
    return not only or group in only


def _async(p, n, params, fanout=1, settings=None):
    return lambda env, progress, results: scenarios.run_async(
        env, scenarios.AsyncSpec(p, n, params, fanout=fanout, settings=settings or {}), progress)


def _sync(c, secs, params, rate=None):
    return lambda env, progress, results: scenarios.run_sync(
        env, scenarios.SyncSpec(c, secs, params, rate=rate), progress)


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
