"""Every use of pika's private API, in one module, and what checks it is still there.

pika (``pika>=1.3,<2`` in setup.cfg; read on 1.4.4) has no public way to do
what the worker needs here, so this module reaches into it, and nothing
else in the project does (``tests/test_boundaries.py`` checks):

* ``send(conn, data)``: write a batch of frames now.  pika's transport only
  buffers a write and sends it on the next writable event: an extra poller
  round (two watcher changes and a poll) per batch, which was a third of a
  sync raise's cost in the worker.  With nothing buffered ahead of it, we
  send on the socket ourselves; pika keeps what the socket does not take,
  in order.  TLS goes through pika.  Uses ``SelectConnection._transport``,
  ``_AsyncPlaintextTransport`` (``_tx_buffers``, ``_state``,
  ``_STATE_ACTIVE``, ``_sock``) and ``BaseConnection._adapter_emit_data``.
* ``guard_transport_setup(conn)``: pika 1.4.4 raises out of the I/O loop
  (a ``ValueError``, "Expected connected socket, but getpeername() failed")
  when the peer resets a TCP connection between the connect's completion
  and the transport's set-up: the worker died of it, with its events in
  flight, when a broker restarted behind a proxy.  The guard reports that
  failure to pika's connection workflow instead, which closes the attempt
  and calls the open-error callback like any failed connect.  Uses
  ``BaseConnection._nbio`` (its ``create_streaming_connection``).
* ``direct_confirms(channel, on_confirm)``: the broker's ``basic.ack`` and
  ``basic.nack`` frames for a channel in confirm mode go to
  ``on_confirm(ack, delivery_tag, multiple)`` straight from the bytes read,
  not as pika frame objects through its ``CallbackManager``.  pika decodes
  an ack frame in about 2 µs (a method object, a frame object, four struct
  unpacks) and then looks up its callback behind two decorators; a read
  that starts with a run of confirms for routed channels is taken here with
  one unpack per frame, and the rest of the read, from the first other
  frame on, is pika's, in order.  Frames pika decodes itself (after a frame
  split across reads, say) are routed from its frame loop the same way.
  Exactly the frames pika would have given that callback: pika registers it
  for the channel's number in ``confirm_delivery`` and removes it when the
  channel closes, and the route goes with the channel's close callbacks,
  which pika runs in the same call, before that removal.  Uses
  ``Connection._on_data_available``, ``_frame_buffer``, ``_process_frame``
  (each wrapped or read on the instance), ``bytes_received`` and
  ``frames_received`` (kept as pika keeps them: its heartbeat checker reads
  them), and ``Channel.connection`` and ``channel_number``.
* ``drop(conn, error)``: end a connection without a close handshake (a
  frozen broker, a close-ok that never comes, a connect abandoned at
  shutdown); pika then calls the connection's close or open-error callback
  with *error*.  Uses ``Connection._terminate_stream``.
* ``connect_failure(error)`` and ``cause(error)``: what a failed connect was,
  from the way pika's connection workflow wraps its errors
  (``pika.adapters.utils.connection_workflow``: ``AMQPConnectionWorkflowFailed``
  lists its attempts in ``exceptions``, a connector phase error holds its
  cause in ``exception``).
* ``server_properties(conn)``: the broker's ``connection.start`` properties
  of a ``BlockingConnection`` (its ``_impl``); the bench reports them.

``missing()`` lists what of this pika no longer has, by name;
``tests/test_pika_private.py`` runs it (and each function against a real
broker) so that a pika upgrade that moves any of it fails the suite, saying
what moved, instead of the worker in production.  Not private, though not
in pika's documentation, and checked with the rest: the ``[Extension]``
methods of ``IOLoop`` the worker turns its loop with (``activate_poller``,
``poll``, ``process_timeouts``).
"""

from __future__ import annotations

import inspect
import struct

import pika
from pika import exceptions, frame, spec
from pika.channel import Channel
from pika.adapters.select_connection import IOLoop
from pika.adapters.utils import connection_workflow
from pika.adapters.utils.connection_workflow import (AMQPConnectionWorkflowFailed, AMQPConnectorException,
                                                     AMQPConnectorPhaseErrorBase, AMQPConnectorSocketConnectError)
from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport
from pika.adapters.utils.selector_ioloop_adapter import SelectorIOServicesAdapter

__all__ = ["CONNECT_ERRORS", "cause", "connect_failure", "direct_confirms", "drop", "guard_transport_setup",
           "missing", "send", "server_properties"]

_PLAINTEXT = _AsyncPlaintextTransport
_ACTIVE = _PLAINTEXT._STATE_ACTIVE

# What opening a connection may raise, besides OSError: pika's own, and its workflow's.
CONNECT_ERRORS = (exceptions.AMQPConnectionError, AMQPConnectorException)


