"""One AMQP connection to one broker, owned by the RabbitMQ worker.

Theory of operation:

* A ``BrokerLink`` exists per distinct broker identity (host, port, user,
  password, vhost, tls, failover hosts) and carries every subscription on
  that broker over one pika ``SelectConnection`` and one channel in confirm
  mode, driven by the worker's single I/O loop.  It connects lazily, on the
  first item.  With ``tls`` the connection is verified against the
  ``tls_ca_file`` setting (``workers/rabbitmq/tls.py``); never unverified.
* ``submit(item)`` either writes the item's frames (connected, not blocked)
  or keeps it in ``pending``.  Written items wait in ``inflight`` under their
  delivery tag until the broker acks (``confirmed``), nacks, or returns them
  (``unroutable``: every publish is mandatory).
* When the connection drops, every unresolved in-flight item goes back to the
  front of ``pending``, in order, and is published again after the reconnect:
  at-least-once.  Reconnects back off exponentially, with jitter, between
  ``reconnect_min`` and ``reconnect_max``.
* Failover: the socket's hosts (``endpoints``, the primary first) are tried
  in order, wrapping.  A lost connection or a failed connect moves to the
  next host at once; only a whole round of failed hosts backs off, and only
  then are waiting *sync* items failed, with every host's reason (a single
  host is a round of one: its failed connect fails them at once).  Async
  items wait in ``pending``, bounded.
* Failback: while connected to a failover host, the link opens a probe
  connection to the primary every ``failback_interval``.  Once one opens,
  the link stops writing (``switching``), lets the broker confirm what is in
  flight (bounded by ``connect_timeout``, then requeued: at-least-once),
  closes, and connects to the primary; the pending items follow.  With the
  ``failback`` setting off (a cluster's nodes are equivalent) the link stays
  where it works; with ``spread_hosts`` the "primary" is a host chosen at
  random when the link is made, so that many workers spread over a cluster.
* A nack is not the end.  The broker nacks what it did not take: a cluster
  nacks every publish on a channel opened just after the node leading a
  quorum queue died, for as long as that node stays away, while a channel
  opened later is acked.  So on a nack the link stops writing
  (``rechannel``), lets the broker settle what is in flight (bounded by
  ``connect_timeout``), closes the channel and, after a back-off
  (``reconnect_min`` doubling to ``reconnect_max``, with jitter), opens a
  fresh one on the same connection.  The nacked items go back to the front
  of ``pending``, in order, with their message ids; the fresh channel first
  publishes only the oldest (a trial) and, once the broker acks it, the
  rest.  Async items are given up only when they outgrow ``backlog_age``
  (``nacked``, counted as ``dropped_expired``); the worker stops reading at
  ``backlog_size``.  A sync item is retried while its caller waits, and
  answered ``nacked`` when the next try would come too late.
* ``sweep(now)`` (called by the worker every tick) answers sync items whose
  caller is about to give up, with what is known: ``failed`` when never
  published, ``nacked`` when every publish of it was nacked, ``timeout``
  (outcome unknown: it may still arrive) when published and not confirmed.
  It also notices a silent broker when heartbeats are on.
* ``done(item, status, reason)`` is the worker's callback; it is called
  exactly once per item, except for the items an ack confirms, which go to
  ``confirmed(items)`` in one call per ack when the worker gives that
  callback (the usual outcome, counted in bulk).
"""

from __future__ import annotations

import collections
import enum
import logging
import os
import random
import re
import time
from bisect import bisect_right
from operator import itemgetter

import pika
from pika import exceptions, spec

from opsevent import Status
from workers.base.tally import Tally
from workers.rabbitmq import tls
from workers.rabbitmq.amqp import Publisher
from workers.rabbitmq.failback import PrimaryProbe
from workers.rabbitmq.histogram import Histogram
from workers.rabbitmq.pika_private import connect_failure, direct_confirms, drop, guard_transport_setup, send

log = logging.getLogger(__name__)



