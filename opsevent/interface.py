"""The event interface: subscribe sockets to events, raise events.

This is the part of OpenSIPS's ``evi/`` and of event_rabbitmq's raise glue
that runs in the process raising the event. It builds the body once and hands
it, with the subscriber sockets, to a :class:`Transport`. It never talks to
RabbitMQ: the transport (the ``workers`` package) does, in another process.

Body formats: each subscriber gets the body in its socket's ``format=``, or
else in the interface's ``format`` setting (the guide's ``"lines"`` unless
set to ``"json"``). A raise builds each format's body once and submits it
once, with the subscribers that want it; when every subscriber wants the
same format (the usual case) that is one body and one submit, as before.

Programmer errors raise (a bad event name, a bad parameter, a bad socket).
Runtime outcomes are returned: every raise gives a :class:`RaiseResult` with
one :class:`Delivery`, and its :class:`Status`, per subscriber, and the
message id its messages carry (:mod:`opsevent.messageid`).
"""

import enum
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

from .errors import ConfigError, EventSyntaxError, EventTooLargeError, OpseventError
from .messageid import check_message_id, new_message_id
from ._body import param_items
from .payload import FORMATS, Params, check_event_name, encode_event
from .sockets import RabbitMQSocket, parse_socket
from .subscriptions import Subscriptions
from .tlsdomain import TLSDomain, check_tls_domains, find_tls_domain

__all__ = ["Status", "Delivery", "RaiseResult", "Settings", "Transport",
           "EventInterface"]

NOT_RUNNING_REASON = ("no RabbitMQ worker is running for this EventInterface in this "
                      "process: start a workers.Supervisor or workers.serve(evi) (a process "
                      "started with 'spawn' or 'forkserver' inherits none: serve there)")


class Status(str, enum.Enum):
    """What happened to one delivery. Only QUEUED and CONFIRMED are ok."""

    QUEUED = "queued"            # async mode: handed to the worker
    CONFIRMED = "confirmed"      # sync mode: the worker published it
    QUEUE_FULL = "queue full"    # async mode: the worker is too far behind
    TIMEOUT = "timeout"          # sync mode: outcome unknown within sync_timeout; it may still arrive
    TOO_LARGE = "too large"      # body over MAX_BODY_SIZE; never sent
    UNROUTABLE = "unroutable"    # the broker had no queue for the routing key
    NACKED = "nacked"            # the broker refused the message
    FAILED = "failed"            # connection or channel error; see the reason
    NOT_RUNNING = "not running"  # no transport attached

    @property
    def ok(self) -> bool:
        return self in _OK

    def __str__(self) -> str:
        return self.value


_OK = (Status.QUEUED, Status.CONFIRMED)  # the one place that says which are ok


@dataclass(frozen=True)
class Delivery:
    """The outcome of one event for one subscriber."""

    socket: RabbitMQSocket
    status: Status
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status.ok


@dataclass(frozen=True)
class RaiseResult:
    """The outcome of one raise: true when every delivery is ok (or none).

    ``message_id`` is the AMQP message-id of every message of this raise
    (each subscriber's copy, and any copy published again): the one given
    to ``raise_event``, or one made for it; "" when it had no subscribers.
    A sync ``timeout`` means the outcome is unknown: the event may still
    arrive. A caller that raises it again should give the same message_id,
    so that consumers can drop the copy.
    """

    event: str
    deliveries: tuple[Delivery, ...]
    message_id: str = ""

    def __bool__(self) -> bool:
        # Asked after every raise: a loop, not Status.ok in a generator (about 650 -> 250 ns for one).
        for delivery in self.deliveries:
            if delivery.status not in _OK:
                return False
        return True

    @property
    def failures(self) -> tuple[Delivery, ...]:
        return tuple(delivery for delivery in self.deliveries if not delivery.ok)


MAX_LINGER = 0.1  # seconds: Settings.linger delays async publishes by up to this much