def send(conn: pika.SelectConnection, data: bytes) -> None:
    """Write *data* (whole frames) on *conn* now if nothing waits ahead of it; else let pika buffer it."""
    transport = conn._transport
    if type(transport) is _PLAINTEXT and not transport._tx_buffers and transport._state == _ACTIVE:
        try:
            sent = transport._sock.send(data)
        except OSError:
            sent = 0  # EAGAIN, or a dead socket that pika's write path will find and report
        if sent == len(data):
            return
        data = data[sent:]
    conn._adapter_emit_data(data)


def guard_transport_setup(conn: pika.SelectConnection) -> None:
    """Make a failed transport set-up on *conn* (just created) a failed connect, not an exception
    out of ``IOLoop.poll()``."""
    nbio = conn._nbio
    create = nbio.create_streaming_connection

    def create_streaming_connection(protocol_factory, sock, on_done, ssl_context=None, server_hostname=None):
        try:
            return create(protocol_factory=protocol_factory, sock=sock, on_done=on_done,
                          ssl_context=ssl_context, server_hostname=server_hostname)
        except (ValueError, OSError) as exc:  # pika has closed the socket
            # Its ValueError wraps the OSError that says what happened (ENOTCONN after a reset).
            error = exc.__context__ if isinstance(exc.__context__, OSError) else exc
            # Later, as pika would: the workflow expects on_done after this call returns.
            return nbio.call_later(0, lambda: on_done(error))

    nbio.create_streaming_connection = create_streaming_connection


_METHOD = frame.Method
_ACK = spec.Basic.Ack
_CONFIRMS = (spec.Basic.Ack, spec.Basic.Nack)
# A whole basic.ack or basic.nack method frame: type 1, channel, size 13, class 60, method 80
# (ack) or 120 (nack), delivery tag, bits (bit 0: multiple), frame end (AMQP 0-9-1, 4.2.3).
_CONFIRM_FRAME = struct.Struct(">BHIHHQBB")
_ACK_ID, _NACK_ID = spec.Basic.Ack.INDEX & 0xFFFF, spec.Basic.Nack.INDEX & 0xFFFF
_CONFIRM_HEAD = (spec.FRAME_METHOD, _CONFIRM_FRAME.size - 8, spec.Basic.INDEX)


def direct_confirms(channel: Channel, on_confirm) -> None:
    """Give *channel*'s ``basic.ack``/``basic.nack`` frames to ``on_confirm(ack, delivery_tag, multiple)``
    directly, as long as the channel is open; call it right after ``channel.confirm_delivery(...)``."""
    conn = channel.connection
    routes = conn.__dict__.get("_opsevent_confirm_routes")
    if routes is None:
        routes = conn._opsevent_confirm_routes = {}  # channel number -> callback, for this connection
        _route_decoded(conn, routes)
        _read_confirms(conn, routes)
    number = channel.channel_number
    routes[number] = on_confirm
    # Closing: pika runs the close callbacks, then drops the channel's own; a
    # frame read after that, for a new channel of the same number, is pika's.
    channel.add_on_close_callback(lambda _channel, _reason: routes.pop(number, None))


def _read_confirms(conn, routes: dict) -> None:
    """Take the run of routed confirms a read starts with; hand pika the rest, from its first other frame."""
    pika_reads = conn._on_data_available  # pika's, bound
    unpack, size = _CONFIRM_FRAME.unpack_from, _CONFIRM_FRAME.size

    def on_data_available(data: bytes) -> None:
        at, end = 0, len(data)
        if not conn._frame_buffer:  # else pika holds the start of a frame this read goes on with
            while end - at >= size:
                kind, number, length, class_id, method_id, tag, bits, frame_end = unpack(data, at)
                callback = routes.get(number)
                if ((kind, length, class_id) != _CONFIRM_HEAD or frame_end != 0xCE or callback is None
                        or (method_id != _ACK_ID and method_id != _NACK_ID)):
                    break
                at += size
                conn.bytes_received += size  # pika's counts, as its own path keeps them
                conn.frames_received += 1
                callback(method_id == _ACK_ID, tag, bits & 1 == 1)
        if at < end:
            pika_reads(data[at:] if at else data)

    conn._on_data_available = on_data_available


def _route_decoded(conn, routes: dict) -> None:
    """Route the confirms pika decodes itself (a frame split across reads) the same way."""
    process = conn._process_frame  # pika's, bound

    def process_frame(frame_value):
        if type(frame_value) is _METHOD:
            callback = routes.get(frame_value.channel_number)
            method = frame_value.method
            if callback is not None and type(method) in _CONFIRMS:
                conn.frames_received += 1  # pika's count, as its own path keeps it
                callback(type(method) is _ACK, method.delivery_tag, method.multiple)
                return
        process(frame_value)

    conn._process_frame = process_frame


def drop(conn: pika.SelectConnection, error: Exception) -> None:
    """End *conn* at once, without a close handshake; its callbacks get *error*."""
    conn._terminate_stream(error)