class LinkState(enum.Enum):
    """Where a link is; its value is what the stats file and the metrics show."""

    IDLE = "idle"  # no connection: none needed yet, or waiting to reconnect
    CONNECTING = "connecting"  # a connection or a fresh channel is opening
    READY = "ready"  # publishing
    SWITCHING = "switching"  # failing back: no new writes, waiting for confirms, then close
    RECHANNEL = "rechannel"  # nacked: no new writes, waiting for confirms, then a fresh channel
    CLOSING = "closing"  # the worker is stopping
    CLOSED = "closed"


# Module names for the states: compared with ``is`` per publish, without a class attribute look-up.
IDLE, CONNECTING, READY, SWITCHING, RECHANNEL, CLOSING, CLOSED = LinkState
# A connection is open in these (workers/control/health.py judges the stats file's values by them).
CONNECTED_STATES = (READY, SWITCHING, RECHANNEL)
_NO_EXCHANGE = re.compile(r"no exchange '(.*)' in vhost")
_TAG = itemgetter(0)


class Item:
    """One job's publish to one socket."""

    __slots__ = ("job", "index", "exchange", "routing_key", "body", "properties", "counts", "raised_at",
                 "deadline", "returned", "resolved", "sent", "nacks")

    def __init__(self, job, index, exchange, routing_key, body, properties, counts, raised_at, deadline):
        self.job = job
        self.index = index
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.properties = properties  # marshalled basic.properties (workers.rabbitmq.amqp.MessageProperties)
        self.counts = counts  # the subscription's counters: {what: n}
        self.raised_at = raised_at  # monotonic time of the raise, in the front-end
        self.deadline = deadline  # monotonic time a sync caller stops waiting; None for async
        self.returned = None  # basic.return reply text, when the broker returned it
        self.resolved = False
        self.sent = 0  # times written to a channel
        self.nacks = 0  # times the broker nacked it


