"""Pre-marshalled AMQP 0-9-1 frames for ``basic.publish``.

pika builds three Python frame objects per publish and hands each to the
socket separately; at tens of thousands of events per second that per-message
cost, not the broker, is the limit (``shared/notes/perf-anchors.md``).  The
worker publishes every event with the same few shapes, so it marshals them
here once and joins many publishes into one write.

Wire layout (AMQP 0-9-1 section 4.2.3), every frame::

    type:octet  channel:short  size:long  payload:size octets  0xCE

* method frame (type 1): ``class 60, method 40`` + ``reserved-1:short`` +
  ``exchange:shortstr`` + ``routing-key:shortstr`` + ``bits`` (bit 0 mandatory);
* content header (type 2): ``class 60, weight 0, body-size:longlong`` +
  property flags and list (section 4.2.6.1, ``MessageProperties`` below);
* body (type 3): the payload.  Bodies are at most 16384 bytes while the
  negotiated frame-max is at least 4096 on RabbitMQ and 131072 by default, so
  a body is split only when it exceeds ``frame_max - 8``.

``tests/test_amqp.py`` checks these bytes against pika's own marshalling.
"""

from __future__ import annotations

import struct

from pika import spec

FRAME_END = b"\xce"
_FRAME_HEAD = struct.Struct(">BHI")
_HEADER_HEAD = struct.Struct(">HHQ")
_CONTENT_HEAD = struct.Struct(">BHIHHQ")  # frame head + class, weight, body size
_END_AND_BODY_HEAD = struct.Struct(">BBHI")  # the frame end before, then a body frame's head
MAX_SHORTSTR = 255


def shortstr(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > MAX_SHORTSTR:
        raise ValueError(f"{what} is {len(raw)} bytes; AMQP allows at most {MAX_SHORTSTR}")
    return bytes((len(raw),)) + raw


def method_frame(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    """The marshalled ``basic.publish`` method frame for one destination."""
    payload = (struct.pack(">HHH", spec.Basic.Publish.INDEX >> 16, spec.Basic.Publish.INDEX & 0xFFFF, 0)
               + shortstr(exchange, "exchange name")
               + shortstr(routing_key, "routing key")
               + bytes((1 if mandatory else 0,)))
    return _FRAME_HEAD.pack(1, channel, len(payload)) + payload + FRAME_END


# basic.properties flag bits, in the order their values follow the flags.
_CONTENT_TYPE, _HEADERS, _DELIVERY_MODE = 1 << 15, 1 << 13, 1 << 12
_MESSAGE_ID, _TIMESTAMP, _APP_ID = 1 << 7, 1 << 6, 1 << 3


class MessageProperties:
    """The properties of every message, marshalled as pika would.

    Per message: ``content-type`` (by body format), ``headers``
    ``{"event": NAME}`` (unless ``event_header`` is false: a headers table
    costs the broker about a quarter more CPU per message, see docs/benchmark.md),
    ``delivery-mode`` 2 when persistent, ``message-id``, ``timestamp``
    (seconds) and ``app-id``.  What depends on the event and
    the subscriber is built once per (event, content type, persistent) by
    the worker, which keeps it; a message adds only its id and time.
    """

    def __init__(self, app_id: str, event_header: bool = True):
        self._app_id = shortstr(app_id, "app_id")
        self._event_header = event_header
        self._tails: dict[int, struct.Struct] = {}  # message id length -> the tail's layout (at most 256)

    def head(self, event: bytes, content_type: str, persistent: bool) -> bytes:
        """Flags, content type, headers and delivery mode: the fixed front part (the caller keeps it)."""
        flags = _CONTENT_TYPE | _MESSAGE_ID | _TIMESTAMP | _APP_ID
        flags |= (_DELIVERY_MODE if persistent else 0) | (_HEADERS if self._event_header else 0)
        table = b""
        if self._event_header:
            entry = shortstr("event", "header name") + b"S" + struct.pack(">I", len(event)) + event
            table = struct.pack(">I", len(entry)) + entry
        return b"".join((struct.pack(">H", flags), shortstr(content_type, "content type"), table,
                         b"\x02" if persistent else b""))

    def tail(self, message_id: bytes, timestamp: int) -> bytes:
        """Message id (UTF-8, at most 255 bytes: the job's length field holds no more), timestamp
        and app id: the per-message back part."""
        size = len(message_id)
        layout = self._tails.get(size)
        if layout is None:  # one pack, not four pieces joined: this runs per message
            layout = self._tails[size] = struct.Struct(f">B{size}sQ{len(self._app_id)}s")
        return layout.pack(size, message_id, timestamp, self._app_id)


class Publisher:
    """Frames for publishing on one channel."""

    def __init__(self, channel: int, frame_max: int):
        self.channel = channel
        self._body_max = frame_max - 8
        self._methods: dict[tuple[str, str], bytes] = {}

    def frames(self, exchange: str, routing_key: str, body: bytes, properties: bytes) -> list[bytes]:
        """All frames of one mandatory publish, as parts to join; raises ValueError on a bad name.

        ``properties`` is the marshalled property flags and list (``MessageProperties``).
        """
        parts: list[bytes] = []
        self.add(parts, exchange, routing_key, body, properties)
        return parts

    def add(self, out: list, exchange: str, routing_key: str, body: bytes, properties: bytes) -> None:
        """``frames()``, appended to *out*: the link's parts of a whole batch, joined once per write."""
        key = (exchange, routing_key)
        method = self._methods.get(key)
        if method is None:
            method = self._methods[key] = method_frame(self.channel, exchange, routing_key, True)
        size = len(body)
        # The content header's frame head and fixed fields in one pack, then its properties.
        header = _CONTENT_HEAD.pack(2, self.channel, _HEADER_HEAD.size + len(properties), 60, 0, size)
        if 0 < size <= self._body_max:  # the usual case: one body frame, its head packed with the end before
            out += (method, header, properties, _END_AND_BODY_HEAD.pack(0xCE, 3, self.channel, size), body, FRAME_END)
            return
        out += (method, header, properties, FRAME_END)
        for start in range(0, size, self._body_max):
            chunk = body[start:start + self._body_max]
            out += (_FRAME_HEAD.pack(3, self.channel, len(chunk)), chunk, FRAME_END)
