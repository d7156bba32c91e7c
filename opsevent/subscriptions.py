"""Which sockets are subscribed to which event.

Theory of operation: the table is a dict of event name to a tuple of sockets,
and it is never changed in place. A write takes the lock, builds a new dict
and swaps it in with one assignment; a read grabs whatever dict is current
and never locks. Raising an event therefore costs one dict lookup, and a
reader always sees a whole table, never one half-way through a write.

Subscribe before forking: a child inherits the table, and would inherit the
lock held if another thread were writing at that moment.
"""

import threading
from collections.abc import Mapping

from .errors import SocketTypeError
from .payload import check_event_name
from .sockets import RabbitMQSocket

__all__ = ["Subscriptions"]


class Subscriptions:
    """A thread-safe map of event name to its subscriber sockets, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: Mapping[str, tuple[RabbitMQSocket, ...]] = {}

    def add(self, event: str, socket: RabbitMQSocket) -> bool:
        """Subscribe *socket* to *event*; False if it already was.

        An equal socket (one that differs at most in password, persistent or
        format) is replaced in
        place, so the later password wins and the order is kept.
        """
        check_event_name(event)
        _check_socket(socket)
        with self._lock:
            current = self._table.get(event, ())
            if socket in current:
                index = current.index(socket)
                updated = current[:index] + (socket,) + current[index + 1:]
                self._replace(event, updated)
                return False
            self._replace(event, current + (socket,))
            return True

    def remove(self, event: str, socket: RabbitMQSocket) -> bool:
        """Unsubscribe *socket* from *event*; False if it was not subscribed."""
        check_event_name(event)
        _check_socket(socket)
        with self._lock:
            current = self._table.get(event, ())
            if socket not in current:
                return False
            self._replace(event, tuple(s for s in current if s != socket))
            return True

    def get(self, event: str) -> tuple[RabbitMQSocket, ...]:
        """The sockets subscribed to *event*, ``()`` if none (never locks)."""
        return self._table.get(event, ())

    def events(self) -> tuple[str, ...]:
        """The events that have at least one subscriber."""
        return tuple(self._table)

    def items(self) -> tuple[tuple[str, tuple[RabbitMQSocket, ...]], ...]:
        """``(event, sockets)`` pairs, all from one moment."""
        return tuple(self._table.items())

    def __repr__(self) -> str:
        # Counts only: the sockets' own repr hides passwords, but a table of
        # them is too long for a log line anyway.
        table = self._table
        total = sum(len(sockets) for sockets in table.values())
        return f"<Subscriptions: {len(table)} events, {total} subscriptions>"

    def _replace(self, event: str, sockets: tuple[RabbitMQSocket, ...]) -> None:
        """Swap in a new table with *event* set to *sockets* (lock held)."""
        table = dict(self._table)
        if sockets:
            table[event] = sockets
        else:
            del table[event]
        self._table = table


def _check_socket(socket) -> None:
    if not isinstance(socket, RabbitMQSocket):
        raise SocketTypeError(
            f"a subscriber must be a RabbitMQSocket, not {type(socket).__name__}"
            " (use parse_socket() on socket text)")
