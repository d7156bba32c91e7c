"""Per-subscription counters: the worker's own plus the front-ends' refusals."""

from workers.rabbitmq.substats import FRONTEND_COUNTERS, WORKER_COUNTERS, SubscriptionStats

SIP = ("E_SIP_MESSAGE", "rabbitmq:guest:***@mq:5672/sipmsg")


def test_raised_is_what_the_worker_was_given_plus_what_the_front_ends_refused():
    stats = SubscriptionStats()
    counts = stats.counts(*SIP)
    counts["queued"] += 5
    counts["confirmed"] += 4
    counts["unroutable"] += 1
    stats.report(101, {SIP: {"dropped_queue_full": 2}})
    stats.report(102, {SIP: {"dropped_queue_full": 1, "too_large": 1}})
    (row,) = stats.rows()
    assert (row["event"], row["socket"]) == SIP
    assert (row["raised"], row["queued"], row["confirmed"], row["unroutable"]) == (9, 5, 4, 1)
    assert (row["dropped_queue_full"], row["too_large"]) == (3, 1)
    assert set(row) == {"event", "socket", "raised", *WORKER_COUNTERS, *FRONTEND_COUNTERS}


def test_a_front_ends_later_report_replaces_its_earlier_one_for_it_is_cumulative():
    stats = SubscriptionStats()
    stats.report(7, {SIP: {"dropped_queue_full": 2}})
    stats.report(7, {SIP: {"dropped_queue_full": 5}})
    assert stats.rows()[0]["dropped_queue_full"] == 5


def test_a_subscription_only_front_ends_saw_still_has_a_row_with_every_counter():
    stats = SubscriptionStats()
    stats.report(7, {("E_BIG", "rabbitmq:guest:***@mq:5672/big"): {"too_large": 3}})
    (row,) = stats.rows()
    assert row["raised"] == row["too_large"] == 3 and row["queued"] == row["confirmed"] == 0


def test_rows_come_sorted_by_event_then_socket_and_counting_in_place_shows_in_them():
    stats = SubscriptionStats()
    for event, sock in [("E_B", "s2"), ("E_A", "s9"), ("E_B", "s1")]:
        stats.counts(event, sock)["queued"] += 1
    stats.counts("E_A", "s9")["queued"] += 1  # the same counters, not a new row
    assert [(r["event"], r["socket"], r["queued"]) for r in stats.rows()] == [
        ("E_A", "s9", 2), ("E_B", "s1", 1), ("E_B", "s2", 1)]
