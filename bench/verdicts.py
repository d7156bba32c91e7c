"""The targets of issue #14, each a verdict from this run: PASS, MISS, or n/a when its runs are missing.

The yardstick is B4, the C client with our guarantees, measured in the same
run.  Issue #14 replaced the pika-relative targets (async >= 2x B1, sync >=
3x B3, caller p99 <= 20 µs and <= 1/10 of B2's): ``SUPERSEDED`` says so in
the output; B1, B2 and B3 stay in the tables as reference points.
"""

from __future__ import annotations

from bench.plan import B4_ASYNC_WINDOW, B4_SYNC_WINDOW, KEY_CALLERS, KEY_FRONTENDS, SYNC_AWAITS, SYNC_THREADS
from bench.report import B4_ASYNC, B4_SYNC, MIB, mib, ms, n0, ratio, rx, us

TARGETS = dict(async_vs_b4=0.9, sync_vs_b4=0.5, caller_p99_us=10.0, worker_us_per_event=8.0,
               sync_fixed_p99_ms=5.0, worker_rss_mib=64.0, frontend_growth_mib=5.0,
               frontend_events=1_000_000)
SUPERSEDED = ("superseded by issue #14's targets against B4: async >= 2x B1, sync >= 3x B3, "
              "async caller p99 <= 20 µs and <= 1/10 of B2's")
ASYNC, SYNC = f"async.p{KEY_FRONTENDS}", f"sync.p{KEY_CALLERS}"


def targets(res: dict) -> list[dict]:
    """Every target as ``{"target", "verdict", "detail"}``, in the issue's order."""
    return [_verdict(*v) for v in (
        _async_vs_b4(res), _sync_vs_b4(res),
        _no_collapse(res, f"sync.t{SYNC_THREADS}", f"{SYNC_THREADS} threads of one process"),
        _no_collapse(res, f"sync.a{SYNC_AWAITS}", f"{SYNC_AWAITS} concurrent asyncio awaits in one process"),
        _caller_p99(res), _worker_cpu(res), _sync_fixed(res), _worker_rss(res), _frontend_growth(res),
        _none_missing(res))]


def _verdict(name: str, ok: bool | None, detail: str, run: str | None = None) -> dict:
    """``run``: the step whose events/s or confirmed/s is judged (docs/benchmark.md says what limited it)."""
    return {"target": name, "verdict": "n/a" if ok is None else ("PASS" if ok else "MISS"), "detail": detail,
            "run": run}


def _against_b4(ours: dict | None, b4: dict | None, field: str, want: float) -> tuple[bool | None, str]:
    """``ours[field]`` as a ratio of B4's, with the figures; n/a (and why) when either is missing."""
    if b4 and b4.get("unavailable"):
        return None, f"B4 not measured: {b4['unavailable'].splitlines()[0]}"
    r = ratio((ours or {}).get(field), (b4 or {}).get("events_per_s"))
    return (None if r is None else r >= want,
            f"{rx(r)} ({n0((ours or {}).get(field))} vs {n0((b4 or {}).get('events_per_s'))}/s)")


def _async_vs_b4(res: dict):
    ok, detail = _against_b4(res.get(ASYNC), res.get(B4_ASYNC), "events_per_s", TARGETS["async_vs_b4"])
    return (f"async, {KEY_FRONTENDS} front-ends: >= {TARGETS['async_vs_b4']:g}x B4's in-broker events/s "
            f"(window {B4_ASYNC_WINDOW:,})", ok, detail, ASYNC)


def _sync_vs_b4(res: dict):
    s = res.get(SYNC) or {}
    ok, detail = _against_b4(s, res.get(B4_SYNC), "confirmed_per_s", TARGETS["sync_vs_b4"])
    failed = s.get("refused")
    return (f"sync, {KEY_CALLERS} callers: >= {TARGETS['sync_vs_b4']:g}x B4's events/s (window "
            f"{B4_SYNC_WINDOW}), every success confirmed", None if ok is None else ok and failed == 0,
            f"{detail}, {'—' if failed is None else failed} not confirmed", SYNC)


