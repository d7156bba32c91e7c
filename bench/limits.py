"""What limited each figure, from the run's own CPU measurements.

A run's ``memory`` holds each watched process's CPU seconds over the run's
window (``ProcSampler``), and ``cpu`` the window and how busy the whole
machine was.  From those, in cores (CPU seconds per second of the window):

* the machine: busy for at least MACHINE_BOUND of its cores: nothing was
  left to give, whoever used it (the "other processes" included);
* one process at CORE_BOUND of a core or more: it could not go faster.
  The worker, a front-end, a caller and a publisher run Python (or C) on one
  thread at a time; the broker is named for its one queue, which is one
  Erlang process (its channel is another): beam.smp at about one core while
  the machine has CPU to spare is that;
* neither, in a run of the sync group (a closed loop: each of N callers, or
  B4's N unconfirmed messages, waits for its confirm before the next): the
  figure is bound by waiting (round trips, wake-ups), and Little's law says
  how: N in flight / time each waits = the rate;
* neither, in a flooding run: nothing was at its limit; the nearest is named.
"""

from __future__ import annotations

import os

CORE_BOUND = 0.85
MACHINE_BOUND = 0.90
# Watched processes by kind (``ProcSampler`` names them "kind-rank"); "main" is the bench's own.
KINDS = {"beam": "broker", "worker": "RabbitMQ worker", "frontend": "front-end",
         "caller": "caller process", "publisher": "publisher process"}


def cores(r: dict) -> dict[str, float]:
    """``{process name: cores used over the run's window}``."""
    window = ((r.get("cpu") or {}).get("window_s")) or 0
    if window <= 0:
        return {}
    return {name: v["cpu_s"] / window for name, v in (r.get("memory") or {}).items() if "cpu_s" in v}


def machine_share(r: dict) -> float | None:
    cpu = r.get("cpu") or {}
    return cpu["machine_busy_s"] / cpu["capacity_s"] if cpu.get("capacity_s") else None


def bound(r: dict) -> str:
    """What limited this run's events/s (or confirmed/s), in a few words with the figures."""
    if r.get("offered_per_s") or r.get("paced_rate_per_frontend"):
        return "the offered load (paced)"
    use = cores(r)
    busy = machine_share(r)
    if not use or busy is None:
        return "—"
    note = "" if "beam" in use else "; broker CPU not measured (not on this machine)"
    if busy >= MACHINE_BOUND:
        return f"the machine: {os.cpu_count()} cores {busy:.0%} busy ({_top(use, r)}){note}"
    name, share = max(((n, c) for n, c in use.items() if n != "main"), key=lambda nc: nc[1])
    if share >= CORE_BOUND:
        what = "the broker's one queue" if name == "beam" else f"one {KINDS.get(name.split('-')[0], name)}"
        return f"{what}: {share:.2f} core ({_top(use, r)}; machine {busy:.0%}){note}"
    if r.get("group") == "sync":
        return f"waiting: {_waits(r)}no process at a core ({_top(use, r)}; machine {busy:.0%}){note}"
    return f"nothing at its limit: machine {busy:.0%} busy ({_top(use, r)}){note}"


def _top(use: dict[str, float], r: dict) -> str:
    """The broker, the worker and the busiest client process, in cores; and the others' share."""
    parts = []
    if "beam" in use:
        parts.append(f"broker {use['beam']:.2f}")
    if "worker" in use:
        parts.append(f"worker {use['worker']:.2f}")
    clients = [(n, c) for n, c in use.items() if n.split("-")[0] in ("frontend", "caller", "publisher")]
    if clients:
        name, share = max(clients, key=lambda nc: nc[1])
        kind = KINDS[name.split("-")[0]]
        parts.append(f"busiest {kind} {share:.2f}" if len(clients) > 1 else f"{kind} {share:.2f}")
    cpu = r.get("cpu") or {}
    if cpu.get("window_s"):
        parts.append(f"others {cpu['others_s'] / cpu['window_s']:.2f}")
    return ", ".join(parts)


def _waits(r: dict) -> str:
    """Little's law for a closed loop: in flight / time each waits = rate."""
    in_flight = in_flight_of(r)
    per_s = r.get("events_per_s") if r.get("events_per_s") is not None else r.get("confirmed_per_s")
    if not in_flight or not per_s:
        return ""
    return f"{in_flight:,} in flight x {in_flight / per_s * 1e3:.2f} ms each = {per_s:,.0f}/s; "


def in_flight_of(r: dict) -> int | None:
    """How many raises (or publishes) wait at once in a closed-loop run of the sync group."""
    if r.get("mode") == "sync":
        return r.get("awaits") or (r.get("callers") or 0) * (r.get("threads") or 1)
    if r.get("window"):
        return r["window"]  # B4: it tops its window up as soon as a confirm comes
    if r.get("kind") == "baseline" and "confirmed_per_s" in r:
        return 1  # B3: one publish waiting for its ack
    return None
