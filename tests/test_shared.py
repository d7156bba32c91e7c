"""The subscription table shared by every process: writes from any process, reads on the next raise."""

from __future__ import annotations

import multiprocessing
import os

import pytest

import opsevent
from opsevent import parse_socket
from workers.shared import HEADER, SharedSubscriptions, SubscriptionTableFull

FORK = multiprocessing.get_context("fork")
PIKE = parse_socket("rabbitmq:u:s3cr3t@127.0.0.1/pike")
QUEUE = parse_socket("rabbitmq:127.0.0.1/queue")


def in_child(work) -> int:
    """Run *work* in a forked child; its exit code (0 when work returned)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def table():
    shared = SharedSubscriptions.create(FORK)
    yield shared
    shared.close()


def test_a_subscription_made_in_a_child_is_seen_by_the_parents_next_read(table):
    assert table.get("E_X") == ()
    assert in_child(lambda: table.add("E_X", PIKE, expire=60)) == 0
    (sock,) = table.get("E_X")
    assert sock.password == "s3cr3t"
    assert table.entries()[0].expire == 60.0


def test_a_subscription_made_in_the_parent_after_the_fork_is_seen_by_the_child(table):
    ready, go = FORK.Event(), FORK.Event()
    result = FORK.Queue()

    def child():
        ready.set()
        assert go.wait(10)
        result.put([s.routing_key for s in table.get("E_X")])

    process = FORK.Process(target=child)
    process.start()
    assert ready.wait(10)
    table.add("E_X", QUEUE)
    go.set()
    assert result.get(timeout=10) == ["queue"]
    process.join(10)


def test_listings_show_what_another_process_wrote(table):
    table.add("E_X", QUEUE)
    assert table.get("E_X") == (QUEUE,)
    assert in_child(lambda: table.add("E_Y", PIKE, expire=60)) == 0
    assert table.events() == ("E_X", "E_Y")
    assert [s.event for s in table.entries()] == ["E_X", "E_Y"]
    assert [s.event for s in table.detached().entries()] == ["E_X", "E_Y"]


def test_writes_from_two_processes_both_survive(table):
    assert in_child(lambda: table.add("E_X", PIKE)) == 0
    table.add("E_X", QUEUE)
    assert in_child(lambda: table.remove("E_X", PIKE)) == 0
    assert table.get("E_X") == (QUEUE,)


def test_an_unchanged_generation_reads_without_reloading(table):
    table.add("E_X", QUEUE)
    before = table.get("E_X")
    assert table.get("E_X") is before  # the same tuple: nothing was decoded again


def test_a_table_that_would_not_fit_is_refused_and_left_as_it_was():
    table = SharedSubscriptions.create(FORK, size=HEADER.size + 300)
    try:
        table.add("E_X", QUEUE)
        with pytest.raises(SubscriptionTableFull, match=r"over the 300 bytes .*nothing was changed"):
            for n in range(10):
                table.add("E_X", parse_socket(f"rabbitmq:127.0.0.1/q{n}"))
        kept = [s.routing_key for s in table.get("E_X")]
        assert kept[0] == "queue" and len(kept) < 11
        # A reader that has never loaded decodes the region itself: the same table.
        reader = SharedSubscriptions(table._region, table._plock)
        assert [s.routing_key for s in reader.get("E_X")] == kept
        reader._generation.release()
    finally:
        table.close()


def test_a_table_starts_with_the_interfaces_subscriptions_and_detaches_as_a_copy():
    evi = opsevent.EventInterface()
    evi.subscribe_event("E_X", PIKE, expire=60)
    shared = SharedSubscriptions.create(FORK, evi.subscriptions)
    try:
        assert shared.entries() == evi.subscriptions.entries()
        shared.add("E_Y", QUEUE)
        copy = shared.detached()
    finally:
        shared.close()
    assert type(copy) is opsevent.Subscriptions
    assert [s.event for s in copy.entries()] == ["E_X", "E_Y"]


def test_the_repr_shows_counts_and_no_passwords(table):
    table.add("E_X", PIKE)
    assert repr(table) == "<SharedSubscriptions: 1 events, 1 subscriptions>"
