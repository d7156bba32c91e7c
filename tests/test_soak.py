"""Soak: a fixed event rate for a long time, the broker restarted every duration/5.

Asserts that nothing accumulates: the worker's and each front-end's RSS grows
by at most 5 MiB (from the first restart on, once every buffer has been used
once) and their open file descriptors never exceed the count after the first
restart; the broker has exactly one connection (ours) again after each
restart; and every event is accounted for: received = raised - counted drops,
duplicates at most the number republished.

Two forms, the same code:

* ``test_a_short_soak...`` (CI, by default): 40 s, a restart every 10 s.
* ``test_the_full_soak...`` (marked ``slow``, deselected by default): run it with

      OPSEVENT_SOAK_SECONDS=600 ./run tests tests/test_soak.py -m slow

  (600 s by default; a restart every OPSEVENT_SOAK_SECONDS/5).
"""

from __future__ import annotations

import collections
import gc
import multiprocessing
import os
import time

import pytest

import opsevent
import workers
from opsevent import Status, parse_socket
from workers.demo.broker import PrivateBroker, consume, declare_queue, port_accepts, queue_count
from helpers import wait_for

FORK = multiprocessing.get_context("fork")
SOAK_SECONDS = float(os.environ.get("OPSEVENT_SOAK_SECONDS", "600"))
RATE = 200  # events per second per front-end
FRONTENDS = (1, 2)
RSS_GROWTH_LIMIT = 5 << 20  # bytes


def soak_frontend(evi, rank, rate, stop, results):
    """Raise E_SOAK at ``rate`` per second until ``stop``; report how many and which were refused."""
    refused, seq = [], 0
    start = time.monotonic()
    while not stop.is_set():
        due = start + seq / rate
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        if evi.raise_event("E_SOAK", {"rank": rank, "seq": seq}).deliveries[0].status is not Status.QUEUED:
            refused.append(seq)
        seq += 1
    results.put((rank, seq, refused, evi.transport.flush(5.0)))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    """Open descriptors, the least of five looks 20 ms apart: a file open for a moment
    (the stats file being rewritten, the spool folder being listed) is not a leak."""
    counts = []
    for _ in range(5):
        counts.append(len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(0.02)
    return min(counts)


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


@pytest.fixture(scope="module")
def soak_broker():
    with PrivateBroker() as b:
        yield b
        if not port_accepts(b.host, b.port):
            b.start_app()


def run_soak(b, queue: str, duration: float, restart_every: float) -> None:
    declare_queue(b, queue)  # durable; persistent messages survive the restarts
    sock = b.socket(queue)
    label = parse_socket(sock).broker_label
    evi = opsevent.EventInterface(persistent=True, reconnect_min=0.1, reconnect_max=1.0)
    evi.subscribe_event("E_SOAK", sock)

    def link():
        assert service.process.is_alive(), f"the RabbitMQ worker died: exit code {service.process.exitcode}"
        return service.stats().get("brokers", {}).get(label, {})

    gc.collect()  # the harness's garbage (sockets, pipes) is not forked into the worker to close later
    with workers.serve(evi) as service:
        stop, results = FORK.Event(), FORK.Queue()
        procs = [FORK.Process(target=soak_frontend, args=(evi, rank, RATE, stop, results), daemon=True,
                              name=f"soak-{rank}") for rank in FRONTENDS]
        for p in procs:
            p.start()
        pids = {"worker": service.process.pid, **{p.name: p.pid for p in procs}}

        def sample():
            return {name: (rss_bytes(pid), fd_count(pid)) for name, pid in pids.items()}

        t0 = time.monotonic()
        try:
            wait_for(lambda: link().get("confirmed", 0) > 0, 10, "the first events confirmed")
            snapshots = []
            restarts = int((duration - 1e-9) // restart_every)
            for k in range(1, restarts + 1):
                sleep_until(t0 + k * restart_every)
                b.stop_app()
                b.start_app()
                wait_for(lambda: link().get("connects") == k + 1 and link().get("state") == "ready", 20,
                         f"the worker connected again after restart {k}")
                wait_for(lambda: b.connection_count() == 1, 20,
                         f"exactly one connection on the broker after restart {k}")
                time.sleep(1.0)  # the backlog of the outage published
                snapshots.append(sample())
            sleep_until(t0 + duration)
        finally:
            stop.set()
        per_rank, refused = {}, set()
        for _ in procs:
            rank, n, refused_seqs, left = results.get(timeout=30)
            assert left == 0
            per_rank[rank] = n
            refused |= {(rank, seq) for seq in refused_seqs}
        raised = sum(per_rank.values())
        for p in procs:
            p.join(10)
        wait_for(lambda: (s := link()).get("pending") == 0 and s.get("inflight") == 0
                 and service.stats().get("jobs") == raised - len(refused), 30, "every accepted event published")
        end = service.stats()
        worker_end = (rss_bytes(pids["worker"]), fd_count(pids["worker"]))
    stats = service.final_stats["brokers"][label]

    assert restarts >= 1 and stats["connection_lost"] == restarts and stats["connects"] == restarts + 1, stats
    # Nothing grows: from the first restart on (every buffer used once), RSS within 5 MiB, fds the same.
    baseline, last = snapshots[0], snapshots[-1]
    for name in pids:
        assert last[name][0] - baseline[name][0] <= RSS_GROWTH_LIMIT, (name, baseline[name], last[name])
        # Fewer is not a leak: a forked process may close what it inherited later (the
        # harness's garbage, collected in the child); more after any restart would be.
        assert max(snap[name][1] for snap in snapshots) <= baseline[name][1], (name, [s[name] for s in snapshots])
    assert worker_end[0] - baseline["worker"][0] <= RSS_GROWTH_LIMIT and worker_end[1] <= baseline["worker"][1]
    # Every event accounted for.
    dropped = stats.get("dropped_backlog_full", 0) + stats.get("dropped_expired", 0)
    assert dropped == 0 and not refused and end.get("failed", 0) == 0  # far inside every bound
    n = queue_count(b, queue)
    bodies = consume(b, queue, n, timeout=max(30.0, n / 2000))
    received = collections.Counter(bodies)
    # The guide's line format, written out (not by the encoder under test).
    assert set(received) == {b"E_SOAK\nrank::%d\nseq::%d\n" % (rank, seq)
                             for rank, n in per_rank.items() for seq in range(n)}
    assert len(bodies) - len(received) <= stats.get("republished", 0)


@pytest.mark.broker
@pytest.mark.timeout(240)
def test_a_short_soak_with_broker_restarts_leaks_nothing_and_loses_nothing(soak_broker, queue_name):
    run_soak(soak_broker, queue_name, duration=40.0, restart_every=10.0)


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.timeout(int(SOAK_SECONDS) + 600)
def test_the_full_soak_with_broker_restarts_leaks_nothing_and_loses_nothing(soak_broker, queue_name):
    run_soak(soak_broker, queue_name, duration=SOAK_SECONDS, restart_every=SOAK_SECONDS / 5)
