"""Failover hosts against two private brokers: the primary really stops, and comes back.

Both brokers have the same durable queue; a socket lists the primary first
(``rabbitmq:127.0.0.1:P1,127.0.0.1:P2/q``).  Events raised while the primary
is down land on the secondary; after the primary is back and
``failback_interval`` has passed, new events land on the primary again.
Every raised event arrives exactly once, but for the unconfirmed ones the
lost connection republished (at-least-once), and the fail-back itself
republishes none.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time

import pytest

import opsevent
import workers
from opsevent import Status, parse_socket
from workers.demo.broker import PrivateBroker, declare_queue, port_accepts
from workers.rabbitmq.link import BrokerLink
from helpers import SECRET, SECRET_USER, add_secret_user, wait_for
from tcpproxy import TcpProxy
from test_faults import assert_ids_kept, drain_queue, event_body, link_stats, raise_unconfirmed, settled, worker_logs

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def two_brokers():
    with contextlib.ExitStack() as stack:
        brokers = stack.enter_context(PrivateBroker()), stack.enter_context(PrivateBroker())
        for b in brokers:
            add_secret_user(b)
        yield brokers


@pytest.fixture
def brokers(two_brokers):
    """The module's brokers, both running again after each test."""
    yield two_brokers
    for b in two_brokers:
        if not port_accepts(b.host, b.port):
            b.start_app()


class Raiser(threading.Thread):
    """Raises ``event`` at a steady rate until stopped; remembers what was queued."""

    def __init__(self, evi, event: str, rate: float):
        super().__init__(daemon=True)
        self.evi, self.event, self.rate = evi, event, rate
        self.queued: dict[int, str] = {}  # seq -> the message id its raise returned
        self.refused = collections.Counter()
        self.next_seq = 0
        self.stopping = threading.Event()

    def run(self):
        start = time.monotonic()
        while not self.stopping.is_set():
            seq = self.next_seq
            result = self.evi.raise_event(self.event, {"rank": 0, "seq": seq})
            status = result.deliveries[0].status
            if status is Status.QUEUED:
                self.queued[seq] = result.message_id
            else:
                self.refused[status.value] += 1
            self.next_seq += 1
            time.sleep(max(0.0, start + self.next_seq / self.rate - time.monotonic()))

    def stop(self) -> dict[bytes, str]:
        """Stop; the queued events' bodies, each with its message id."""
        self.stopping.set()
        self.join(5)
        assert not self.is_alive() and not self.refused, self.refused
        return {event_body(self.event, 0, seq): mid for seq, mid in self.queued.items()}


def two_host_socket(brokers, queue_name) -> tuple[str, str]:
    """A socket whose hosts are both brokers (primary first), with the queue on each; and its label."""
    for b in brokers:
        declare_queue(b, queue_name)
    sock = f"rabbitmq:{SECRET_USER}:{SECRET}@127.0.0.1:{brokers[0].port},127.0.0.1:{brokers[1].port}/{queue_name}"
    return sock, parse_socket(sock).broker_label


