"""``opsevent listen SOCKET``: the consumer's view of a subscriber socket.

Where the messages come from:

* ``--queue NAME``: that queue.
* else, a socket on the default exchange (``rabbitmq:host/sipmsg``): the
  queue its routing key names, as the guide means it.
* else (``rabbitmq:host/amq.topic?sip.#``, ``rabbitmq:host/amq.fanout?``): a
  temporary queue of our own (server-named, exclusive, deleted when we go),
  bound to the socket's exchange with its routing key, so the view takes
  nothing away from anyone: it sees the events published from the moment
  it is bound.

From a real queue the messages are taken as any consumer takes them: each
is acknowledged once printed, and those beyond ``--count`` go back to the
queue. Each event is printed decoded (:func:`opsevent.read_event`, every
body format, OpenSIPS's own included) with its exchange, routing key and
properties: as a small table, or with ``--json`` as one JSON object per line.
Bounded: ``--count N`` stops after N events, ``--timeout S`` after S seconds
(exit 1 if ``--count`` was not reached by then); without either it runs
until interrupted. The connection follows the socket (host, port, vhost,
user, TLS; the failover hosts are tried in order); its password is never
printed. A TLS socket, ``tls_domain=NAME`` or not, connects with the files
given (the CLI's ``--tls-ca-file``, ``--tls-cert-file``, ``--tls-key-file``).
"""

from __future__ import annotations

import base64
import json
import sys
import time
from dataclasses import dataclass

import pika
from pika import exceptions

from opsevent import OpseventError, PayloadDecodeError, RabbitMQSocket, Settings, read_event
from workers import tls

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
    inner = _inner(exc)
    while inner is not None:
        exc, inner = inner, _inner(inner)
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _inner(exc: BaseException) -> BaseException | None:
    # A failed workflow lists its attempts; a connector error holds its cause.
    attempts = tuple(getattr(exc, "exceptions", None) or ())[-1:]
    for candidate in (*attempts, getattr(exc, "exception", None), *exc.args[:1]):
        if isinstance(candidate, BaseException) and candidate is not exc:
            return candidate
    return None


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


# ---- how a message is printed ---------------------------------------------------------------

def as_json(message: Message) -> str:
    """One JSON line: the event (or the error and the body, base64) with where it came from."""
    record = {"n": message.number, "exchange": message.exchange, "routing_key": message.routing_key,
              "redelivered": message.redelivered, "properties": _plain(message.properties)}
    try:
        event = read_event(message.body, message.properties.get("content_type"))
    except PayloadDecodeError as exc:
        record.update(error=str(exc), body_base64=base64.b64encode(message.body).decode("ascii"))
    else:
        record.update(event=event.name, format=event.format, params=[list(pair) for pair in event.params])
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a value that was not UTF-8: its lone surrogates as \u escapes
        line = json.dumps(record)
    return line


def as_table(message: Message) -> str:
    """A head line (number, event, format, where from, properties) and a PARAM/VALUE table."""
    where = [f"exchange={message.exchange!r}", f"routing_key={message.routing_key!r}"]
    where += [f"{name}={_shown(value)}" for name, value in message.properties.items()]
    if message.redelivered:
        where.append("redelivered")
    try:
        event = read_event(message.body, message.properties.get("content_type"))
    except PayloadDecodeError as exc:
        return f"#{message.number} not an event: {exc}  {'  '.join(where)}\nbody: {message.body!r}"
    head = f"#{message.number} {_shown(event.name)}  format={event.format}  {'  '.join(where)}"
    if not event.params:
        return head + "\n(no parameters)"
    rows = [(_shown(key) if key is not None else "-", _shown(value)) for key, value in event.params]
    width = max(len("PARAM"), *(len(key) for key, _ in rows))
    lines = [f"{'PARAM'.ljust(width)}  VALUE"] + [f"{key.ljust(width)}  {value}" for key, value in rows]
    return head + "\n" + "\n".join(line.rstrip() for line in lines)


def _shown(value) -> str:
    """A value on one line: text as it is unless it has control characters or odd bytes."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return json.dumps(_plain(value), ensure_ascii=False)
    text = str(value)
    if text.isprintable():
        return text
    return repr(text)[1:-1]  # \n, \x00, \udcff: one line, and nothing the terminal acts on


def _plain(value):
    """Header values as JSON can hold them (pika gives bytes for some)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def run(sock: RabbitMQSocket, *, json_lines: bool, queue: str | None, count: int | None,
        timeout: float | None, tls_settings: Settings | None) -> int:
    """The CLI's ``listen``: print each event; exit code 0, or 1 on a failure or a short count."""
    render = as_json if json_lines else as_table

    def on_message(message: Message) -> None:
        print(render(message), flush=True)
        if not json_lines:
            print(flush=True)

    def on_ready(name: str, temporary: bool, label: str) -> None:
        bound = (f" (a queue of our own, bound to exchange '{sock.exchange}' with key "
                 f"'{sock.routing_key}')" if temporary else "")
        print(f"opsevent: listening on queue '{name}'{bound} at {label}", file=sys.stderr, flush=True)

    try:
        seen = listen(sock, on_message, queue=queue, count=count, timeout=timeout,
                      tls_settings=tls_settings, on_ready=on_ready)
    except (ListenError, OpseventError) as exc:
        print(f"opsevent: listen: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    if count is not None and seen < count:  # only a timeout ends a count short
        print(f"opsevent: listen: {seen} of {count} events arrived within {timeout or 0:g} s",
              file=sys.stderr)
        return 1
    return 0
