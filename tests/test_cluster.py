"""A 3-node RabbitMQ cluster with a quorum queue: node failures under async and sync load.

The module starts one ``PrivateCluster`` (three private nodes on 127.0.0.1,
``workers/demo/cluster.py``) and heals it after each test.  Each test declares a
quorum queue led by node 1, subscribes a socket listing the three nodes
(node 1 first, ``failback=False``), and runs, at once: two front-end
processes raising async events at a steady rate, and sync callers (threads)
raising one event after the other.  Then it does one fault for real (stop
the app, SIGKILL or SIGSTOP a node's ``beam.smp``, found by its port), undoes
it, and counts from what the queue holds: raised, accepted, received,
missing, duplicates.

The promise: no event that returned success (``queued``, ``confirmed``) is
missing; a duplicate is only ever a copy with the message-id its raise
returned; every caller is bounded by its timeout.  A sync ``timeout`` is an
unknown outcome: counted, and its reason says so.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

import pytest

import opsevent
import workers
from opsevent import Status
from workers.demo.broker import consume, queue_count
from workers.demo.cluster import PrivateCluster
from helpers import wait_for
from test_faults import FORK, CallerClock, event_body, flush_jobs, link_stats, settled

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

ASYNC_RATE = 250  # events/s per front-end process; two of them
SYNC_CALLERS = 3
SYNC_TIMEOUT = 2.0
SETTINGS = dict(heartbeat=2, failback=False, sync_timeout=SYNC_TIMEOUT, connect_timeout=1.0,
                reconnect_min=0.1, reconnect_max=1.0)
WARM, AFTER = 2.0, 4.0  # seconds of load before the fault, and after it is undone


@dataclass(frozen=True)
class Fault:
    name: str
    victim: str  # "connected": the node the worker is on, which leads the queue; or "follower"
    act: str  # ClusterNode method that breaks it
    undo: str  # ... and the one that mends it
    down: float  # seconds between the two
    sync_all_confirmed: bool  # whether every sync raise must be confirmed, fault or not


FAULTS = [
    # The node goes at once and says so: failover in milliseconds, nothing for a sync caller to see.
    Fault("stop_app on the connected node", "connected", "stop_app", "start_app", 3.0, True),
    # Nacks from the next node until a fresh channel is taken: retried, so none is lost.
    Fault("SIGKILL of the connected node that leads the queue", "connected", "kill", "restart", 5.0, False),
    # Two of three members remain: the queue goes on.
    Fault("SIGKILL of a follower", "follower", "kill", "restart", 5.0, True),
    # Silence: noticed after 2 x heartbeat; the next node's channel is stuck until the leader thaws.
    Fault("SIGSTOP of the leader, heartbeat 2, SIGCONT after 10 s", "connected", "freeze", "thaw", 10.0, False),
]


@pytest.fixture(scope="module")
def three_nodes():
    with PrivateCluster(3) as cluster:
        yield cluster


@pytest.fixture
def cluster(three_nodes):
    """The module's cluster; every node running and joined again after each test."""
    yield three_nodes
    three_nodes.heal()


# ---- load ------------------------------------------------------------------------------------------------

def async_frontend(evi, rank, seconds, results):
    """A front-end process: raise at ASYNC_RATE for ``seconds``; report (seq, message id) of what was
    queued, and each raise's times (CallerClock: own, CPU and wall)."""
    accepted, refused, clock = [], collections.Counter(), CallerClock()
    start = time.monotonic()
    seq = 0
    while (now := time.monotonic()) - start < seconds:
        time.sleep(max(0.0, start + seq / ASYNC_RATE - now))
        result = clock(evi.raise_event, "E_ASYNC", {"rank": rank, "seq": seq})
        if result:
            accepted.append((seq, result.message_id))
        else:
            refused[result.deliveries[0].status.value] += 1
        seq += 1
    clock.close()
    results.put((rank, seq, accepted, dict(refused), (clock.own, clock.cpu, clock.wall), flush_jobs(evi)))


