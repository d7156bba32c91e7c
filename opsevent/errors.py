"""The exceptions raised by opsevent.

Every error is an :class:`OpseventError`, and also the builtin exception a
Python caller would expect (``ValueError`` for bad text, ``TypeError`` for a
value of the wrong type), so ``except ValueError`` keeps working.

Messages name the part that was wrong and where it was. They never contain
a password: socket text is quoted with the password replaced by ``***``.
"""

__all__ = [
    "OpseventError",
    "SocketSyntaxError",
    "SocketTypeError",
    "EventSyntaxError",
    "EventValueTypeError",
    "EventTooLargeError",
    "PayloadDecodeError",
    "PayloadTypeError",
    "ConfigError",
]


class OpseventError(Exception):
    """Base class of every error raised by opsevent."""


class SocketSyntaxError(OpseventError, ValueError):
    """A RabbitMQ socket string (or socket field) is malformed."""


class SocketTypeError(SocketSyntaxError, TypeError):
    """Something that is not a str was given where a socket string belongs."""


class EventSyntaxError(OpseventError, ValueError):
    """A bad event name, parameter name or parameter value."""


class EventValueTypeError(EventSyntaxError, TypeError):
    """A name or parameter value has a type the event body cannot carry."""


class EventTooLargeError(EventSyntaxError):
    """The encoded event body is over the size limit; it was not published."""

    def __init__(self, event: str, size: int, limit: int) -> None:
        super().__init__(
            f"event {event!r} body is {size} bytes, over the {limit}-byte "
            f"limit; it was not published"
        )
        self.event = event
        self.size = size
        self.limit = limit

    def __reduce__(self):
        # The default reduce would call __init__ with the message only.
        return (type(self), (self.event, self.size, self.limit))


class PayloadDecodeError(OpseventError, ValueError):
    """An event body does not follow the grammar; says the byte offset and line."""


class PayloadTypeError(PayloadDecodeError, TypeError):
    """Something that is not bytes was given where an event body belongs."""


class ConfigError(OpseventError, ValueError):
    """A setting has a bad type or is out of range."""
