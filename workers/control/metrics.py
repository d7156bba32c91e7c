"""Prometheus metrics of the RabbitMQ worker: a collector, and an HTTP endpoint that serves it.

Needs ``prometheus-client`` (the ``metrics`` extra: ``pip install opsevent[metrics]``);
nothing else in opsevent imports this module, so without it all the rest works.

Theory of operation:

* The counters live in the RabbitMQ worker, which writes them to the
  service's stats file every second (``Service.stats()``).  ``Collector``
  turns that snapshot into metric families at each scrape: it keeps no
  state and counts nothing itself, so it gives the same answer in every
  process that can read the file (the serving process, a gunicorn worker,
  a front-end), with one process or many, and without the client library's
  multiprocess mode.  The histograms (confirm latency per broker, the sync
  callers' wait) are fixed-bucket counts made in the worker
  (``workers/rabbitmq/histogram.py``).
* Labels are bounded: at most ``max_subscriptions`` (event, socket) pairs
  and ``max_brokers`` brokers get series of their own, the first ones in
  sorted order (the same choice in every process); the rest are added
  together under the label value ``_overflow``, and
  ``opsevent_metrics_overflow_series`` says how many were.  Sockets are
  shown as the worker counts them, with the password masked; brokers by
  their password-free label.
* ``MetricsServer`` answers HTTP GETs with the collector's metrics, from a
  thread of the process that started it (the ``Supervisor``'s main process,
  a ``serve()``-ing process: under gunicorn, the master).  Forked children
  close their copy of its listening socket at once (``os.register_at_fork``),
  so only that process ever holds the port.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    StateSetMetricFamily)
from prometheus_client.exposition import ThreadingWSGIServer

from workers.base import forks
from workers.control.health import CONNECTED_STATES, STALE_AFTER
from workers.rabbitmq import histogram
from workers.rabbitmq.link import LinkState

log = logging.getLogger(__name__)

MAX_SUBSCRIPTIONS = 1000  # (event, socket) label pairs with series of their own
MAX_BROKERS = 100  # broker labels with series of their own
OVERFLOW = "_overflow"  # the label value of what is over those caps, added together
LINK_STATES = tuple(state.value for state in LinkState)  # the broker_state stateset's states
REQUEST_TIMEOUT = 10.0  # seconds a scrape connection may stay silent

# Worker totals: stats key -> (metric, type, help).
TOTALS = {
    "jobs": ("opsevent_jobs", "counter", "Jobs the RabbitMQ worker took from the shared queue."),
    "queue_depth": ("opsevent_queue_depth", "gauge", "Jobs waiting in the shared queue for the RabbitMQ worker."),
    "outstanding": ("opsevent_outstanding_publishes", "gauge",
                    "Publishes handed to the broker links and not yet confirmed, refused or given up."),
    "held": ("opsevent_held_jobs", "gauge", "Jobs the RabbitMQ worker has taken and not finished."),
    "replies_sent": ("opsevent_sync_replies_sent", "counter", "Sync replies delivered to their callers."),
    "replies_lost": ("opsevent_sync_replies_lost", "counter",
                     "Sync replies that could not be delivered (the caller was gone or had given up)."),
    "lost_with_dead_workers": ("opsevent_lost_with_dead_workers", "counter",
                               "Jobs a killed RabbitMQ worker had taken and not seen confirmed."),
    "lost_with_dead_frontends": ("opsevent_lost_with_dead_frontends", "counter",
                                 "Jobs lost in the buffers of processes killed before they could hand them over."),
    "unspooled": ("opsevent_unspooled_jobs", "counter",
                  "Jobs handed over in spool files by processes that exited with jobs buffered."),
    "worker_starts": ("opsevent_worker_starts", "counter", "RabbitMQ worker processes started by the service."),
    "paused_reading": ("opsevent_paused_reading", "counter",
                       "Times the worker stopped reading the queue at its backlog or memory bound."),
    "lingered": ("opsevent_lingered", "counter",
                 "Turns of a few async jobs after which the worker left the queue unwatched for linger."),
}
OUTCOMES = ("confirmed", "nacked", "unroutable", "failed", "timeout")

# Per subscription: row key -> (metric, extra labels, help).
SUBSCRIPTION_COUNTERS = {
    "raised": ("opsevent_events_raised", {}, "Events raised for this subscriber (queued + dropped before the queue)."),
    "queued": ("opsevent_events_queued", {}, "Events that reached the RabbitMQ worker."),
    "published": ("opsevent_events_published", {}, "Messages written to the broker, republished copies included."),
    "confirmed": ("opsevent_events_confirmed", {}, "Events the broker confirmed."),
    "nacked": ("opsevent_events_nacked", {}, "Events the broker refused (nack) each time they were published."),
    "unroutable": ("opsevent_events_unroutable", {}, "Events the broker returned: no queue bound for them."),
    "failed": ("opsevent_events_failed", {}, "Events not published: connection or channel errors, too old."),
    "timeout": ("opsevent_events_timeout", {}, "Sync events whose caller gave up first (outcome unknown)."),
    "dropped_queue_full": ("opsevent_events_dropped", {"reason": "queue_full"}, None),
    "too_large": ("opsevent_events_dropped", {"reason": "too_large"}, None),
    "dropped_at_exit": ("opsevent_events_dropped", {"reason": "at_exit"}, None),
    "dropped_expired": ("opsevent_events_dropped", {"reason": "expired"}, None),
}
DROPPED_HELP = ("Events dropped: refused by a full queue, too large, left in an exiting process, "
                "or older than backlog_age (expired: also counted as failed or nacked).")

# Per broker: snapshot key -> (metric, type, help).
BROKER_VALUES = {
    "connected": ("opsevent_broker_connected", "gauge", "1 while a connection to the broker is open."),
    "connection_failed": ("opsevent_broker_connection_failed", "gauge",
                          "1 while the last connection attempt failed or the connection was lost, "
                          "until it connects again."),
    "blocked": ("opsevent_broker_blocked", "gauge", "1 while the broker refuses publishes (connection.blocked)."),
    "backlog": ("opsevent_broker_backlog", "gauge", "Events waiting for the broker: pending + in flight."),
    "pending": ("opsevent_broker_pending", "gauge", "Events not yet written to the broker."),
    "inflight": ("opsevent_broker_inflight", "gauge", "Events written and not yet confirmed."),
    "published": ("opsevent_broker_published", "counter", "Messages written to the broker."),
    "confirmed": ("opsevent_broker_confirmed", "counter", "Messages the broker confirmed."),
    "nacked": ("opsevent_broker_nacked", "counter", "Events given up as nacked."),
    "unroutable": ("opsevent_broker_unroutable", "counter", "Messages returned as unroutable."),
    "failed": ("opsevent_broker_failed", "counter", "Events given up as failed."),
    "timeout": ("opsevent_broker_timeout", "counter", "Sync events answered timeout."),
    "connects": ("opsevent_broker_connects", "counter", "Connections opened."),
    "reconnects": ("opsevent_broker_reconnects", "counter", "Connections opened after the first."),
    "connection_lost": ("opsevent_broker_connections_lost", "counter", "Open connections lost."),
    "republished": ("opsevent_broker_republished", "counter", "Unconfirmed messages published again after a loss."),
    "nack_retries": ("opsevent_broker_nack_retries", "counter", "Nacked messages published again."),
    "channels_reopened": ("opsevent_broker_channels_reopened", "counter", "Fresh channels opened after nacks."),
    "failovers": ("opsevent_broker_failovers", "counter", "Moves to another host of the socket's list."),
    "failbacks": ("opsevent_broker_failbacks", "counter", "Moves back to the primary host."),
    "dropped_expired": ("opsevent_broker_dropped_expired", "counter", "Events dropped older than backlog_age."),
}


class Collector:
    """The RabbitMQ worker's counters as Prometheus metrics, read at each scrape.

    *source*: a ``Service`` or ``Supervisor``, a served ``EventInterface``
    (it finds the service it inherited: any process forked after
    ``serve()``, a gunicorn worker too), or a callable returning the
    stats dict.  Register it in any registry::

        prometheus_client.REGISTRY.register(workers.metrics.Collector(evi))
    """

    def __init__(self, source, *, max_subscriptions: int = MAX_SUBSCRIPTIONS, max_brokers: int = MAX_BROKERS):
        self._read = _reader(source)
        self.max_subscriptions = max_subscriptions
        self.max_brokers = max_brokers

    def describe(self):
        # The families without samples: registering never reads the stats.
        return list(self._families({}, fresh=False))

    def collect(self):
        stats = self._read() or {}
        age = time.time() - stats["time"] if "time" in stats else None
        return list(self._families(stats, fresh=age is not None and age < STALE_AFTER, age=age))

    def _families(self, stats: dict, fresh: bool, age: float | None = None):
        yield GaugeMetricFamily("opsevent_worker_up", "1 when the RabbitMQ worker wrote its counters within the "
                                f"last {STALE_AFTER:g} s.", value=int(fresh))
        stats_age = GaugeMetricFamily("opsevent_stats_age_seconds", "Age of the RabbitMQ worker's counters.")
        if age is not None:
            stats_age.add_metric([], max(0.0, age))
        yield stats_age
        yield from _totals(stats)
        rows, folded_rows = _bounded(stats.get("subscriptions") or [], self.max_subscriptions,
                                     lambda r: (r.get("event", ""), r.get("socket", "")),
                                     {"event": OVERFLOW, "socket": OVERFLOW})
        yield from _subscriptions(rows)
        brokers = [_broker_row(label, b) for label, b in sorted((stats.get("brokers") or {}).items())]
        brokers, folded_brokers = _bounded(brokers, self.max_brokers, lambda r: r["broker"], {"broker": OVERFLOW})
        yield from _brokers(brokers)
        overflow = GaugeMetricFamily("opsevent_metrics_overflow_series",
                                     "Subscriptions or brokers over the label caps, added together under "
                                     f"{OVERFLOW}.", labels=["kind"])
        overflow.add_metric(["subscription"], folded_rows)
        overflow.add_metric(["broker"], folded_brokers)
        yield overflow


def _reader(source):
    """A callable returning the stats dict (``{}`` when there are none) for *source*."""
    if hasattr(source, "transport"):  # an EventInterface: whatever service serves it now
        def read():
            service = getattr(source.transport, "service", None)
            return service.stats() if service is not None else {}
        return read
    if callable(getattr(source, "stats", None)):
        return source.stats
    if callable(source):
        return source
    raise TypeError(f"Collector wants a Service, a Supervisor, an EventInterface or a callable, not {source!r}")


def _family(name: str, kind: str, help_text: str, labels=()):
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(name, help_text, labels=list(labels))


def _totals(stats: dict):
    for key, (name, kind, help_text) in TOTALS.items():
        family = _family(name, kind, help_text)
        if stats:
            family.add_metric([], stats.get(key, 0))
        yield family
    outcomes = CounterMetricFamily("opsevent_outcomes", "What became of every subscriber's copy of an event, "
                                   "by status (all subscriptions, uncapped).", labels=["status"])
    if stats:
        for status in OUTCOMES:
            outcomes.add_metric([status], stats.get(status, 0))
    yield outcomes
    yield _histogram("opsevent_sync_wait_seconds", "Seconds from a sync raise to its reply, as the worker sees "
                     "it (the reply sent, whatever its status).", [], [([], stats.get("sync_wait"))])


def _subscriptions(rows: list[dict]):
    families = {}
    for key, (name, extra, help_text) in SUBSCRIPTION_COUNTERS.items():
        if name not in families:
            families[name] = CounterMetricFamily(name, help_text or DROPPED_HELP,
                                                 labels=["event", "socket", *extra])
        for row in rows:
            families[name].add_metric([row.get("event", ""), row.get("socket", ""), *extra.values()],
                                      row.get(key, 0))
    yield from families.values()


def _broker_row(label: str, snapshot: dict) -> dict:
    """A broker's snapshot with its state as numbers (which add up over the cap) and its label."""
    state = snapshot.get("state", "")
    connected = state in CONNECTED_STATES
    return {**snapshot, "broker": label, "connected": int(connected), "blocked": int(bool(snapshot.get("blocked"))),
            "connection_failed": int(not connected and bool(snapshot.get("last_error")))}


