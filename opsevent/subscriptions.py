"""Which sockets are subscribed to which event, and until when.

Theory of operation: the table is a dict of event name to a tuple of sockets,
and it is never changed in place. A write takes the lock, builds a new dict
and swaps it in with one assignment; a read grabs whatever dict is current
and never locks. Raising an event therefore costs one dict lookup, and a
reader always sees a whole table, never one half-way through a write.

Expiry (OpenSIPS's ``expire``, which event_rabbitmq itself never honours): a
subscription made with ``expire=N`` is gone N seconds later. Deadlines are
kept apart from the table, and the earliest one in ``_next_expiry``, so a
raise compares one number with the clock, and only when some subscription
expires at all. Once the earliest deadline has passed, the next read drops
every expired subscriber (evi's lazy expiry). Subscribing again refreshes
the expire, as the MI's ``event_subscribe`` does.

The table travels as plain data too: :meth:`Subscriptions.dump` and
:meth:`Subscriptions.load` turn it into bytes and back, so another package
(``workers``) can share it between processes. The bytes hold passwords:
they are process memory, never a log line.

A plain ``Subscriptions`` belongs to one process: a child inherits a copy
(and would inherit the lock held if another thread were writing at that
moment). ``workers`` replaces it, while a service runs, with a table that
every process shares.
"""

import json
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import astuple, dataclass
from dataclasses import fields as dataclass_fields

from .errors import EventSyntaxError, SocketTypeError
from .payload import check_event_name
from .sockets import RabbitMQSocket

__all__ = ["Subscription", "Subscriptions", "check_expire"]


@dataclass(frozen=True)
class Subscription:
    """One subscriber of one event, as listed: ``expire`` and ``expires_at`` None for never.

    ``expire`` is the seconds it was subscribed for; ``expires_at`` the
    clock's (``time.monotonic()``) deadline.
    """

    event: str
    socket: RabbitMQSocket
    expire: float | None = None
    expires_at: float | None = None

    def ttl(self, now: float) -> float | None:
        """Seconds left at *now*, None for never."""
        return None if self.expires_at is None else max(0.0, self.expires_at - now)


def check_expire(expire) -> float | None:
    """*expire* as float seconds, or None (never); else an EventSyntaxError saying why."""
    if expire is None:
        return None
    if type(expire) not in (int, float):  # bool is an int, never a duration
        raise EventSyntaxError(
            f"expire must be a number of seconds > 0 (or None for never), "
            f"not {type(expire).__name__} {expire!r}")
    if not math.isfinite(expire) or expire <= 0:
        raise EventSyntaxError(
            f"expire must be a finite number of seconds > 0, not {expire!r}; "
            f"leave it out for a subscription that never expires")
    return float(expire)