class SyncCaller(threading.Thread):
    """Raises sync events one after the other until stopped; keeps every outcome with its times."""

    def __init__(self, evi, rank: int):
        super().__init__(daemon=True)
        self.evi, self.rank = evi, rank
        self.outcomes: list[tuple] = []  # (seq, delivery, message id, started, ended)
        self.longest = 0.0  # seconds of the longest raise's own time (CPU waits aside)
        self.stopping = threading.Event()

    def run(self):
        seq, clock = 0, CallerClock()
        while not self.stopping.is_set():
            t0 = time.monotonic()
            result = clock(self.evi.raise_event, "E_SYNC", {"rank": self.rank, "seq": seq})
            self.outcomes.append((seq, result.deliveries[0], result.message_id, t0, time.monotonic()))
            self.longest = max(self.longest, clock.own[-1] / 1e9)
            seq += 1
            time.sleep(0.02)
        clock.close()


class Load:
    """Two async front-end processes and SYNC_CALLERS sync threads, raising at once for ``seconds``."""

    def __init__(self, evi, async_evi, seconds: float):
        self.seconds = seconds
        self.results = FORK.Queue()
        self.frontends = [FORK.Process(target=async_frontend, args=(async_evi, rank, seconds, self.results),
                                       daemon=True) for rank in (1, 2)]
        self.callers = [SyncCaller(evi, rank) for rank in range(SYNC_CALLERS)]
        for worker in self.frontends + self.callers:
            worker.start()

    def finish(self) -> tuple[int, dict, CallerClock, list, float]:
        """Once the front-ends are done: raised, accepted {body: message id}, the async raises' times,
        sync outcomes, and the longest sync raise's own time."""
        try:
            reports = [self.results.get(timeout=self.seconds + 30) for _ in self.frontends]
        finally:
            for caller in self.callers:
                caller.stopping.set()
            for caller in self.callers:
                caller.join(SYNC_TIMEOUT + 5)
        for p in self.frontends:
            p.join(10)
        for rank, _raised, _done, refused, _slowest, left in reports:
            assert refused == {} and left == 0, (rank, refused, left)
        accepted = {event_body("E_ASYNC", rank, seq): mid for rank, _n, done, *_ in reports for seq, mid in done}
        sync = [(event_body("E_SYNC", caller.rank, seq), delivery, mid, t0, t1)
                for caller in self.callers for seq, delivery, mid, t0, t1 in caller.outcomes]
        times = CallerClock()
        times.close()
        for *_, (own, cpu, wall), _left in reports:
            times.own += own
            times.cpu += cpu
            times.wall += wall
        return sum(r[1] for r in reports), accepted, times, sync, max(c.longest for c in self.callers)


@dataclass
class Outcome:
    async_raised: int
    async_accepted: dict  # body -> message id
    async_times: CallerClock  # every async raise of both front-ends
    sync: list  # (body, delivery, message id, started, ended)
    sync_longest: float  # seconds: the longest sync raise's own time
    faulted_at: float
    undone_after: float  # seconds from the fault to the node being back
    link: dict  # the worker's final counters for the cluster's broker identity


def break_and_mend(victim, fault: Fault) -> tuple[float, threading.Thread, list]:
    """Do the fault, wait ``down``, start undoing it: (when it was done, the undoing thread, [when it is back])."""
    faulted_at = time.monotonic()
    getattr(victim, fault.act)()
    time.sleep(fault.down)
    back = []  # a restart takes seconds: the load goes on meanwhile
    undo = threading.Thread(target=lambda: (getattr(victim, fault.undo)(), back.append(time.monotonic())),
                            daemon=True)
    undo.start()
    return faulted_at, undo, back


def run_fault(cluster, fault: Fault, queue: str) -> tuple[Outcome, list]:
    """Load, fault, undo, settle; the outcome and the queue's messages as (body, properties)."""
    first = cluster.nodes[0]
    victim = first if fault.victim == "connected" else cluster.nodes[2]
    cluster.declare_quorum_queue(queue, on=first)
    assert cluster.queue_leader(queue) is first
    sock = cluster.socket(queue)
    label = opsevent.parse_socket(sock).broker_label
    async_evi = opsevent.EventInterface(**SETTINGS)
    async_evi.subscribe_event("E_ASYNC", sock)
    evi = opsevent.EventInterface(sync_mode=True, **SETTINGS)
    evi.subscribe_event("E_SYNC", sock)

    with workers.serve(evi, install_logging=False) as service:
        async_evi.attach(evi.transport)
        load = Load(evi, async_evi, WARM + fault.down + AFTER)
        try:
            wait_for(lambda: link_stats(service, label).get("confirmed", 0) > 200, 10, "events confirmed")
            assert link_stats(service, label)["endpoint"] == f"{first.host}:{first.port}"
            time.sleep(max(0.0, WARM - 1.0))
            faulted_at, undo, back = break_and_mend(victim, fault)
        finally:
            raised, accepted, times, sync, sync_longest = load.finish()
        undo.join(90)
        assert back, f"{fault.undo} of {victim.node} failed or took over 90 s"
        # Bounded, and generous: a quorum queue's leader may move again as the node rejoins.
        wait_for(lambda: settled(service, label), 60, "everything published after the fault",
                 show=lambda: link_stats(service, label))
    messages = consume(first, queue, queue_count(first, queue), timeout=30, properties=True)
    cluster.delete_queue(queue)
    return Outcome(raised, accepted, times, sync, sync_longest, faulted_at, back[0] - faulted_at,
                   service.final_stats["brokers"][label]), messages


