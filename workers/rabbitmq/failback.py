"""Noticing that a failover list's primary broker is back.

A ``BrokerLink`` on a failover host starts a ``PrimaryProbe``: every
``interval`` seconds it opens an AMQP connection to the primary on the
worker's I/O loop and closes it again at once.  A TCP connect alone would
say yes to a broker still booting, so only a connection that opens (TLS and
login included) counts.  Once one does, ``on_back()`` is called and the
probe stops; the link decides what to do with the news.
"""

from __future__ import annotations

import logging

import pika
from pika import exceptions

from workers.rabbitmq.pika_private import drop
from workers.rabbitmq.tls import TLSSetupError

log = logging.getLogger(__name__)


class PrimaryProbe:
    def __init__(self, ioloop, interval: float, parameters, wanted, on_back, label: str):
        self.ioloop = ioloop
        self.interval = interval
        self.parameters = parameters  # () -> pika parameters for the primary; may raise
        self.wanted = wanted  # () -> bool: whether the link still wants to know
        self.on_back = on_back
        self.label = label
        self._timer = None
        self._conn = None

    def start(self) -> None:
        """Probe after ``interval`` (again, until stopped or the primary opens)."""
        if self._timer is None:
            self._timer = self.ioloop.call_later(self.interval, self._probe)

    def _probe(self) -> None:
        self._timer = None
        if not self.wanted():
            return
        if self._conn is not None:  # the last probe is still closing
            self.start()
            return
        try:
            params = self.parameters()
        except TLSSetupError as exc:  # the link's own connects report it
            log.debug("%s: cannot probe the primary: %s", self.label, exc)
            self.start()
            return
        self._conn = pika.SelectConnection(
            params, on_open_callback=self._on_open, on_open_error_callback=self._on_error,
            on_close_callback=self._on_closed, custom_ioloop=self.ioloop)

    def _on_open(self, conn) -> None:
        conn.close()
        if self.wanted():
            self.on_back()

    def _on_error(self, _unused_conn, error) -> None:
        self._conn = None
        log.debug("%s: the primary is still unreachable: %r", self.label, error)
        self.start()

    def _on_closed(self, _unused_conn, _unused_error) -> None:
        self._conn = None

    def stop(self) -> None:
        """No more probes; a probe connection under way is dropped."""
        if self._timer is not None:
            self.ioloop.remove_timeout(self._timer)
            self._timer = None
        conn = self._conn
        if conn is not None and not conn.is_closed and not conn.is_closing:
            if conn.is_open:
                conn.close()
            else:
                drop(conn, exceptions.StreamLostError("probe stopped"))