class BrokerLink:
    def __init__(self, key, label, settings, ioloop, done, confirmed=None):
        # key = (host, port, user, password, vhost, tls, failover): secret-bearing, never logged.
        self.key = key
        self.label = label
        self.endpoints = (tuple(key[:2]),) + tuple(key[6])  # the primary first
        self.settings = settings
        self.ioloop = ioloop
        self.done = done
        # Items an ack confirms, each already marked resolved: one call per ack, not one per item.
        self.confirmed = confirmed or self._confirmed_one_by_one
        self.state = IDLE
        self.blocked = ""  # connection.blocked reason while the broker refuses publishes
        self.pending: collections.deque[Item] = collections.deque()
        self.inflight: collections.OrderedDict[int, Item] = collections.OrderedDict()
        self.last_error = ""
        self.sync_waiting = 0  # unresolved items whose caller waits: the sweep looks only then
        self.stats = collections.Counter()
        self.confirm_latency = Histogram()  # seconds from a publish's flush to its ack or nack
        # (last delivery tag, monotonic time) of each flush with publishes not all settled: timing
        # a confirm costs one look-up per flush it covers, and a publish costs nothing.
        self._flushed: collections.deque[tuple[int, float]] = collections.deque()
        self._conn = None
        self._channel = None
        self._publisher = None
        self._tag = 0
        self._out: list[bytes] = []
        self._backoff = settings.reconnect_min
        self._next_try = 0.0
        self._retry_timer = None
        self._last_rx = (0, 0.0)  # (bytes received, when that count last changed)
        # The "primary": the first host, or with spread_hosts one chosen at random, so that
        # many workers spread over a cluster's nodes.
        self._home = random.randrange(len(self.endpoints)) if settings.spread_hosts else 0
        self._index = self._home  # the endpoint connected to, or tried next
        self._ready_on = None  # the endpoint of the last working connection
        self._round = []  # "host:port: why" of each failed host since the last working connection
        self._probe = PrimaryProbe(ioloop, settings.failback_interval, lambda: self._parameters(self._home),
                                   self._off_primary, self._on_primary_back, label)
        self._switch_deadline = 0.0
        self._new_connection = False  # the next channel to open is a new connection's first
        self._working = False  # the connection opened and its first channel took publishes
        self._nacked: dict[int, Item] = {}  # delivery tag -> item nacked on this channel, to publish again
        self._nack_backoff = settings.reconnect_min
        self._channel_timer = None  # the fresh channel's opening, after a back-off
        self._channel_deadline = 0.0  # when a nacking channel is closed, settled or not
        self._trial = None  # delivery tag of a fresh channel's one trial publish, while unsettled
        self._trial_due = False  # the next write is a fresh channel's trial
        self._nack_tally = Tally(log, f"{label}: publishes nacked by the broker, to publish again on a fresh channel")

    # ---- items -------------------------------------------------------------

    def submit(self, item: Item) -> None:
        if item.deadline is not None:
            self.sync_waiting += 1
        if self.state is READY and not self.blocked and self._trial is None:
            self._write(item)
            return
        if (item.deadline is not None and self.state is IDLE and self.last_error
                and self._next_try > item.deadline):
            # Backing off past this caller's deadline: say why now, not at the deadline.
            self._resolve(item, Status.FAILED, self.last_error)
            return
        self.pending.append(item)
        if self.state is IDLE and self._retry_timer is None:
            self._schedule_connect(max(0.0, self._next_try - time.monotonic()))

    def _write(self, item: Item) -> None:
        try:
            self._publisher.add(self._out, item.exchange, item.routing_key, item.body, item.properties)
        except ValueError as exc:  # raised before anything was added
            self._resolve(item, Status.FAILED, str(exc))
            return
        self._tag += 1
        self.inflight[self._tag] = item
        item.sent += 1
        self.stats["published"] += 1
        item.counts["published"] += 1
        if self._trial_due:
            # A fresh channel after nacks: this one alone, until the broker acks it.
            self._trial_due, self._trial = False, self._tag

    def flush(self) -> None:
        """Hand everything written since the last flush to the socket, as one buffer."""
        if self._out:
            data = b"".join(self._out)
            self._out = []
            self._flushed.append((self._tag, time.monotonic()))
            send(self._conn, data)  # now, not on pika's next writable event (pika_private.py says why)

    def _resolve(self, item: Item, status: Status, reason: str = "") -> None:
        if not item.resolved:
            item.resolved = True
            if item.deadline is not None:
                self.sync_waiting -= 1
            self.stats[status._value_] += 1  # the value, not the enum's slow .value property
            self.done(item, status, reason)

    @property
    def idle(self) -> bool:
        return not self.pending and not self.inflight and not self._nacked

    def snapshot(self) -> dict:
        """Plain counters and state, for the stats file."""
        waiting = len(self.pending) + len(self._nacked)  # nacked ones wait for the next channel
        return {"state": self.state.value, "endpoint": _hostport(*self.endpoints[self._index]),
                "blocked": bool(self.blocked), "pending": waiting, "inflight": len(self.inflight),
                "backlog": waiting + len(self.inflight),
                "reconnects": max(0, self.stats["connects"] - 1),
                "last_error": self.last_error, "failovers": 0, "failbacks": 0, **self.stats,
                "confirm_latency": self.confirm_latency.snapshot()}

    # ---- connection ----------------------------------------------------------

    def _schedule_connect(self, delay: float) -> None:
        self._retry_timer = self.ioloop.call_later(delay, self._connect)

    def _connect(self) -> None:
        self._retry_timer = None
        if self.state is not IDLE:
            return
        self.state = CONNECTING
        try:
            params = self._parameters(self._index)
        except tls.TLSSetupError as exc:
            self._lost(f"cannot connect to {self._where()}: {exc}", connect_failed=True, detail=str(exc))
            return
        self._conn = pika.SelectConnection(
            params, on_open_callback=self._on_open, on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed, custom_ioloop=self.ioloop)
        guard_transport_setup(self._conn)  # a reset right after the connect is a failed connect, not a crash
        self._conn.add_on_connection_blocked_callback(self._on_blocked)
        self._conn.add_on_connection_unblocked_callback(self._on_unblocked)

    def _parameters(self, index: int) -> pika.ConnectionParameters:
        """pika's parameters for endpoint *index*; raises ``tls.TLSSetupError``."""
        host, port = self.endpoints[index]
        _unused_host, _unused_port, user, password, vhost, use_tls = self.key[:6]
        s = self.settings
        # A fresh context per attempt: built post-fork, and a fixed CA file is read again.
        ssl_options = pika.SSLOptions(tls.client_context(s), server_hostname=host) if use_tls else None
        return pika.ConnectionParameters(
            host=host, port=port, virtual_host=vhost, ssl_options=ssl_options,
            credentials=pika.PlainCredentials(user, password),
            heartbeat=s.heartbeat, connection_attempts=1, retry_delay=0,
            socket_timeout=s.connect_timeout, stack_timeout=s.connect_timeout,
            blocked_connection_timeout=None,
            client_properties={"connection_name": f"opsevent rabbitmq-worker pid {os.getpid()}"})

    def _where(self) -> str:
        """The broker being connected to: its label, and which host when it has several."""
        if len(self.endpoints) == 1:
            return self.label
        return f"{self.label} host {self._index + 1} ({_hostport(*self.endpoints[self._index])})"

    def _on_open(self, conn) -> None:
        self._last_rx = (conn.bytes_received, time.monotonic())
        self._new_connection = True
        conn.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm_frame, callback=self._on_confirm_ok)
        direct_confirms(channel, self._on_confirm)  # the same frames, from the bytes read (pika_private.py)

    def _on_confirm_ok(self, _unused_frame) -> None:
        self._publisher = Publisher(self._channel.channel_number,
                                    self._conn.params.frame_max)
        self._tag = 0
        self._flushed.clear()  # delivery tags start again on a new channel
        self.state = READY
        if not self._new_connection:  # a fresh channel on a working connection
            self.stats["channels_reopened"] += 1
            self._drain_pending()
            return
        self._new_connection = False
        self._working = True
        self.stats["connects"] += 1
        self._backoff = self.settings.reconnect_min
        self._round = []
        if self.last_error:
            log.info("%s: connected again", self.label)
            self.last_error = ""
        self._note_endpoint()
        self._drain_pending()

    def _drain_pending(self) -> None:
        if self.blocked:
            return
        pending = self.pending
        while pending and self._trial is None:
            item = pending.popleft()
            if not item.resolved:
                self._write(item)
        self.flush()

    def _on_open_error(self, _unused_conn, error) -> None:
        if isinstance(error, (exceptions.ProbableAuthenticationError, exceptions.ProbableAccessDeniedError)):
            user, vhost = self.key[2], self.key[4]
            detail = f"access refused for user '{user}' (vhost '{vhost}')"
            reason = (f"access refused for user '{user}' at {_hostport(*self.endpoints[self._index])} "
                      f"(vhost '{vhost}')")
        else:
            detail = _describe(error, self.settings.tls_ca_file, self.settings.tls_cert_file is not None)
            reason = f"cannot connect to {self._where()}: {detail}"
        self._lost(reason, connect_failed=True, detail=detail)

    def _on_closed(self, _unused_conn, error) -> None:
        if self.state is SWITCHING:
            self._switch_to_primary()
            return
        if self.state is CLOSING:
            self.state = CLOSED
            for item in self._nacked.values():
                self._resolve(item, Status.NACKED, f"{self._nacked_reason(item)}; not retried at shutdown")
            for item in list(self.inflight.values()) + list(self.pending):
                self._resolve(item, Status.FAILED, f"{self.label}: connection closed at shutdown")
            return
        self.stats["connection_lost"] += 1
        self._lost(f"connection to {self.label} lost: {_describe(error)}", connect_failed=False)

    def _lost(self, reason: str, connect_failed: bool, detail: str = "") -> None:
        """Requeue what was in flight, move to the next host; after a whole round fail sync callers, back off."""
        was_ready = self._working
        self._forget_connection()
        round_over, reason = self._next_endpoint(reason, detail, was_ready)
        self.last_error = reason
        if connect_failed and round_over:
            for item in [i for i in self.pending if i.deadline is not None]:
                self._resolve(item, Status.FAILED, reason)
            self.pending = collections.deque(i for i in self.pending if not i.resolved)
        # At once after losing a working connection (a broker restart) and
        # to the next host of a round; after a whole round of failed hosts,
        # capped exponential backoff with jitter.
        delay = self._backoff * random.uniform(0.5, 1.0) if round_over else 0.0
        if round_over:
            self._backoff = min(self._backoff * 2, self.settings.reconnect_max)
        self._next_try = time.monotonic() + delay
        then = "" if len(self.endpoints) == 1 else f", to {_hostport(*self.endpoints[self._index])}"
        log.warning("%s; %d events waiting; next attempt in %.2f s%s", reason, len(self.pending), delay, then)
        if self.pending and self.state is IDLE:
            self._schedule_connect(delay)

    def _next_endpoint(self, reason: str, detail: str, was_ready: bool) -> tuple[bool, str]:
        """Step to the next host; whether every host has now failed in a row, and the reason to give."""
        if not was_ready:
            self._round.append(f"{_hostport(*self.endpoints[self._index])}: {detail or reason}")
        self._index = (self._index + 1) % len(self.endpoints)
        if len(self._round) < len(self.endpoints):
            return False, reason
        failed, self._round = self._round, []
        if len(failed) == 1:
            return True, reason
        return True, f"cannot connect to any host of {self.label}: {'; '.join(failed)}"

    # ---- failover and failback -------------------------------------------------

    def _note_endpoint(self) -> None:
        """Count and log a move to another host; while off the primary, probe it (unless fail-back is off)."""
        previous, self._ready_on = self._ready_on, self._index
        if len(self.endpoints) == 1:
            return
        where = _hostport(*self.endpoints[self._index])
        failback = self.settings.failback
        if previous == self._index or (previous is None and self._index == self._home):
            pass  # the same host again, or the primary at first
        elif self._index == self._home and failback:
            self.stats["failbacks"] += 1
            log.info("%s: back on the primary host (%s)", self.label, where)
        else:
            self.stats["failovers"] += 1
            then = (f"trying the primary again every {self.settings.failback_interval:g} s" if failback
                    else "staying while it works (failback is off)")
            log.warning("%s: failed over to host %d (%s); %s", self.label, self._index + 1, where, then)
        if self._index != self._home and failback:
            self._probe.start()

    def _off_primary(self) -> bool:
        return self._index != self._home and self._working

    def _on_primary_back(self) -> None:
        if self.state is not READY:
            self._probe.start()  # busy with a nacking channel: ask again later
            return
        # Stop writing here; the sweep closes once the broker has confirmed
        # what is in flight, so the primary gets no duplicates.
        self.flush()
        self.state = SWITCHING
        self._switch_deadline = time.monotonic() + self.settings.connect_timeout

    def _switch_to_primary(self) -> None:
        self._forget_connection()  # requeues nothing unless the confirms took longer than connect_timeout
        self._index = self._home
        self._round = []
        self._schedule_connect(0.0)

    def _forget_connection(self) -> None:
        """The connection is gone: no channel, nothing written; what it had not settled waits in pending."""
        self.state = IDLE
        self._working = False
        self.blocked = ""
        self._conn = self._channel = self._publisher = None
        self._out = []
        self._flushed.clear()
        self._trial, self._trial_due = None, False
        if self._channel_timer is not None:
            self.ioloop.remove_timeout(self._channel_timer)
            self._channel_timer = None
        self._requeue_inflight()

    def _requeue_inflight(self) -> None:
        """What the channel did not settle, and what it nacked, back to the front of pending, in order."""
        unconfirmed = {tag: item for tag, item in self.inflight.items() if not item.resolved}
        self.inflight.clear()
        self.stats["republished"] += len(unconfirmed)
        nacked, self._nacked = self._nacked, {}
        retried = {tag: item for tag, item in nacked.items() if not item.resolved}
        self.stats["nack_retries"] += len(retried)
        unconfirmed.update(retried)
        for item in unconfirmed.values():
            item.returned = None  # a new publish may well be routed
        self.pending.extendleft(unconfirmed[tag] for tag in sorted(unconfirmed, reverse=True))

    # ---- broker callbacks ------------------------------------------------------

    def _on_confirm_frame(self, frame) -> None:
        """pika's confirm callback, for what direct_confirms does not route: nothing while it works."""
        method = frame.method
        self._on_confirm(isinstance(method, spec.Basic.Ack), method.delivery_tag, method.multiple)

    def _on_confirm(self, ack: bool, tag: int, multiple: bool) -> None:
        inflight = self.inflight
        if multiple:
            # Confirms cover every tag up to this one: take them off the front (in tag order).
            if not inflight:
                settled = ()
            elif tag >= next(reversed(inflight)):  # all of them: the usual case while the broker keeps up
                settled = list(inflight.items())
                inflight.clear()
            else:
                settled = []
                for entry in inflight.items():
                    if entry[0] > tag:
                        break
                    settled.append(entry)
                for entry in settled:
                    del inflight[entry[0]]
        else:
            item = inflight.pop(tag, None)
            settled = () if item is None else ((tag, item),)
        if settled:
            self._time_confirms(settled)
        if not ack:
            self._on_nack(settled)
        else:
            self._settle_acked(settled)
            if self._trial is not None and settled:
                # The fresh channel's trial went through: the broker takes publishes again.
                self._trial, self._nack_backoff = None, self.settings.reconnect_min
                if self.state is READY:
                    self._drain_pending()
        if self.state is RECHANNEL and not self.inflight:
            self._finish_rechannel(time.monotonic())

    def _settle_acked(self, settled) -> None:
        """The broker took these: confirmed, or unroutable if it returned them first.

        ``_resolve(item, CONFIRMED)`` for a whole ack at once (the same flag, sync count and
        stats, then one ``confirmed`` call instead of one ``done`` per item): keep the two alike."""
        confirmed, syncs = [], 0
        for _tag, item in settled:
            if item.resolved:
                continue
            if item.returned is not None:
                self._resolve(item, Status.UNROUTABLE, item.returned)
                continue
            item.resolved = True
            if item.deadline is not None:
                syncs += 1
            confirmed.append(item)
        if confirmed:
            self.sync_waiting -= syncs
            self.stats["confirmed"] += len(confirmed)
            self.confirmed(confirmed)

    def _confirmed_one_by_one(self, items) -> None:
        for item in items:
            self.done(item, Status.CONFIRMED, "")

    def _time_confirms(self, settled) -> None:
        """Count the confirm latency of *settled* ((tag, item), by tag): one observation per flush."""
        now = time.monotonic()
        flushed, first, last = self._flushed, 0, len(settled)
        for flush_tag, flushed_at in flushed:
            if settled[first][0] > flush_tag:
                continue  # an older flush still waiting for a confirm that came out of order
            # Usually the rest all went out in this flush: no search then.
            end = last if settled[-1][0] <= flush_tag else bisect_right(settled, flush_tag, first, last, key=_TAG)
            self.confirm_latency.observe(now - flushed_at, end - first)
            first = end
            if first == last:
                break
        # Forget the flushes whose every publish is settled (inflight is in tag order).
        oldest = next(iter(self.inflight), None)
        while flushed and (oldest is None or flushed[0][0] < oldest):
            flushed.popleft()

    def _on_nack(self, settled) -> None:
        """The broker did not take these: keep them for a fresh channel, and stop writing to this one."""
        if not settled:
            return
        self._trial = None
        if self.state is CLOSING:
            for _tag, item in settled:
                item.nacks += 1
                self._resolve(item, Status.NACKED, self._nacked_reason(item))
            return
        retry_at = time.monotonic() + self._nack_backoff
        for tag, item in settled:
            item.nacks += 1
            if item.deadline is not None and item.deadline <= retry_at:
                # Its caller gives up before a fresh channel could take it: say so now.
                self._resolve(item, Status.NACKED, self._nacked_reason(item))
            elif not item.resolved:
                self._nacked[tag] = item
        self._nack_tally.add(f"{len(settled)} in one nack; a fresh channel in about {self._nack_backoff:.2f} s",
                             len(settled))
        if self.state is READY:
            self.flush()  # what this channel was given goes out; the broker settles it too
            self.state = RECHANNEL
            self._channel_deadline = time.monotonic() + self.settings.connect_timeout

    def _nacked_reason(self, item: Item) -> str:
        return f"{self.label}: {_nacks(item)}"

    def _finish_rechannel(self, now: float) -> None:
        """Close the nacking channel once what it was given is settled, or the wait is over."""
        # No close-ok from a stuck broker: the connection is dropped (all is requeued; the next host is tried).
        self._close_when_settled(self._channel, self._channel_deadline, now, "no close-ok for a nacking channel")

    def _close_when_settled(self, closable, deadline: float, now: float, no_close_ok: str) -> None:
        """Close *closable* (a channel or the connection) once nothing is in flight or *deadline*
        has passed; if its close-ok has not come a connect_timeout later, drop the connection."""
        if self.inflight and now < deadline:
            return
        if closable.is_open:
            closable.close()
        elif now >= deadline + self.settings.connect_timeout and not closable.is_closed:
            drop(self._conn, exceptions.StreamLostError(no_close_ok))

    def _reopen_channel_later(self) -> None:
        """The nacking channel is closed: requeue its items, open a fresh channel after a back-off."""
        self._channel = self._publisher = None
        self._out = []
        self._requeue_inflight()
        delay = self._nack_backoff * random.uniform(0.5, 1.0)
        self._nack_backoff = min(self._nack_backoff * 2, self.settings.reconnect_max)
        self._trial_due = True
        self.state = CONNECTING
        self._channel_timer = self.ioloop.call_later(delay, self._open_channel)

    def _open_channel(self) -> None:
        self._channel_timer = None
        if self.state is CONNECTING and self._conn is not None and self._conn.is_open:
            self._conn.channel(on_open_callback=self._on_channel_open)

    def _on_return(self, _unused_channel, method, _unused_props, body) -> None:
        # basic.return carries no delivery tag; it comes before the ack of the
        # same message, so mark the oldest matching unacked publish.
        for item in self.inflight.values():
            if (item.returned is None and item.routing_key == method.routing_key
                    and item.exchange == method.exchange and item.body == body):
                item.returned = (f"unroutable: no queue bound to exchange '{method.exchange}' with routing "
                                 f"key '{method.routing_key}' on {self.label} ({method.reply_text})")
                return

    def _on_channel_closed(self, channel, error) -> None:
        if self._conn is None or not self._conn.is_open or channel is not self._channel:
            return  # the connection is going: _on_closed requeues what was in flight
        if self.state is RECHANNEL:
            self._reopen_channel_later()
            return
        if self.state is not READY:
            return
        reason = f"{self.label}: channel closed by the broker: {_describe(error)}"
        log.warning("%s", reason)
        match = _NO_EXCHANGE.search(str(error))
        for item in list(self.inflight.values()):
            if match is None or item.exchange == match.group(1):
                self._resolve(item, Status.FAILED, reason)
        self._requeue_inflight()
        self.state = CONNECTING
        self._channel = self._publisher = None
        self._out = []
        self._conn.channel(on_open_callback=self._on_channel_open)

    def _on_blocked(self, _unused_conn, frame) -> None:
        self.blocked = f"broker blocked: {self.label} sent connection.blocked ({frame.method.reason})"
        log.warning("%s", self.blocked)

    def _on_unblocked(self, _unused_conn, _unused_frame) -> None:
        log.info("%s: connection.unblocked; publishing %d waiting events", self.label, len(self.pending))
        self.blocked = ""
        if self.state is READY:
            self._drain_pending()

    # ---- time ----------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Answer sync items whose caller is about to give up; drop stale ones; notice a silent broker."""
        if self.sync_waiting:
            self._expire_sync(now)
        if self.pending:
            self._expire_backlog(now)
        if self.settings.heartbeat:
            self._notice_silence(now, self.settings.heartbeat)
        if self.state is SWITCHING:
            self._finish_switch(now)
        elif self.state is RECHANNEL:
            self._finish_rechannel(now)
        self._nack_tally.tick(now)

    def _finish_switch(self, now: float) -> None:
        """Close the failover host's connection once its publishes are confirmed, or the wait is over."""
        # No close-ok from a silent broker: the connection is dropped (what is in flight is requeued).
        self._close_when_settled(self._conn, self._switch_deadline, now,
                                 "no close-ok while switching to the primary")

    def _expire_sync(self, now: float) -> None:
        for items in (self.pending, self._nacked.values(), self.inflight.values()):
            for item in [i for i in items if i.deadline is not None and i.deadline <= now]:
                self._resolve(item, *self._sync_outcome(item))
        if self.pending and any(i.resolved for i in self.pending):
            self.pending = collections.deque(i for i in self.pending if not i.resolved)

    def _sync_outcome(self, item: Item) -> tuple[Status, str]:
        """What a sync caller about to give up is told: only ``timeout`` says the event may still arrive."""
        why = self._why_stuck()
        if item.sent > item.nacks:  # a publish the broker neither acked nor nacked
            return Status.TIMEOUT, (f"outcome unknown: published, but not confirmed before the caller's "
                                    f"timeout ({why}); it may still arrive")
        if item.nacks:
            return Status.NACKED, f"{self._nacked_reason(item)}; not taken before the caller's timeout ({why})"
        return Status.FAILED, f"not published before the caller's timeout: {why}"

    def _expire_backlog(self, now: float) -> None:
        # Stale events flushed much later are worse than none (OpenSIPS #1155).
        oldest = now - self.settings.backlog_age
        pending = self.pending
        while pending and pending[0].raised_at < oldest:
            item = pending.popleft()
            if not item.resolved:
                self.stats["dropped_expired"] += 1
                item.counts["dropped_expired"] += 1
                reason = (f"{self.label}: dropped, waited {now - item.raised_at:.1f} s for the broker "
                          f"(backlog_age {self.settings.backlog_age:g} s)")
                if item.nacks:
                    self._resolve(item, Status.NACKED, f"{reason}; {_nacks(item)}")
                else:
                    self._resolve(item, Status.FAILED, reason)

    def _notice_silence(self, now: float, hb: int) -> None:
        if self.state in (READY, CONNECTING, RECHANNEL) and self._conn is not None and self._conn.is_open:
            received, since = self._last_rx
            if self._conn.bytes_received != received:
                self._last_rx = (self._conn.bytes_received, now)
            elif now - since > 2 * hb:
                # The broker sends a heartbeat every hb/2 s; 2*hb of silence is a dead peer.
                drop(self._conn, exceptions.AMQPHeartbeatTimeout(
                    f"no traffic from the broker for {now - since:.1f} s (heartbeat {hb} s)"))

    def _why_stuck(self) -> str:
        if self.blocked:
            return self.blocked
        if self.state is SWITCHING:
            return f"{self.label}: switching back to the primary host"
        if self.state is RECHANNEL or self._trial is not None or self._trial_due:
            return f"{self.label}: the broker nacks publishes; trying a fresh channel (back-off)"
        if self.state is READY:
            return f"{self.label}: no confirm from the broker before the sync timeout"
        return self.last_error or f"{self.label}: not connected yet"

    def close(self) -> None:
        """Start a clean close; the caller keeps the I/O loop running until ``closed``."""
        for timer in (self._retry_timer, self._channel_timer):
            if timer is not None:
                self.ioloop.remove_timeout(timer)
        self._retry_timer = self._channel_timer = None
        self._probe.stop()
        self._nack_tally.close()
        if self._conn is not None and self._conn.is_open:
            self.state = CLOSING
            self._conn.close()
        elif self._conn is not None and not self._conn.is_closed:
            # Still opening: pika refuses close() then; abort the attempt.
            self.state = CLOSING
            drop(self._conn, exceptions.StreamLostError("shutdown while connecting"))
        else:
            self.state = CLOSING
            self._on_closed(None, None)

    def abort(self, why: str) -> None:
        """Drop the connection without a close handshake (a frozen broker)."""
        if self._conn is not None and self.state is CLOSING and not self._conn.is_closed:
            drop(self._conn, exceptions.StreamLostError(why))

    @property
    def closed(self) -> bool:
        return self.state is CLOSED


def _nacks(item: Item) -> str:
    times = "once" if item.nacks == 1 else f"{item.nacks} times"
    return f"the broker nacked the message {times} (did not take it)"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe(error, ca_file: str | None = None, client_cert: bool = True) -> str:
    """A short, password-free account of a pika error."""
    phase, error = connect_failure(error)
    if phase is not None:
        return tls.explain(error, ca_file, client_cert) or f"{phase} failed: {getattr(error, 'strerror', None) or error}"
    explained = tls.explain(error, ca_file, client_cert)
    if explained:
        return explained
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"