def _no_collapse(res: dict, key: str, who: str):
    ours, base = res.get(key) or {}, res.get(SYNC) or {}
    r = ratio(ours.get("confirmed_per_s"), base.get("confirmed_per_s"))
    failed = ours.get("refused")
    return (f"sync from {who}: at least the {KEY_CALLERS}-process figure, every success confirmed",
            None if r is None else r >= 1.0 and failed == 0,
            f"{rx(r)} ({n0(ours.get('confirmed_per_s'))} vs {n0(base.get('confirmed_per_s'))} confirmed/s), "
            f"{'—' if failed is None else failed} not confirmed", key)


def _caller_p99(res: dict):
    caller = (res.get(ASYNC) or {}).get("caller_us") or {}
    p99 = caller.get("p99_us")
    return (f"async raise_event in the caller ({KEY_FRONTENDS} front-ends): p99 <= {TARGETS['caller_p99_us']:g} µs",
            None if p99 is None else p99 <= TARGETS["caller_p99_us"],
            f"p99 {us(p99)} µs (p50 {us(caller.get('p50_us'))} µs)")


def _worker_cpu(res: dict):
    per = (((res.get(ASYNC) or {}).get("cpu") or {}).get("us_per_event") or {}).get("worker")
    return (f"RabbitMQ worker CPU per async event ({KEY_FRONTENDS} front-ends) <= "
            f"{TARGETS['worker_us_per_event']:g} µs", None if per is None else per <= TARGETS["worker_us_per_event"],
            f"{us(per)} µs")


def _sync_fixed(res: dict):
    fx = res.get("sync.fixed") or {}
    sched = (fx.get("latency_from_schedule_us") or {}).get("p99_us")
    call = (fx.get("latency_us") or {}).get("p99_us")
    return (f"sync at {n0(fx.get('offered_per_s') or 1000)} events/s offered: p99 <= "
            f"{TARGETS['sync_fixed_p99_ms']:g} ms",
            None if sched is None else sched <= TARGETS["sync_fixed_p99_ms"] * 1000 and not fx.get("refused"),
            f"p99 {ms(sched)} ms from the schedule ({ms(call)} ms from the call), "
            f"{fx.get('refused', 0) if fx else '—'} not confirmed")


def _worker_rss(res: dict):
    peaks = [(k, ((r.get("memory") or {}).get("worker") or {}).get("hwm_kib")) for k, r in res.items()
             if r.get("kind") == "ours"]
    peaks = [kv for kv in peaks if kv[1]]
    worst = max(peaks, key=lambda kv: kv[1]) if peaks else None
    return (f"RSS of the worker <= {TARGETS['worker_rss_mib']:g} MiB in every scenario",
            None if worst is None else worst[1] <= TARGETS["worker_rss_mib"] * MIB,
            f"worst {mib(worst[1])} in {worst[0]}" if worst else "no scenario run")


def _frontend_growth(res: dict):
    mem = res.get("memory.frontend")
    fe = ((mem or {}).get("frontend_rss") or [{}])[0]
    growth = fe.get("growth_kib")
    full = bool(mem) and mem.get("events", 0) >= TARGETS["frontend_events"]
    detail = (f"growth {mib(growth)} over {mem['events']:,} events ({mib(fe.get('rss_start_kib'))} -> "
              f"{mib(fe.get('rss_end_kib'))}), refused {mem.get('refused', 0)}"
              + ("" if full else " (a shortened run)")) if mem else "not run"
    return (f"a front-end's RSS grows <= {TARGETS['frontend_growth_mib']:g} MiB over "
            f"{TARGETS['frontend_events']:,} events",
            None if growth is None else growth <= TARGETS["frontend_growth_mib"] * MIB and not mem.get("refused"),
            detail)


def _none_missing(res: dict):
    ours = {k: v for k, v in res.items() if v.get("kind") == "ours"}
    missing = sum(v.get("missing") or 0 for v in ours.values())
    again = sum(v.get("refused") or 0 for v in ours.values() if v.get("raised_again_when_full"))
    lost = sum(v.get("refused") or 0 for v in ours.values() if not v.get("raised_again_when_full"))
    base_missing = sum(v.get("missing") or 0 for v in res.values() if v.get("kind") == "baseline")
    return ("no event missing in any scenario", (missing == 0) if ours else None,
            f"{missing} missing over {len(ours)} scenarios (accepted by raise_event but not in the broker); "
            f"{lost:,} raises failed in paced/sync runs; {again:,} raises refused with queue full while "
            f"flooding (raised again); baselines: {base_missing} missing")