def _brokers(rows: list[dict]):
    for key, (name, kind, help_text) in BROKER_VALUES.items():
        family = _family(name, kind, help_text, ["broker"])
        for row in rows:
            family.add_metric([row["broker"]], row.get(key, 0))
        yield family
    states = StateSetMetricFamily("opsevent_broker_state", "The broker link's state (workers/rabbitmq/link.py).",
                                  labels=["broker"])
    for row in rows:
        if row["broker"] != OVERFLOW:
            states.add_metric([row["broker"]], {s: row.get("state") == s for s in LINK_STATES})
    yield states
    yield _histogram("opsevent_broker_confirm_latency_seconds", "Seconds from writing a publish to the broker's "
                     "ack or nack, measured in the RabbitMQ worker.", ["broker"],
                     [([row["broker"]], row.get("confirm_latency")) for row in rows])


def _histogram(name: str, help_text: str, labels: list[str], series):
    family = HistogramMetricFamily(name, help_text, labels=labels)
    for values, snapshot in series:
        if snapshot:
            family.add_metric(values, _buckets(snapshot), snapshot["sum"])
    return family


def _buckets(snapshot: dict) -> list[tuple[str, int]]:
    """Per-bucket counts as Prometheus's cumulative ``le`` buckets, +Inf last."""
    out, total = [], 0
    for bound, count in zip(list(snapshot["bounds"]) + [float("inf")], snapshot["counts"]):
        total += count
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
    return out


