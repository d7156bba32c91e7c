"""``opsevent listen SOCKET``: the consumer's view of a subscriber socket, printed.

The messages come from ``workers.rabbitmq.consumer`` (which queue, how it is
bound, when it stops).  Each event is printed decoded
(:func:`opsevent.read_event`, every body format, OpenSIPS's own included)
with its exchange, routing key and properties: as a small table, or with
``--json`` as one JSON object per line.  Exit 1 if ``--count`` was not
reached within ``--timeout``.
"""

from __future__ import annotations

import base64
import json
import sys

from opsevent import OpseventError, PayloadDecodeError, RabbitMQSocket, Settings, read_event
from workers.rabbitmq.consumer import ListenError, Message, listen

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