@dataclass(frozen=True)
class Settings:
    """How events are delivered. Times are in seconds.

    heartbeat (0)
        AMQP heartbeat interval, 0..65535; 0 disables it (guide 1.5.1). A
        broker silent for twice this long is declared dead. Set it for
        sockets with failover hosts: a frozen host keeps its TCP connection
        open and says nothing, so with 0 it is never left.
    sync_mode (False)
        Wait for the worker to publish each event (guide 1.5.2); 0 and 1 are
        accepted as in the guide and stored as bool.
    sync_timeout (2.0)
        In sync mode, how long a raise waits for the worker; > 0.
    queue_size (100_000)
        Most jobs waiting in the queue shared with the worker; >= 1.
    connect_timeout (2.0)
        How long the worker waits to connect to a broker; > 0.
    drain_timeout (5.0)
        How long shutdown keeps publishing what is queued; >= 0.
    reconnect_min (0.1), reconnect_max (5.0)
        Bounds of the worker's reconnect back-off; 0 < min <= max.
    backlog_size (20_000)
        Most events the worker holds unpublished or unconfirmed, all brokers
        together, whether a broker is slow, blocked or down; there it stops
        reading the shared queue, so raises get "queue full" at once; >= 1.
    persistent (False)
        Publish every event with delivery_mode 2, so that messages on
        durable queues survive a broker restart (a socket's ``persistent``
        flag does it for that subscriber alone).
    app_id ("opsevent")
        The ``app-id`` property of every message: names the publisher to
        consumers; text of 1..255 UTF-8 bytes.
    event_header (True)
        Give every message the header ``event`` (its event name), which a
        headers exchange can route on. False leaves the headers out: the
        broker then spends about a fifth less CPU per message.
    backlog_age (60.0)
        Oldest an async event may be when published; an older one is
        dropped, counted and logged instead of flushed late; > 0.
    linger (0.001)
        After a turn of its loop that read only a few jobs (fewer than 64),
        none of them sync, the worker leaves the shared queue unwatched this
        long, so that the next jobs are read and published together instead
        of each waking it: at a few thousand events a second this takes
        about a quarter off the worker's CPU per event. Async events wait at
        most this much longer to be published; a sync job never makes the
        worker linger (one that comes during a linger waits for its end);
        0 turns it off; 0..0.1.
    format ("lines")
        The body format of subscribers whose socket has no ``format=``:
        ``"lines"`` (the guide's line format), ``"json"`` (the JSON-RPC
        notification of OpenSIPS 3.1.1+) or ``"opensips"`` (the bytes
        OpenSIPS 1.8-3.0 send); see :mod:`opsevent.payload`.
    tls_ca_file (None)
        PEM file of the CA(s) that sign the brokers' certificates. Sockets
        with ``tls`` need it: without it the worker fails their events
        rather than connect unverified. The system's CAs are not used.
    tls_cert_file (None), tls_key_file (None)
        PEM client certificate and its private key, for brokers that ask
        for one; both or neither (the same path twice if one file holds
        both). The worker reads all three files when it connects; a file it
        cannot read fails the events with a reason naming the file.
    tls_verify_hostname (True)
        Check that the broker's certificate names the host of the socket.
        False still verifies the chain against ``tls_ca_file``.
    tls_domains (())
        Named TLS domains for sockets with ``tls_domain=NAME`` (OpenSIPS
        3.2's syntax): a mapping of name to :class:`TLSDomain` (CA file,
        client certificate and key, hostname check) or to a mapping of its
        fields; kept as ``((name, TLSDomain), ...)``. Such a socket connects
        with its domain's files instead of the four ``tls_*`` settings
        above; subscribing one whose domain is not here is refused
        (:mod:`opsevent.tlsdomain`).
    failback_interval (5.0)
        While a socket with failover hosts is on one of them, how often the
        worker tries the primary host again, and returns to it once it
        accepts an AMQP connection; > 0.
    failback (True)
        Return to the primary host at all (see ``failback_interval``).
        False stays on whichever host works until it fails: for a list of
        one cluster's nodes, which are equivalent.
    spread_hosts (False)
        Connect first to a randomly chosen host of a socket's list rather
        than the first, so that the workers of many servers spread over a
        cluster's nodes; the host chosen is then the one fail-back returns
        to (see docs/cluster.md, "Running on a RabbitMQ cluster").
    """

    heartbeat: int = 0
    sync_mode: bool = False
    sync_timeout: float = 2.0
    queue_size: int = 100_000
    connect_timeout: float = 2.0
    drain_timeout: float = 5.0
    reconnect_min: float = 0.1
    reconnect_max: float = 5.0
    backlog_size: int = 20_000
    backlog_age: float = 60.0
    linger: float = 0.001
    persistent: bool = False
    format: str = "lines"
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_verify_hostname: bool = True
    tls_domains: tuple[tuple[str, TLSDomain], ...] = ()
    failback_interval: float = 5.0
    failback: bool = True
    spread_hosts: bool = False
    app_id: str = "opsevent"
    event_header: bool = True

    def __post_init__(self) -> None:
        _check_int(self, "heartbeat", 0, 65535)
        _check_int(self, "queue_size", 1, None)
        _check_int(self, "backlog_size", 1, None)
        if type(self.sync_mode) not in (bool, int) or self.sync_mode not in (0, 1):
            raise ConfigError(
                f"sync_mode must be a bool (or 0/1), not {self.sync_mode!r}")
        object.__setattr__(self, "sync_mode", bool(self.sync_mode))
        for name in ("persistent", "event_header", "failback", "spread_hosts"):
            if type(getattr(self, name)) is not bool:
                raise ConfigError(f"{name} must be a bool, not {getattr(self, name)!r}")
        if type(self.app_id) is not str or not 0 < len(_utf8(self.app_id)) <= 255:
            raise ConfigError(f"app_id must be text of 1..255 UTF-8 bytes, not {self.app_id!r}")
        if type(self.format) is not str or self.format not in FORMATS:
            raise ConfigError(f"format must be one of "
                              f"{', '.join(map(repr, FORMATS))}, not {self.format!r}")
        for name in ("sync_timeout", "connect_timeout", "reconnect_min",
                     "reconnect_max", "backlog_age", "failback_interval"):
            _check_seconds(self, name, positive=True)
        _check_seconds(self, "drain_timeout", positive=False)
        _check_seconds(self, "linger", positive=False)
        if self.linger > MAX_LINGER:
            raise ConfigError(f"linger must be at most {MAX_LINGER:g} s (it delays async "
                              f"publishes), not {self.linger!r}")
        if self.reconnect_max < self.reconnect_min:
            raise ConfigError(
                f"reconnect_max ({self.reconnect_max}) is less than "
                f"reconnect_min ({self.reconnect_min})")
        _check_tls(self)
        object.__setattr__(self, "tls_domains", check_tls_domains(self.tls_domains))


