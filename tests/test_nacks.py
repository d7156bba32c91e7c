"""A nack is not the end: publishes the broker nacks are published again, bounded.

A queue declared with ``x-max-length`` and ``x-overflow: reject-publish``
makes the session broker nack every publish beyond its length, for as long
as it is full: a nack we can turn on and off by consuming.  (The cluster
case, nacks after a quorum queue's leader died, is in ``test_cluster.py``.)
"""

from __future__ import annotations

import collections
import threading

import pytest

import opsevent
import workers
from opsevent import Status
from workers.demo.broker import consume, queue_count
from helpers import secret_socket, wait_for
from test_faults import CallerClock, event_body, link_stats, label_of, settled, worker_logs

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

FAST_RETRIES = dict(reconnect_min=0.05, reconnect_max=0.4)


def declare_bounded_queue(broker, name: str, length: int) -> None:
    """A queue that nacks publishes while it holds ``length`` ready messages."""
    conn = broker.connect()
    try:
        conn.channel().queue_declare(name, durable=True, arguments={"x-max-length": length,
                                                                     "x-overflow": "reject-publish"})
    finally:
        conn.close()


def test_async_events_nacked_by_a_full_queue_are_published_again_once_it_has_room_with_their_message_ids(
        broker, queue_name):
    declare_bounded_queue(broker, queue_name, 50)
    sock = broker.socket(queue_name)
    label = label_of(sock)
    evi = opsevent.EventInterface(**FAST_RETRIES)
    evi.subscribe_event("E_NACK", sock)

    with workers.serve(evi, install_logging=False) as service:
        ids = {}
        for seq in range(200):
            result = evi.raise_event("E_NACK", {"rank": 0, "seq": seq})
            assert result and result.message_id
            ids[event_body("E_NACK", 0, seq)] = result.message_id
        wait_for(lambda: link_stats(service, label).get("nack_retries", 0) >= 150, 10,
                 "the 150 beyond the queue's length nacked and queued again")
        messages = consume(broker, queue_name, 200, timeout=30, properties=True)  # room: the retries land
        wait_for(lambda: settled(service, label), 10, "nothing left to publish")
    stats = service.final_stats["brokers"][label]

    received = collections.Counter(body for body, _ in messages)
    assert set(received) == set(ids) and queue_count(broker, queue_name) == 0
    assert all(props.message_id == ids[body] for body, props in messages)  # copies keep their id
    assert stats.get("nacked", 0) == 0 and stats.get("dropped_expired", 0) == 0
    assert stats["confirmed"] == 200 and stats["channels_reopened"] >= 1


def test_a_sync_raise_is_retried_while_its_caller_waits_and_answered_nacked_when_time_runs_out(broker, queue_name):
    declare_bounded_queue(broker, queue_name, 1)
    sync_timeout = 2.0  # room for a few retries after the room is made at 0.3 s, on a busy machine too
    evi = opsevent.EventInterface(sync_mode=True, sync_timeout=sync_timeout, **FAST_RETRIES)
    evi.subscribe_event("E_NACK", broker.socket(queue_name))

    with workers.serve(evi, install_logging=False):
        assert evi.raise_event("E_NACK", {"n": 0})  # fills the queue
        clock = CallerClock()  # own time: this thread's waits for a CPU aside
        (refused,) = clock(evi.raise_event, "E_NACK", {"n": 1}).deliveries
        # Room made while the caller waits: a retry lands.
        threading.Timer(0.3, consume, (broker, queue_name, 1)).start()
        taken = clock(evi.raise_event, "E_NACK", {"n": 2})
        clock.close()
    refused_after, taken_after = (own / 1e9 for own in clock.own)
    taken_wall = clock.wall[1] / 1e9

    assert refused.status is Status.NACKED and refused_after <= sync_timeout
    assert "the broker nacked the message" in refused.reason and "times" in refused.reason, refused.reason
    assert taken, taken.failures
    assert 0.3 <= taken_wall and taken_after <= sync_timeout  # it waited for the room, and no longer than promised
    assert consume(broker, queue_name, 1, properties=True)[0][1].message_id == taken.message_id


def test_async_events_nacked_until_they_outgrow_backlog_age_are_dropped_counted_and_summarised(
        broker, secret_user, queue_name):
    declare_bounded_queue(broker, queue_name, 1)
    sock = secret_socket(broker, queue_name)
    label = label_of(sock)
    evi = opsevent.EventInterface(backlog_age=1.0, **FAST_RETRIES)
    evi.subscribe_event("E_NACK", sock)

    with worker_logs() as logs:
        with workers.serve(evi, install_logging=True) as service:
            for seq in range(101):  # the first fills the queue; the queue never makes room
                assert evi.raise_event("E_NACK", {"rank": 0, "seq": seq})
            wait_for(lambda: link_stats(service, label).get("dropped_expired") == 100, 10,
                     "the 100 nacked events dropped at backlog_age")
    stats = service.final_stats["brokers"][label]

    assert (stats["confirmed"], stats["nacked"], stats["dropped_expired"]) == (1, 100, 100), stats
    assert stats["nack_retries"] >= 100
    lines = [r.getMessage() for r in logs.matching("async events nacked")]
    # The first at once, with its reason; then at most a summary and the total, at exit.
    assert 2 <= len(lines) <= 3, lines
    assert "dropped, waited" in lines[0] and "backlog_age 1 s" in lines[0]
    assert "over; 100 in all" in lines[-1], lines
    retried = [r.getMessage() for r in logs.matching("to publish again on a fresh channel")]
    assert retried and len(retried) <= 3, retried
