"""The private-broker helper (workers/demo/broker.py) against real brokers."""

from __future__ import annotations

import random
import socket
import time

import pika.exceptions
import pytest

from workers.demo.broker import (
    CONNECT_ERRORS,
    PrivateBroker,
    RunningBroker,
    consume,
    declare_queue,
    delete_queue,
    queue_count,
)
from helpers import wait_for




def publish(broker, bodies, routing_key, exchange="", confirm=True):
    conn = broker.connect()
    try:
        ch = conn.channel()
        if confirm:
            ch.confirm_delivery()
        for body in bodies:
            ch.basic_publish(exchange=exchange, routing_key=routing_key, body=body)
    finally:
        conn.close()


def test_a_thousand_messages_make_a_byte_exact_round_trip(broker, clean_queue):
    rng = random.Random(20240601)
    bodies = [i.to_bytes(4, "big") + rng.randbytes(rng.randrange(0, 2048)) for i in range(1000)]
    bodies[1] = b"\x00" * 16  # NULs
    bodies[2] = "é€😀".encode()  # multi-byte UTF-8

    publish(broker, bodies, clean_queue)

    assert queue_count(broker, clean_queue) == 1000
    assert consume(broker, clean_queue, 1000, timeout=10) == bodies
    assert queue_count(broker, clean_queue) == 0


def test_consume_takes_exactly_the_count_asked_and_leaves_the_rest_in_order(broker, clean_queue):
    publish(broker, [b"%d" % i for i in range(30)], clean_queue)

    assert consume(broker, clean_queue, 10, timeout=5) == [b"%d" % i for i in range(10)]
    assert wait_for(lambda: queue_count(broker, clean_queue) == 20, 5, "20 left")
    assert consume(broker, clean_queue, 20, timeout=5) == [b"%d" % i for i in range(10, 30)]


def test_consume_times_out_saying_how_many_of_how_many_arrived(broker, clean_queue):
    publish(broker, [b"a", b"b", b"c"], clean_queue)

    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"3 of 5 messages arrived after") as err:
        consume(broker, clean_queue, 5, timeout=0.5)
    assert time.monotonic() - t0 < 3
    assert err.value.bodies == [b"a", b"b", b"c"]


def test_consume_drains_ten_thousand_messages_within_seconds(broker, clean_queue):
    bodies = [b"event-%05d" % i for i in range(10_000)]
    publish(broker, bodies, clean_queue, confirm=False)
    wait_for(lambda: queue_count(broker, clean_queue) == 10_000, 10, "10,000 queued")

    assert consume(broker, clean_queue, 10_000, timeout=10) == bodies


def test_a_queue_declared_with_an_exchange_gets_what_is_published_there_under_its_name(
        broker, queue_name):
    exchange = f"ex-{queue_name}"
    declare_queue(broker, queue_name, exchange=exchange)
    try:
        publish(broker, [b"via exchange"], queue_name, exchange=exchange)
        publish(broker, [b"other key"], "no-such-queue", exchange=exchange)

        assert queue_count(broker, queue_name) == 1
        assert consume(broker, queue_name, 1, timeout=5) == [b"via exchange"]
    finally:
        delete_queue(broker, queue_name)
        conn = broker.connect()
        conn.channel().exchange_delete(exchange)
        conn.close()


def test_socket_strings_follow_the_opsevent_grammar(broker):
    hp = f"127.0.0.1:{broker.port}"
    assert broker.host == "127.0.0.1"
    assert broker.socket("rk") == f"rabbitmq:{hp}/rk"
    assert broker.socket("rk", exchange="ex") == f"rabbitmq:{hp}/ex?rk"
    assert broker.socket("rk", user="guest") == f"rabbitmq:guest@{hp}/rk"
    assert broker.socket("rk", "ex", "guest", "pw") == f"rabbitmq:guest:pw@{hp}/ex?rk"
    # the characters the grammar splits on are %-encoded
    assert broker.socket("a/b?c", "e:x", "u@s", "p:w%") == \
        f"rabbitmq:u%40s:p%3Aw%25@{hp}/e%3Ax?a%2Fb%3Fc"


def test_the_session_broker_listens_on_loopback_only_and_never_on_5672(broker):
    assert broker.port != 5672
    ctl_out = broker.ctl("status")
    assert broker.node.split("@")[0] in ctl_out
    listeners = broker.ctl("eval", "rabbit_networking:active_listeners().")
    assert "{127,0,0,1}" in listeners and str(broker.port) in listeners
    assert "{0,0,0,0" not in listeners  # neither IPv4 nor IPv6 "any"
    assert ",5672," not in listeners


