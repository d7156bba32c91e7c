"""One AMQP connection to one broker, owned by the RabbitMQ worker.

Theory of operation:

* A ``BrokerLink`` exists per distinct broker identity (host, port, user,
  password, vhost, tls, failover hosts) and carries every subscription on
  that broker over one pika ``SelectConnection`` and one channel in confirm
  mode, driven by the worker's single I/O loop.  It connects lazily, on the
  first item.  With ``tls`` the connection is verified against the
  ``tls_ca_file`` setting (``workers/tls.py``); never unverified.
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
  closes, and connects to the primary; the pending items follow.
* ``sweep(now)`` (called by the worker every tick) fails sync items whose
  caller is about to give up, with the reason they are stuck, and notices a
  silent broker when heartbeats are on.
* ``done(item, status, reason)`` is the worker's callback; it is called
  exactly once per item.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import re
import time

import pika
from pika import exceptions, spec
from pika.adapters.utils.connection_workflow import (AMQPConnectionWorkflowFailed, AMQPConnectorPhaseErrorBase,
                                                     AMQPConnectorSocketConnectError)
from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport as _PLAINTEXT

from opsevent import Status
from workers import tls
from workers.amqp import Publisher
from workers.failback import PrimaryProbe

log = logging.getLogger(__name__)

IDLE, CONNECTING, READY, CLOSING, CLOSED = "idle", "connecting", "ready", "closing", "closed"
SWITCHING = "switching"  # failing back: no new writes, waiting for confirms, then close
_NO_EXCHANGE = re.compile(r"no exchange '(.*)' in vhost")
class Item:
    """One job's publish to one socket."""

    __slots__ = ("job", "index", "exchange", "routing_key", "body", "properties", "counts", "raised_at",
                 "deadline", "returned", "resolved")

    def __init__(self, job, index, exchange, routing_key, body, properties, counts, raised_at, deadline):
        self.job = job
        self.index = index
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.properties = properties  # marshalled basic.properties (workers.amqp.MessageProperties)
        self.counts = counts  # the subscription's counters: {what: n}
        self.raised_at = raised_at  # monotonic time of the raise, in the front-end
        self.deadline = deadline  # monotonic time a sync caller stops waiting; None for async
        self.returned = None  # basic.return reply text, when the broker returned it
        self.resolved = False


