"""Reading events on the consumer's side: one call per message, whatever published it.

A consumer may get events from this library (any of its three body formats,
with a content type that says which) or from OpenSIPS itself (the line
format of 1.8-3.0 or the JSON-RPC of 3.1+, with no properties at all).
:func:`read_event` reads them all::

    from opsevent.consumer import read_event

    def on_message(channel, method, properties, body):       # a pika callback
        event = read_event(body, properties.content_type)
        print(event.name, event.get("user"), event.params)
        channel.basic_ack(method.delivery_tag)

The content type decides the format when it is one of :data:`CONTENT_TYPES`
(parameters such as ``; charset=utf-8`` and case are ignored); without one,
or with another, the body decides (:func:`opsevent.payload.detect_format`).
Values come back as text from the line formats and typed (str, int or None)
from JSON; a body that is not UTF-8 comes back with its odd bytes as lone
surrogates (``value.encode("utf-8", "surrogateescape")`` gives them back).
A body that is not an event raises PayloadDecodeError saying where.
"""

from dataclasses import dataclass

from .payload import decode_event, detect_format

__all__ = ["CONTENT_TYPES", "ReceivedEvent", "read_event"]

# The content type the RabbitMQ worker gives each body format.
CONTENT_TYPES = {"lines": "text/plain", "json": "application/json",
                 "opensips": "text/x-opensips-event"}
_FORMAT_OF = {content_type: body_format for body_format, content_type in CONTENT_TYPES.items()}


@dataclass(frozen=True)
class ReceivedEvent:
    """One event as a consumer reads it.

    name
        The event name, e.g. ``"E_SIP_MESSAGE"``.
    params
        ``((name or None, value), ...)`` in the body's order.
    format
        The body format it was read in: ``"lines"``, ``"json"`` or ``"opensips"``.
    """

    name: str
    params: tuple[tuple[str | None, str | int | None], ...]
    format: str

    def get(self, name: str, default=None):
        """The value of the first parameter called *name*, else *default*."""
        for key, value in self.params:
            if key == name:
                return value
        return default

    def as_dict(self) -> dict:
        """The named parameters as a dict (the first of a repeated name wins, as in :meth:`get`)."""
        named = {}
        for key, value in self.params:
            if key is not None and key not in named:
                named[key] = value
        return named


def read_event(body: bytes, content_type: str | None = None) -> ReceivedEvent:
    """The event in a message *body*, read in the format its *content_type* names (module docstring)."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    body_format = _FORMAT_OF.get(media_type) or detect_format(bytes(body))
    name, params = decode_event(body, body_format)
    return ReceivedEvent(name, tuple(params), body_format)