_RESULTS_KEPT = 1024  # events whose last deliveries are kept for reuse

_new = object.__new__


def _result(event: str, deliveries: tuple, message_id: str) -> RaiseResult:
    """``RaiseResult(event, deliveries, message_id)``, at half the cost: the async raise's path.

    A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__`` (about 0.7 us for three here); filling the new
    instance's dict takes about 0.3 us. A test checks the two are equal.
    """
    result = _new(RaiseResult)
    fields = result.__dict__
    fields["event"] = event
    fields["deliveries"] = deliveries
    fields["message_id"] = message_id
    return result


_SETTING_NAMES = frozenset(f.name for f in fields(Settings))


def _utf8(text: str) -> bytes:
    """UTF-8, or b"" for text that has none (a lone surrogate)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return b""


def _check_int(settings: Settings, name: str, low: int, high: int | None) -> None:
    value = getattr(settings, name)
    span = f"{low}..{high}" if high is not None else f">= {low}"
    if type(value) is not int:  # bool is an int, but never a count
        raise ConfigError(
            f"{name} must be an int ({span}), not {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{name} must be {span}, not {value}")


def _check_tls(settings: Settings) -> None:
    # Only types and combinations here: the files are read by the worker,
    # which may run where the paths mean something else (a chroot, a mount).
    for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        value = getattr(settings, name)
        if value is None:
            continue
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{name} must be a path (str) or None, not "
                              f"{type(value).__name__} {value!r}")
        path = os.fspath(value)
        if not isinstance(path, str) or not path or "\0" in path:
            raise ConfigError(f"{name} must be a non-empty path without NUL, "
                              f"not {path!r}")
        object.__setattr__(settings, name, path)
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        given, missing = (("tls_cert_file", "tls_key_file")
                          if settings.tls_key_file is None
                          else ("tls_key_file", "tls_cert_file"))
        raise ConfigError(f"{given} is set but {missing} is not: a client "
                          f"certificate needs its key (give the same path "
                          f"twice if one file holds both)")
    if type(settings.tls_verify_hostname) is not bool:
        raise ConfigError(f"tls_verify_hostname must be a bool, not "
                          f"{settings.tls_verify_hostname!r}")


def _check_seconds(settings: Settings, name: str, positive: bool) -> None:
    value = getattr(settings, name)
    rule = "> 0" if positive else ">= 0"
    if type(value) not in (int, float):
        raise ConfigError(f"{name} must be a number of seconds ({rule}), not "
                          f"{type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ConfigError(f"{name} must be a finite number of seconds {rule}, "
                          f"not {value!r}")
    object.__setattr__(settings, name, float(value))


@runtime_checkable
class Transport(Protocol):
    """What carries event bodies to RabbitMQ (implemented by ``workers``).

    The EventInterface calls ``submit`` for every raise that has
    subscribers, ``asubmit`` for a sync-mode ``araise_event``, and ``note``
    for raises it refused itself; the process holding the interface calls
    ``flush`` and ``at_exit``. Only ``submit`` must be written: a class that
    subclasses ``Transport`` gets the others as defined here (``asubmit``
    calls ``submit``; ``note``, ``flush`` and ``at_exit`` do nothing).
    ``EventInterface.attach`` refuses an object that has not all five.
    """

    def submit(self, event: str, sockets: tuple[RabbitMQSocket, ...], body: bytes,
               sync: bool, timeout: float, message_id: str) -> Sequence[tuple[Status, str]]:
        """Deliver *body*, a raise of *event*, to every socket; one ``(status, reason)`` each, in order.

        Async (``sync`` false): return QUEUED or QUEUE_FULL at once. Sync:
        wait at most *timeout* seconds for the worker's answer. Every
        message carries *message_id* (1..255 UTF-8 bytes, checked).
        """
        raise NotImplementedError

    async def asubmit(self, event: str, sockets: tuple[RabbitMQSocket, ...], body: bytes,
                      sync: bool, timeout: float, message_id: str) -> Sequence[tuple[Status, str]]:
        """``submit`` for coroutines (``EventInterface.araise_event``).

        It must not block the event loop while it waits for a sync answer;
        this default calls ``submit``, which is right only for a transport
        that never waits.
        """
        return self.submit(event, sockets, body, sync, timeout, message_id)

    def note(self, event: str, sockets: tuple[RabbitMQSocket, ...], status: Status) -> None:
        """Be told of a raise refused before it reached the transport (TOO_LARGE),
        so that it can be counted with the transport's own."""

    def flush(self, timeout: float) -> int:
        """Hand over what this process still buffers, waiting at most *timeout*
        seconds without progress; return how many jobs are left."""
        return 0

    def at_exit(self) -> None:
        """This process is ending: hand over what it still buffers, without waiting."""


