"""Results: one line per step, the summary tables, printing them, JSON.

The target verdicts are in ``bench.verdicts``, the charts in ``bench.charts``,
what limits each figure in ``bench.limits``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bench import limits
from bench.plan import B4_ASYNC_WINDOW, B4_SYNC_WINDOW

MIB = 1024  # KiB per MiB
B4_ASYNC, B4_SYNC = f"b4.w{B4_ASYNC_WINDOW}", f"b4.w{B4_SYNC_WINDOW}"
# The CPU table shows these groups' runs, and the heaviest body and fan-out.
LIMITS_GROUPS = ("throughput", "sync")
LIMITS_TOO = ("async.body16384", "b1.body16384", "async.fanout16", "b1.fanout16")


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
    held = (result.get("worker_backlog_max") or {}).get("inflight") or result.get("max_outstanding")
    if held:
        parts.append(f"{'worker ' if result.get('kind') == 'ours' else ''}held up to {held:,} unconfirmed")
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
    if result.get("unavailable"):
        return "NOT MEASURED: " + result["unavailable"].splitlines()[0]
    return ", ".join(parts)


# -- tables ----------------------------------------------------------------------------------

Table = tuple[str, list[str], list[list[str]]]


def tables(res: dict) -> list[Table]:
    """``[(title, headers, rows)]`` from ``{step id: result}``; tables without rows left out."""
    made = (_async_table(res), _sync_table(res), _body_table(res), _fanout_table(res),
            _limits_table(res), _memory_table(res))
    return [t for t in made if t[2]]


def _async_table(res: dict) -> Table:
    b1, b4 = figure(res.get("b1")), figure(res.get(B4_ASYNC))
    rows = []
    if "b1" in res:
        rows.append(["B1: 1 process, basic_publish loop", n0(b1), "—", "—", "—", _miss(res["b1"])])
    if B4_ASYNC in res:
        rows.append([_b4_label(res[B4_ASYNC]), _b4_rate(res[B4_ASYNC]), "—", "—", "—", _miss(res[B4_ASYNC])])
    for p in sorted(int(k[len("async.p"):]) for k in res if re.fullmatch(r"async\.p\d+", k)):
        b2 = res.get(f"b2.p{p}")
        for key, name in ((f"async.p{p}", f"opsevent async, {p} front-end{'s' if p > 1 else ''}"),
                          (f"async.p{p}.noheader", f"opsevent async, {p} front-ends, event_header=False")):
            if key in res:
                r = res[key]
                rows.append([name, n0(figure(r)), _ratios(figure(r), (("B4", b4), ("B1", b1), ("B2", figure(b2)))),
                             quad(r.get("caller_us")), _refused(r), _miss(r)])
        if b2:
            rows.append([f"B2: {p} process{'es' if p > 1 else ''}, own connection each", n0(figure(b2)), "—",
                         quad(b2.get("caller_us")), "—", _miss(b2)])
    return ("Async throughput (events/s until the broker holds all) and caller cost",
            ["run", "events/s", "ratio", "caller blocked p50 / p99 / p99.9 / max (µs)",
             "queue full (raised again)", "missing"], rows)


def _sync_table(res: dict) -> Table:
    b3, b4 = figure(res.get("b3")), figure(res.get(B4_SYNC))
    rows = []
    if "b3" in res:
        rows.append(["B3: 1 process, confirm_delivery, wait for each ack", n0(b3), "—",
                     quad(res["b3"].get("latency_us"), ms), str(res["b3"].get("refused", 0)), _miss(res["b3"])])
    if B4_SYNC in res:
        rows.append([_b4_label(res[B4_SYNC]), _b4_rate(res[B4_SYNC]), "—", "—",
                     str(res[B4_SYNC].get("nacked", 0) + res[B4_SYNC].get("returned", 0)), _miss(res[B4_SYNC])])
    for r in res.values():
        if r.get("mode") == "sync" and not r.get("offered_per_s"):
            rows.append([f"opsevent sync, {_callers(r)}", n0(figure(r)),
                         _ratios(figure(r), (("B4", b4), ("B3", b3))), quad(r.get("latency_us"), ms),
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
    return ("Sync mode (each raise waits for the broker's confirm)",
            ["run", "confirmed/s", "ratio", "latency p50 / p99 / p99.9 / max (ms)", "failed", "missing"], rows)


def _body_table(res: dict) -> Table:
    rows = []
    for size in sorted(int(k[len("async.body"):]) for k in res if k.startswith("async.body")):
        ours, base = res[f"async.body{size}"], res.get(f"b1.body{size}", {})
        mbs = (ours.get("events_per_s") or 0) * size / 1e6
        rows.append([_size(size), n0(ours.get("events_per_s")), n0(base.get("events_per_s")),
                     rx(ratio(ours.get("events_per_s"), base.get("events_per_s"))), f"{mbs:,.1f}",
                     mib((ours.get("memory") or {}).get("worker", {}).get("hwm_kib")),
                     _refused(ours), _miss(ours)])
    return ("Body size (opsevent: 4 front-ends; B1: 1 process)",
            ["body", "opsevent events/s", "B1 events/s", "ratio", "opsevent MB/s",
             "worker peak RSS", "queue full (raised again)", "missing"], rows)


def _fanout_table(res: dict) -> Table:
    rows = []
    for k in sorted(int(key[len("async.fanout"):]) for key in res if key.startswith("async.fanout")):
        ours, base = res[f"async.fanout{k}"], res.get(f"b1.fanout{k}", {})
        rows.append([str(k), f"{n0(ours.get('events_per_s'))} ({n0(ours.get('messages_per_s'))})",
                     f"{n0(base.get('events_per_s'))} ({n0(base.get('messages_per_s'))})",
                     rx(ratio(ours.get("events_per_s"), base.get("events_per_s"))), _refused(ours),
                     _miss(ours)])
    return ("Fan-out (subscribers per event; opsevent: 4 front-ends, B1: one publish per queue)",
            ["subscribers", "opsevent events/s (messages/s)", "B1 events/s (messages/s)", "ratio",
             "queue full (raised again)", "missing"], rows)


def _limits_table(res: dict) -> Table:
    """Every throughput and sync figure (and the largest body and fan-out): CPU per event, and its limit."""
    rows = []
    for key, r in sorted(res.items(), key=_limits_order):
        cpu = r.get("cpu") or {}
        if not cpu.get("us_per_event") or not (r.get("group") in LIMITS_GROUPS or key in LIMITS_TOO):
            continue
        per = cpu["us_per_event"]
        client = sum(v for k, v in per.items() if k in ("frontend", "caller", "publisher"))
        rows.append([key, n0(figure(r)), us(per.get("worker")), us(client), us(per.get("beam")),
                     f"{cpu['machine_busy_s'] / cpu['capacity_s']:.0%}" if cpu.get("capacity_s") else "—",
                     f"{cpu['others_s'] / cpu['capacity_s']:.0%}" if cpu.get("capacity_s") else "—",
                     limits.bound(r)])
    return (f"Where the CPU goes (µs per event over the run's window; the machine has {os.cpu_count()} cores) "
            "and what limits each figure (cores used)",
            ["run", "events/s", "RabbitMQ worker", "front-ends / callers / publishers", "broker (beam.smp)",
             "machine busy", "other processes", "limited by"], rows)


def _limits_order(item) -> tuple:
    """By group, ours before the baselines, then by the number in the id (front-ends, callers...)."""
    key, r = item
    group = LIMITS_GROUPS.index(r["group"]) if r.get("group") in LIMITS_GROUPS else len(LIMITS_GROUPS)
    number = re.search(r"\d+", key.split(".", 1)[-1])
    return group, r.get("kind") != "ours", key.split(".")[0], int(number.group()) if number else 0, key


def _memory_table(res: dict) -> Table:
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
    return ("Memory", ["process", "RSS", "where"], rows)


def figure(r: dict | None) -> float | None:
    """A run's figure: events/s into the broker, or confirmed/s (sync)."""
    r = r or {}
    return r.get("events_per_s") if r.get("events_per_s") is not None else r.get("confirmed_per_s")