def connect_failure(error: BaseException) -> tuple[str | None, BaseException]:
    """``(phase, cause)`` of a failed connect: phase ``"TCP connect"`` or ``"set-up"`` for a
    connector's failure, None for anything else (then *cause* is the innermost error pika gave)."""
    # pika wraps a failed connection workflow in two layers; the last
    # attempt's own exception is what says what went wrong.  A TLS failure
    # comes as the workflow error itself, unwrapped.
    while True:
        if isinstance(error, AMQPConnectionWorkflowFailed) and error.exceptions:
            error = error.exceptions[-1]
        elif (isinstance(error, exceptions.AMQPConnectionError) and error.args
              and isinstance(error.args[0], BaseException)):
            error = error.args[0]
        else:
            break
    if isinstance(error, AMQPConnectorPhaseErrorBase):
        phase = "TCP connect" if isinstance(error, AMQPConnectorSocketConnectError) else "set-up"
        return phase, error.exception
    return None, error


def cause(exc: BaseException) -> BaseException | None:
    """The exception one of pika's wraps (the last attempt, a connector's cause, or the first arg)."""
    attempts = tuple(getattr(exc, "exceptions", None) or ())[-1:]
    for candidate in (*attempts, getattr(exc, "exception", None), *exc.args[:1]):
        if isinstance(candidate, BaseException) and candidate is not exc:
            return candidate
    return None


def server_properties(conn: pika.BlockingConnection) -> dict:
    """The properties the broker sent in ``connection.start`` (product, version, ...)."""
    return conn._impl.server_properties or {}


# ---- the check --------------------------------------------------------------------------------

# (where, names): attributes each class must still have, and the parameters of the private methods.
_CLASS_ATTRIBUTES = (
    (_PLAINTEXT, ("_STATE_ACTIVE",)),
    (pika.SelectConnection, ("_adapter_emit_data", "_terminate_stream", "_process_frame", "_on_data_available")),
    (Channel, ("add_on_close_callback", "confirm_delivery")),
    (IOLoop, ("activate_poller", "poll", "process_timeouts")),
)
_SIGNATURES = (
    (pika.SelectConnection, "_adapter_emit_data", ["self", "data"]),
    (pika.SelectConnection, "_terminate_stream", ["self", "error"]),
    (pika.SelectConnection, "_process_frame", ["self", "frame_value"]),
    (pika.SelectConnection, "_on_data_available", ["self", "data_in"]),
    (AMQPConnectionWorkflowFailed, "__init__", ["self", "exceptions"]),
    (SelectorIOServicesAdapter, "create_streaming_connection",
     ["self", "protocol_factory", "sock", "on_done", "ssl_context", "server_hostname"]),
)
_WORKFLOW_CLASSES = ("AMQPConnectionWorkflowFailed", "AMQPConnectorException", "AMQPConnectorPhaseErrorBase",
                     "AMQPConnectorSocketConnectError")


def missing(conn: pika.SelectConnection | None = None,
            blocking: pika.BlockingConnection | None = None) -> list[str]:
    """What this module relies on that pika no longer has, one line each; ``[]`` when all is there.

    With an open plain ``SelectConnection`` *conn*, and an open
    ``BlockingConnection`` *blocking*, their instances are checked too.
    """
    gone = [f"pika.adapters.utils.connection_workflow.{name}" for name in _WORKFLOW_CLASSES
            if not isinstance(getattr(connection_workflow, name, None), type)]
    gone += [f"{owner.__module__}.{owner.__qualname__}.{name}" for owner, names in _CLASS_ATTRIBUTES
             for name in names if not hasattr(owner, name)]
    for owner, name, wanted in _SIGNATURES:
        function = getattr(owner, name, None)
        if function is not None and list(inspect.signature(function).parameters)[:len(wanted)] != wanted:
            gone.append(f"{owner.__qualname__}.{name}{inspect.signature(function)} "
                        f"(was ({', '.join(wanted)}))")
    if conn is not None:
        gone += [f"SelectConnection instance attribute {name}" for name in ("frames_received", "bytes_received")
                 if not isinstance(getattr(conn, name, None), int)]
        if not isinstance(getattr(conn, "_frame_buffer", None), (bytes, bytearray)):
            gone.append("SelectConnection instance attribute _frame_buffer (bytes)")
        if not callable(getattr(getattr(conn, "_nbio", None), "create_streaming_connection", None)):
            gone.append("SelectConnection instance attribute _nbio.create_streaming_connection")
        transport = getattr(conn, "_transport", None)
        if type(transport) is not _PLAINTEXT:
            gone.append(f"an open plain SelectConnection's _transport is {type(transport).__qualname__}, "
                        f"not _AsyncPlaintextTransport")
        else:
            gone += [f"_AsyncPlaintextTransport instance attribute {name}"
                     for name in ("_tx_buffers", "_state", "_sock") if not hasattr(transport, name)]
            if getattr(transport, "_state", None) != _ACTIVE:
                gone.append("an open connection's transport is not in _STATE_ACTIVE")
    if blocking is not None and not hasattr(getattr(blocking, "_impl", None), "server_properties"):
        gone.append("BlockingConnection._impl.server_properties")
    return gone
