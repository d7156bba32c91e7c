"""The bench's two charts: async events/s against front-ends, and the sync latency distribution."""

from __future__ import annotations

import os
import re
from pathlib import Path

from bench.plan import KEY_FRONTENDS
from bench.report import B4_ASYNC, n0
from bench.verdicts import TARGETS


def charts(directory: str | os.PathLike, res: dict, subtitle: str) -> list[str]:
    """throughput.png and sync_latency.png in ``directory``; returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for draw, name in ((_throughput, "throughput.png"), (_sync_latency, "sync_latency.png")):
        fig = draw(plt, res, subtitle)
        if fig is not None:
            fig.tight_layout()
            fig.savefig(directory / name)
            plt.close(fig)
            written.append(str(directory / name))
    return written


def _throughput(plt, res: dict, subtitle: str):
    from matplotlib.ticker import FuncFormatter

    ps = sorted(int(k[len("async.p"):]) for k in res if re.fullmatch(r"async\.p\d+", k))
    if not ps:
        return None
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
    tops = ours + [v for _, v in b2]
    for rate, style, label in _lines(res):
        ax.axhline(rate, color=style[0], ls=style[1], lw=1.8, label=label)
        tops.append(rate)
    b4 = res.get(B4_ASYNC, {}).get("events_per_s")
    if b4 and KEY_FRONTENDS in ps:
        want = TARGETS["async_vs_b4"] * b4
        ax.plot([KEY_FRONTENDS], [want], marker="*", ms=13, ls="none", color="#2ca02c",
                label=f"target at {KEY_FRONTENDS} front-ends: {TARGETS['async_vs_b4']:g}x B4 ({want:,.0f})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ps)
    ax.set_xticklabels([str(p) for p in ps])
    ax.set_xlabel("processes raising / publishing (P)")
    ax.set_ylabel("events/s until the broker holds all")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    ax.set_ylim(bottom=0, top=max(tops) * 1.18)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Async throughput into RabbitMQ\n" + subtitle, fontsize=10)
    return fig


def _lines(res: dict):
    """The one-process baselines, as horizontal lines: ``(rate, (colour, style), label)``."""
    out = []
    b4 = res.get(B4_ASYNC, {}).get("events_per_s")
    if b4:
        window = res[B4_ASYNC]["window"]
        out.append((b4, ("#2ca02c", "-."), f"B4: rabbitmq-c, our guarantees, window {window:,} ({b4:,.0f})"))
    b1 = res.get("b1", {}).get("events_per_s")
    if b1:
        out.append((b1, ("#7f7f7f", ":"), f"B1: 1 process, pika basic_publish loop, no confirms ({b1:,.0f})"))
    return out


SYNC_SERIES = (
    ("sync.p8", "latency_us", "opsevent sync, 8 callers in a loop", ("#1f77b4", "-", "o")),
    ("b3", "latency_us", "B3: confirm each publish, 1 process in a loop", ("#d62728", "-", "s")),
    ("sync.fixed", "latency_from_schedule_us", "opsevent sync, {offered}/s offered (from schedule)",
     ("#1f77b4", "--", "^")),
    ("b3.fixed", "latency_from_schedule_us", "B3 at {offered}/s offered (from schedule)", ("#d62728", "--", "v")),
)


def _sync_latency(plt, res: dict, subtitle: str):
    from matplotlib.ticker import FuncFormatter, LogLocator

    series = []
    for key, field, label, style in SYNC_SERIES:
        summary = (res.get(key) or {}).get(field) or {}
        if summary.get("distribution_us"):
            offered = n0((res.get(key) or {}).get("offered_per_s"))
            series.append((label.format(offered=offered), summary["distribution_us"], style))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    for label, dist, (color, ls, marker) in series:
        xs = [1.0 / (1.0 - p / 100.0) for p, _ in dist]
        ys = [v / 1000.0 for _, v in dist]
        ax.plot(xs, ys, ls=ls, marker=marker, ms=3.5, color=color, lw=1.8, label=label)
    limit = TARGETS["sync_fixed_p99_ms"]
    ax.axhline(limit, color="#2ca02c", ls="-.", lw=1, alpha=0.7, label=f"target: p99 <= {limit:g} ms at the offered load")
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
    return fig
