"""Metrics inside a real gunicorn: the master serves the endpoint, and the application's own registry works too.

``Hooks(..., metrics_address=...)`` starts the endpoint in ``on_starting``,
in the master, before gunicorn forks its workers: the workers (and the
RabbitMQ worker) close their inherited copy of the socket at once, so only
the master holds the port, through reloads and recycling.
"""

from __future__ import annotations

import os
import signal
import socket

import pytest

from helpers import wait_for
from scrape import Samples, holders, scrape
from servers import Server, load
from workers.demo.broker import PrivateBroker, declare_queue, free_port

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def web_broker():
    with PrivateBroker() as b:
        yield b


def process_group(pgid: int) -> list[int]:
    """Every live process of group *pgid* (a server started in a session of its own)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # after the name: state, ppid, pgrp
                pids.append(int(name))
    return pids


def test_under_gunicorn_only_the_master_serves_the_metrics_port_and_every_worker_reports_the_same_counts(
        web_broker, queue_name, tmp_path):
    declare_queue(web_broker, queue_name)
    address = ("127.0.0.1", free_port())
    options = {"quiet_pika": True, "metrics_address": address}
    sub = {"event": "E_HTTP", "socket": f"rabbitmq:guest:***@127.0.0.1:{web_broker.port}/{queue_name}"}
    with Server.gunicorn(tmp_path, web_broker.socket(queue_name), settings={}, app="metricsapp:app", workers=3,
                         max_requests=100, options=options) as server:
        results = load(server, range(600), during=[(0.5, lambda: server.signal(signal.SIGHUP))])
        assert {status for status, _body in results.values()} == {200}
        wait_for(lambda: scrape(address).get_value("opsevent_events_confirmed_total", **sub) == 600, 15,
                 "600 confirmed at the master's endpoint")
        master = server.proc.pid
        # The master, its 3 workers (recycled, reloaded) and the RabbitMQ worker.
        group = wait_for(lambda: len(g := process_group(master)) >= 1 + 3 + 1 and g, 10, "every process up")
        assert set(holders(address, group)) == {master}
        from_workers = [Samples.parse(server.get("/metrics")[1].decode()) for _ in range(6)]
        assert {m.get_value("opsevent_events_confirmed_total", **sub) for m in from_workers} == {600}
        assert server.stop() == 0
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2).close()
