"""The guide's example 1.5 under sipp: the SIP server's speed, and its behaviour at overload.

``run(broker, rate=None, limit=32, duration=10, processes=4)`` drives the
example SIP server (workers/demo/sip.py, N front-ends) with sipp sending MESSAGE
requests, at most *limit* outstanding (sipp ``-l``) and as fast as that
allows when *rate* is None, and returns events/s into the queue and sipp's
response-time percentiles.  It does not consume the queue.

``overload(broker, rate, ...)`` runs open-loop at *rate* (no ``-l``),
consumes every event and returns the exactness figures too: duplicate
events, answered MESSAGEs without their event, shed (503) MESSAGEs with one.

``ceiling(broker, limit=32, ...)`` runs the ``-l`` scenario against the same
server made to raise nothing (``SipServer(raise_events=False)``: each MESSAGE
answered 200 as if its event were queued) and returns the answers/s: what
sipp and the SIP server alone reach on this machine, the bound of any
events/s figure.

    python -m bench.sip_scenario [--limit 32] [--duration 10] [--runs 3] [--ceiling 1] [--overload 2.0] [--json FILE]

starts its own private broker, runs the ``-l`` scenario *runs* times (``--limit 128``
for the run sipp's clock does not cap), the ceiling *ceiling* times, then
the overload case at ``--overload`` times the best sustained events/s, and
prints them all.  Peer on this machine kind (shared/notes/perf-anchors.md):
Kamailio 5.6 with its rabbitmq module, 3,100-3,500 events/s in the ``-l 32``
scenario, with duplicate events past ~3,000/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import uuid

import workers
from workers.demo import sipdemo
from workers.demo.broker import PrivateBroker, delete_queue

# Events/s targets per sipp -l: with -l 32 sipp itself caps the scenario near 8,000/s
# (its clock moves in 4 ms steps, docs/sip-demo.md); -l 128 lifts that cap.
TARGET_EVENTS_PER_S = {32: 7000, 128: 22000}
TARGET_P99_MS = 20


def _figures(r: sipdemo.DemoResult) -> dict:
    sp = r.sipp
    out = {
        "rate": r.rate,
        "limit": r.limit,
        "duration": r.duration,
        "processes": r.processes,
        "sent": sp.created,
        "retransmissions": sp.stat("Retransmissions(C)"),
        "answered_200": len(sp.ok),
        "answered_503": len(sp.shed),
        "failed_calls": sp.stat("FailedCall(C)"),
        "events": r.events,
        "events_per_s": round(r.events_per_s, 1),
        "answered_per_s": round(len(sp.ok) / sp.elapsed, 1) if sp.elapsed else None,
        "window_s": round(r.window, 3),
        "p50_ms": sp.percentile(50),
        "p90_ms": sp.percentile(90),
        "p99_ms": sp.percentile(99),
        "max_ms": max(sp.rtt_ms) if sp.rtt_ms else None,
        "server": r.server,
        "cores": r.machine.get("cores"),
        "others_cores": r.machine.get("others_cores"),
        "cpu_us_per_event": {kind: round(seconds / r.events * 1e6, 1) if r.events else None
                             for kind, seconds in r.cpu.items()},
        "cpu_us_per_answer": {kind: round(seconds / len(sp.ok) * 1e6, 1) if sp.ok else None
                              for kind, seconds in r.cpu.items()},
    }
    out.update({k: v for k, v in r.checks.items()})
    return out


def _own_queue_run(broker, **options) -> dict:
    """``sipdemo.run(broker, **options)`` on a queue of its own, deleted afterwards; its figures."""
    queue = f"sipbench-{uuid.uuid4().hex[:12]}"
    try:
        return _figures(sipdemo.run(broker, queue=queue, **options))
    finally:
        delete_queue(broker, queue)


def run(broker, rate=None, limit=32, duration=10, processes=4) -> dict:
    """One run against *broker*; its events are counted in the queue, not consumed."""
    return _own_queue_run(broker, rate=rate, duration=duration, processes=processes, limit=limit,
                          consume_events=False)


def ceiling(broker, limit=32, duration=10, processes=4) -> dict:
    """One ``-l`` run whose server raises nothing: sipp's answers/s with the same server."""
    f = _own_queue_run(broker, rate=None, limit=limit, duration=duration, processes=processes,
                       consume_events=False, raise_events=False)
    if f["events"] or f["server"].get("events"):
        raise RuntimeError(f"the ceiling run raised events ({f['events']} in the queue): it must raise none")
    return f


def overload(broker, rate, duration=10, processes=4, limit=None) -> dict:
    """Open loop at *rate*; every event consumed and checked."""
    return _own_queue_run(broker, rate=int(rate), duration=duration, processes=processes, limit=limit,
                          consume_events=True)


