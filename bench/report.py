"""Results: one line per step, the summary tables, the target verdicts, JSON, charts."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

MIB = 1024  # KiB per MiB

TARGETS = dict(async_vs_b1=2.0, caller_p99_us=20.0, caller_vs_b2=10.0, sync_vs_b3=3.0,
               sync_fixed_p99_ms=5.0, worker_rss_mib=64.0, frontend_growth_mib=5.0,
               frontend_events=1_000_000)


# -- formatting ----------------------------------------------------------------------------

def n0(x) -> str:
    return "—" if x is None else f"{x:,.0f}"


def us(x) -> str:
    if x is None:
        return "—"
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def ms(x_us) -> str:
    if x_us is None:
        return "—"
    x = x_us / 1000.0
    return f"{x:.2f}" if x < 10 else f"{x:,.1f}"


def quad(summary: dict | None, unit=us) -> str:
    """p50 / p99 / p99.9 / max of a latency summary (in µs), formatted with ``unit``."""
    if not summary or not summary.get("count"):
        return "—"
    return " / ".join(unit(summary.get(k)) for k in ("p50_us", "p99_us", "p99.9_us", "max_us"))


def ratio(a, b) -> float | None:
    if a is None or not b:
        return None
    return a / b


def rx(x) -> str:
    return "—" if x is None else f"{x:.2f}x"


def mib(kib) -> str:
    return "—" if kib is None else f"{kib / MIB:.1f} MiB"


def one_line(result: dict) -> str:
    """What the progress display prints when a step ends."""
    parts = []
    if result.get("events_per_s") is not None:
        parts.append(f"{n0(result['events_per_s'])} events/s in broker")
        if result.get("fanout", 1) > 1:
            parts.append(f"{n0(result['messages_per_s'])} messages/s")
    if result.get("confirmed_per_s") is not None:
        parts.append(f"{n0(result['confirmed_per_s'])} confirmed/s")
    for key, name in (("caller_us", "blocked"), ("latency_us", "latency")):
        if result.get(key, {}).get("count"):
            parts.append(f"{name} p50/p99/p99.9/max {quad(result[key])} µs")
    if result.get("latency_from_schedule_us", {}).get("count"):
        parts.append(f"from schedule {quad(result['latency_from_schedule_us'])} µs")
    fe = result.get("frontend_rss") or []
    if result.get("paced_rate_per_frontend") and fe:
        growth = fe[0].get("growth_kib")
        parts.append(f"front-end RSS {mib(fe[0].get('rss_start_kib'))} -> {mib(fe[0].get('rss_end_kib'))} "
                     f"(growth {mib(growth)})")
    worker = (result.get("memory") or {}).get("worker")
    if worker and worker.get("hwm_kib"):
        parts.append(f"worker peak RSS {mib(worker['hwm_kib'])}")
    if result.get("max_in_transit"):
        parts.append(f"up to {result['max_in_transit']:,} in transit")
    held = (result.get("worker_backlog_max") or {}).get("inflight")
    if held:
        parts.append(f"worker held up to {held:,} unconfirmed")
    cpu = result.get("cpu") or {}
    if cpu.get("capacity_s"):
        parts.append(f"CPU by others {cpu['others_s'] / cpu['capacity_s']:.0%}")
    parts.append(f"missing {result.get('missing', '?')}")
    refused = result.get("refused")
    if refused:
        again = " (raised again)" if result.get("raised_again_when_full") else ""
        parts.append(f"refused {refused:,}{again}")
    if result.get("errors"):
        parts.append("ERROR: " + result["errors"][0].splitlines()[0])
    return ", ".join(parts)


# -- tables ----------------------------------------------------------------------------------

def tables(res: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """``[(title, headers, rows)]`` from ``{step id: result}``."""
    out = []
    b1 = res.get("b1", {}).get("events_per_s")

    rows = []
    if "b1" in res:
        rows.append(["B1: 1 process, basic_publish loop", n0(b1), "—", "—", "—", _miss(res["b1"])])
    for p in sorted(int(k[len("async.p"):]) for k in res if re.fullmatch(r"async\.p\d+", k)):
        ours, b2 = res.get(f"async.p{p}", {}), res.get(f"b2.p{p}", {})
        r1, r2 = ratio(ours.get("events_per_s"), b1), ratio(ours.get("events_per_s"), b2.get("events_per_s"))
        rows.append([f"opsevent async, {p} front-end{'s' if p > 1 else ''}", n0(ours.get("events_per_s")),
                     f"{rx(r1)} B1, {rx(r2)} B2", quad(ours.get("caller_us")), _refused(ours), _miss(ours)])
        bare = res.get(f"async.p{p}.noheader")
        if bare:
            rows.append([f"opsevent async, {p} front-ends, event_header=False", n0(bare.get("events_per_s")),
                         f"{rx(ratio(bare.get('events_per_s'), b1))} B1", quad(bare.get("caller_us")),
                         _refused(bare), _miss(bare)])
        if b2:
            rows.append([f"B2: {p} process{'es' if p > 1 else ''}, own connection each",
                         n0(b2.get("events_per_s")), "—", quad(b2.get("caller_us")), "—", _miss(b2)])
    if rows:
        out.append(("Async throughput (events/s until the broker holds all) and caller cost",
                    ["run", "events/s", "ratio", "caller blocked p50 / p99 / p99.9 / max (µs)",
                     "queue full (raised again)", "missing"], rows))

    rows = []
    b3 = res.get("b3", {}).get("confirmed_per_s")
    if "b3" in res:
        rows.append(["B3: 1 process, confirm_delivery, wait for each ack", n0(b3), "—",
                     quad(res["b3"].get("latency_us"), ms), str(res["b3"].get("refused", 0)), _miss(res["b3"])])
    for c in sorted(int(k.split(".p")[1]) for k in res if k.startswith("sync.p")):
        r = res[f"sync.p{c}"]
        rows.append([f"opsevent sync, {c} caller{'s' if c > 1 else ''} in a loop", n0(r.get("confirmed_per_s")),
                     f"{rx(ratio(r.get('confirmed_per_s'), b3))} B3", quad(r.get("latency_us"), ms),
                     str(r.get("refused", 0)), _miss(r)])
    for key, who in (("sync.fixed", "opsevent sync"), ("b3.fixed", "B3")):
        r = res.get(key)
        if not r:
            continue
        by = f" by {r['callers']} callers" if r.get("callers") else ""
        rows.append([f"{who}, {n0(r.get('offered_per_s'))}/s offered{by}: from schedule",
                     n0(r.get("confirmed_per_s")), "—", quad(r.get("latency_from_schedule_us"), ms),
                     str(r.get("refused", 0)), _miss(r)])
        rows.append([f"{who}, {n0(r.get('offered_per_s'))}/s offered{by}: from the call", "", "",
                     quad(r.get("latency_us"), ms), "", ""])
    if rows:
        out.append(("Sync mode (each raise waits for the broker's confirm)",
                    ["run", "confirmed/s", "ratio", "latency p50 / p99 / p99.9 / max (ms)", "failed", "missing"],
                    rows))

    rows = []
    for size in sorted(int(k[len("async.body"):]) for k in res if k.startswith("async.body")):
        ours, base = res[f"async.body{size}"], res.get(f"b1.body{size}", {})
        mbs = (ours.get("events_per_s") or 0) * size / 1e6
        rows.append([_size(size), n0(ours.get("events_per_s")), n0(base.get("events_per_s")),
                     rx(ratio(ours.get("events_per_s"), base.get("events_per_s"))), f"{mbs:,.1f}",
                     mib((ours.get("memory") or {}).get("worker", {}).get("hwm_kib")),
                     _refused(ours), _miss(ours)])
    if rows:
        out.append(("Body size (opsevent: 4 front-ends; B1: 1 process)",
                    ["body", "opsevent events/s", "B1 events/s", "ratio", "opsevent MB/s",
                     "worker peak RSS", "queue full (raised again)", "missing"], rows))

    rows = []
    for k in sorted(int(key[len("async.fanout"):]) for key in res if key.startswith("async.fanout")):
        ours, base = res[f"async.fanout{k}"], res.get(f"b1.fanout{k}", {})
        rows.append([str(k), f"{n0(ours.get('events_per_s'))} ({n0(ours.get('messages_per_s'))})",
                     f"{n0(base.get('events_per_s'))} ({n0(base.get('messages_per_s'))})",
                     rx(ratio(ours.get("events_per_s"), base.get("events_per_s"))), _refused(ours),
                     _miss(ours)])
    if rows:
        out.append(("Fan-out (subscribers per event; opsevent: 4 front-ends, B1: one publish per queue)",
                    ["subscribers", "opsevent events/s (messages/s)", "B1 events/s (messages/s)", "ratio",
                     "queue full (raised again)", "missing"], rows))

    rows = []
    for key in ("b1", "async.p1", "async.p4", "async.p4.noheader", "async.p16", "b2.p4", "b3", "sync.p8", "sync.p32", "sync.fixed",
                "b3.fixed", "async.body16384", "b1.body16384", "async.fanout16", "b1.fanout16"):
        r = res.get(key)
        cpu = (r or {}).get("cpu") or {}
        if not cpu.get("us_per_event"):
            continue
        per = cpu["us_per_event"]
        client = sum(v for k, v in per.items() if k in ("frontend", "caller", "publisher"))
        rows.append([key, us(per.get("worker")), us(client), us(per.get("beam")),
                     f"{(cpu['machine_busy_s'] / cpu['capacity_s']):.0%}" if cpu.get("capacity_s") else "—",
                     f"{(cpu['others_s'] / cpu['capacity_s']):.0%}" if cpu.get("capacity_s") else "—"])
    if rows:
        out.append(("Where the CPU goes (CPU µs per event over the run's window; the machine has "
                    f"{os.cpu_count()} cores)",
                    ["run", "RabbitMQ worker", "front-ends / callers / publishers", "broker (beam.smp)",
                     "machine busy", "other processes"], rows))

    rows = []
    worst = _worst_worker(res)
    if worst:
        rows.append(["RabbitMQ worker: peak RSS (VmHWM), worst scenario", mib(worst[1]), worst[0]])
        for group, prefix in (("throughput", "async.p"), ("sync", "sync."), ("body", "async.body"),
                              ("fan-out", "async.fanout")):
            peaks = [(k, _worker_hwm(r)) for k, r in res.items() if k.startswith(prefix) and _worker_hwm(r)]
            if peaks:
                k, v = max(peaks, key=lambda kv: kv[1])
                rows.append([f"RabbitMQ worker: peak RSS, {group} scenarios", mib(v), k])
    held = [(k, (r.get("worker_backlog_max") or {}).get("inflight") or 0) for k, r in res.items()]
    held = [kv for kv in held if kv[1]]
    if held:
        k, v = max(held, key=lambda kv: kv[1])
        rows.append(["RabbitMQ worker: most events held unconfirmed (sampled ~1/s)", f"{v:,} events", k])
    fe4 = res.get("async.p4", {}).get("frontend_rss") or []
    if fe4:
        rows.append(["front-end: peak RSS (async, 4 front-ends)",
                     mib(max(f.get("hwm_kib") or 0 for f in fe4)), "async.p4"])
    mem = res.get("memory.frontend")
    if mem and mem.get("frontend_rss"):
        f = mem["frontend_rss"][0]
        rows.append([f"front-end: RSS over {mem['events']:,} events (start -> end)",
                     f"{mib(f.get('rss_start_kib'))} -> {mib(f.get('rss_end_kib'))}",
                     f"growth {mib(f.get('growth_kib'))}, peak {mib(f.get('hwm_kib'))}, "
                     f"paced {n0(mem.get('paced_rate_per_frontend'))}/s, at most "
                     f"{n0(mem.get('max_in_transit'))} events in transit, refused {mem.get('refused', 0)}"])
    if rows:
        out.append(("Memory", ["process", "RSS", "where"], rows))
    return out


def _size(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def _refused(r: dict) -> str:
    """Raises refused with "queue full" (a flooding front-end raised the event again)."""
    if not r:
        return "—"
    n = r.get("refused") or 0
    total = (r.get("accepted") or 0) + n
    return f"{n:,} ({n / total:.0%})" if n and total else "0"


def _miss(r: dict) -> str:
    if not r:
        return "—"
    return str(r.get("missing", "?"))


def _worker_hwm(r: dict):
    return ((r.get("memory") or {}).get("worker") or {}).get("hwm_kib")


def _worst_worker(res: dict):
    peaks = [(k, _worker_hwm(r)) for k, r in res.items() if r.get("kind") == "ours" and _worker_hwm(r)]
    return max(peaks, key=lambda kv: kv[1]) if peaks else None


# -- targets -----------------------------------------------------------------------------------

def targets(res: dict) -> list[dict]:
    """Every target of the issue as a verdict: PASS, MISS, or n/a when its runs are missing."""
    t = TARGETS
    out = []

    def add(name, ok, detail):
        out.append({"target": name, "verdict": "n/a" if ok is None else ("PASS" if ok else "MISS"),
                    "detail": detail})

    a4, b1, b2 = res.get("async.p4"), res.get("b1"), res.get("b2.p4")
    r = ratio((a4 or {}).get("events_per_s"), (b1 or {}).get("events_per_s"))
    add(f"async, 4 front-ends: >= {t['async_vs_b1']:.1f}x B1's in-broker events/s",
        None if r is None else r >= t["async_vs_b1"],
        f"{rx(r)} ({n0((a4 or {}).get('events_per_s'))} vs {n0((b1 or {}).get('events_per_s'))} events/s)")

    p99 = ((a4 or {}).get("caller_us") or {}).get("p99_us")
    add(f"async raise_event in the caller (4 front-ends): p99 <= {t['caller_p99_us']:g} µs",
        None if p99 is None else p99 <= t["caller_p99_us"],
        f"p99 {us(p99)} µs (p50 {us(((a4 or {}).get('caller_us') or {}).get('p50_us'))} µs)")
    b2p99 = ((b2 or {}).get("caller_us") or {}).get("p99_us")
    r = ratio(b2p99, p99)
    add(f"async raise_event p99 <= 1/{t['caller_vs_b2']:g} of B2's caller p99 (4 processes)",
        None if r is None else r >= t["caller_vs_b2"],
        f"B2 p99 / ours = {rx(r)} ({us(b2p99)} vs {us(p99)} µs)")

    s8, b3 = res.get("sync.p8"), res.get("b3")
    r = ratio((s8 or {}).get("confirmed_per_s"), (b3 or {}).get("confirmed_per_s"))
    failed = (s8 or {}).get("refused")
    add(f"sync, 8 callers: >= {t['sync_vs_b3']:g}x B3's confirmed events/s, every success confirmed",
        None if r is None else (r >= t["sync_vs_b3"] and failed == 0),
        f"{rx(r)} ({n0((s8 or {}).get('confirmed_per_s'))} vs {n0((b3 or {}).get('confirmed_per_s'))} "
        f"confirmed/s), {'—' if failed is None else failed} not confirmed")

    fx = res.get("sync.fixed")
    sched = ((fx or {}).get("latency_from_schedule_us") or {}).get("p99_us")
    call = ((fx or {}).get("latency_us") or {}).get("p99_us")
    add(f"sync at {n0((fx or {}).get('offered_per_s') or 1000)} events/s offered: p99 <= "
        f"{t['sync_fixed_p99_ms']:g} ms",
        None if sched is None else (sched <= t["sync_fixed_p99_ms"] * 1000 and not fx.get("refused")),
        f"p99 {ms(sched)} ms from the schedule ({ms(call)} ms from the call), {fx.get('refused', 0) if fx else '—'} "
        f"not confirmed")

    worst = _worst_worker(res)
    add(f"RSS of the worker <= {t['worker_rss_mib']:g} MiB in every scenario",
        None if worst is None else worst[1] <= t["worker_rss_mib"] * MIB,
        f"worst {mib(worst[1])} in {worst[0]}" if worst else "no scenario run")

    mem = res.get("memory.frontend")
    fe = ((mem or {}).get("frontend_rss") or [{}])[0]
    growth = fe.get("growth_kib")
    full = bool(mem) and mem.get("events", 0) >= t["frontend_events"]
    add(f"a front-end's RSS grows <= {t['frontend_growth_mib']:g} MiB over {t['frontend_events']:,} events",
        None if growth is None else (growth <= t["frontend_growth_mib"] * MIB and not mem.get("refused")),
        (f"growth {mib(growth)} over {mem['events']:,} events "
         f"({mib(fe.get('rss_start_kib'))} -> {mib(fe.get('rss_end_kib'))}), refused {mem.get('refused', 0)}"
         + ("" if full else " (a shortened run)")) if mem else "not run")

    ours = {k: v for k, v in res.items() if v.get("kind") == "ours"}
    missing = sum(v.get("missing") or 0 for v in ours.values())
    again = sum(v.get("refused") or 0 for v in ours.values() if v.get("raised_again_when_full"))
    lost = sum(v.get("refused") or 0 for v in ours.values() if not v.get("raised_again_when_full"))
    base_missing = sum(v.get("missing") or 0 for v in res.values() if v.get("kind") == "baseline")
    add("no event missing in any scenario", (missing == 0) if ours else None,
        f"{missing} missing over {len(ours)} scenarios (accepted by raise_event but not in the broker); "
        f"{lost:,} raises failed in paced/sync runs; {again:,} raises refused with queue full while "
        f"flooding (raised again); baselines: {base_missing} missing")
    return out


# -- output ------------------------------------------------------------------------------------

def print_summary(console, tabs, verdicts) -> None:
    from rich.table import Table
    from rich.text import Text
    for title, headers, rows in tabs:
        table = Table(title=title, title_justify="left", show_lines=False)
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print(Text("Targets", style="bold"))
    for v in verdicts:
        style = {"PASS": "bold green", "MISS": "bold red"}.get(v["verdict"], "yellow")
        line = Text()
        line.append(f"  {v['verdict']:<4} ", style=style)
        line.append(f"{v['target']}: {v['detail']}")
        console.print(line)


def markdown(tabs, verdicts) -> str:
    parts = []
    for title, headers, rows in tabs:
        parts.append(f"**{title}**\n")
        parts.append("| " + " | ".join(headers) + " |")
        parts.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
        for row in rows:
            parts.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        parts.append("")
    parts.append("**Targets**\n")
    for v in verdicts:
        parts.append(f"- **{v['verdict']}** {v['target']}: {v['detail']}")
    return "\n".join(parts) + "\n"


def write_json(path: str | os.PathLike, doc: dict) -> None:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


# -- charts ------------------------------------------------------------------------------------

def charts(directory: str | os.PathLike, res: dict, subtitle: str) -> list[str]:
    """throughput.png and sync_latency.png in ``directory``; returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    thousands = FuncFormatter(lambda v, _pos: f"{v:,.0f}")

    ps = sorted(int(k[len("async.p"):]) for k in res if re.fullmatch(r"async\.p\d+", k))
    if ps:
        fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
        ours = [res[f"async.p{p}"].get("events_per_s") or 0 for p in ps]
        ax.plot(ps, ours, "o-", color="#1f77b4", lw=2.2, label="opsevent async (P front-ends -> 1 worker)")
        for p, v in zip(ps, ours):
            ax.annotate(f"{v:,.0f}", (p, v), textcoords="offset points", xytext=(0, 7), ha="center",
                        fontsize=8, color="#1f77b4")
        b2 = [(p, res[f"b2.p{p}"].get("events_per_s")) for p in ps if res.get(f"b2.p{p}", {}).get("events_per_s")]
        if b2:
            ax.plot([p for p, _ in b2], [v for _, v in b2], "s--", color="#d62728", lw=1.8,
                    label="B2: P processes, own BlockingConnection each")
        b1 = res.get("b1", {}).get("events_per_s")
        if b1:
            ax.axhline(b1, color="#7f7f7f", ls=":", lw=1.8, label=f"B1: 1 process, basic_publish loop ({b1:,.0f})")
            if 4 in ps:
                ax.plot([4], [2 * b1], marker="*", ms=13, ls="none", color="#2ca02c",
                        label=f"target at 4 front-ends: 2x B1 ({2 * b1:,.0f})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ps)
        ax.set_xticklabels([str(p) for p in ps])
        ax.set_xlabel("processes raising / publishing (P)")
        ax.set_ylabel("events/s until the broker holds all")
        ax.yaxis.set_major_formatter(thousands)
        ax.set_ylim(bottom=0, top=max(ours + [v for _, v in b2] + [2 * (b1 or 0)]) * 1.18)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title("Async throughput into RabbitMQ\n" + subtitle, fontsize=10)
        written.append(_save(plt, fig, directory / "throughput.png"))

    series = []
    for key, field, label, style in (
            ("sync.p8", "latency_us", "opsevent sync, 8 callers in a loop", ("#1f77b4", "-", "o")),
            ("b3", "latency_us", "B3: confirm each publish, 1 process in a loop", ("#d62728", "-", "s")),
            ("sync.fixed", "latency_from_schedule_us", "opsevent sync, {offered}/s offered (from schedule)",
             ("#1f77b4", "--", "^")),
            ("b3.fixed", "latency_from_schedule_us", "B3 at {offered}/s offered (from schedule)",
             ("#d62728", "--", "v"))):
        summary = (res.get(key) or {}).get(field) or {}
        if summary.get("distribution_us"):
            offered = n0((res.get(key) or {}).get("offered_per_s"))
            series.append((label.format(offered=offered), summary["distribution_us"], style))
    if series:
        fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
        for label, dist, (color, ls, marker) in series:
            xs = [1.0 / (1.0 - p / 100.0) for p, _ in dist]
            ys = [v / 1000.0 for _, v in dist]
            ax.plot(xs, ys, ls=ls, marker=marker, ms=3.5, color=color, lw=1.8, label=label)
        ax.axhline(5.0, color="#2ca02c", ls="-.", lw=1, alpha=0.7, label="target: p99 <= 5 ms at the offered load")
        ticks = [50, 90, 99, 99.9, 99.99, 99.999]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([1.0 / (1.0 - p / 100.0) for p in ticks])
        ax.set_xticklabels([f"{p:g}%" for p in ticks])
        ax.minorticks_off()
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.set_xlabel("percentile")
        ax.set_ylabel("raise_event / publish latency (ms)")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        ax.set_title("Sync latency distribution: opsevent vs B3\n" + subtitle, fontsize=10)
        written.append(_save(plt, fig, directory / "sync_latency.png"))
    return written


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
