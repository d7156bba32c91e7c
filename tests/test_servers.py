"""opsevent inside the servers users run: gunicorn (sync, gthread, uvicorn worker) and uvicorn.

Each test starts a real server from PyPI on tests/apps/webapp.py, drives it
with HTTP requests from the test, stops it, and then counts exactly: every
200 has exactly one byte-exact event in the queue and no event lacks a 200
(``servers.assert_exact``).  The brokers are private (this module's own,
which some tests stop and start).
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from helpers import boottime, started_at, wait_for
from servers import Server, assert_exact, load
from workers.demo.broker import PrivateBroker, declare_queue

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

ASYNC = {"queue_size": 20_000}
SYNC = {"sync_mode": True, "sync_timeout": 5.0}


@pytest.fixture(scope="module")
def web_broker():
    with PrivateBroker() as b:
        yield b


@pytest.fixture
def queue(web_broker, queue_name):
    declare_queue(web_broker, queue_name)
    return queue_name


def test_gunicorn_sync_workers_answer_200_exactly_for_the_events_that_arrive_across_a_graceful_reload(
        web_broker, queue, tmp_path):
    with Server.gunicorn(tmp_path, web_broker.socket(queue), settings=ASYNC) as server:
        results = load(server, range(1500), during=[(0.4, lambda: server.signal(signal.SIGHUP))])
        wait_for(lambda: "Hang up" in server.log() or "Handling signal: hup" in server.log(), 10, "the reload")
        assert server.stop() == 0
    counts = assert_exact(web_broker, queue, results)
    assert counts == {200: 1500}
    assert "Exception ignored" not in server.log(), server.log()[-2000:]


def test_the_applications_own_log_lines_from_gunicorn_workers_all_appear(web_broker, queue, tmp_path):
    with Server.gunicorn(tmp_path, web_broker.socket(queue), settings=ASYNC) as server:
        for n in range(30):
            assert server.get("/log/10")[0] == 200
        assert server.stop() == 0
    lines = re.findall(r"app error line \d+ from pid \d+", server.log())
    assert len(lines) == 300, server.log()[-2000:]


def test_with_install_logging_the_workers_log_lines_reach_the_masters_handlers_once_each(
        web_broker, queue, tmp_path):
    with Server.gunicorn(tmp_path, web_broker.socket(queue), settings=ASYNC, logging="basic",
                         options={"quiet_pika": True, "install_logging": True}) as server:
        for n in range(30):
            assert server.get("/log/10")[0] == 200
        master = server.proc.pid
        assert server.stop() == 0
    # basicConfig's handler, in the master, wrote each record (its format shows the origin pid).
    lines = re.findall(r"(\d+) ERROR webapp: app error line \d+ from pid (\d+)", server.log())
    assert len(lines) == 300, server.log()[-2000:]
    assert all(origin == pid != str(master) for origin, pid in lines)


def test_recycled_gunicorn_workers_hand_over_their_jobs_and_leave_no_queue_slot_behind(
        web_broker, queue, tmp_path):
    with Server.gunicorn(tmp_path, web_broker.socket(queue), settings=ASYNC, max_requests=40, jitter=10) as server:
        results = load(server, range(1500))
        stats = wait_for(lambda: (s := server.stats()).get("queue_depth") == 0 and s.get("held") == 0 and s,
                         10, "an empty queue")
        assert server.stop() == 0
    assert assert_exact(web_broker, queue, results) == {200: 1500}
    assert stats["lost_with_dead_workers"] == 0
    assert len(re.findall(r"Autorestarting worker", server.log())) >= 1500 // 50 - 4


def test_sigterm_under_load_stops_gunicorn_with_exit_code_0_and_loses_no_answered_event(
        web_broker, queue, tmp_path):
    with Server.gunicorn(tmp_path, web_broker.socket(queue), settings=ASYNC) as server:
        results = load(server, range(2000), during=[(0.5, lambda: server.signal(signal.SIGTERM))])
        assert server.stop() == 0
    counts = assert_exact(web_broker, queue, results)
    assert counts.get(200, 0) >= 900 and set(counts) <= {200, None}, counts
    assert "Exception ignored" not in server.log()


def test_a_killed_rabbitmq_worker_is_replaced_and_only_the_events_it_held_can_be_missing(
        web_broker, queue, tmp_path):
    killed = {}

    def kill_worker():
        stats = server.stats()
        os.kill(stats["pid"], signal.SIGKILL)
        killed.update(pid=stats["pid"], at=boottime())

    with Server.gunicorn(tmp_path, web_broker.socket(queue), settings=ASYNC) as server:
        results = load(server, range(3000), during=[(0.3, kill_worker)])
        stats = wait_for(lambda: (s := server.stats()).get("pid") not in (None, killed["pid"]) and s, 5,
                         "a new RabbitMQ worker's stats")
        replaced_in = started_at(stats["pid"]) - killed["at"]  # to its fork: the stats file's lag aside
        after = load(server, range(3000, 3500))  # raised after the kill: all must arrive
        assert server.stop() == 0
    held = stats["lost_with_dead_workers"]
    assert replaced_in <= 1.0, replaced_in  # replaced within 1 s
    assert f"died (killed by SIGKILL) holding {held} events" in server.log()
    answered = {**results, **after}
    missing = _missing(web_broker, queue, answered)
    assert len(missing) <= held, (len(missing), held)
    assert not missing & set(range(3000, 3500))
    assert all(status == 200 for status, _ in answered.values())


def test_with_the_broker_down_and_a_tiny_backlog_recycled_workers_lose_nothing_they_answered_200(
        web_broker, queue, tmp_path):
    # Big events fill the pipe (1 MiB here, 8 MiB with CAP_SYS_RESOURCE), so the
    # recycled workers exit with jobs in their overflow buffers: they must hand them over.
    pad, down_requests = 3500, 2700
    settings = {"queue_size": 2400, "backlog_size": 50, "backlog_age": 120.0, "drain_timeout": 20.0}
    with Server.gunicorn(tmp_path, web_broker.socket(queue), settings=settings, max_requests=30, jitter=5,
                         pad=pad) as server:
        web_broker.stop_app()
        try:
            down = load(server, range(down_requests))
        finally:
            web_broker.start_app()
        wait_for(lambda: server.stats().get("queue_depth") == 0, 60, "the backlog published")
        up = load(server, range(down_requests, down_requests + 300))
        stats = wait_for(lambda: (s := server.stats()).get("queue_depth") == 0 and s.get("held") == 0 and s, 60,
                         "the last events published")
        assert server.stop() == 0
    counts = assert_exact(web_broker, queue, {**down, **up}, timeout=60, pad=pad)
    refused = [body for status, body in down.values() if status == 503]
    # The queue (2,400 jobs) and the backlog took most of what came while the broker was down.
    assert set(counts) == {200, 503} and counts[200] >= 2000 + 300, counts
    assert all(b"queue full" in body for body in refused), {body for body in refused if b"queue full" not in body}
    assert all(status == 200 for status, _ in up.values())
    assert "dropped_at_exit" not in server.log()
    assert not any(row.get("dropped_at_exit") for row in stats["subscriptions"])
    assert stats["unspooled"] > 0  # recycled workers did exit with buffered jobs, and handed them over


def test_gunicorn_workers_killed_with_jobs_in_their_buffers_lose_exactly_what_is_counted_and_no_queue_slot(
        web_broker, queue, tmp_path):
    # The broker down and big events: the RabbitMQ worker stops reading at its backlog, the pipe
    # fills and each gunicorn worker's next jobs wait in its own buffer. Then every gunicorn worker
    # is SIGKILLed (as a timeout or the OOM killer would): what they buffered is lost, and must be
    # exactly what the RabbitMQ worker counts, with every queue slot back.
    pad, down_requests = 3500, 3000  # 10.8 MB of jobs: more than the pipe (8 MiB at most) and the backlog
    settings = {"queue_size": 100_000, "backlog_size": 50, "backlog_age": 120.0}
    with Server.gunicorn(tmp_path, web_broker.socket(queue), settings=settings, pad=pad) as server:
        rabbitmq_worker = wait_for(lambda: server.stats().get("pid"), 10, "the RabbitMQ worker's first stats")
        web_broker.stop_app()
        try:
            down = load(server, range(down_requests))
            killed = children(server.proc.pid) - {rabbitmq_worker}
            assert len(killed) == 4, killed
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
        finally:
            web_broker.start_app()
        stats = wait_for(lambda: (s := server.stats()).get("queue_depth") == 0 and s.get("held") == 0
                         and s.get("outstanding") == 0 and s, 60, "every job left published or counted")
        assert server.stop() == 0
    lost = stats["lost_with_dead_frontends"]
    assert lost > 0 and stats["pid"] == rabbitmq_worker  # the scenario happened; the worker lived on
    assert all(status == 200 for status, _ in down.values())
    assert server.log().count("queued events in its buffer, never handed over") \
        == len([pid for pid in killed if f"process {pid} ended with" in server.log()]) > 0
    assert len(_missing(web_broker, queue, down, pad=pad)) == lost


def test_gthread_with_32_threads_gets_every_sync_status_without_a_false_timeout(web_broker, queue, tmp_path):
    with Server.gunicorn(tmp_path, web_broker.socket(queue), settings=SYNC, workers=2, worker_class="gthread",
                         threads=32) as server:
        results = load(server, range(2000), concurrency=64)
        # The stats file is rewritten every second: wait for one that counts all 2,000 replies.
        stats = wait_for(lambda: (s := server.stats()).get("replies_sent", 0) >= 2000 and s, 10,
                         "the worker's stats to count every reply")
        assert server.stop() == 0
    assert assert_exact(web_broker, queue, results) == {200: 2000}
    assert stats["replies_sent"] == 2000 and stats["replies_lost"] == 0 and stats.get("timeout", 0) == 0


def test_uvicorn_with_workers_serves_each_workers_own_evi_and_awaits_sync_raises(web_broker, queue, tmp_path):
    with Server.uvicorn(tmp_path, web_broker.socket(queue), settings=SYNC, workers=2) as server:
        results = load(server, range(2000), concurrency=64)
        assert server.stop() == 0
    assert assert_exact(web_broker, queue, results) == {200: 2000}
    assert len(set(int(body) for _status, body in results.values())) == 2  # both workers answered


def test_gunicorns_uvicorn_worker_raises_through_the_masters_service(web_broker, queue, tmp_path):
    with Server.gunicorn(tmp_path, web_broker.socket(queue), settings=SYNC, app="webapp:asgi", workers=2,
                         worker_class="uvicorn_worker.UvicornWorker") as server:
        results = load(server, range(1500), concurrency=32)
        assert server.stop() == 0
    assert assert_exact(web_broker, queue, results) == {200: 1500}
    assert len(re.findall(r"started rabbitmq-worker pid", server.log())) <= 1


def test_serve_at_import_without_preload_gives_each_gunicorn_worker_its_own_and_exits_promptly(
        web_broker, queue, tmp_path):
    with Server.gunicorn(tmp_path, web_broker.socket(queue), settings=ASYNC, hooks=False, serve="import",
                         workers=2) as server:
        results = load(server, range(1000))
        t0 = time.monotonic()
        assert server.stop() == 0
        stopped_in = time.monotonic() - t0
    assert stopped_in < 10, f"gunicorn took {stopped_in:.1f} s to stop"
    assert assert_exact(web_broker, queue, results) == {200: 1000}
    assert "Exception ignored" not in server.log()


def children(pid: int) -> set[int]:
    """The pids of *pid*'s child processes."""
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found |= {int(child) for child in f.read().split()}
    return found


def _missing(broker, queue, answered, pad: int = 0) -> set:
    """Ids answered 200 whose event is not in the queue (each present one exactly once, byte-exact)."""
    from servers import expected_body
    from workers.demo.broker import consume, queue_count
    wanted = {expected_body(i, int(body), pad): i for i, (status, body) in answered.items() if status == 200}
    got = []
    try:
        got = consume(broker, queue, len(wanted), timeout=5)
    except TimeoutError as exc:
        got = exc.bodies
    assert queue_count(broker, queue) == 0
    assert len(got) == len(set(got)), "duplicates"
    assert set(got) <= set(wanted), "events without a 200"
    return {wanted[body] for body in set(wanted) - set(got)}
