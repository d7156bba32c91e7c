"""The RabbitMQ worker driven one turn at a time, in the test process (no fork)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time

import pytest

import opsevent
from opsevent import encode_event, parse_socket
from workers.broker import consume, declare_queue, free_port
from workers.channel import ReplyBox
from workers.jobqueue import JobQueue
from workers.rabbitmq import RabbitMQWorker

pytestmark = pytest.mark.broker

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def worker():
    jobs = JobQueue(FORK, maxsize=1000)
    settings = opsevent.Settings(sync_timeout=2.0, reconnect_min=0.05)
    w = RabbitMQWorker(jobs, settings)
    w.init_process(install_signals=False)
    yield w
    w.shutdown()
    jobs.close()


def turn_until(worker, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the worker did not get there in time"
        worker.loop_once()


def sync_job(box, seq, sockets, body):
    """The job tuple a front-end's sync raise puts on the queue."""
    box.expect(seq)
    return (seq, box.address, tuple(dataclasses.astuple(s) for s in sockets), body, time.monotonic())


def test_one_turn_at_a_time_the_worker_publishes_and_replies_to_the_sync_caller(broker, queue_name, worker):
    declare_queue(broker, queue_name)
    box = ReplyBox()
    body = encode_event("E_TURN", {"n": 1})
    worker.handle(sync_job(box, 7, [parse_socket(broker.socket(queue_name))], body))
    turn_until(worker, lambda: worker.stats["confirmed"] == 1)
    assert box.wait(7, time.monotonic() + 2) == (("confirmed", ""),)
    assert consume(broker, queue_name, 1, timeout=5) == [body]


def test_a_job_for_two_brokers_replies_once_with_each_subscribers_status(broker, queue_name, worker):
    declare_queue(broker, queue_name)
    box = ReplyBox()
    sockets = [parse_socket(broker.socket(queue_name)), parse_socket(f"rabbitmq:127.0.0.1:{free_port()}/x")]
    worker.handle(sync_job(box, 1, sockets, b"E_TWO\n"))
    turn_until(worker, lambda: worker.stats["confirmed"] == 1 and worker.stats["failed"] == 1)
    (ok, _), (failed, reason) = box.wait(1, time.monotonic() + 2)
    assert ok == "confirmed" and failed == "failed" and "Connection refused" in reason
    assert len(worker.links) == 2  # one connection per distinct broker


def test_an_async_event_older_than_the_backlog_age_is_dropped_not_flushed_late(queue_name):
    jobs = JobQueue(FORK, maxsize=10)
    w = RabbitMQWorker(jobs, opsevent.Settings(backlog_age=0.2, reconnect_min=5.0, reconnect_max=5.0))
    w.init_process(install_signals=False)
    try:
        sock = parse_socket(f"rabbitmq:127.0.0.1:{free_port()}/{queue_name}")
        w.handle((0, None, (dataclasses.astuple(sock),), b"E_OLD\n", time.monotonic()))
        turn_until(w, lambda: w.stats["failed"] == 1, timeout=5)
        (link,) = w.links.values()
        assert link.stats["dropped_expired"] == 1 and not link.pending
    finally:
        w.shutdown()
        jobs.close()


@pytest.mark.parametrize("text", ["rabbitmq:127.0.0.1/tls;?q", "rabbitmq:127.0.0.1,127.0.0.2/q"])
def test_a_socket_feature_the_worker_does_not_carry_out_yet_fails_with_a_clear_reason(worker, text):
    box = ReplyBox()
    worker.handle(sync_job(box, 3, [parse_socket(text)], b"E\n"))
    ((status, reason),) = box.wait(3, time.monotonic() + 2)
    assert status == "failed" and "not supported by this worker yet" in reason
    assert not worker.links and worker.outstanding == 0
