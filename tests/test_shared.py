"""The subscription table shared by every process: writes from any process, reads on the next raise."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

import opsevent
from opsevent import parse_socket
from workers.channel import shared
from workers.channel.shared import SharedSubscriptions, SubscriptionTableFull

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
    table = SharedSubscriptions.create()
    yield table
    table.close()


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
    table = SharedSubscriptions.create(size=300)
    try:
        table.add("E_X", QUEUE)
        with pytest.raises(SubscriptionTableFull, match=r"over the 300 bytes .*nothing was changed"):
            for n in range(10):
                table.add("E_X", parse_socket(f"rabbitmq:127.0.0.1/q{n}"))
        kept = [s.routing_key for s in table.get("E_X")]
        assert kept[0] == "queue" and len(kept) < 11
        # A reader that has never loaded decodes the region itself: the same table.
        reader = SharedSubscriptions(table._region, table._lockfile)
        assert [s.routing_key for s in reader.get("E_X")] == kept
        reader._generation.release()
    finally:
        table.close()


def test_a_table_starts_with_the_interfaces_subscriptions_and_detaches_as_a_copy():
    evi = opsevent.EventInterface()
    evi.subscribe_event("E_X", PIKE, expire=60)
    shared = SharedSubscriptions.create(evi.subscriptions)
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


def test_an_unsubscribe_that_finds_nothing_publishes_no_new_generation(table):
    table.add("E_X", QUEUE)
    generation = table._generation[0]
    assert table.remove("E_X", PIKE) is False
    assert table.remove("E_NONE", QUEUE) is False
    assert table._generation[0] == generation  # so no process reloads for nothing
    assert table.remove("E_X", QUEUE) is True
    assert table._generation[0] == generation + 1


def test_loading_a_table_in_one_process_replaces_it_for_every_process(table):
    source = opsevent.Subscriptions()
    source.add("E_Y", PIKE, expire=60)
    table.add("E_X", QUEUE)
    assert in_child(lambda: table.load(source.dump())) == 0
    assert table.events() == ("E_Y",)
    assert table.entries()[0].expire == 60.0


def hold_the_writers_lock(table, before=lambda: None):
    """A forked child that runs *before*, then holds the writers' lock until killed."""
    holding = FORK.Event()

    def child():
        before()
        table._lock_writers(time.monotonic() + 10)
        holding.set()
        time.sleep(60)

    process = FORK.Process(target=child)
    process.start()
    assert holding.wait(10), "the child never took the writers' lock"
    return process


def test_a_process_killed_while_holding_the_writers_lock_does_not_stop_the_next_write(table, monkeypatch):
    table.add("E_X", QUEUE)
    process = hold_the_writers_lock(table, before=lambda: table.add("E_Y", PIKE))
    try:
        # Reads take no lock: this process's stale copy is refreshed at once.
        assert table.get("E_Y") == (PIKE,)
        # A write waits, bounded, and says why.
        monkeypatch.setattr(shared, "WRITE_LOCK_TIMEOUT", 0.3)
        with pytest.raises(TimeoutError, match=r"within 0.3 s: another process is still writing"):
            table.add("E_Z", QUEUE)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.join(10)
    # The kernel released the dead process's lock: the next write takes it at its first try.
    monkeypatch.setattr(shared, "WRITE_LOCK_TIMEOUT", 0)
    table.add("E_Z", QUEUE)
    assert table.events() == ("E_X", "E_Y", "E_Z")


def test_a_writer_killed_half_way_through_writing_leaves_the_last_table_whole(table):
    table.add("E_X", QUEUE)

    def write_half_then_die():
        table._lock_writers(time.monotonic() + 10)
        offset = table._slot(table._generation[0] + 1)
        shared.LENGTH.pack_into(table._region, offset, 40)
        table._region[offset + 4:offset + 12] = b'[["E_Y",'  # the rest never written
        os.kill(os.getpid(), signal.SIGKILL)

    assert in_child(write_half_then_die) == -signal.SIGKILL
    reader = SharedSubscriptions(table._region, table._lockfile)
    assert reader.get("E_X") == (QUEUE,)
    reader._generation.release()
    table.add("E_Z", PIKE)
    assert table.events() == ("E_X", "E_Z")


def test_a_read_that_never_gets_a_whole_table_in_time_keeps_serving_its_copy(table, monkeypatch):
    table.add("E_X", QUEUE)
    assert in_child(lambda: table.add("E_Y", PIKE)) == 0
    monkeypatch.setattr(table, "_copy", lambda generation: None)  # as if every copy were torn
    started = time.monotonic()
    assert table.get("E_X") == (QUEUE,)
    assert table.get("E_Y") == ()
    assert time.monotonic() - started < 2 * shared.READ_TIMEOUT + 0.2
    monkeypatch.undo()
    assert table.get("E_Y") == (PIKE,)