def _shed(server: dict) -> str:
    """Why the server answered 503: a MESSAGE too old when read, or the job queue full."""
    age, queue = server.get("shed_age", 0), server.get("shed_queue", 0)
    text = f"server shed {age + queue:,}"
    return text if not age + queue else f"{text}: {age:,} waited over shed_age, {queue:,} found the job queue full"


def _line(name: str, f: dict) -> str:
    text = (f"{name}: {f['events_per_s']:,.0f} events/s ({f['events']:,} events), sent {f['sent']:,} "
            f"+ {f['retransmissions']:,} retransmissions, 200 {f['answered_200']:,}, 503 {f['answered_503']:,} "
            f"({_shed(f['server'])}), p50/p90/p99/max {f['p50_ms']}/{f['p90_ms']}/{f['p99_ms']}/{f['max_ms']} ms")
    if "duplicate_events" in f:
        text += (f"; duplicates {f['duplicate_events']}, 200 without event {f['answered_200_without_event']}, "
                 f"503 with event {f['shed_503_with_event']}, exact {f['ok']}")
    cpu = ", ".join(f"{k} {v}" for k, v in f["cpu_us_per_event"].items())
    return text + (f"\n    CPU us/event: {cpu}; other processes on the machine used "
                   f"{f['others_cores']:.2f} of {f['cores']} cores meanwhile")


def _ceiling_line(name: str, f: dict) -> str:
    cpu = ", ".join(f"{k} {v}" for k, v in f["cpu_us_per_answer"].items() if k in ("front-ends", "sipp"))
    return (f"{name}: {f['answered_per_s']:,.0f} MESSAGEs/s answered 200 ({f['answered_200']:,}), no event "
            f"raised, p50/p90/p99/max {f['p50_ms']}/{f['p90_ms']}/{f['p99_ms']}/{f['max_ms']} ms"
            f"\n    CPU us/answer: {cpu}; other processes on the machine used "
            f"{f['others_cores']:.2f} of {f['cores']} cores meanwhile")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sip_scenario", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3, help="runs of the -l scenario (default 3)")
    parser.add_argument("--ceiling", type=int, default=1,
                        help="runs of the -l scenario whose server raises nothing: the bound set by "
                             "sipp and the SIP server alone (default 1; 0 skips)")
    parser.add_argument("--overload", type=float, default=2.0,
                        help="overload rate as a multiple of the median -l events/s (0: skip; default 2)")
    parser.add_argument("--overload-rate", type=int, help="overload at this rate instead (MESSAGE/s)")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=workers.base.logs.FORMAT)
    results = {"limit_runs": [], "ceiling_runs": [], "overload": None}
    with PrivateBroker() as broker:
        for i in range(args.runs):
            f = run(broker, rate=None, limit=args.limit, duration=args.duration, processes=args.processes)
            results["limit_runs"].append(f)
            print(_line(f"-l {args.limit} run {i + 1}", f), flush=True)
        for i in range(args.ceiling):
            f = ceiling(broker, limit=args.limit, duration=args.duration, processes=args.processes)
            results["ceiling_runs"].append(f)
            print(_ceiling_line(f"-l {args.limit} ceiling {i + 1}", f), flush=True)
        runs = results["limit_runs"]
        sustained = statistics.median(f["events_per_s"] for f in runs) if runs else 0
        results["sustained_events_per_s"] = sustained
        if args.overload_rate or (args.overload and sustained):
            rate = args.overload_rate or int(sustained * args.overload)
            f = overload(broker, rate, duration=args.duration, processes=args.processes)
            results["overload"] = f
            print(_line(f"overload {rate:,}/s ({rate / sustained if sustained else 0:.2f}x the median "
                        f"{sustained:,.0f} events/s)", f), flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    target = TARGET_EVENTS_PER_S.get(args.limit)
    if target is None:
        print(f"-l {args.limit}: no target set for this limit (targets: "
              f"{', '.join(f'-l {k} {v:,}/s' for k, v in TARGET_EVENTS_PER_S.items())})")
    else:
        met = [f["events_per_s"] >= target and (f["p99_ms"] or 0) <= TARGET_P99_MS
               for f in results["limit_runs"]]
        print(f"-l {args.limit}: {sum(met)} of {len(met)} runs at >= {target:,} events/s with "
              f"p99 <= {TARGET_P99_MS} ms (peer: Kamailio 5.6, 3,100-3,500 events/s at -l 32)")
    if results["ceiling_runs"]:
        best = max(f["answered_per_s"] for f in results["ceiling_runs"])
        print(f"-l {args.limit}: raising no event, sipp and this SIP server reached at most {best:,.0f} "
              f"MESSAGEs/s on this machine: no events/s figure of this scenario can be higher"
              + (f" (target {target:,})" if target else ""))
    if results["overload"] is not None:
        f = results["overload"]
        print(f"overload: {f['duplicate_events']} duplicate events, "
              f"{f['answered_200_without_event']} answered without event, "
              f"{f['shed_503_with_event']} shed with event: {'exact' if f['ok'] else 'NOT exact'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
