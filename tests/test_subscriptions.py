"""The subscription table: who gets which event, until when, as bytes, and thread safety."""

import threading
from dataclasses import astuple

import pytest

from opsevent import EventSyntaxError, RabbitMQSocket, Subscriptions, parse_socket
from opsevent.errors import SocketTypeError
from opsevent.subscriptions import check_expire

PIKE = parse_socket("rabbitmq:127.0.0.1/pike")
QUEUE = parse_socket("rabbitmq:127.0.0.1/queue")
SIPMSG = parse_socket("rabbitmq:mq:5673/amq.topic?sipmsg")


def test_an_event_can_have_several_subscribers_in_subscription_order():
    table = Subscriptions()
    assert table.add("E_PIKE_BLOCKED", PIKE) is True
    assert table.add("E_PIKE_BLOCKED", QUEUE) is True
    assert table.add("E_SIP_MESSAGE", SIPMSG) is True
    assert table.get("E_PIKE_BLOCKED") == (PIKE, QUEUE)
    assert table.get("E_SIP_MESSAGE") == (SIPMSG,)
    assert table.events() == ("E_PIKE_BLOCKED", "E_SIP_MESSAGE")
    assert table.items() == (("E_PIKE_BLOCKED", (PIKE, QUEUE)),
                             ("E_SIP_MESSAGE", (SIPMSG,)))


def test_the_same_socket_twice_is_one_subscriber():
    table = Subscriptions()
    assert table.add("E_X", parse_socket("rabbitmq:127.0.0.1/pike")) is True
    assert table.add("E_X", parse_socket("rabbitmq:guest:guest@127.0.0.1:5672/pike")) is False
    assert len(table.get("E_X")) == 1


def test_a_later_password_wins_and_keeps_the_subscribers_place():
    table = Subscriptions()
    table.add("E_X", parse_socket("rabbitmq:u:old@mq/a"))
    table.add("E_X", parse_socket("rabbitmq:mq/b"))
    assert table.add("E_X", parse_socket("rabbitmq:u:new@mq/a")) is False
    first, second = table.get("E_X")
    assert (first.routing_key, first.password) == ("a", "new")
    assert second.routing_key == "b"


def test_unsubscribing_removes_only_that_socket():
    table = Subscriptions()
    table.add("E_X", PIKE)
    table.add("E_X", QUEUE)
    # Equality ignores the password, so any password unsubscribes.
    assert table.remove("E_X", parse_socket("rabbitmq:guest:other@127.0.0.1/pike")) is True
    assert table.get("E_X") == (QUEUE,)
    assert table.remove("E_X", PIKE) is False
    assert table.remove("E_X", QUEUE) is True
    assert table.get("E_X") == ()
    assert table.events() == ()


def test_an_unknown_event_has_no_subscribers():
    table = Subscriptions()
    assert table.get("E_NOBODY") == ()
    assert table.remove("E_NOBODY", PIKE) is False


def test_a_snapshot_does_not_change_under_a_later_write():
    table = Subscriptions()
    table.add("E_X", PIKE)
    snapshot = table.get("E_X")
    items = table.items()
    table.add("E_X", QUEUE)
    table.remove("E_X", PIKE)
    assert snapshot == (PIKE,)
    assert items == (("E_X", (PIKE,)),)


@pytest.mark.parametrize("event, message", [
    ("", "event name is empty"),
    ("E,X", "has ','"),
    ("E\nX", "has '\\\\n'"),
])
def test_subscribing_to_a_bad_event_name_is_refused(event, message):
    table = Subscriptions()
    with pytest.raises(EventSyntaxError, match=message):
        table.add(event, PIKE)
    assert table.events() == ()


@pytest.mark.parametrize("socket", ["rabbitmq:127.0.0.1/pike", None, ("mq", 5672)])
def test_a_subscriber_must_be_a_parsed_socket(socket):
    with pytest.raises(SocketTypeError, match="must be a RabbitMQSocket"):
        Subscriptions().add("E_X", socket)


def test_the_repr_shows_counts_and_no_passwords():
    table = Subscriptions()
    table.add("E_X", parse_socket("rabbitmq:u:s3cr3t@mq/a"))
    table.add("E_Y", PIKE)
    assert repr(table) == "<Subscriptions: 2 events, 2 subscriptions>"


def test_concurrent_writers_leave_a_consistent_table():
    table = Subscriptions()
    sockets = [RabbitMQSocket("guest", "guest", "mq", 5672, "", f"q{n}")
               for n in range(40)]
    keep, drop = sockets[::2], sockets[1::2]
    start = threading.Barrier(8)

    def writer(worker: int) -> None:
        start.wait()
        for _ in range(25):
            for sock in sockets[worker::8]:
                table.add("E_X", sock)
                table.add(f"E_{worker}", sock)
            for sock in drop[worker % 4::4]:
                table.remove("E_X", sock)
        for sock in drop:
            table.remove("E_X", sock)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    seen = []
    while any(thread.is_alive() for thread in threads):
        current = table.get("E_X")
        seen.append(len(current) == len(set(current)))
    for thread in threads:
        thread.join()

    assert all(seen)  # readers never saw a socket twice
    assert set(table.get("E_X")) == set(keep)
    assert len(table.get("E_X")) == len(keep)
    for worker in range(8):
        assert table.get(f"E_{worker}") == tuple(sockets[worker::8])


