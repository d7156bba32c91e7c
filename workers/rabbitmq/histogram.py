"""Fixed-bucket histograms the RabbitMQ worker keeps, as plain data for its stats file.

The worker times what only it sees (a broker's confirms, a sync caller's
wait) and writes the counts with its other counters every second; whoever
reads the stats file (``workers.control.metrics``, any process) turns them into
Prometheus histograms.  So the buckets are fixed here, the same in every
process and every worker: an observation is one ``bisect`` and one list
increment, with nothing allocated, and two histograms of the same kind add
up bucket by bucket.
"""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds in seconds ("le": a value equal to a bound counts in its bucket);
# from a confirm on loopback (~0.2 ms) to a sync caller's longest sensible wait.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)


class Histogram:
    """Counts per bucket and a sum; ``observe(value, n)`` counts ``n`` equal values at once."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def snapshot(self) -> dict:
        """``{"bounds", "counts", "sum"}``: per-bucket counts, not cumulative (``merge`` adds them)."""
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}


def merge(snapshots: list[dict]) -> dict | None:
    """Several snapshots of the same buckets as one; None for none, or for buckets that differ."""
    if not snapshots:
        return None
    bounds = snapshots[0]["bounds"]
    if any(s["bounds"] != bounds for s in snapshots):
        return None
    return {"bounds": list(bounds), "counts": [sum(c) for c in zip(*(s["counts"] for s in snapshots))],
            "sum": sum(s["sum"] for s in snapshots)}


def quantile_bound(snapshot: dict, q: float) -> float:
    """The upper bound of the bucket holding quantile *q* (0..1); ``inf`` above the last bound."""
    counts = snapshot["counts"]
    rank, seen = q * sum(counts), 0
    for bound, count in zip(list(snapshot["bounds"]) + [float("inf")], counts):
        seen += count
        if seen >= rank and count:
            return bound
    return float("inf")