def _ratios(ours, bases) -> str:
    shown = [f"{rx(ratio(ours, base))} {name}" for name, base in bases if base]
    return ", ".join(shown) or "—"


def _callers(r: dict) -> str:
    if r.get("awaits"):
        return f"{r['awaits']} asyncio tasks of 1 process awaiting araise_event"
    if (r.get("threads") or 1) > 1:
        return f"{r['threads']} threads of 1 process in a loop"
    c = r.get("callers")
    return f"{c} caller{'s' if c > 1 else ''} in a loop"


def _b4_label(r: dict) -> str:
    return (f"B4: rabbitmq-c, confirms streamed ({r['window']:,} unconfirmed at most), mandatory, "
            "our properties")


def _b4_rate(r: dict) -> str:
    return "not built" if r.get("unavailable") else n0(figure(r))


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


# -- output ------------------------------------------------------------------------------------

TEXT_COLUMNS = ("limited by", "where")  # left-aligned, as the first column; figures are right-aligned


def print_summary(console, tabs, verdicts, note: str = "") -> None:
    from rich.table import Table
    from rich.text import Text
    for title, headers, rows in tabs:
        table = Table(title=title, title_justify="left", show_lines=False)
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i == 0 or h in TEXT_COLUMNS else "right", overflow="fold")
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
    if note:
        console.print(Text(f"  ({note})"))


def markdown(tabs, verdicts, note: str = "") -> str:
    parts = []
    for title, headers, rows in tabs:
        parts.append(f"**{title}**\n")
        parts.append("| " + " | ".join(headers) + " |")
        parts.append("|" + "|".join("---" if i == 0 or h in TEXT_COLUMNS else "---:"
                                    for i, h in enumerate(headers)) + "|")
        for row in rows:
            parts.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        parts.append("")
    parts.append("**Targets**\n")
    for v in verdicts:
        parts.append(f"- **{v['verdict']}** {v['target']}: {v['detail']}")
    if note:
        parts.append(f"\n({note})")
    return "\n".join(parts) + "\n"


def write_json(path: str | os.PathLike, doc: dict) -> None:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
