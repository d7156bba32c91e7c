"""The RabbitMQ worker driven one turn at a time, in the test process (no fork)."""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import socket
import time

import pytest

import opsevent
from opsevent import encode_event, interface, parse_socket
from workers.channel import job
from workers.channel.jobqueue import JobQueue
from workers.channel.replies import ReplyBox
from workers.demo.broker import consume, declare_queue, free_port
from workers.base.process import GC_YOUNG
from workers.rabbitmq import worker as worker_module
from workers.rabbitmq.worker import RabbitMQWorker

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


def a_job(sockets, body, seq=0, reply=None):
    """The bytes a front-end's raise puts on the queue."""
    return job.pack(sockets, body, event="E_TURN", seq=seq, reply=reply, raised_at=time.monotonic())


def sync_job(box, seq, sockets, body):
    """The job a front-end's sync raise puts on the queue."""
    box.expect(seq)
    return a_job(sockets, body, seq, box.address)


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
        w.handle(a_job([sock], b"E_OLD\n"))
        turn_until(w, lambda: w.stats["failed"] == 1, timeout=5)
        (link,) = w.links.values()
        assert link.stats["dropped_expired"] == 1 and not link.pending
    finally:
        w.shutdown()
        jobs.close()


def test_a_failover_socket_whose_primary_refuses_connections_publishes_on_the_next_host_at_once(
        broker, queue_name, worker):
    declare_queue(broker, queue_name)
    box = ReplyBox()
    sock = parse_socket(f"rabbitmq:127.0.0.1:{free_port()},{broker.host}:{broker.port}/{queue_name}")
    worker.handle(sync_job(box, 4, [sock], b"E_FAILOVER\n"))
    turn_until(worker, lambda: worker.stats["confirmed"] == 1, timeout=5)
    assert box.wait(4, time.monotonic() + 2) == (("confirmed", ""),)
    snapshot = worker.links[sock.broker].snapshot()
    assert snapshot["endpoint"] == f"{broker.host}:{broker.port}" and snapshot["failovers"] == 1
    assert consume(broker, queue_name, 1, timeout=5) == [b"E_FAILOVER\n"]


def test_a_sync_raise_fails_only_once_every_host_of_the_list_has_failed_naming_each_one(worker):
    box = ReplyBox()
    ports = free_port(), free_port()
    sock = parse_socket(f"rabbitmq:127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/q")
    worker.handle(sync_job(box, 5, [sock], b"E\n"))
    turn_until(worker, lambda: worker.stats["failed"] == 1, timeout=5)
    ((status, reason),) = box.wait(5, time.monotonic() + 2)
    assert status == "failed" and reason.startswith(f"cannot connect to any host of {sock.broker_label}: ")
    for port in ports:
        assert f"127.0.0.1:{port}: TCP connect failed: Connection refused" in reason
    assert worker.links[sock.broker].snapshot()["failovers"] == 0


def test_a_tls_socket_without_a_ca_file_fails_with_that_reason_and_never_connects(worker):
    box = ReplyBox()
    with socket.create_server(("127.0.0.1", 0)) as listener:  # would accept, were the worker to connect
        listener.settimeout(0)
        worker.handle(sync_job(box, 6, [parse_socket(f"rabbitmq:127.0.0.1:{listener.getsockname()[1]}/tls;?q")],
                               b"E\n"))
        turn_until(worker, lambda: worker.stats["failed"] == 1, timeout=5)
        ((status, reason),) = box.wait(6, time.monotonic() + 2)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert status == "failed" and "the tls_ca_file setting is not set" in reason


def test_more_jobs_than_one_turn_takes_are_all_handled_though_nothing_more_arrives(
        broker, queue_name, monkeypatch):
    # One read takes every job in the pipe; those beyond a turn's share wake
    # no poller, so the worker must come back for them by itself.
    monkeypatch.setattr(worker_module, "JOBS_PER_TURN", 256)
    declare_queue(broker, queue_name)
    jobs = JobQueue(FORK, maxsize=100_000)
    w = RabbitMQWorker(jobs, opsevent.Settings())
    n = 3 * worker_module.JOBS_PER_TURN
    sockets = [parse_socket(broker.socket(queue_name))]
    for i in range(n):
        assert jobs.put([a_job(sockets, b"E_MANY\nn::%d\n" % i)])
    assert jobs.unsent() == 0  # all of them in the pipe
    w.init_process(install_signals=False)
    try:
        turn_until(w, lambda: w.stats["confirmed"] == n, timeout=30)
        assert w.jobs.waiting() == 0 and jobs.depth() == 0
    finally:
        w.shutdown()
        jobs.close()


def lingering_worker(linger, **settings):
    jobs = JobQueue(FORK, maxsize=1000)
    w = RabbitMQWorker(jobs, opsevent.Settings(linger=linger, sync_timeout=5.0, **settings))
    w.init_process(install_signals=False)
    return w, jobs