class EventInterface:
    """Subscriptions plus raising; what a front-end process holds.

    ``EventInterface(heartbeat=3, sync_mode=True, sync_timeout=1.0)``: the
    keyword arguments are the fields of :class:`Settings`
    (``format="json"`` among them).
    """

    def __init__(self, heartbeat: int = 0, sync_mode: bool = False,
                 **settings) -> None:
        unknown = sorted(settings.keys() - _SETTING_NAMES)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; the "
                              f"settings are {', '.join(sorted(_SETTING_NAMES))}")
        self.settings = Settings(heartbeat=heartbeat, sync_mode=sync_mode,
                                 **settings)
        self.subscriptions = Subscriptions()
        self._transport: Transport | None = None
        # event -> (sockets, statuses, deliveries) of its last raise: a
        # transport answers async raises with the same statuses object every
        # time, and deliveries are immutable, so they are built once, not per
        # raise (the result is per raise: it carries the raise's message id).
        self._last: dict[str, tuple] = {}

    @property
    def transport(self) -> Transport | None:
        return self._transport

    def attach(self, transport: Transport) -> None:
        """Send raised events through *transport* (replacing any other)."""
        if not isinstance(transport, Transport):
            raise TypeError(f"{type(transport).__name__} is not a Transport: a transport has "
                            f"submit, asubmit, note, flush and at_exit (subclass "
                            f"opsevent.Transport to get all but submit)")
        self._transport = transport

    def detach(self) -> Transport | None:
        """Stop sending; raises then report NOT_RUNNING. Returns the old transport."""
        transport, self._transport = self._transport, None
        return transport

    def subscribe_event(self, event: str, socket: str | RabbitMQSocket,
                        expire: float | None = None) -> bool:
        """Subscribe *socket* (text or parsed) to *event*; False if it already was.

        *expire* (seconds, > 0) makes the subscription end that long from
        now: the first raise after it no longer sends to the socket, and
        listings stop showing it. None (the default) never expires.

        Subscribing the same subscriber again (see :class:`RabbitMQSocket`
        equality) with another password, ``persistent`` or ``format``
        replaces the earlier socket, in its place, and its expire with the
        new one (as OpenSIPS's MI ``event_subscribe`` refreshes it).
        """
        socket = _as_socket(socket)
        if socket.tls_domain is not None:
            try:
                find_tls_domain(self.settings.tls_domains, socket.tls_domain)
            except ConfigError as err:
                raise ConfigError(f"rabbitmq socket {str(socket)!r}: {err}") from None
        return self.subscriptions.add(event, socket, expire)

    def unsubscribe_event(self, event: str, socket: str | RabbitMQSocket) -> bool:
        """Unsubscribe *socket* from *event*; False if it was not subscribed."""
        return self.subscriptions.remove(event, _as_socket(socket))

    def subscribers(self, event: str) -> tuple[RabbitMQSocket, ...]:
        return self.subscriptions.get(event)

    def raise_event(self, event: str, params: Params | None = None, *,
                    attrs: Sequence[str | None] | None = None,
                    vals: Sequence | None = None,
                    message_id: str | None = None) -> RaiseResult:
        """Send *event* to its subscribers; one Delivery per subscriber.

        *params* is a mapping or ``(name, value)`` pairs. Or, as in the
        guide's script, *vals* with optional *attrs* naming them one to one.

        *message_id* (text of 1..255 UTF-8 bytes) is the AMQP message-id of
        the event's messages; by default one is made. Give the id of an
        earlier raise to raise the same event again (after a ``timeout``,
        say): consumers can then drop the copy. The result carries it.

        Each subscriber gets the body in its socket's format, or the
        ``format`` setting's. Each format's body is built once and submitted
        once, with its subscribers; a body too large in one format is
        TOO_LARGE for those subscribers only. In sync mode, subscribers of
        two formats mean two submits, one after the other, each waiting up
        to ``sync_timeout``.
        """
        params, sockets, message_id = self._addressed(event, params, attrs, vals, message_id)
        if not sockets:
            return RaiseResult(event, (), message_id)
        settings = self.settings
        body_format = settings.format
        for socket in sockets:
            if socket.format is not None and socket.format != body_format:
                return self._raise_formats(event, params, sockets, message_id)
        try:
            body = encode_event(event, params, body_format)
        except EventTooLargeError as err:
            _note(self._transport, event, sockets, Status.TOO_LARGE)
            return _same_for_all(event, sockets, Status.TOO_LARGE, str(err), message_id)
        transport = self._transport
        if transport is None:
            return _same_for_all(event, sockets, Status.NOT_RUNNING,
                                 NOT_RUNNING_REASON, message_id)
        statuses = transport.submit(event, sockets, body, settings.sync_mode,
                                    settings.sync_timeout, message_id)
        if len(statuses) != len(sockets):
            _wrong_count(transport, statuses, sockets)
        last = self._last.get(event)
        if last is not None and last[0] is sockets and last[1] is statuses:
            return _result(event, last[2], message_id)
        deliveries = tuple(Delivery(socket, status, reason)
                           for socket, (status, reason) in zip(sockets, statuses))
        if last is not None or len(self._last) < _RESULTS_KEPT:
            self._last[event] = (sockets, statuses, deliveries)
        return RaiseResult(event, deliveries, message_id)

    async def araise_event(self, event: str, params: Params | None = None, *,
                           attrs: Sequence[str | None] | None = None,
                           vals: Sequence | None = None,
                           message_id: str | None = None) -> RaiseResult:
        """``raise_event`` for asyncio code: the same arguments and result.

        It never blocks the event loop: an async-mode raise never waits
        anyway, and a sync-mode raise awaits its reply (the transport's
        ``asubmit``). Any number of tasks may await raises at once.
        Cancelling the awaiting task abandons the wait, not the event: it
        may still be published.
        """
        transport = self._transport
        if not self.settings.sync_mode or transport is None:
            return self.raise_event(event, params, attrs=attrs, vals=vals, message_id=message_id)
        params, sockets, message_id = self._addressed(event, params, attrs, vals, message_id)
        if not sockets:
            return RaiseResult(event, (), message_id)
        steps = self._submissions(event, params, sockets, message_id)
        statuses = None
        try:
            while True:
                group, body = steps.send(statuses)
                statuses = await transport.asubmit(event, group, body, True, self.settings.sync_timeout,
                                                   message_id)
        except StopIteration as done:
            return done.value

    def _addressed(self, event: str, params: Params | None, attrs, vals, message_id: str | None):
        """What both raises do first: *params* from *attrs*/*vals*, *message_id*
        checked, the subscribers looked up. Returns ``(params, sockets,
        message_id)``; with subscribers the id is made if none was given, without
        them it is the given one or ``""`` (nothing is sent to carry it)."""
        if attrs is not None or vals is not None:
            params = _zip_attrs(params, attrs, vals)
        if message_id is not None:
            check_message_id(message_id)
        try:
            sockets = self.subscriptions.get(event)
        except TypeError:  # unhashable: check_event_name says what is wrong
            sockets = ()
        if not sockets:
            # Still validated: a typo in an event name should fail in tests
            # even when nobody has subscribed yet.
            check_event_name(event)
            return params, (), message_id or ""
        return params, sockets, message_id or new_message_id()

    def _raise_formats(self, event: str, params,
                       sockets: tuple[RabbitMQSocket, ...], message_id: str) -> RaiseResult:
        """raise_event when the subscribers want bodies in more than one format."""
        steps = self._submissions(event, params, sockets, message_id)
        transport, settings = self._transport, self.settings
        statuses = None
        try:
            while True:
                group, body = steps.send(statuses)
                statuses = transport.submit(event, group, body, settings.sync_mode,
                                            settings.sync_timeout, message_id)
        except StopIteration as done:
            return done.value

    def _submissions(self, event: str, params, sockets: tuple[RabbitMQSocket, ...], message_id: str):
        """The steps of a raise, for a caller that submits: a generator that
        yields ``(subscribers, body)`` for each body to submit, is sent back
        the statuses of each, and returns the RaiseResult.

        Each format's body is built once, for the subscribers that want it;
        every body is built before the first submit, so that a bad parameter
        raises before anything is sent.
        """
        settings = self.settings
        if type(params) not in (dict, list, tuple):
            params = list(param_items(event, params))  # an iterator reads only once
        groups: dict[str, list[int]] = {}  # format -> its subscribers' indexes
        for index, socket in enumerate(sockets):
            groups.setdefault(socket.format or settings.format, []).append(index)
        bodies = {}
        for body_format in groups:
            try:
                bodies[body_format] = encode_event(event, params, body_format)
            except EventTooLargeError as err:
                bodies[body_format] = err
        transport = self._transport
        deliveries: list = [None] * len(sockets)
        for body_format, indexes in groups.items():
            body = bodies[body_format]
            # One format (the usual case): the subscription's own tuple, whose
            # bytes the transport has cached by identity.
            group = sockets if len(indexes) == len(sockets) else tuple(sockets[index] for index in indexes)
            if isinstance(body, EventTooLargeError):
                _note(transport, event, group, Status.TOO_LARGE)
                statuses = [(Status.TOO_LARGE, str(body))] * len(group)
            elif transport is None:
                statuses = [(Status.NOT_RUNNING, NOT_RUNNING_REASON)] * len(group)
            else:
                statuses = yield group, body
                if len(statuses) != len(group):
                    _wrong_count(transport, statuses, group)
            for index, socket, (status, reason) in zip(indexes, group, statuses):
                deliveries[index] = Delivery(socket, status, reason)
        return RaiseResult(event, tuple(deliveries), message_id)

    def __repr__(self) -> str:
        transport = type(self._transport).__name__ if self._transport else None
        return (f"<EventInterface {self.settings!r} {self.subscriptions!r} "
                f"transport={transport}>")


