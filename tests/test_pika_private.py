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


def _as_confirm(frame_value) -> tuple:
    """What direct_confirms hands its callback, from the frame pika hands its own."""
    method = frame_value.method
    return type(method) is pika.spec.Basic.Ack, method.delivery_tag, method.multiple


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
        return max((tag for _ack, tag, _multiple in confirms[name]), default=0)

    a = opened.pop()
    a.confirm_delivery(lambda f: confirms["a"].append(_as_confirm(f)), callback=lambda _f: opened.append("a ok"))
    pika_private.direct_confirms(a, lambda *confirm: confirms["a"].append(confirm))
    _turn(ioloop, lambda: "a ok" in opened)
    for _ in range(3):
        a.basic_publish("", "nowhere", b"x")
    _turn(ioloop, lambda: confirmed("a") == 3)
    assert via_pika == [] and all(ack is True for ack, _tag, _multiple in confirms["a"])

    a.close()
    _turn(ioloop, lambda: a.is_closed)
    conn.channel(on_open_callback=opened.append)
    _turn(ioloop, lambda: opened and opened[-1] != "a ok")
    b = opened.pop()
    assert b.channel_number == a.channel_number  # the number came back, to a channel with no direct route
    b.confirm_delivery(lambda f: confirms["b"].append(_as_confirm(f)), callback=lambda _f: opened.append("b ok"))
    _turn(ioloop, lambda: "b ok" in opened)
    for _ in range(2):
        b.basic_publish("", "nowhere", b"x")
    _turn(ioloop, lambda: confirmed("b") == 2)
    assert confirmed("a") == 3 and via_pika and set(via_pika) == {b.channel_number}
    conn.close()
    _turn(ioloop, lambda: conn.is_closed)


def _frame(spec) -> bytes:
    if spec == "heartbeat":
        return pika.frame.Heartbeat().marshal()
    channel, ack, tag, multiple = spec
    method = (pika.spec.Basic.Ack if ack else pika.spec.Basic.Nack)(delivery_tag=tag, multiple=multiple)
    return pika.frame.Method(channel, method).marshal()


# (what; the broker's frames, as (channel, ack, delivery tag, multiple); where the reads split the
# bytes; what the callback gets, in order; how many of those pika decoded itself). Only channel 1
# is routed. A confirm frame is 21 bytes.
READS = [
    ("a run of acks in one read", [(1, True, 1, False), (1, True, 3, True)], [],
     [(True, 1, False), (True, 3, True)], 0),
    ("nacks, multiple and single", [(1, False, 2, True), (1, False, 3, False)], [],
     [(False, 2, True), (False, 3, False)], 0),
    ("a heartbeat between two acks: it and the ack after it are pika's",
     [(1, True, 1, False), "heartbeat", (1, True, 2, False)], [], [(True, 1, False), (True, 2, False)], 1),
    ("a frame split across two reads: pika puts it together and decodes the rest of that read",
     [(1, True, 1, False), (1, True, 2, False), (1, True, 3, False)], [31],
     [(True, 1, False), (True, 2, False), (True, 3, False)], 2),
    ("a confirm for a channel with no route, and the one after it, are pika's",
     [(9, True, 1, False), (1, True, 4, False)], [], [(True, 4, False)], 1),
    ("reads that each end inside a frame: pika's, from the first cut until a read ends with a frame",
     [(1, True, n, False) for n in range(1, 8)], [31, 62, 84, 126], [(True, n, False) for n in range(1, 8)], 3),
]


@pytest.mark.parametrize("what, frames, cuts, expected, decoded_by_pika", READS, ids=[r[0] for r in READS])
def test_confirms_taken_from_the_bytes_read_are_the_ones_pika_would_decode_in_the_same_order(
        broker, what, frames, cuts, expected, decoded_by_pika):
    opened, got, decoded = [], [], []
    ioloop, conn = _open(broker, on_open_callback=lambda c: c.channel(on_open_callback=opened.append))
    _turn(ioloop, lambda: opened)
    channel = opened.pop()
    assert channel.channel_number == 1
    pika_private.direct_confirms(channel, lambda *confirm: got.append(confirm))
    process = conn._process_frame  # the route for what pika decodes

    def spy(frame_value):
        decoded.append(frame_value)
        process(frame_value)

    conn._process_frame = spy
    stream = b"".join(_frame(f) for f in frames)
    bounds = [0, *cuts, len(stream)]
    bytes_before, frames_before = conn.bytes_received, conn.frames_received
    for start, end in zip(bounds, bounds[1:]):
        conn._on_data_available(stream[start:end])
    assert got == expected
    assert sum(isinstance(f, pika.frame.Method) and f.channel_number == 1 for f in decoded) == decoded_by_pika
    # Counted as pika counts them (its heartbeat checker reads both), with nothing left half-read.
    assert conn.bytes_received - bytes_before == len(stream) and not conn._frame_buffer
    assert conn.frames_received - frames_before == len(frames)
    conn.close()
    _turn(ioloop, lambda: conn.is_closed)


def test_a_confirm_whose_callback_drops_the_connection_is_followed_by_what_pika_itself_would_deliver(broker):
    delivered = {}
    for direct in (False, True):
        opened, got, closed = [], [], []
        ioloop, conn = _open(broker, on_open_callback=lambda c: c.channel(on_open_callback=opened.append),
                             on_close_callback=lambda _c, error: closed.append(error))
        _turn(ioloop, lambda: opened)
        channel = opened.pop()

        def on_confirm(*confirm):
            got.append(confirm)
            pika_private.drop(conn, exceptions.StreamLostError("dropped by the callback"))

        if direct:
            pika_private.direct_confirms(channel, on_confirm)
        else:
            conn.callbacks.add(channel.channel_number, pika.spec.Basic.Ack,
                               lambda f: on_confirm(*_as_confirm(f)), one_shot=False)
        conn._on_data_available(b"".join(_frame(f) for f in [(1, True, 1, False), (1, True, 2, False),
                                                              "heartbeat"]))
        _turn(ioloop, lambda: closed)
        assert "dropped by the callback" in str(closed[0])
        delivered[direct] = got
    assert delivered[True] == delivered[False] and delivered[True][0] == (True, 1, False)