# ---- the tests --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_no_event_that_returned_success_is_missing_and_every_caller_is_bounded_when_a_node_fails(
        cluster, queue_name, fault):
    outcome, messages = run_fault(cluster, fault, queue_name)

    received = collections.Counter(body for body, _props in messages)
    sync_ids = {body: mid for body, _delivery, mid, *_ in outcome.sync}
    raised_ids = {**outcome.async_accepted, **sync_ids}
    assert set(received) <= set(raised_ids), "a message nobody raised"
    # Every copy carries the message id its raise returned: consumers can drop duplicates by it.
    assert all(props.message_id == raised_ids[body] for body, props in messages)

    confirmed = {body for body, d, *_ in outcome.sync if d.status is Status.CONFIRMED}
    succeeded = set(outcome.async_accepted) | confirmed
    missing = succeeded - set(received)
    assert not missing, f"{len(missing)} events that returned success are missing"

    statuses = collections.Counter(d.status.value for _b, d, *_ in outcome.sync)
    assert set(statuses) <= ({"confirmed"} if fault.sync_all_confirmed
                             else {"confirmed", "timeout", "nacked", "failed"}), statuses
    for _body, delivery, *_ in outcome.sync:
        if delivery.status is Status.TIMEOUT:
            assert "outcome unknown" in delivery.reason, delivery.reason
    assert outcome.sync_longest <= SYNC_TIMEOUT + 0.1, outcome.sync_longest  # own time: CPU waits aside
    outcome.async_times.assert_never_blocked("an async raise while a node fails")  # never waits for the broker

    recovery = next((t1 - outcome.faulted_at for _b, d, _m, t0, t1 in sorted(outcome.sync, key=lambda o: o[3])
                     if t0 > outcome.faulted_at and d.status is Status.CONFIRMED), None)
    assert recovery is not None, "no sync raise confirmed after the fault"
    print_figure(fault, outcome, received, confirmed, missing, recovery)


def print_figure(fault, outcome, received, confirmed, missing, recovery) -> None:
    """One line of docs/cluster.md's table (run with -s to see it)."""
    statuses = collections.Counter(d.status.value for _b, d, *_ in outcome.sync)
    unknown = {body for body, d, *_ in outcome.sync if d.status is Status.TIMEOUT}
    not_taken = {body for body, d, *_ in outcome.sync if d.status in (Status.NACKED, Status.FAILED)}
    duplicates = sum(received.values()) - len(received)
    link = outcome.link
    print(f"\nFIGURE cluster, {fault.name}: raised {outcome.async_raised} async + {len(outcome.sync)} sync; "
          f"accepted {len(outcome.async_accepted)} queued + {len(confirmed)} confirmed; "
          f"received {sum(received.values())} ({len(received)} distinct); missing {len(missing)}; "
          f"duplicates {duplicates}; sync {dict(statuses)}, of the timeouts {len(unknown & set(received))} "
          f"arrived, of nacked/failed {len(not_taken & set(received))}; recovery {recovery:.2f} s "
          f"(first sync confirm after the fault; node back after {outcome.undone_after:.1f} s); "
          f"link: failovers {link.get('failovers', 0)}, republished {link.get('republished', 0)}, "
          f"nack retries {link.get('nack_retries', 0)}, channels reopened {link.get('channels_reopened', 0)}; "
          f"slowest sync {outcome.sync_longest:.2f} s (own time); async raises {outcome.async_times.summary()}")