def _as_socket(socket: str | RabbitMQSocket) -> RabbitMQSocket:
    # Non-str, non-socket values fall through to parse_socket's type error.
    return socket if isinstance(socket, RabbitMQSocket) else parse_socket(socket)


def _zip_attrs(params, attrs, vals) -> list:
    """Pair the guide's ``attrs``/``vals`` lists into ``(name, value)`` pairs."""
    if params is not None:
        raise EventSyntaxError("raise_event takes params, or attrs/vals, not both")
    for what, values in (("attrs", attrs), ("vals", vals)):
        if isinstance(values, (str, bytes)) or not (
                values is None or isinstance(values, Sequence)):
            raise EventSyntaxError(
                f"{what} must be a list, not {type(values).__name__}")
    vals = () if vals is None else vals
    if attrs is None:
        attrs = (None,) * len(vals)
    if len(attrs) != len(vals):
        raise EventSyntaxError(
            f"attrs has {len(attrs)} names but vals has {len(vals)} values; "
            f"they pair up one to one")
    return list(zip(attrs, vals))


def _note(transport: Transport | None, event: str, sockets, status: Status) -> None:
    if transport is not None:
        transport.note(event, sockets, status)


def _wrong_count(transport: Transport, statuses, sockets) -> None:
    raise OpseventError(
        f"{type(transport).__name__}.submit() gave {len(statuses)} "
        f"statuses for {len(sockets)} sockets")


def _same_for_all(event: str, sockets: tuple[RabbitMQSocket, ...],
                  status: Status, reason: str, message_id: str) -> RaiseResult:
    return RaiseResult(event, tuple(
        Delivery(socket, status, reason) for socket in sockets), message_id)
