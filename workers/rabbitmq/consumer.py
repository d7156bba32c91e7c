"""A consumer of the events a subscriber socket receives: ``opsevent listen``'s broker side.

Where the messages come from:

* ``queue``: that queue.
* else, a socket on the default exchange (``rabbitmq:host/sipmsg``): the
  queue its routing key names, as the guide means it.
* else (``rabbitmq:host/amq.topic?sip.#``, ``rabbitmq:host/amq.fanout?``): a
  temporary queue of our own (server-named, exclusive, deleted when we go),
  bound to the socket's exchange with its routing key, so the view takes
  nothing away from anyone: it sees the events published from the moment
  it is bound.

From a real queue the messages are taken as any consumer takes them: each
is acknowledged once handed over, and those beyond ``count`` go back to the
queue.  Bounded: ``count`` stops after that many events, ``timeout`` after
that many seconds; without either it runs until interrupted.  The
connection follows the socket (host, port, vhost, user, TLS; the failover
hosts are tried in order); its password is never shown.  A TLS socket,
``tls_domain=NAME`` or not, connects with the ``tls_*`` files of the
settings given.  How each message is printed is the CLI's
(``workers/control/listen.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pika
from pika import exceptions

from opsevent import RabbitMQSocket, Settings
from workers.rabbitmq import tls
from workers.rabbitmq.pika_private import cause

CONNECT_TIMEOUT = 5.0  # seconds per host, bounded further by --timeout
TICK = 0.2  # seconds between two looks at the clock while no message comes
PREFETCH = 100
PROPERTIES = ("content_type", "delivery_mode", "message_id", "timestamp", "app_id", "headers")


class ListenError(Exception):
    """The broker or the queue cannot be used; the message says which and why (no password)."""


@dataclass
class Message:
    """One delivery: where it came from, its properties, its body."""

    number: int
    exchange: str
    routing_key: str
    redelivered: bool
    properties: dict
    body: bytes


def listen(sock: RabbitMQSocket, on_message, *, queue: str | None = None, count: int | None = None,
           timeout: float | None = None, tls_settings: Settings | None = None, on_ready=None) -> int:
    """Consume events for *sock*, calling ``on_message(Message)`` for each; the number seen.

    ``on_ready(queue, temporary, label)`` is called once the queue is
    ready; *temporary* says it is a queue of our own, bound to the exchange.
    Raises ListenError when the broker cannot be reached or the queue or
    exchange does not exist.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    conn = _connect(sock, tls_settings or Settings(), deadline)
    try:
        channel = conn.channel()
        name, temporary = _queue(channel, sock, queue)
        channel.basic_qos(prefetch_count=min(count or PREFETCH, PREFETCH))
        if on_ready is not None:
            on_ready(name, temporary, sock.broker_label)
        return _consume(channel, name, on_message, count, deadline)
    except exceptions.ChannelClosedByBroker as exc:
        raise ListenError(f"{sock.broker_label}: {exc.reply_text}") from None
    except exceptions.AMQPError as exc:
        raise ListenError(f"{sock.broker_label}: connection lost ({type(exc).__name__})") from None
    finally:
        try:
            conn.close()
        except exceptions.AMQPError:
            pass


def _connect(sock: RabbitMQSocket, settings: Settings, deadline: float | None) -> pika.BlockingConnection:
    """A connection to the first host of *sock* that takes one (failover hosts in order)."""
    reasons = []
    for host, port in sock.endpoints:
        wait = CONNECT_TIMEOUT if deadline is None else max(0.1, min(CONNECT_TIMEOUT, deadline - time.monotonic()))
        try:
            ssl_options = None
            if sock.tls:
                # The tls_* files of *settings*, whatever tls_domain the socket names.
                ssl_options = pika.SSLOptions(tls.client_context(settings), server_hostname=host)
            params = pika.ConnectionParameters(
                host=host, port=port, virtual_host=sock.vhost, ssl_options=ssl_options,
                credentials=pika.PlainCredentials(sock.user, sock.password),
                connection_attempts=1, socket_timeout=wait, stack_timeout=wait,
                blocked_connection_timeout=wait,
                client_properties={"connection_name": "opsevent listen"})
            return pika.BlockingConnection(params)
        except tls.TLSSetupError as exc:
            raise ListenError(str(exc)) from None
        except (exceptions.ProbableAuthenticationError, exceptions.ProbableAccessDeniedError):
            reasons.append(f"{host}:{port}: access refused for user '{sock.user}' (vhost '{sock.vhost}')")
        except exceptions.AMQPError as exc:
            reasons.append(f"{host}:{port}: {_why(exc)}")
    raise ListenError(f"cannot connect to {sock.broker_label}: {'; '.join(reasons)}")


def _why(exc: BaseException) -> str:
    """What went wrong, from the innermost of pika's wrapped exceptions."""
    inner = cause(exc)
    while inner is not None:
        exc, inner = inner, cause(inner)
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _queue(channel, sock: RabbitMQSocket, queue: str | None) -> tuple[str, bool]:
    """The queue to consume (the one named, the socket's own, or a temporary one bound to its exchange), and whether it is temporary."""
    if queue is None and not sock.exchange:
        queue = sock.routing_key
    if queue is not None:
        try:
            channel.queue_declare(queue, passive=True)
        except exceptions.ChannelClosedByBroker as exc:
            raise ListenError(f"no queue '{queue}' on {sock.broker_label} ({exc.reply_text}); give "
                              f"--queue NAME, or a socket with an exchange to bind a queue of our own") from None
        return queue, False
    name = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
    try:
        channel.queue_bind(name, sock.exchange, routing_key=sock.routing_key)
    except exceptions.ChannelClosedByBroker as exc:
        raise ListenError(f"cannot bind to exchange '{sock.exchange}' on {sock.broker_label} "
                          f"({exc.reply_text})") from None
    return name, True


def _consume(channel, queue: str, on_message, count: int | None, deadline: float | None) -> int:
    seen = 0
    for method, props, body in channel.consume(queue, auto_ack=False, inactivity_timeout=TICK):
        if method is not None:
            seen += 1
            on_message(Message(seen, method.exchange, method.routing_key, method.redelivered,
                               _properties(props), body))
            channel.basic_ack(method.delivery_tag)
            if count is not None and seen >= count:
                break
        if deadline is not None and time.monotonic() >= deadline:
            break
    channel.cancel()  # unacked deliveries go back to the queue
    return seen


def _properties(props) -> dict:
    """The properties that are set, as plain data."""
    found = {}
    for name in PROPERTIES:
        value = getattr(props, name, None)
        if value is not None:
            found[name] = value
    return found
