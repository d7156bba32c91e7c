"""pika's private API, which workers/rabbitmq/pika_private.py alone uses, is still where it was.

A pika upgrade that moves any of it fails here, each failure naming what
moved, before it can fail the worker in production.  The checks run against
real connections to the session's private broker.
"""

from __future__ import annotations

import errno
import socket
import time

import pika
import pytest
from pika import exceptions
from pika.adapters.select_connection import IOLoop

from workers.demo.broker import free_port
from workers.rabbitmq import pika_private

pytestmark = pytest.mark.broker


def test_everything_the_module_uses_is_still_in_pika():
    assert pika_private.missing() == [], (
        f"pika {pika.__version__} no longer has what workers/rabbitmq/pika_private.py uses: "
        f"{pika_private.missing()}")


def _open(broker, port=None, **callbacks):
    """A SelectConnection on its own I/O loop, turned until *done* says so."""
    ioloop = IOLoop()
    params = pika.ConnectionParameters(host=broker.host, port=port or broker.port, connection_attempts=1,
                                       socket_timeout=5, stack_timeout=5)
    conn = pika.SelectConnection(params, custom_ioloop=ioloop, **callbacks)
    ioloop.activate_poller()  # as the worker does: it turns the loop itself
    return ioloop, conn


def _turn(ioloop, done, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "pika did not get there in time"
        ioloop.poll()
        ioloop.process_timeouts()


def test_an_open_connection_sends_through_us_and_drops_with_our_error(broker):
    events = {}
    ioloop, conn = _open(broker, on_open_callback=lambda c: events.setdefault("open", c),
                         on_close_callback=lambda c, error: events.setdefault("closed", error))
    _turn(ioloop, lambda: "open" in events)
    assert pika_private.missing(conn) == [], f"pika {pika.__version__}: {pika_private.missing(conn)}"
    pika_private.send(conn, pika.frame.Heartbeat().marshal())  # a whole frame, written at once
    assert not conn._transport._tx_buffers, "send() left the frame to pika's buffer"
    pika_private.drop(conn, exceptions.StreamLostError("dropped by the test"))
    _turn(ioloop, lambda: "closed" in events)
    assert "dropped by the test" in str(events["closed"])


def test_a_transport_set_up_on_a_socket_reset_after_its_connect_is_a_failure_told_to_pika_not_a_crash(broker):
    # The race the guard is for: the peer resets the connection after the connect completed
    # and before pika sets up the transport. A socket that is not connected is that state.
    ioloop, conn = _open(broker)
    unguarded = socket.socket()
    with pytest.raises(ValueError, match="getpeername"):  # if pika stops raising, the guard can go
        conn._nbio.create_streaming_connection(protocol_factory=lambda: None, sock=unguarded,
                                               on_done=lambda result: None)
    pika_private.guard_transport_setup(conn)
    reset, results = socket.socket(), []
    ref = conn._nbio.create_streaming_connection(protocol_factory=lambda: None, sock=reset,
                                                 on_done=results.append)
    assert callable(ref.cancel)  # the workflow may abort the attempt meanwhile
    assert results == []  # told later, as pika tells it
    _turn(ioloop, lambda: results)
    assert isinstance(results[0], OSError) and results[0].errno == errno.ENOTCONN, results
    assert reset.fileno() == -1  # pika closed it: the attempt leaks no socket
    _turn(ioloop, lambda: conn.is_open)
    conn.close()
    _turn(ioloop, lambda: conn.is_closed)


def test_a_refused_connect_is_told_as_a_tcp_connect_failure(broker):
    errors = []
    ioloop, _conn = _open(broker, port=free_port(), on_open_error_callback=lambda c, error: errors.append(error))
    _turn(ioloop, lambda: errors)
    phase, cause = pika_private.connect_failure(errors[0])
    assert phase == "TCP connect", f"pika {pika.__version__} wraps a refused connect differently: {errors[0]!r}"
    assert isinstance(cause, ConnectionRefusedError)


def test_a_blocking_connection_gives_the_brokers_properties(broker):
    conn = broker.connect()
    try:
        assert pika_private.missing(blocking=conn) == []
        assert pika_private.server_properties(conn).get("product") == "RabbitMQ"
    finally:
        conn.close()


def test_a_failed_blocking_connect_is_one_of_the_connect_errors_and_its_cause_is_found(broker):
    params = pika.ConnectionParameters(host=broker.host, port=free_port(), connection_attempts=1,
                                       socket_timeout=2, stack_timeout=2)
    with pytest.raises(pika_private.CONNECT_ERRORS) as caught:
        pika.BlockingConnection(params)
    inner = pika_private.cause(caught.value)
    while inner is not None and pika_private.cause(inner) is not None:
        inner = pika_private.cause(inner)
    assert isinstance(inner, ConnectionRefusedError), repr(caught.value)


def test_confirms_go_straight_to_the_channels_callback_and_stop_when_it_closes_even_if_its_number_comes_back(broker):
    opened, confirms, via_pika = [], {"a": [], "b": []}, []
    ioloop, conn = _open(broker, on_open_callback=lambda c: c.channel(on_open_callback=opened.append))
    _turn(ioloop, lambda: opened)
    process = conn.callbacks.process

    def spy(prefix, key, *args, **kwargs):  # what pika's own callback path hands out
        if isinstance(key, (pika.spec.Basic.Ack, pika.spec.Basic.Nack)):
            via_pika.append(prefix)
        return process(prefix, key, *args, **kwargs)

    conn.callbacks.process = spy

    def confirmed(name):
        return max((f.method.delivery_tag for f in confirms[name]), default=0)

    a = opened.pop()
    a.confirm_delivery(lambda f: confirms["a"].append(f), callback=lambda _f: opened.append("a ok"))
    pika_private.direct_confirms(a, lambda f: confirms["a"].append(f))
    _turn(ioloop, lambda: "a ok" in opened)
    for _ in range(3):
        a.basic_publish("", "nowhere", b"x")
    _turn(ioloop, lambda: confirmed("a") == 3)
    assert via_pika == [] and all(type(f.method) is pika.spec.Basic.Ack for f in confirms["a"])

    a.close()
    _turn(ioloop, lambda: a.is_closed)
    conn.channel(on_open_callback=opened.append)
    _turn(ioloop, lambda: opened and opened[-1] != "a ok")
    b = opened.pop()
    assert b.channel_number == a.channel_number  # the number came back, to a channel with no direct route
    b.confirm_delivery(lambda f: confirms["b"].append(f), callback=lambda _f: opened.append("b ok"))
    _turn(ioloop, lambda: "b ok" in opened)
    for _ in range(2):
        b.basic_publish("", "nowhere", b"x")
    _turn(ioloop, lambda: confirmed("b") == 2)
    assert confirmed("a") == 3 and via_pika and set(via_pika) == {b.channel_number}
    conn.close()
    _turn(ioloop, lambda: conn.is_closed)