def test_after_a_turn_of_a_few_async_jobs_the_worker_lingers_then_reads_the_next_ones_in_one_turn(
        broker, queue_name, monkeypatch):
    # A linger far longer than the setting allows: a slow machine still gets its confirms within it.
    monkeypatch.setattr(interface, "MAX_LINGER", 10.0)
    declare_queue(broker, queue_name)
    w, jobs = lingering_worker(linger=1.0)
    sockets = [parse_socket(broker.socket(queue_name))]
    try:
        for i in range(3):
            assert jobs.put([a_job(sockets, b"E_LINGER\nn::%d\n" % i)])
        turn_until(w, lambda: w.stats["jobs"] == 3)
        assert w.lingering and not w.reading and w.stats["lingered"] == 1
        for i in range(3, 8):
            assert jobs.put([a_job(sockets, b"E_LINGER\nn::%d\n" % i)])
        turn_until(w, lambda: w.stats["confirmed"] == 3)  # pika's turns go on meanwhile
        assert w.stats["jobs"] == 3 and w.lingering  # the pipe is not read while it lingers
        turn_until(w, lambda: w.stats["jobs"] > 3)
        assert w.stats["jobs"] == 8  # the five that waited, in one turn
        turn_until(w, lambda: w.stats["confirmed"] == 8)
        assert consume(broker, queue_name, 8, timeout=5) == [b"E_LINGER\nn::%d\n" % i for i in range(8)]
    finally:
        w.shutdown()
        jobs.close()


def test_a_turn_that_read_a_sync_job_never_lingers_and_its_caller_is_answered_at_once(broker, queue_name):
    declare_queue(broker, queue_name)
    w, jobs = lingering_worker(linger=0.1)
    sockets = [parse_socket(broker.socket(queue_name))]
    box = ReplyBox()
    try:
        assert jobs.put([a_job(sockets, b"E_ASYNC\n")])
        assert jobs.put([sync_job(box, 9, sockets, b"E_SYNC\n")])
        turn_until(w, lambda: w.stats["jobs"] == 2)
        assert w.reading and not w.lingering and w.stats["lingered"] == 0
        turn_until(w, lambda: w.stats["confirmed"] == 2)
        assert box.wait(9, time.monotonic() + 2) == (("confirmed", ""),)
    finally:
        w.shutdown()
        jobs.close()


@pytest.mark.parametrize("linger, stopping", [(0, False), (0.1, True)], ids=["linger 0", "stopping"])
def test_a_worker_with_linger_zero_or_stopping_reads_every_job_as_it_comes(broker, queue_name, linger, stopping):
    declare_queue(broker, queue_name)
    w, jobs = lingering_worker(linger=linger)
    w.stop_requested = stopping
    sockets = [parse_socket(broker.socket(queue_name))]
    try:
        for i in range(3):
            assert jobs.put([a_job(sockets, b"E_NOW\n")])
            turn_until(w, lambda: w.stats["jobs"] == i + 1)
            assert w.reading and not w.lingering
        assert w.stats["lingered"] == 0
    finally:
        w.shutdown()
        jobs.close()


def test_a_linger_that_ends_with_the_backlog_full_leaves_the_queue_unwatched_until_confirms_bring_it_to_half(
        broker, queue_name):
    declare_queue(broker, queue_name)
    w, jobs = lingering_worker(linger=0.05, backlog_size=4)
    sockets = [parse_socket(broker.socket(queue_name))]
    try:
        for i in range(3):
            assert jobs.put([a_job(sockets, b"E_FULL\n")])
        turn_until(w, lambda: w.stats["jobs"] == 3)
        assert w.lingering
        w.outstanding = 4  # the backlog full when the linger ends (a fan-out, a slow broker)
        w._end_linger()
        assert not w.lingering and not w.reading
        w.outstanding = 3
        w._confirmed(())  # how a link reports an ack: above half, still paused
        assert not w.reading
        w.outstanding = 0
        w._confirmed(())
        assert w.reading
        assert jobs.put([a_job(sockets, b"E_FULL\n")])
        turn_until(w, lambda: w.stats["confirmed"] == 4)
    finally:
        w.shutdown()
        jobs.close()


def test_the_worker_process_leaves_its_inherited_heap_out_of_collections_and_the_application_process_as_it_was():
    inherited = [[i] for i in range(50_000)]  # an application's heap, as a forked worker finds it
    before = (gc.get_threshold(), gc.get_freeze_count())
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker's own process, set up as the service sets it up
        try:
            w = RabbitMQWorker(JobQueue(FORK, maxsize=10), opsevent.Settings())
            w.init_process()  # install_signals: its own process
            cycle = []
            cycle.append(cycle)
            del cycle
            found = gc.collect()  # what forms cycles is still collected
            os.write(write_end, json.dumps([gc.get_threshold(), gc.get_freeze_count(), found]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        threshold, frozen, found = json.loads(os.read(read_end, 4096))
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert threshold[0] == GC_YOUNG and threshold[1:] == list(before[0][1:])
    assert frozen >= len(inherited) and found >= 1
    assert (gc.get_threshold(), gc.get_freeze_count()) == before  # the test's process: untouched