def test_a_connection_attempt_during_a_freeze_times_out_and_works_after_thaw(broker):
    pid = broker.beam_pid()
    broker.freeze()
    try:
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "T"  # stopped
        t0 = time.monotonic()
        with pytest.raises(CONNECT_ERRORS):
            broker.connect(socket_timeout=0.5, stack_timeout=1)
        assert time.monotonic() - t0 < 4
    finally:
        broker.thaw()

    conn = broker.connect()
    try:
        assert conn.is_open
        conn.channel().queue_declare(queue="", exclusive=True)
    finally:
        conn.close()


def test_stop_app_drops_every_connection_and_start_app_takes_new_ones(broker):
    old = broker.connect()
    wait_for(lambda: broker.connection_count() >= 1, 10, "the connection is listed")
    pid = broker.beam_pid()

    broker.stop_app()
    try:
        with pytest.raises(pika.exceptions.AMQPError):
            old.channel()
            old.process_data_events(time_limit=1)
        with pytest.raises(CONNECT_ERRORS):
            broker.connect(socket_timeout=1, stack_timeout=2)
        assert broker.beam_pid() == pid  # the node stays up
    finally:
        broker.start_app()

    assert broker.connection_count() == 0
    new = broker.connect()
    try:
        wait_for(lambda: broker.connection_count() == 1, 10, "the new connection is listed")
    finally:
        new.close()


def test_the_memory_alarm_blocks_publishers_until_cleared(broker, clean_queue):
    conn = broker.connect()
    events = []
    conn.add_on_connection_blocked_callback(lambda *_: events.append("blocked"))
    conn.add_on_connection_unblocked_callback(lambda *_: events.append("unblocked"))
    try:
        broker.set_memory_alarm(True)
        try:
            conn.channel().basic_publish("", clean_queue, b"during the alarm")

            def blocked():
                conn.process_data_events(time_limit=0.1)
                return "blocked" in events
            wait_for(blocked, 10, "connection.blocked")
            assert queue_count(broker, clean_queue) == 0
        finally:
            broker.set_memory_alarm(False)

        def unblocked():
            conn.process_data_events(time_limit=0.1)
            return "unblocked" in events
        wait_for(unblocked, 10, "connection.unblocked")
        wait_for(lambda: queue_count(broker, clean_queue) == 1, 10, "the held message arrives")
    finally:
        conn.close()


def test_a_private_broker_starts_on_loopback_and_stops_leaving_nothing_behind():
    t0 = time.monotonic()
    with PrivateBroker(start_timeout=60) as b:
        entered_after = time.monotonic() - t0
        assert b.host == "127.0.0.1" and b.port not in (5672, 25672)
        assert b.node == f"opsevent-{b.port}@localhost"
        # What the start measured (bench prints it): nearly all of the time this test waited for it.
        assert 0 < b.startup_seconds <= entered_after, (b.startup_seconds, entered_after)
        assert b.startup_seconds >= 0.5 * entered_after, (b.startup_seconds, entered_after)
        folder, pid = b.tmpdir, b.beam_pid()
        with socket.create_connection((b.host, b.port), timeout=5):
            pass
        name = "lifecycle"
        declare_queue(b, name)
        publish(b, [b"x"], name)
        assert consume(b, name, 1, timeout=5) == [b"x"]
        b.freeze()  # stop() must cope with a frozen node
    assert not folder.exists()
    with pytest.raises(FileNotFoundError):
        open(f"/proc/{pid}/stat").close()
    b.stop()  # idempotent


def test_a_tls_socket_is_refused_for_a_broker_without_a_tls_listener():
    with pytest.raises(ValueError, match="has no TLS listener"):
        RunningBroker("127.0.0.1", 1, "n@localhost").socket("q", tls=True)


def test_a_tls_socket_names_the_tls_port_and_the_tls_flag_before_the_routing_key():
    b = RunningBroker("127.0.0.1", 1, "n@localhost")
    b.tls_port = 2
    assert b.socket("a/b", tls=True) == "rabbitmq:127.0.0.1:2/tls;?a%2Fb"
    assert b.socket("k", exchange="x", tls=True) == "rabbitmq:127.0.0.1:2/tls;exchange=x?k"