def _bounded(rows: list[dict], cap: int, key, labels: dict) -> tuple[list[dict], int]:
    """The first *cap* rows by *key*, and the rest added into one row with *labels*; how many were."""
    rows = sorted(rows, key=key)
    if len(rows) <= cap:
        return rows, 0
    kept, over = rows[:cap], rows[cap:]
    return kept + [{**_add(over), **labels}], len(over)


def _add(rows: list[dict]) -> dict:
    """Numbers added key by key, histograms bucket by bucket; text is left out."""
    total = {}
    for key in {k for row in rows for k in row}:
        values = [row[key] for row in rows if key in row]
        if all(isinstance(v, (int, float)) for v in values):
            total[key] = sum(values)
        elif all(isinstance(v, dict) and "bounds" in v for v in values):
            merged = histogram.merge(values)
            if merged is not None:
                total[key] = merged
    return total


# ---- the HTTP endpoint -------------------------------------------------------------------


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT  # a silent client costs a thread for this long, not for ever

    def log_message(self, *_unused_args) -> None:
        pass  # a scrape a second is not worth a log line


class MetricsServer:
    """Serves ``collector`` over HTTP at *address* ``(host, port)`` (port 0: any free one), any path."""

    def __init__(self, address: tuple[str, int], collector: Collector):
        # Configuration only; start() binds.
        self.requested = tuple(address)
        self.collector = collector
        self._httpd = None
        self._thread: threading.Thread | None = None
        self._owner_pid = None

    def start(self) -> "MetricsServer":
        host, port = self.requested
        registry = CollectorRegistry(auto_describe=True)
        registry.register(self.collector)
        server_class = type("OpseventMetricsServer", (ThreadingWSGIServer,),
                            {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
        try:
            self._httpd = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_Handler)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics at {_where(host, port)}: {exc.strerror}") from None
        self._owner_pid = os.getpid()
        _OPEN.add(self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="opsevent-metrics", daemon=True)
        self._thread.start()
        log.info("serving Prometheus metrics at http://%s/metrics", _where(*self.address))
        return self

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens: the port is the bound one (for a requested port 0)."""
        return tuple(self._httpd.server_address[:2]) if self._httpd is not None else self.requested

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket; only in the process that started it."""
        httpd, self._httpd = self._httpd, None
        if httpd is None or self._owner_pid != os.getpid():
            return
        _OPEN.discard(self)
        httpd.shutdown()  # returns within the loop's poll interval: requests run in threads of their own
        httpd.server_close()
        self._thread.join(timeout)

    def _forget_after_fork(self) -> None:
        # In a forked child: close the copy of the listening socket, nothing else is ours.
        if self._httpd is not None:
            self._httpd.socket.close()
        self._httpd = self._thread = None


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# A forked child closes its copies: only the process that opened a server serves it.
_OPEN = forks.registry(MetricsServer._forget_after_fork, forget=True)
