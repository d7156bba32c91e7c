"""Metrics and health: the worker's histograms, the Prometheus collector, the endpoint, ``opsevent health``.

A real Prometheus scraping the endpoint is tests/test_prometheus.py; the
endpoint under gunicorn is tests/test_metrics_servers.py.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
from types import SimpleNamespace

import pytest
from pika import spec
from prometheus_client import CollectorRegistry, generate_latest

import opsevent
import workers
from workers.control.cli import render_stats
from workers.control.health import judge
from workers.control.metrics import OVERFLOW, Collector
from workers.demo.broker import consume, free_port
from workers.rabbitmq import histogram
from workers.rabbitmq.histogram import LATENCY_BUCKETS, Histogram, quantile_bound
from workers.rabbitmq.link import BrokerLink, Item

from helpers import opsevent_cli, wait_for
from scrape import Samples, holders, scrape

FORK = multiprocessing.get_context("fork")
LOOPBACK_ANY_PORT = ("127.0.0.1", 0)


def latency(counts: dict[float, int], total: float) -> dict:
    """A histogram snapshot with *counts* per bucket bound (inf: above the last)."""
    bounds = list(LATENCY_BUCKETS)
    per_bucket = [counts.get(b, 0) for b in bounds] + [counts.get(float("inf"), 0)]
    return {"bounds": bounds, "counts": per_bucket, "sum": total}


def a_snapshot(**overrides) -> dict:
    broker = {"state": "ready", "endpoint": "127.0.0.1:5672", "blocked": False, "pending": 2, "inflight": 3,
              "backlog": 5, "published": 12, "confirmed": 10, "connects": 2, "reconnects": 1,
              "connection_lost": 1, "republished": 1, "failovers": 0, "failbacks": 0, "nack_retries": 4,
              "last_error": "", "confirm_latency": latency({0.001: 7, 0.005: 3}, 0.02)}
    row = {"event": "E_X", "socket": "rabbitmq:ops:***@127.0.0.1:5672/q", "raised": 14, "queued": 12,
           "published": 12, "confirmed": 10, "nacked": 0, "unroutable": 0, "failed": 0, "timeout": 0,
           "dropped_expired": 0, "dropped_queue_full": 1, "too_large": 1, "dropped_at_exit": 0}
    stats = {"pid": 4242, "time": time.time(), "jobs": 12, "outstanding": 5, "queue_depth": 7, "held": 5,
             "confirmed": 10, "replies_sent": 3, "replies_lost": 1, "lost_with_dead_workers": 2,
             "unspooled": 0, "worker_starts": 1,
             "brokers": {"ops@127.0.0.1:5672/%2F": broker}, "subscriptions": [row],
             "sync_wait": latency({0.0025: 2, 0.01: 1}, 0.015)}
    stats.update(overrides)
    return stats


def exposition(collector: Collector) -> Samples:
    registry = CollectorRegistry()
    registry.register(collector)
    return Samples.parse(generate_latest(registry).decode())


# ---- the worker's histograms -------------------------------------------------------------------

def test_a_value_equal_to_a_bucket_bound_counts_in_that_bucket_and_n_values_count_at_once():
    h = Histogram((0.001, 0.01))
    h.observe(0.001)
    h.observe(0.005, 3)
    h.observe(5.0)
    assert h.snapshot() == {"bounds": [0.001, 0.01], "counts": [1, 3, 1], "sum": pytest.approx(5.016)}


def test_histograms_of_the_same_buckets_add_up_and_the_median_bucket_is_found():
    a, b = Histogram(), Histogram()
    a.observe(0.0004, 10)
    b.observe(0.2, 10)
    merged = histogram.merge([a.snapshot(), b.snapshot()])
    assert sum(merged["counts"]) == 20 and merged["sum"] == pytest.approx(2.004)
    assert quantile_bound(merged, 0.5) == 0.0005 and quantile_bound(merged, 0.99) == 0.25
    assert histogram.merge([a.snapshot(), Histogram((1.0,)).snapshot()]) is None


def a_link_with_flushes(flushes: list[tuple[int, float]]) -> tuple[BrokerLink, list]:
    """A BrokerLink (never connected) with publishes 1..N in flight, flushed as *flushes* says:
    ``(last delivery tag, seconds ago)``; and the outcomes its callback got."""
    outcomes = []
    sock = opsevent.parse_socket("rabbitmq:127.0.0.1/q")
    link = BrokerLink(sock.broker, sock.broker_label, opsevent.Settings(), ioloop=None,
                      done=lambda item, status, reason: outcomes.append((item.index, status)))
    now = time.monotonic()
    for tag in range(1, flushes[-1][0] + 1):
        link.inflight[tag] = Item(None, tag, "", "q", b"x", b"", {}, now, None)
    link._flushed.extend((tag, now - ago) for tag, ago in flushes)
    return link, outcomes


def confirm(link: BrokerLink, tag: int, multiple: bool, ack: bool = True) -> None:
    link._on_confirm(ack, tag, multiple)


def test_each_publish_is_timed_once_from_the_flush_that_wrote_it_even_when_confirms_come_out_of_order():
    link, outcomes = a_link_with_flushes([(3, 4.0), (6, 0.6), (8, 0.0)])
    confirm(link, 5, multiple=False)   # one of the second flush, ahead of the first's
    confirm(link, 7, multiple=True)    # the first, the rest of the second, and one of the third
    confirm(link, 8, multiple=False)
    h = link.confirm_latency.snapshot()
    by_bound = dict(zip(h["bounds"] + [float("inf")], h["counts"]))
    assert by_bound[5.0] == 3 and by_bound[1.0] == 3
    assert sum(n for bound, n in by_bound.items() if bound <= 0.25) == 2
    assert sum(h["counts"]) == 8 and sorted(i for i, _ in outcomes) == list(range(1, 9))
    assert not link._flushed  # every flush settled: nothing kept


def test_nacked_publishes_are_timed_too_and_a_flush_is_kept_until_all_of_it_is_settled():
    link, _outcomes = a_link_with_flushes([(4, 0.0)])
    confirm(link, 2, multiple=True, ack=False)
    assert sum(link.confirm_latency.counts) == 2
    assert [tag for tag, _when in link._flushed] == [4]  # publishes 3 and 4 still wait for theirs


# ---- the collector ---------------------------------------------------------------------------------

def test_the_collector_gives_counters_per_subscription_gauges_per_broker_and_cumulative_histograms():
    m = exposition(Collector(a_snapshot))
    sub = {"event": "E_X", "socket": "rabbitmq:ops:***@127.0.0.1:5672/q"}
    broker = {"broker": "ops@127.0.0.1:5672/%2F"}
    assert m.get_value("opsevent_worker_up") == 1
    assert m.get_value("opsevent_events_raised_total", **sub) == 14
    assert m.get_value("opsevent_events_confirmed_total", **sub) == 10
    assert m.get_value("opsevent_events_dropped_total", **sub, reason="queue_full") == 1
    assert m.get_value("opsevent_events_dropped_total", **sub, reason="too_large") == 1
    assert m.get_value("opsevent_queue_depth") == 7 and m.get_value("opsevent_held_jobs") == 5
    assert m.get_value("opsevent_sync_replies_lost_total") == 1
    assert m.get_value("opsevent_lost_with_dead_workers_total") == 2
    assert m.get_value("opsevent_outcomes_total", status="confirmed") == 10
    assert m.get_value("opsevent_outcomes_total", status="failed") == 0  # every status, from the start
    assert m.get_value("opsevent_broker_connected", **broker) == 1
    assert m.get_value("opsevent_broker_connection_failed", **broker) == 0
    assert m.get_value("opsevent_broker_backlog", **broker) == 5
    assert m.get_value("opsevent_broker_reconnects_total", **broker) == 1
    assert m.get_value("opsevent_broker_nack_retries_total", **broker) == 4
    assert m.get_value("opsevent_broker_state", **broker, opsevent_broker_state="ready") == 1
    assert m.get_value("opsevent_broker_state", **broker, opsevent_broker_state="idle") == 0
    assert m.get_value("opsevent_broker_confirm_latency_seconds_bucket", **broker, le="0.001") == 7
    assert m.get_value("opsevent_broker_confirm_latency_seconds_bucket", **broker, le="0.005") == 10
    assert m.get_value("opsevent_broker_confirm_latency_seconds_bucket", **broker, le="+Inf") == 10
    assert m.get_value("opsevent_broker_confirm_latency_seconds_count", **broker) == 10
    assert m.get_value("opsevent_sync_wait_seconds_count") == 3
    assert m.get_value("opsevent_sync_wait_seconds_sum") == pytest.approx(0.015)


def test_a_broker_that_lost_its_connection_shows_disconnected_and_failed():
    stats = a_snapshot()
    stats["brokers"]["ops@127.0.0.1:5672/%2F"].update(state="idle", last_error="connection refused")
    m = exposition(Collector(lambda: stats))
    assert m.get_value("opsevent_broker_connected", broker="ops@127.0.0.1:5672/%2F") == 0
    assert m.get_value("opsevent_broker_connection_failed", broker="ops@127.0.0.1:5672/%2F") == 1


def test_subscriptions_and_brokers_over_the_caps_are_added_under_the_overflow_label_and_counted():
    stats = a_snapshot()
    rows = [dict(stats["subscriptions"][0], event=f"E_{n:02d}") for n in range(5)]
    one = stats["brokers"]["ops@127.0.0.1:5672/%2F"]
    brokers = {f"ops@10.0.0.{n}:5672/%2F": dict(one) for n in range(4)}
    m = exposition(Collector(lambda: dict(stats, subscriptions=rows, brokers=brokers),
                             max_subscriptions=2, max_brokers=3))
    raised = m.series("opsevent_events_raised_total")
    assert len(raised) == 3
    assert m.get_value("opsevent_events_raised_total", event="E_00", socket=rows[0]["socket"]) == 14
    assert m.get_value("opsevent_events_raised_total", event=OVERFLOW, socket=OVERFLOW) == 3 * 14
    assert m.get_value("opsevent_metrics_overflow_series", kind="subscription") == 3
    assert len(m.series("opsevent_broker_backlog")) == 4
    assert m.get_value("opsevent_broker_backlog", broker=OVERFLOW) == 5
    assert m.get_value("opsevent_broker_connected", broker=OVERFLOW) == 1  # how many of them are
    assert m.get_value("opsevent_broker_confirm_latency_seconds_count", broker=OVERFLOW) == 10
    assert m.get_value("opsevent_metrics_overflow_series", kind="broker") == 1


def test_stale_or_missing_stats_say_the_worker_is_down_and_registering_reads_nothing():
    reads = []
    collector = Collector(lambda: reads.append(1) or {})
    registry = CollectorRegistry()
    registry.register(collector)
    assert reads == []  # describe() names the families without reading the stats file
    m = Samples.parse(generate_latest(registry).decode())
    assert m.get_value("opsevent_worker_up") == 0 and m.get_value("opsevent_jobs_total") is None
    old = exposition(Collector(lambda: a_snapshot(time=time.time() - 60)))
    assert old.get_value("opsevent_worker_up") == 0 and old.get_value("opsevent_stats_age_seconds") >= 60


def test_the_stats_table_sums_up_the_histograms_instead_of_showing_them_as_columns():
    text = render_stats(a_snapshot())
    assert "CONFIRM_LATENCY" not in text and "SYNC_WAIT" not in text
    latency = text.splitlines()[text.splitlines().index("latency (ms)"):]
    assert [line.split() for line in latency[1:]] == [
        ["WHAT", "COUNT", "MEAN", "P50", "P99"],
        ["confirm", "ops@127.0.0.1:5672/%2F", "10", "2.00", "<=", "1", "<=", "5"],
        ["sync", "wait", "3", "5.00", "<=", "2.5", "<=", "10"]]


# ---- health, judged from the counters ------------------------------------------------------------

def test_health_is_good_when_the_counters_are_fresh_and_every_broker_connected():
    verdict = judge(a_snapshot())
    assert verdict == {"healthy": True, "reasons": [], "pid": 4242, "age": 0.0,
                       "brokers": {"ops@127.0.0.1:5672/%2F": "ready"}}


@pytest.mark.parametrize("change, reason", [
    ({"state": "connecting"}, "broker ops@127.0.0.1:5672/%2F is not connected (connecting)"),
    ({"state": "idle", "last_error": "cannot connect: refused"},
     "broker ops@127.0.0.1:5672/%2F is not connected (idle: cannot connect: refused)"),
    ({"blocked": True}, "broker ops@127.0.0.1:5672/%2F blocks publishes (connection.blocked)"),
])
def test_health_names_each_broker_that_is_not_connected_unless_asked_for_the_worker_only(change, reason):
    stats = a_snapshot()
    stats["brokers"]["ops@127.0.0.1:5672/%2F"].update(change)
    assert judge(stats)["reasons"] == [reason]
    assert judge(stats, worker_only=True)["healthy"] is True


def test_health_is_bad_before_the_first_counters_and_when_they_are_stale():
    assert judge({})["reasons"] == ["the RabbitMQ worker has written no statistics yet (it does every second)"]
    stale = judge(a_snapshot(time=time.time() - 30), worker_only=True)
    assert not stale["healthy"] and "statistics are 30.0 s old" in stale["reasons"][0]


# ---- the endpoint and the health command, with a real worker --------------------------------------

def raise_from_children(evi, event: str, n: int, processes: int = 2) -> None:
    """*n* raises of *event* from forked processes, which exit normally (handing their jobs over)."""
    per = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    children = [FORK.Process(target=_raise_many, args=(evi, event, count)) for count in per]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0


def _raise_many(evi, event: str, count: int) -> None:
    for i in range(count):
        assert evi.raise_event(event, {"n": i})


@pytest.mark.broker
def test_serve_with_a_metrics_address_counts_every_event_raised_by_forked_processes_and_stops_with_it(
        broker, clean_queue):
    evi = opsevent.EventInterface()
    evi.subscribe_event("E_M", broker.socket(clean_queue))
    with workers.serve(evi, metrics_address=LOOPBACK_ANY_PORT) as service:
        address = service.metrics.address
        raise_from_children(evi, "E_M", 40)
        consume(broker, clean_queue, 40)
        sub = {"event": "E_M", "socket": f"rabbitmq:guest:***@127.0.0.1:{broker.port}/{clean_queue}"}
        m = wait_for(lambda: (s := scrape(address)).get_value("opsevent_events_confirmed_total", **sub) == 40 and s,
                     10, "40 confirmed events in the metrics")
        label = f"guest@127.0.0.1:{broker.port}/%2F"
        assert m.get_value("opsevent_events_raised_total", **sub) == 40
        assert m.get_value("opsevent_broker_confirm_latency_seconds_count", broker=label) == 40
        assert m.get_value("opsevent_broker_connected", broker=label) == 1
        assert m.get_value("opsevent_worker_up") == 1
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2).close()


@pytest.mark.broker
def test_every_sync_raise_is_timed_from_the_raise_to_its_reply(broker, clean_queue):
    evi = opsevent.EventInterface(sync_mode=True)
    evi.subscribe_event("E_SYNC", broker.socket(clean_queue))
    with workers.serve(evi, metrics_address=LOOPBACK_ANY_PORT) as service:
        started = time.monotonic()
        for n in range(25):
            assert evi.raise_event("E_SYNC", {"n": n})
        waited = time.monotonic() - started
        m = wait_for(lambda: (s := scrape(service.metrics.address)).get_value("opsevent_sync_wait_seconds_count") == 25
                     and s, 10, "25 sync waits in the metrics")
    assert m.get_value("opsevent_sync_wait_seconds_bucket", le="+Inf") == 25
    assert 0 < m.get_value("opsevent_sync_wait_seconds_sum") <= waited
    assert m.get_value("opsevent_sync_replies_sent_total") == 25


@pytest.mark.broker
def test_a_supervisors_metrics_are_served_by_its_own_process_and_count_its_front_ends_events(broker, clean_queue):
    evi = opsevent.EventInterface()
    evi.subscribe_event("E_SUP", broker.socket(clean_queue))
    sup = workers.Supervisor(evi, _raise_ten_then_wait, processes=2, metrics_address=LOOPBACK_ANY_PORT)
    sup.start()
    try:
        address = sup.service.metrics.address
        sub = {"event": "E_SUP", "socket": f"rabbitmq:guest:***@127.0.0.1:{broker.port}/{clean_queue}"}
        wait_for(lambda: scrape(address).get_value("opsevent_events_confirmed_total", **sub) == 20, 10,
                 "20 confirmed events in the metrics")
        roles = {os.getpid(): "supervisor", sup.service.process.pid: "rabbitmq-worker",
                 **{p.pid: f"front-end {rank}" for rank, p in sup.frontends.items()}}
        assert {roles[pid] for pid in holders(address, roles)} == {"supervisor"}
        assert sup.health()["healthy"] is True
    finally:
        sup.stop()


def _raise_ten_then_wait(rank, evi) -> None:
    for n in range(10):
        assert evi.raise_event("E_SUP", {"rank": rank, "n": n})
    while not workers.stopping():
        time.sleep(0.05)


@pytest.mark.broker
def test_only_the_serving_process_holds_the_metrics_port_never_a_forked_child_or_the_worker(broker):
    evi = opsevent.EventInterface()
    with workers.serve(evi, metrics_address=LOOPBACK_ANY_PORT) as service:
        ready, done = FORK.Event(), FORK.Event()
        child = FORK.Process(target=_wait_for, args=(ready, done))
        child.start()
        try:
            assert ready.wait(10)
            # The worker closes what it inherited as it starts, which on a loaded machine may be
            # well after serve() returned: look once it has attached to the queue, after that.
            wait_for(lambda: service.jobs.readers() >= 1, 10, "the worker attached to the job queue")
            roles = {os.getpid(): "serving process", child.pid: "forked child", service.process.pid: "worker"}
            held = holders(service.metrics.address, roles)
            assert {roles[pid] for pid in held} == {"serving process"}, held
        finally:
            done.set()
            child.join(10)


def _wait_for(ready, done) -> None:
    ready.set()
    done.wait(10)


@pytest.mark.broker
def test_a_metrics_port_in_use_refuses_to_serve_and_leaves_nothing_running(broker):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = taken.getsockname()
        evi = opsevent.EventInterface()
        with pytest.raises(OSError, match=f"cannot serve metrics at 127.0.0.1:{address[1]}"):
            workers.serve(evi, metrics_address=address)
        assert evi.transport is None  # the worker was never started, the EventInterface is as it was


@pytest.mark.broker
def test_opsevent_health_exits_0_when_connected_and_1_naming_the_broker_that_is_not(broker, clean_queue, tmp_path):
    path = str(tmp_path / "ctl")
    dead_port = free_port()
    evi = opsevent.EventInterface()
    evi.subscribe_event("E_H", broker.socket(clean_queue))
    with workers.serve(evi, control_path=path, quiet_pika=True) as service:
        assert evi.raise_event("E_H", {"n": 1})
        wait_for(lambda: service.health()["brokers"], 5, "the broker link in the counters")
        out = opsevent_cli("--socket", path, "health")
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.startswith(f"healthy: RabbitMQ worker pid {service.process.pid}")
        evi.subscribe_event("E_H", f"rabbitmq:ops:s3cret@127.0.0.1:{dead_port}/q")
        assert evi.raise_event("E_H", {"n": 2})
        out = wait_for(lambda: (o := opsevent_cli("--socket", path, "health")).returncode == 1 and o,
                       10, "health to see the dead broker")
        assert f"broker ops@127.0.0.1:{dead_port}/%2F is not connected" in out.stdout
        assert "s3cret" not in out.stdout + out.stderr
        worker_only = opsevent_cli("--socket", path, "health", "--worker-only", "--json")
        assert worker_only.returncode == 0 and json.loads(worker_only.stdout)["healthy"] is True


@pytest.mark.broker
def test_health_says_at_once_when_the_worker_process_is_gone_though_its_counters_are_fresh(broker):
    # watch=False: nobody replaces the worker (the Supervisor's loop would), so the gap stays open.
    with workers.Service(opsevent.EventInterface(), watch=False) as service:
        wait_for(lambda: service.health()["healthy"], 5, "a healthy service")
        os.kill(service.process.pid, 9)
        wait_for(lambda: not service.process.is_alive(), 5, "the worker gone")
        verdict = service.health()
        assert verdict["reasons"][0] == "rabbitmq-worker is not running (being replaced, or given up)"
        assert verdict["age"] < 5  # its last counters alone would still look fine
    assert service.health()["reasons"] == ["the RabbitMQ worker service is not running"]


@pytest.mark.broker
def test_no_password_reaches_a_metric_label_the_health_output_or_the_stats_table(broker, tmp_path):
    path = str(tmp_path / "ctl")
    evi = opsevent.EventInterface()
    evi.subscribe_event("E_P", broker.socket("q-nobody", user="ops", password="s3cr3t@x"))
    with workers.serve(evi, control_path=path, metrics_address=LOOPBACK_ANY_PORT, quiet_pika=True) as service:
        assert evi.raise_event("E_P", {"n": 1})
        wait_for(lambda: service.stats().get("failed") or service.stats().get("brokers"), 10, "the failure counted")
        text = scrape(service.metrics.address).text
        health = opsevent_cli("--socket", path, "health")
        stats = opsevent_cli("--socket", path, "stats")
    assert "ops:***@" in text and "s3cr3t" not in text
    assert "s3cr3t" not in health.stdout + health.stderr + stats.stdout + stats.stderr