def test_events_go_to_the_next_host_while_the_primary_is_down_and_back_to_the_primary_after_the_failback_interval(
        brokers, queue_name):
    primary, secondary = brokers
    sock, label = two_host_socket(brokers, queue_name)
    failback = 1.0
    evi = opsevent.EventInterface(persistent=True, failback_interval=failback, connect_timeout=1.0,
                                  reconnect_min=0.1, reconnect_max=0.5)
    evi.subscribe_event("E_FAILOVER", sock)

    link_log = logging.getLogger("workers.rabbitmq.link")
    level = link_log.level
    link_log.setLevel(logging.INFO)  # the fail-back line is good news: INFO; the worker inherits this at fork
    with worker_logs() as logs, contextlib.ExitStack() as restore:
        restore.callback(link_log.setLevel, level)
        with workers.serve(evi, install_logging=True) as service:
            raiser = Raiser(evi, "E_FAILOVER", rate=200)
            raiser.start()
            try:
                wait_for(lambda: link_stats(service, label).get("confirmed", 0) > 50, 5, "events confirmed")
                assert link_stats(service, label)["endpoint"] == f"127.0.0.1:{primary.port}"
                primary.stop_app()
                on_secondary = wait_for(
                    lambda: (s := link_stats(service, label)).get("failovers") == 1
                    and s["endpoint"] == f"127.0.0.1:{secondary.port}" and s["state"] == "ready" and s,
                    10, "the link on the secondary")
                time.sleep(0.5)
                primary.start_app()
                wait_for(lambda: (s := link_stats(service, label)).get("failbacks") == 1
                         and s["endpoint"] == f"127.0.0.1:{primary.port}" and s["state"] == "ready",
                         failback + 5, "the link back on the primary")
                back_from = raiser.next_seq  # raised from here on: handled after the fail-back
                time.sleep(1.0)
            finally:
                raised = raiser.stop()
            wait_for(lambda: settled(service, label) and service.stats().get("jobs") == len(raised), 10,
                     "every raised event confirmed")
    stats = service.final_stats["brokers"][label]

    primary_messages = drain_queue(primary, queue_name, properties=True)
    secondary_messages = drain_queue(secondary, queue_name, properties=True)
    on_primary = [body for body, _props in primary_messages]
    on_secondary_bodies = [body for body, _props in secondary_messages]
    received = collections.Counter(on_primary + on_secondary_bodies)
    assert set(received) == set(raised) and service.final_stats.get("failed", 0) == 0
    assert_ids_kept(primary_messages + secondary_messages, raised)  # republished copies too (sure: the test below)
    duplicates = sum(received.values()) - len(received)
    assert duplicates <= stats.get("republished", 0), (duplicates, stats)
    # The fail-back waited for the secondary's confirms: it republished nothing.
    assert stats.get("republished", 0) == on_secondary.get("republished", 0)
    assert (stats["failovers"], stats["failbacks"], stats["connection_lost"]) == (1, 1, 1), stats
    assert len(on_secondary_bodies) > 0
    late = {event_body("E_FAILOVER", 0, seq) for seq in range(back_from, raiser.next_seq)}
    assert late and late <= set(on_primary) and not late & set(on_secondary_bodies)
    # Each switch is logged once, with the password-free label.
    assert len([r for r in logs.matching("failed over to host 2") if label in r.getMessage()]) == 1
    assert len([r for r in logs.matching("back on the primary host") if label in r.getMessage()]) == 1
    print(f"\nFIGURE failover: raised {len(raised)}, on the primary {len(on_primary)}, on the secondary "
          f"{len(on_secondary_bodies)}, duplicates {duplicates}, republished {stats.get('republished', 0)}")


def test_events_in_flight_when_the_primary_goes_are_published_on_the_next_host_with_their_message_ids(
        brokers, queue_name):
    primary, secondary = brokers
    for b in brokers:
        declare_queue(b, queue_name)
    # The primary behind a proxy that can lose bytes: the events in flight never reach it, so
    # each arrives only as the copy published again on the secondary.
    with TcpProxy(primary.port, process=True) as proxy:
        sock = f"rabbitmq:{SECRET_USER}:{SECRET}@127.0.0.1:{proxy.port},127.0.0.1:{secondary.port}/{queue_name}"
        label = parse_socket(sock).broker_label
        evi = opsevent.EventInterface(persistent=True, failback=False, connect_timeout=1.0,
                                      reconnect_min=0.1, reconnect_max=0.5)
        evi.subscribe_event("E_MOVED", sock)
        with workers.serve(evi, install_logging=False) as service:
            ids = raise_unconfirmed(evi, service, label, "E_MOVED", proxy)
            primary.stop_app()  # the proxy passes the close on, and cannot reach the primary any more
            wait_for(lambda: (s := link_stats(service, label)).get("failovers") == 1
                     and s["endpoint"] == f"127.0.0.1:{secondary.port}" and s.get("confirmed") == 51
                     and settled(service, label), 15, "the 50 published again on the secondary")
        stats = service.final_stats["brokers"][label]

    assert stats["republished"] == 50 and stats["connection_lost"] == 1, stats
    primary.start_app()
    primary_messages = drain_queue(primary, queue_name, properties=True)
    secondary_messages = drain_queue(secondary, queue_name, properties=True)
    assert [body for body, _props in primary_messages] == [event_body("E_MOVED", 0, 0)]
    assert sorted(body for body, _props in secondary_messages) == sorted(set(ids) - {event_body("E_MOVED", 0, 0)})
    assert len(set(ids.values())) == 51
    assert_ids_kept(primary_messages + secondary_messages, ids)