# ---- expiry --------------------------------------------------------------------------

class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_subscriber_with_an_expire_is_gone_once_its_deadline_passes():
    clock = Clock()
    table = Subscriptions(clock)
    table.add("E_X", PIKE, expire=30)
    table.add("E_X", QUEUE)
    clock.now += 29.9
    assert table.get("E_X") == (PIKE, QUEUE)
    clock.now += 0.1
    assert table.get("E_X") == (QUEUE,)
    assert [s.socket for s in table.entries()] == [QUEUE]


def test_an_event_whose_last_subscriber_expired_is_no_longer_listed():
    clock = Clock()
    table = Subscriptions(clock)
    table.add("E_X", PIKE, expire=1)
    clock.now += 1
    assert table.events() == ()
    assert table.items() == ()
    assert table.entries() == ()


def test_subscribing_again_refreshes_the_expire_or_makes_it_never():
    clock = Clock()
    table = Subscriptions(clock)
    table.add("E_X", PIKE, expire=10)
    clock.now += 8
    assert table.add("E_X", PIKE, expire=10) is False
    clock.now += 8
    assert table.get("E_X") == (PIKE,)
    (entry,) = table.entries()
    assert (entry.expire, entry.ttl(clock.now)) == (10.0, 2.0)
    table.add("E_X", PIKE)
    clock.now += 1000
    assert table.get("E_X") == (PIKE,)
    assert table.entries()[0].expire is None


def test_an_expired_subscriber_cannot_be_unsubscribed_and_can_subscribe_anew():
    clock = Clock()
    table = Subscriptions(clock)
    table.add("E_X", PIKE, expire=5)
    clock.now += 5
    assert table.remove("E_X", PIKE) is False
    assert table.add("E_X", PIKE, expire=5) is True


def test_entries_list_one_event_or_all_in_order_with_their_expiry():
    clock = Clock()
    table = Subscriptions(clock)
    table.add("E_X", PIKE, expire=60)
    table.add("E_Y", QUEUE)
    table.add("E_X", SIPMSG)
    assert [(s.event, s.socket, s.expire) for s in table.entries()] == [
        ("E_X", PIKE, 60.0), ("E_X", SIPMSG, None), ("E_Y", QUEUE, None)]
    assert [s.socket for s in table.entries("E_Y")] == [QUEUE]
    assert table.entries("E_NOBODY") == ()
    assert table.entries()[0].expires_at == clock.now + 60


@pytest.mark.parametrize("expire, message", [
    (0, "not 0; leave it out"),
    (-1, "not -1"),
    (float("nan"), "finite"),
    (float("inf"), "finite"),
    (True, "not bool True"),
    ("30", "not str '30'"),
])
def test_a_bad_expire_is_refused_and_nothing_is_subscribed(expire, message):
    table = Subscriptions()
    with pytest.raises(EventSyntaxError, match=message):
        table.add("E_X", PIKE, expire=expire)
    assert table.get("E_X") == ()


@pytest.mark.parametrize("expire, stored", [(None, None), (1, 1.0), (0.25, 0.25), (86400, 86400.0)])
def test_a_good_expire_is_stored_as_float_seconds(expire, stored):
    assert check_expire(expire) == stored


# ---- as bytes --------------------------------------------------------------------------

def test_a_dumped_table_loads_back_equal_in_every_field_and_order():
    clock = Clock()
    table = Subscriptions(clock)
    secret = parse_socket("rabbitmq:u:p%40ss@mq1,mq2:5673/vhost=v;tls_domain=rmq;persistent;format=opensips?k")
    fanout = parse_socket("rabbitmq:mq/amq.fanout?")
    table.add("E_X", secret, expire=30)
    table.add("E_X", PIKE)
    table.add("E_Y", SIPMSG)
    table.add("E_Y", fanout)
    copy = Subscriptions(clock)
    copy.load(table.dump())
    assert copy.entries() == table.entries()
    first = copy.get("E_X")[0]
    assert astuple(first) == astuple(secret)  # password, failover, flags, format and tls_domain too
    assert astuple(copy.get("E_Y")[1]) == astuple(fanout)


def test_loading_leaves_out_what_expired_meanwhile_and_keeps_equal_sockets_as_they_were():
    clock = Clock()
    table = Subscriptions(clock)
    table.add("E_X", PIKE, expire=5)
    table.add("E_X", QUEUE)
    data = table.dump()
    copy = Subscriptions(clock)
    copy.load(data)
    held = copy.get("E_X")[1]
    clock.now += 5
    copy.load(data)
    assert copy.get("E_X") == (QUEUE,)
    assert copy.get("E_X")[0] is held  # the same object: per-socket caches stay small


def test_the_dump_of_an_empty_table_loads_as_empty():
    copy = Subscriptions()
    copy.add("E_X", PIKE)
    copy.load(Subscriptions().dump())
    assert copy.items() == ()