class Subscriptions:
    """A thread-safe map of event name to its subscriber sockets, in order.

    *clock* gives the time deadlines are measured in (``time.monotonic``;
    a test passes its own).
    """

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._table: Mapping[str, tuple[RabbitMQSocket, ...]] = {}
        # (event, socket) -> (expires_at, expire), for expiring subscribers only
        self._deadlines: Mapping[tuple[str, RabbitMQSocket], tuple[float, float]] = {}
        self._next_expiry: float | None = None  # the earliest deadline, None if none

    # ---- writes -----------------------------------------------------------------

    def add(self, event: str, socket: RabbitMQSocket,
            expire: float | None = None) -> bool:
        """Subscribe *socket* to *event* for *expire* seconds (None: never); False if it already was.

        An equal socket (one that differs at most in password, persistent or
        format) is replaced in place, so the later password wins and the
        order is kept; its expire is the new one (refreshed, or made never).
        """
        check_event_name(event)
        _check_socket(socket)
        expire = check_expire(expire)
        with self._writing():
            now = self._clock()
            self._drop_expired(now)
            current = self._table.get(event, ())
            deadlines = dict(self._deadlines)
            deadlines.pop((event, socket), None)
            if expire is not None:
                deadlines[(event, socket)] = (now + expire, expire)
            if socket in current:
                index = current.index(socket)
                updated = current[:index] + (socket,) + current[index + 1:]
                self._replace(event, updated, deadlines)
                return False
            self._replace(event, current + (socket,), deadlines)
            return True

    def remove(self, event: str, socket: RabbitMQSocket) -> bool:
        """Unsubscribe *socket* from *event*; False if it was not subscribed (or had expired)."""
        check_event_name(event)
        _check_socket(socket)
        with self._writing():
            self._drop_expired(self._clock())
            current = self._table.get(event, ())
            if socket not in current:
                return False
            deadlines = dict(self._deadlines)
            deadlines.pop((event, socket), None)
            self._replace(event, tuple(s for s in current if s != socket), deadlines)
            return True

    # ---- reads ------------------------------------------------------------------

    def get(self, event: str) -> tuple[RabbitMQSocket, ...]:
        """The sockets subscribed to *event*, ``()`` if none (never locks unless one expired)."""
        deadline = self._next_expiry  # _expire_due(), inlined: this is the raise path
        if deadline is not None and deadline <= self._clock():
            self._expire()
        return self._table.get(event, ())

    def _expire_due(self) -> None:
        deadline = self._next_expiry
        if deadline is not None and deadline <= self._clock():
            self._expire()

    def events(self) -> tuple[str, ...]:
        """The events that have at least one subscriber."""
        self._expire_due()
        return tuple(self._table)

    def items(self) -> tuple[tuple[str, tuple[RabbitMQSocket, ...]], ...]:
        """``(event, sockets)`` pairs, all from one moment."""
        self._expire_due()
        return tuple(self._table.items())

    def entries(self, event: str | None = None) -> tuple[Subscription, ...]:
        """Every live subscription (of *event* only, if given), in order, with its expiry."""
        self._expire_due()
        table, deadlines = self._table, self._deadlines
        selected = table.items() if event is None else ((event, table.get(event, ())),)
        listed = []
        for name, sockets in selected:
            for socket in sockets:
                expires_at, expire = deadlines.get((name, socket), (None, None))
                listed.append(Subscription(name, socket, expire, expires_at))
        return tuple(listed)

    # ---- as bytes -----------------------------------------------------------------

    def dump(self) -> bytes:
        """The table as bytes for :meth:`load`: JSON, passwords included (never log it).

        ``[[event, [socket fields], expires_at, expire], ...]``, in order;
        the socket fields are ``dataclasses.astuple(socket)``.
        """
        return _encode(self._table, self._deadlines)

    def load(self, data: bytes) -> None:
        """Replace the whole table with one from :meth:`dump`; expired entries are left out."""
        with self._thread_lock():
            self._load(data)

    def __repr__(self) -> str:
        # Counts only: the sockets' own repr hides passwords, but a table of
        # them is too long for a log line anyway.
        table = self._table
        total = sum(len(sockets) for sockets in table.values())
        return f"<Subscriptions: {len(table)} events, {total} subscriptions>"

    # ---- internals (for subclasses too) ----------------------------------------------

    def _writing(self):
        """The context a write runs in; a subclass that shares the table widens it.

        A write that changes nothing (a remove that found nothing) leaves
        ``_table`` and ``_deadlines`` the very same objects, so such a
        subclass can tell and skip publishing it to every process.
        """
        return self._thread_lock()

    def _thread_lock(self) -> threading.Lock:
        return self._lock

    def _expire(self) -> None:
        with self._thread_lock():
            self._drop_expired(self._clock())

    def _drop_expired(self, now: float) -> None:
        """Drop every subscriber whose deadline is *now* or earlier (lock held)."""
        if self._next_expiry is None or self._next_expiry > now:
            return
        expired = {key for key, (at, _) in self._deadlines.items() if at <= now}
        table = {event: kept for event, sockets in self._table.items()
                 if (kept := tuple(s for s in sockets if (event, s) not in expired))}
        self._set(table, {k: v for k, v in self._deadlines.items() if k not in expired})

    def _replace(self, event: str, sockets: tuple[RabbitMQSocket, ...],
                 deadlines: Mapping) -> None:
        """Swap in a new table with *event* set to *sockets* (lock held)."""
        table = dict(self._table)
        if sockets:
            table[event] = sockets
        else:
            table.pop(event, None)
        self._set(table, deadlines)

    def _set(self, table: Mapping, deadlines: Mapping) -> None:
        # Table first: a reader that sees the new deadline also sees the new table.
        self._table = table
        self._deadlines = deadlines
        self._next_expiry = min((at for at, _ in deadlines.values()), default=None)

    def _load(self, data: bytes) -> None:
        """Replace the table with *data* from dump() (lock held).

        Sockets equal in every field to one already held are kept as the
        same object, so per-socket caches (the transport's) stay small.
        """
        known = {astuple(s): s for sockets in self._table.values() for s in sockets}
        now = self._clock()
        table: dict[str, tuple[RabbitMQSocket, ...]] = {}
        deadlines = {}
        for event, fields, expires_at, expire in json.loads(data):
            if expires_at is not None and expires_at <= now:
                continue
            # JSON made the failover pairs lists: tuples again, so the
            # fields compare equal to a held socket's astuple().
            fields[_FAILOVER] = tuple(map(tuple, fields[_FAILOVER]))
            fields = tuple(fields)
            socket = known.get(fields) or RabbitMQSocket(*fields)
            table[event] = table.get(event, ()) + (socket,)
            if expires_at is not None:
                deadlines[(event, socket)] = (expires_at, expire)
        self._set(table, deadlines)


_FAILOVER = [f.name for f in dataclass_fields(RabbitMQSocket)].index("failover")


def _encode(table: Mapping, deadlines: Mapping) -> bytes:
    rows = []
    for event, sockets in table.items():
        for socket in sockets:
            expires_at, expire = deadlines.get((event, socket), (None, None))
            rows.append([event, astuple(socket), expires_at, expire])
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _check_socket(socket) -> None:
    if not isinstance(socket, RabbitMQSocket):
        raise SocketTypeError(
            f"a subscriber must be a RabbitMQSocket, not {type(socket).__name__}"
            " (use parse_socket() on socket text)")