def test_sync_raises_are_confirmed_by_whichever_host_is_up_and_losing_the_secondary_returns_to_the_primary(
        brokers, queue_name):
    primary, secondary = brokers
    sock, label = two_host_socket(brokers, queue_name)
    # No probe within the test: the way back is the rotation, once the secondary goes.
    evi = opsevent.EventInterface(sync_mode=True, sync_timeout=3.0, failback_interval=60.0, connect_timeout=1.0,
                                  reconnect_min=0.1, reconnect_max=0.5, persistent=True)  # survive stop_app
    evi.subscribe_event("E_SYNC", sock)
    primary.stop_app()
    with workers.serve(evi, install_logging=False) as service:
        first = [evi.raise_event("E_SYNC", {"rank": 0, "seq": seq}) for seq in range(5)]
        primary.start_app()
        secondary.stop_app()
        second = [evi.raise_event("E_SYNC", {"rank": 0, "seq": seq}) for seq in range(5, 10)]
        wait_for(lambda: settled(service, label), 5, "the link settled on the primary")
    stats = service.final_stats["brokers"][label]

    assert all(first) and all(second), [r.failures for r in first + second]
    assert (stats["failovers"], stats["failbacks"], stats["endpoint"]) == (1, 1, f"127.0.0.1:{primary.port}")
    secondary.start_app()
    on_secondary, on_primary = drain_queue(secondary, queue_name), drain_queue(primary, queue_name)
    assert set(on_secondary) == {event_body("E_SYNC", 0, seq) for seq in range(5)}
    assert set(on_primary) >= {event_body("E_SYNC", 0, seq) for seq in range(5, 10)}
    assert len(on_secondary) + len(on_primary) - 10 <= stats.get("republished", 0), stats


def test_with_failback_off_the_link_stays_on_the_host_that_works_after_the_primary_returns(brokers, queue_name):
    primary, secondary = brokers
    sock, label = two_host_socket(brokers, queue_name)
    # Probes would come every 0.5 s, were fail-back on: cluster nodes are equivalent, so it is off.
    evi = opsevent.EventInterface(sync_mode=True, failback=False, failback_interval=0.5, connect_timeout=1.0,
                                  reconnect_min=0.1, reconnect_max=0.5, persistent=True)
    evi.subscribe_event("E_STAY", sock)
    with worker_logs() as logs:
        with workers.serve(evi, install_logging=True) as service:
            assert evi.raise_event("E_STAY", {"rank": 0, "seq": 0})
            primary.stop_app()
            assert evi.raise_event("E_STAY", {"rank": 0, "seq": 1})
            primary.start_app()
            time.sleep(2.0)  # four fail-back intervals
            assert evi.raise_event("E_STAY", {"rank": 0, "seq": 2})
            wait_for(lambda: settled(service, label), 5, "the link settled")
    stats = service.final_stats["brokers"][label]

    assert (stats["endpoint"], stats["failovers"], stats["failbacks"]) == (f"127.0.0.1:{secondary.port}", 1, 0)
    assert drain_queue(primary, queue_name) == [event_body("E_STAY", 0, 0)]
    assert sorted(drain_queue(secondary, queue_name)) == sorted(event_body("E_STAY", 0, seq) for seq in (1, 2))
    assert len(logs.matching("staying while it works (failback is off)")) == 1


def test_spread_hosts_starts_each_link_at_a_random_host_of_its_list():
    sock = parse_socket("rabbitmq:127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/q")

    def first_host(**settings) -> str:
        link = BrokerLink(sock.broker, sock.broker_label, opsevent.Settings(**settings), ioloop=None, done=None)
        return link.snapshot()["endpoint"]

    assert {first_host() for _ in range(30)} == {"127.0.0.1:1"}
    assert {first_host(spread_hosts=True) for _ in range(60)} == {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}