class BrokerLink:
    def __init__(self, key, label, settings, ioloop, done):
        # key = (host, port, user, password, vhost, tls, failover): secret-bearing, never logged.
        self.key = key
        self.label = label
        self.endpoints = (tuple(key[:2]),) + tuple(key[6])  # the primary first
        self.settings = settings
        self.ioloop = ioloop
        self.done = done
        self.state = IDLE
        self.blocked = ""  # connection.blocked reason while the broker refuses publishes
        self.pending: collections.deque[Item] = collections.deque()
        self.inflight: collections.OrderedDict[int, Item] = collections.OrderedDict()
        self.last_error = ""
        self.sync_waiting = 0  # unresolved items whose caller waits: the sweep looks only then
        self.stats = collections.Counter()
        self._conn = None
        self._channel = None
        self._publisher = None
        self._tag = 0
        self._out: list[bytes] = []
        self._backoff = settings.reconnect_min
        self._next_try = 0.0
        self._retry_timer = None
        self._last_rx = (0, 0.0)  # (bytes received, when that count last changed)
        self._index = 0  # the endpoint connected to, or tried next
        self._ready_on = None  # the endpoint of the last working connection
        self._round = []  # "host:port: why" of each failed host since the last working connection
        self._probe = PrimaryProbe(ioloop, settings.failback_interval, lambda: self._parameters(0),
                                   self._off_primary, self._on_primary_back, label)
        self._switch_deadline = 0.0

    # ---- items -------------------------------------------------------------

    def submit(self, item: Item) -> None:
        if item.deadline is not None:
            self.sync_waiting += 1
        if self.state is READY and not self.blocked:
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
            frames = self._publisher.frames(item.exchange, item.routing_key, item.body, item.properties)
        except ValueError as exc:
            self._resolve(item, Status.FAILED, str(exc))
            return
        self._tag += 1
        self.inflight[self._tag] = item
        self._out += frames
        self.stats["published"] += 1
        item.counts["published"] += 1

    def flush(self) -> None:
        """Hand everything written since the last flush to the socket, as one buffer."""
        if self._out:
            data = b"".join(self._out)
            self._out = []
            self._send(data)

    def _send(self, data: bytes) -> None:
        # pika's transport only buffers a write and sends it on the next
        # writable event: an extra poller round (two watcher changes and a
        # poll) per batch, which was a third of a sync raise's cost in the
        # worker.  With nothing buffered ahead of it, send now; pika keeps
        # what the socket does not take, in order.  TLS goes through pika.
        transport = self._conn._transport
        if (type(transport) is _PLAINTEXT and not transport._tx_buffers
                and transport._state == _PLAINTEXT._STATE_ACTIVE):
            try:
                sent = transport._sock.send(data)
            except OSError:
                sent = 0  # EAGAIN, or a dead socket that pika's write path will find and report
            if sent == len(data):
                return
            data = data[sent:]
        self._conn._adapter_emit_data(data)

    def _resolve(self, item: Item, status: Status, reason: str = "") -> None:
        if not item.resolved:
            item.resolved = True
            if item.deadline is not None:
                self.sync_waiting -= 1
            self.stats[status.name.lower()] += 1
            self.done(item, status, reason)

    @property
    def idle(self) -> bool:
        return not self.pending and not self.inflight

    def snapshot(self) -> dict:
        """Plain counters and state, for the stats file."""
        return {"state": self.state, "endpoint": _hostport(*self.endpoints[self._index]),
                "blocked": bool(self.blocked), "pending": len(self.pending), "inflight": len(self.inflight),
                "backlog": len(self.pending) + len(self.inflight),
                "reconnects": max(0, self.stats["connects"] - 1),
                "last_error": self.last_error, "failovers": 0, "failbacks": 0, **self.stats}

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
        conn.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=self._on_confirm_ok)

    def _on_confirm_ok(self, _unused_frame) -> None:
        self._publisher = Publisher(self._channel.channel_number,
                                    self._conn.params.frame_max)
        self._tag = 0
        self.stats["connects"] += 1
        self.state = READY
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
        pending, self.pending = self.pending, collections.deque()
        for item in pending:
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
            for item in list(self.inflight.values()) + list(self.pending):
                self._resolve(item, Status.FAILED, f"{self.label}: connection closed at shutdown")
            return
        self.stats["connection_lost"] += 1
        self._lost(f"connection to {self.label} lost: {_describe(error)}", connect_failed=False)

    def _lost(self, reason: str, connect_failed: bool, detail: str = "") -> None:
        """Requeue what was in flight, move to the next host; after a whole round fail sync callers, back off."""
        was_ready = self.state is READY
        self.state = IDLE
        self.blocked = ""
        self._conn = self._channel = self._publisher = None
        self._out = []
        self._requeue_inflight()
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
        """Count and log a move to another host; while off the primary, probe it."""
        previous, self._ready_on = self._ready_on, self._index
        if len(self.endpoints) == 1:
            return
        where = _hostport(*self.endpoints[self._index])
        if self._index != 0:
            if previous != self._index:
                self.stats["failovers"] += 1
                log.warning("%s: failed over to host %d (%s); trying the primary again every %g s",
                            self.label, self._index + 1, where, self.settings.failback_interval)
            self._probe.start()
        elif previous not in (None, 0):
            self.stats["failbacks"] += 1
            log.info("%s: back on the primary host (%s)", self.label, where)

    def _off_primary(self) -> bool:
        return self.state is READY and self._index != 0

    def _on_primary_back(self) -> None:
        # Stop writing here; the sweep closes once the broker has confirmed
        # what is in flight, so the primary gets no duplicates.
        self.flush()
        self.state = SWITCHING
        self._switch_deadline = time.monotonic() + self.settings.connect_timeout

    def _switch_to_primary(self) -> None:
        self.state = IDLE
        self.blocked = ""
        self._conn = self._channel = self._publisher = None
        self._out = []
        self._requeue_inflight()  # empty unless the confirms took longer than connect_timeout
        self._index = 0
        self._round = []
        self._schedule_connect(0.0)

    def _requeue_inflight(self) -> None:
        unconfirmed = [item for item in self.inflight.values() if not item.resolved]
        self.inflight.clear()
        self.stats["republished"] += len(unconfirmed)
        self.pending.extendleft(reversed(unconfirmed))

    # ---- broker callbacks ------------------------------------------------------

    def _on_confirm(self, frame) -> None:
        method = frame.method
        inflight = self.inflight
        if method.multiple:
            # Acks come in order and cover every tag up to this one: take them off the front.
            last, items = method.delivery_tag, []
            while inflight and next(iter(inflight)) <= last:
                items.append(inflight.popitem(last=False)[1])
        else:
            item = inflight.pop(method.delivery_tag, None)
            items = () if item is None else (item,)
        if not isinstance(method, spec.Basic.Ack):
            for item in items:
                self._resolve(item, Status.NACKED, f"{self.label}: the broker nacked the message")
            return
        for item in items:
            if item.returned is not None:
                self._resolve(item, Status.UNROUTABLE, item.returned)
            else:
                self._resolve(item, Status.CONFIRMED)

    def _on_return(self, _unused_channel, method, _unused_props, body) -> None:
        # basic.return carries no delivery tag; it comes before the ack of the
        # same message, so mark the oldest matching unacked publish.
        for item in self.inflight.values():
            if (item.returned is None and item.routing_key == method.routing_key
                    and item.exchange == method.exchange and item.body == body):
                item.returned = (f"unroutable: no queue bound to exchange '{method.exchange}' with routing "
                                 f"key '{method.routing_key}' on {self.label} ({method.reply_text})")
                return

    def _on_channel_closed(self, _unused_channel, error) -> None:
        if self.state is not READY or not self._conn.is_open:
            return  # the connection is going: _on_closed requeues what was in flight
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
        """Fail sync items whose caller is about to give up; notice a silent broker."""
        if self.sync_waiting:
            self._expire_sync(now)
        if self.pending:
            self._expire_backlog(now)
        if self.settings.heartbeat:
            self._notice_silence(now, self.settings.heartbeat)
        if self.state is SWITCHING:
            self._finish_switch(now)

    def _finish_switch(self, now: float) -> None:
        """Close the failover host's connection once its publishes are confirmed, or the wait is over."""
        if self.inflight and now < self._switch_deadline:
            return
        if self._conn.is_open:
            self._conn.close()
        elif now >= self._switch_deadline + self.settings.connect_timeout and not self._conn.is_closed:
            # No close-ok from a silent broker: drop the connection (what is in flight is requeued).
            self._conn._terminate_stream(exceptions.StreamLostError("no close-ok while switching to the primary"))

    def _expire_sync(self, now: float) -> None:
        for items in (self.pending, self.inflight.values()):
            for item in [i for i in items if i.deadline is not None and i.deadline <= now]:
                self._resolve(item, Status.TIMEOUT, self._why_stuck())
        if self.pending and any(i.resolved for i in self.pending):
            self.pending = collections.deque(i for i in self.pending if not i.resolved)

    def _expire_backlog(self, now: float) -> None:
        # Stale events flushed much later are worse than none (OpenSIPS #1155).
        oldest = now - self.settings.backlog_age
        pending = self.pending
        while pending and pending[0].raised_at < oldest:
            item = pending.popleft()
            if not item.resolved:
                self.stats["dropped_expired"] += 1
                item.counts["dropped_expired"] += 1
                self._resolve(item, Status.FAILED, f"{self.label}: dropped, waited {now - item.raised_at:.1f} s "
                                                   f"for the broker (backlog_age {self.settings.backlog_age:g} s)")

    def _notice_silence(self, now: float, hb: int) -> None:
        if self.state in (READY, CONNECTING) and self._conn is not None and self._conn.is_open:
            received, since = self._last_rx
            if self._conn.bytes_received != received:
                self._last_rx = (self._conn.bytes_received, now)
            elif now - since > 2 * hb:
                # The broker sends a heartbeat every hb/2 s; 2*hb of silence is a dead peer.
                self._conn._terminate_stream(exceptions.AMQPHeartbeatTimeout(
                    f"no traffic from the broker for {now - since:.1f} s (heartbeat {hb} s)"))

    def _why_stuck(self) -> str:
        if self.blocked:
            return self.blocked
        if self.state is SWITCHING:
            return f"{self.label}: switching back to the primary host"
        if self.state is READY:
            return f"{self.label}: no confirm from the broker before the sync timeout"
        return self.last_error or f"{self.label}: not connected yet"

    def close(self) -> None:
        """Start a clean close; the caller keeps the I/O loop running until ``closed``."""
        if self._retry_timer is not None:
            self.ioloop.remove_timeout(self._retry_timer)
            self._retry_timer = None
        self._probe.stop()
        if self._conn is not None and self._conn.is_open:
            self.state = CLOSING
            self._conn.close()
        elif self._conn is not None and not self._conn.is_closed:
            # Still opening: pika refuses close() then; abort the attempt.
            self.state = CLOSING
            self._conn._terminate_stream(exceptions.StreamLostError("shutdown while connecting"))
        else:
            self.state = CLOSING
            self._on_closed(None, None)

    def abort(self, why: str) -> None:
        """Drop the connection without a close handshake (a frozen broker)."""
        if self._conn is not None and self.state is CLOSING and not self._conn.is_closed:
            self._conn._terminate_stream(exceptions.StreamLostError(why))

    @property
    def closed(self) -> bool:
        return self.state is CLOSED


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe(error, ca_file: str | None = None, client_cert: bool = True) -> str:
    """A short, password-free account of a pika error."""
    # pika wraps a failed connection workflow in two layers; the last
    # attempt's own exception is what says what went wrong.
    # A TLS failure comes as the workflow error itself, unwrapped.
    while True:
        if isinstance(error, AMQPConnectionWorkflowFailed) and error.exceptions:
            error = error.exceptions[-1]
        elif (isinstance(error, exceptions.AMQPConnectionError) and error.args
              and isinstance(error.args[0], BaseException)):
            error = error.args[0]
        else:
            break
    if isinstance(error, AMQPConnectorPhaseErrorBase):
        phase = "TCP connect" if isinstance(error, AMQPConnectorSocketConnectError) else "set-up"
        inner = error.exception
        return tls.explain(inner, ca_file, client_cert) or f"{phase} failed: {getattr(inner, 'strerror', None) or inner}"
    explained = tls.explain(error, ca_file, client_cert)
    if explained:
        return explained
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"
