"""Message properties and per-subscription stats, read back from the private broker."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time

import hypothesis
import hypothesis.strategies as st
import pytest

import opsevent
import opsevent.consumer
import workers
import workers.rabbitmq.worker
from opsevent import MAX_BODY_SIZE, Status, parse_socket
from tests.helpers import wait_for
from workers.channel import job
from workers.channel.job import SocketBytes
from workers.channel.jobqueue import JobQueue
from workers.channel.sender import JobSender
from workers.demo.broker import declare_queue

pytestmark = pytest.mark.broker


def get_messages(broker, queue: str, count: int, timeout: float = 10.0) -> list:
    """``(properties, body)`` of ``count`` messages taken from ``queue``."""
    conn = broker.connect()
    try:
        channel, got = conn.channel(), []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            assert time.monotonic() < deadline, f"{queue}: {len(got)} of {count} messages arrived"
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.02)
            else:
                got.append((props, body))
        return got
    finally:
        conn.close()


# (socket after the broker's address, interface settings, content type, delivery mode)
PROPERTY_CASES = [
    ("/{q}", {}, "text/plain", None),
    ("/format=json?{q}", {}, "application/json", None),
    ("/persistent;?{q}", {}, "text/plain", 2),
    ("/{q}", {"persistent": True}, "text/plain", 2),
    ("/{q}", {"format": "json"}, "application/json", None),
    ("/format=lines;persistent?{q}", {"format": "json", "app_id": "sbc-7"}, "text/plain", 2),
    ("/{q}", {"event_header": False}, "text/plain", None),
    ("/format=opensips?{q}", {}, "text/x-opensips-event", None),
    ("/persistent?{q}", {"format": "opensips"}, "text/x-opensips-event", 2),   # 3.2's bare flag
]


@pytest.mark.parametrize("target, settings, content_type, delivery_mode", PROPERTY_CASES)
def test_every_message_carries_its_content_type_delivery_mode_event_header_time_id_and_app_id(
        broker, queue_name, target, settings, content_type, delivery_mode):
    declare_queue(broker, queue_name)
    evi = opsevent.EventInterface(sync_mode=True, **settings)
    evi.subscribe_event("E_PROPS", f"rabbitmq:{broker.host}:{broker.port}" + target.format(q=queue_name))
    before = int(time.time())
    with workers.serve(evi, install_logging=False):
        for i in range(3):
            assert evi.raise_event("E_PROPS", {"i": i})
    after = int(time.time()) + 1
    messages = get_messages(broker, queue_name, 3)
    for props, body in messages:
        assert props.content_type == content_type and props.delivery_mode == delivery_mode
        assert props.headers == ({"event": "E_PROPS"} if settings.get("event_header", True) else None)
        assert props.app_id == settings.get("app_id", "opsevent")
        assert before <= props.timestamp <= after
        assert opsevent.decode_event(body)[0] == "E_PROPS"
    assert len({props.message_id for props, _ in messages}) == 3  # one id per event


def test_the_consumer_helper_knows_every_content_type_the_worker_gives():
    assert opsevent.consumer.CONTENT_TYPES == workers.rabbitmq.worker.CONTENT_TYPES


def test_an_event_goes_out_through_a_fanout_exchange_with_an_empty_routing_key(broker, queue_name):
    conn = broker.connect()
    try:
        channel = conn.channel()
        channel.queue_declare(queue_name, auto_delete=True)
        channel.queue_bind(queue_name, "amq.fanout")
        evi = opsevent.EventInterface(sync_mode=True)
        evi.subscribe_event("E_FANOUT", f"rabbitmq:{broker.host}:{broker.port}/amq.fanout?")
        with workers.serve(evi, install_logging=False):
            result = evi.raise_event("E_FANOUT", {"n": 1})
        assert [d.status for d in result.deliveries] == [Status.CONFIRMED], result.failures
        method, _props, body = channel.basic_get(queue_name, auto_ack=True)
        assert (method.exchange, method.routing_key, body) == ("amq.fanout", "", b"E_FANOUT\nn::1\n")
    finally:
        conn.close()


def test_each_subscribers_copy_of_one_event_has_the_same_message_id(broker, queue_name):
    queues = [queue_name, queue_name + ".2"]
    evi = opsevent.EventInterface(sync_mode=True)
    for q in queues:
        declare_queue(broker, q)
        evi.subscribe_event("E_FAN", broker.socket(q))
    with workers.serve(evi, install_logging=False):
        assert evi.raise_event("E_FAN", {"n": 1}) and evi.raise_event("E_FAN", {"n": 2})
    first, second = (get_messages(broker, q, 2) for q in queues)
    assert [p.message_id for p, _ in first] == [p.message_id for p, _ in second]
    assert first[0][0].message_id != first[1][0].message_id


def test_a_raise_given_a_message_id_publishes_every_copy_with_it_and_a_made_one_is_in_the_result(
        broker, queue_name):
    queues = [queue_name, queue_name + ".2"]
    evi = opsevent.EventInterface(sync_mode=True)
    for q in queues:
        declare_queue(broker, q)
        evi.subscribe_event("E_ID", broker.socket(q))
    with workers.serve(evi, install_logging=False):
        given = evi.raise_event("E_ID", {"n": 1}, message_id="order-42 \u00e9")
        made = evi.raise_event("E_ID", {"n": 2})
    assert given and made and given.message_id == "order-42 \u00e9"
    for q in queues:
        assert [p.message_id for p, _ in get_messages(broker, q, 2)] == [given.message_id, made.message_id]


def test_stats_count_each_subscriptions_events_by_outcome(broker, queue_name):
    declare_queue(broker, queue_name)
    good, nowhere = broker.socket(queue_name), broker.socket(queue_name + ".none")  # no such queue
    evi = opsevent.EventInterface(sync_mode=True)
    for sock in (good, nowhere):
        evi.subscribe_event("E_COUNT", sock)
    with workers.serve(evi, install_logging=False) as service:
        for i in range(4):
            evi.raise_event("E_COUNT", {"i": i})
        assert evi.raise_event("E_COUNT", {"big": "x" * MAX_BODY_SIZE}).failures[0].status is Status.TOO_LARGE
        rows = wait_for(lambda: _rows(service.stats(), "E_COUNT", 8), 5, "per-subscription stats")
    expected = {"raised": 5, "queued": 4, "published": 4, "confirmed": 4, "unroutable": 0, "failed": 0,
                "too_large": 1, "dropped_queue_full": 0}
    row = rows[str(parse_socket(good))]
    assert {what: row[what] for what in expected} == expected
    assert rows[str(parse_socket(nowhere))]["unroutable"] == 4
    assert rows[str(parse_socket(nowhere))]["confirmed"] == 0


def _rows(stats: dict, event: str, queued: int) -> dict | None:
    rows = {row["socket"]: row for row in stats.get("subscriptions", ()) if row["event"] == event}
    if sum(row["queued"] for row in rows.values()) == queued and all(
            row["too_large"] for row in rows.values()):
        return rows
    return None


def test_a_front_end_reports_its_queue_full_refusals_to_the_workers_inbox():
    inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = b"\0opsevent-test-inbox-%d" % id(inbox)
    inbox.bind(address)
    inbox.settimeout(5)
    jobs = JobQueue(multiprocessing.get_context("fork"), maxsize=1)
    sender = JobSender(jobs, address)
    sock = parse_socket("rabbitmq:alice:s3cr3t@127.0.0.1/q")
    try:
        assert sender.submit("E_FULL", (sock,), b"E_FULL\n", False, 1.0)[0][0] is Status.QUEUED
        for _ in range(3):
            assert sender.submit("E_FULL", (sock,), b"E_FULL\n", False, 1.0)[0][0] is Status.QUEUE_FULL
        sender.flush(0.1)  # at exit: whatever the rate limit held back
        reports = []
        while not reports or reports[-1]["counts"] != [["E_FULL", str(sock), {"dropped_queue_full": 3}]]:
            reports.append(json.loads(inbox.recv(65536)))
        assert {r["pid"] for r in reports} == {os.getpid()} and "s3cr3t" not in repr(reports)
    finally:
        inbox.close()
        jobs.close()


def test_a_jobs_bytes_decode_to_what_the_front_end_encoded():
    sock = parse_socket("rabbitmq:u:p@mq:5673/ex?key")
    sockets = SocketBytes()((sock,))
    for seq, reply, event, body in [(0, None, b"E", b""), (7, b"\0reply-1", "É".encode(), b"x" * 20000)]:
        payload = b"".join(job.encode(seq, reply, event, b"id-7", sockets, body, 12.5))
        assert job.decode(payload) == (seq, reply, event, b"id-7", sockets, body, 12.5)
        assert job.decode(memoryview(payload)) == (seq, reply, event, b"id-7", sockets, body, 12.5)
    assert job.load_sockets(sockets)[0][:4] == ("u", "p", "mq", 5673)


_JOBS = st.tuples(st.integers(0, 2**64 - 1), st.none() | st.binary(min_size=1, max_size=40),
                  st.binary(max_size=60), st.binary(min_size=1, max_size=255), st.binary(max_size=300),
                  st.binary(max_size=3000), st.floats(allow_nan=False, allow_infinity=False))


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.lists(_JOBS, min_size=1, max_size=8))
def test_jobs_of_any_shapes_one_after_another_decode_to_exactly_what_was_encoded(jobs):
    for seq, reply, event, message_id, sockets, body, raised_at in jobs + jobs[:1]:  # a shape seen before, again
        payload = b"".join(job.encode(seq, reply, event, message_id, sockets, body, raised_at))
        assert job.decode(memoryview(payload)) == (seq, reply, event, message_id, sockets, body, raised_at)


def test_the_front_end_pickles_a_subscriber_tuple_once_and_again_only_for_a_new_tuple():
    cache, sockets = SocketBytes(), (parse_socket("rabbitmq:mq/q"),)
    first = cache(sockets)
    assert cache(sockets) is first
    again = (parse_socket("rabbitmq:mq/q"),)  # equal, but another tuple: pickled anew, same bytes
    assert cache(again) == first and cache(again) is not first
