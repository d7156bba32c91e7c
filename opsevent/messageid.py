"""Message ids: one per raised event, made in the raising process.

Every message of a raise carries the raise's id as its AMQP ``message-id``:
each subscriber's copy, and a copy published again after a reconnect or a
nack. The id is made here, in the front-end, so that the raise's
:class:`~opsevent.RaiseResult` can say it, and a caller may give its own
(``raise_event(..., message_id=...)``): a caller that raises an event again
after an unknown outcome (a sync ``timeout``) gives the same id, and
consumers drop the copy.

A made id is ``PREFIX-N``: a random prefix of 16 hex digits per process and a
counter. The prefix is made again in a forked child (``os.register_at_fork``),
so two processes never share one; a new id costs a counter step and a format
(a fraction of a microsecond), never a system call.

A given id must be text of 1..255 UTF-8 bytes: an AMQP shortstr, and not
empty, since an empty id names nothing a consumer could drop duplicates by.
"""

import itertools
import os

from .errors import EventSyntaxError, EventValueTypeError

__all__ = ["new_message_id", "check_message_id", "MAX_MESSAGE_ID"]

MAX_MESSAGE_ID = 255  # bytes: an AMQP shortstr


def _start() -> None:
    global _prefix, _numbers
    _prefix = f"{os.urandom(8).hex()}-"
    _numbers = itertools.count(1)


_prefix = ""
_numbers = itertools.count(1)
_start()
os.register_at_fork(after_in_child=_start)


def new_message_id() -> str:
    """A message id no other raise, in this process or any other, has had."""
    return f"{_prefix}{next(_numbers)}"


def check_message_id(message_id) -> str:
    """*message_id* if it can be an AMQP message-id; else an error naming what is wrong."""
    if type(message_id) is not str:
        raise EventValueTypeError(f"message_id must be a str, not {type(message_id).__name__} {message_id!r}")
    try:
        size = len(message_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise EventSyntaxError(f"message_id {message_id!r} has no UTF-8 form (a lone surrogate)") from None
    if not 0 < size <= MAX_MESSAGE_ID:
        raise EventSyntaxError(f"message_id must be 1..{MAX_MESSAGE_ID} UTF-8 bytes (an AMQP shortstr), "
                               f"not {size}")
    return message_id
