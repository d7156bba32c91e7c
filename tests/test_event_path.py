"""The whole event path against the private broker: front-ends raise, the worker publishes."""

from __future__ import annotations

import collections
import multiprocessing
import threading
import time

import pytest

import opsevent
import workers
from opsevent import Status
from workers.demo.broker import consume, declare_queue, free_port, queue_count

from helpers import SECRET, SECRET_USER, assert_no_secret, secret_socket

pytestmark = pytest.mark.broker

FORK = multiprocessing.get_context("fork")
EXCHANGE = "opsevent.test"


def event_params(rank, i):
    # Values that need quoting and escaping, so the bytes are really checked.
    return [("user", f"alice{rank}"), ("msg", f'hi, "{rank}" #{i}\nline 2 \\ end'), (None, i)]


def raising_target(events, results):
    def target(rank, evi):
        statuses = collections.Counter()
        for i in range(events):
            result = evi.raise_event("E_SIP_MESSAGE", event_params(rank, i))
            for delivery in result.deliveries:
                statuses[delivery.status.value] += 1
        results.put((rank, dict(statuses)))
    return target


def expected_body(rank, i) -> bytes:
    """The body of ``event_params(rank, i)``, written out in the guide's line format (not by the
    encoder under test): a value with ',' '"' or LF is quoted, and in quotes '"' and '\\' escaped."""
    return b'E_SIP_MESSAGE\nuser::alice%d\nmsg::"hi, \\"%d\\" #%d\nline 2 \\\\ end"\n%d\n' % (rank, rank, i, i)


def expected_bodies(processes, events):
    return collections.Counter(expected_body(rank, i) for rank in range(1, processes + 1) for i in range(events))


def two_subscribers(broker, queue_name, sync_mode, **settings):
    """One subscriber on the default exchange, one on a named exchange bound to a queue."""
    declare_queue(broker, queue_name)
    declare_queue(broker, queue_name + ".x", exchange=EXCHANGE)
    evi = opsevent.EventInterface(sync_mode=sync_mode, **settings)
    evi.subscribe_event("E_SIP_MESSAGE", broker.socket(queue_name))
    evi.subscribe_event("E_SIP_MESSAGE", broker.socket(queue_name + ".x", exchange=EXCHANGE))
    return evi


def run_supervisor(evi, processes, events):
    results = FORK.Queue()
    exit_codes = workers.Supervisor(evi, raising_target(events, results), processes=processes).run()
    assert exit_codes == {rank: 0 for rank in range(1, processes + 1)}
    totals = collections.Counter()
    for _ in range(processes):
        totals.update(results.get(timeout=10)[1])
    return totals


@pytest.mark.parametrize("sync_mode, events_per_frontend, ok_status", [
    (False, 2500, Status.QUEUED),
    (True, 250, Status.CONFIRMED),
], ids=["async 10,000 events", "sync 1,000 events"])
def test_every_event_raised_by_four_frontends_reaches_both_subscribers_byte_exact(
        broker, queue_name, sync_mode, events_per_frontend, ok_status):
    evi = two_subscribers(broker, queue_name, sync_mode)
    totals = run_supervisor(evi, 4, events_per_frontend)
    n = 4 * events_per_frontend
    assert totals == {ok_status.value: 2 * n}
    want = expected_bodies(4, events_per_frontend)
    for queue in (queue_name, queue_name + ".x"):
        got = collections.Counter(consume(broker, queue, n, timeout=30))
        assert got == want
        assert queue_count(broker, queue) == 0  # nothing beyond what was raised


def test_an_idle_worker_keeps_its_connection_alive_with_heartbeats(broker, queue_name):
    declare_queue(broker, queue_name)
    evi = opsevent.EventInterface(heartbeat=1, sync_mode=True)
    evi.subscribe_event("E_IDLE", broker.socket(queue_name))
    with workers.serve(evi):
        assert evi.raise_event("E_IDLE", {"n": 1})
        before = broker.ctl("list_connections", "peer_port", "state").split()
        time.sleep(5)
        result = evi.raise_event("E_IDLE", {"n": 2})
        after = broker.ctl("list_connections", "peer_port", "state").split()
    assert result, result.failures
    assert before == after and "running" in after  # the same connection, still up
    assert consume(broker, queue_name, 2, timeout=10) == [b"E_IDLE\nn::1\n", b"E_IDLE\nn::2\n"]


def test_a_sync_raise_to_a_port_without_a_broker_fails_within_the_sync_timeout(broker, queue_name):
    dead_port = free_port()
    evi = opsevent.EventInterface(sync_mode=True, sync_timeout=1.5)
    evi.subscribe_event("E_X", f"rabbitmq:{SECRET_USER}:{SECRET}@127.0.0.1:{dead_port}/{queue_name}")
    with workers.serve(evi):
        started = time.monotonic()
        result = evi.raise_event("E_X", {"a": 1})
        elapsed = time.monotonic() - started
    assert not result
    (delivery,) = result.deliveries
    assert delivery.status is Status.FAILED
    assert f"127.0.0.1:{dead_port}" in delivery.reason and "connect" in delivery.reason
    assert elapsed < 1.5
    assert_no_secret(repr(result), str(result), delivery.reason)


def test_threads_of_one_process_each_get_their_own_sync_status(broker, queue_name):
    declare_queue(broker, queue_name)
    evi = opsevent.EventInterface(sync_mode=True)
    evi.subscribe_event("E_OK", broker.socket(queue_name))
    evi.subscribe_event("E_NOWHERE", broker.socket(queue_name + ".unbound"))
    outcomes = {}

    def caller(n):
        event = "E_OK" if n % 2 else "E_NOWHERE"
        outcomes[n] = [evi.raise_event(event, {"n": n}).deliveries[0].status for _ in range(50)]

    with workers.serve(evi):
        threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    for n, statuses in outcomes.items():
        want = Status.CONFIRMED if n % 2 else Status.UNROUTABLE
        assert statuses == [want] * 50, n
    assert len(consume(broker, queue_name, 200, timeout=10)) == 200


def test_a_raise_to_a_missing_exchange_fails_and_the_next_raise_succeeds(broker, secret_user, queue_name):
    declare_queue(broker, queue_name)
    evi = opsevent.EventInterface(sync_mode=True)
    evi.subscribe_event("E_BAD", secret_socket(broker, queue_name, exchange="no.such.exchange"))
    evi.subscribe_event("E_GOOD", secret_socket(broker, queue_name))
    with workers.serve(evi):
        bad = evi.raise_event("E_BAD", {"n": 1})
        good = evi.raise_event("E_GOOD", {"n": 2})
    assert bad.deliveries[0].status is Status.FAILED
    assert "no.such.exchange" in bad.deliveries[0].reason
    assert good, good.failures
    assert consume(broker, queue_name, 1, timeout=10) == [b"E_GOOD\nn::2\n"]
    # What a caller prints or logs of a result shows the socket, never its password.
    assert f"user='{secret_user}', password='***'" in repr(bad)
    assert_no_secret(repr(bad), str(bad), repr(bad.failures), repr(good), str(good))
