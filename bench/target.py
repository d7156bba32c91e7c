"""The broker the bench runs against: a private one, or the user's own, named by a socket.

Load benchmarking a broker of one's own is one of our users' jobs, so the
bench takes the same socket text as ``subscribe_event``::

    --socket 'rabbitmq:USER:PASSWORD@HOST:PORT/[vhost=VHOST;?]PREFIX'

The routing key is the prefix of the queue names (``opsevent-bench`` when
the text ends at ``/``), so the user needs only configure and read rights on
``^opsevent-bench-.*``, and write rights on those queues and ``amq.default``
(everything is published through the default exchange).
On that broker the bench only declares its own transient classic queues,
``PREFIX-<run id>-<n>-<what>``, publishes into them, and deletes each after
its run; each also expires ``QUEUE_EXPIRES_MS`` after its last use, should
the bench die first.  The password never appears in what the bench prints or
writes (``broker_label`` has none, and the recorded command is redacted).
"""

from __future__ import annotations

import dataclasses
import ipaddress

from opsevent import RabbitMQSocket, parse_socket
from opsevent.sockets import redact
from workers.demo.broker import BrokerError, RunningBroker

from bench.measure import QUEUE_EXPIRES_MS

DEFAULT_PREFIX = "opsevent-bench"
ENV_SOCKET = "OPSEVENT_BENCH_SOCKET"  # keeps the password out of `ps` and the shell's history


class SocketBroker(RunningBroker):
    """A broker someone else runs, named by an opsevent socket: never started or stopped here."""

    private = False

    def __init__(self, sock: RabbitMQSocket):
        super().__init__(sock.host, sock.port, node="")
        self.user, self.password, self.vhost = sock.user, sock.password, sock.vhost
        self.prefix = sock.routing_key
        self.label = sock.broker_label
        self._sock = sock

    def __enter__(self) -> "SocketBroker":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __repr__(self) -> str:
        return f"<SocketBroker {self.label}>"

    def socket(self, routing_key: str) -> RabbitMQSocket:
        """A subscriber socket for queue ``routing_key``, parsed: as text it would need the password."""
        return dataclasses.replace(self._sock, routing_key=routing_key)

    def parameters(self, **overrides):
        return super().parameters(**{"virtual_host": self.vhost, **overrides})

    def beam_pid(self) -> int:
        """The broker's beam.smp when it listens on this machine's loopback (its CPU is then measured)."""
        if not _is_loopback(self.host):
            raise BrokerError(f"{self.label} is not on this machine: its CPU is not measured")
        return super().beam_pid()


def from_args(socket_text: str | None, host: str, port: int | None) -> SocketBroker | None:
    """The broker named by ``--socket`` or ``--broker-port`` (guest/guest), or None for a private one."""
    if socket_text and port:
        raise ValueError(f"give --socket (or ${ENV_SOCKET}) or --broker-port, not both")
    if port:
        shown = f"[{host}]" if ":" in host else host
        socket_text = f"rabbitmq:guest:guest@{shown}:{port}/{DEFAULT_PREFIX}"
    if not socket_text:
        return None
    if socket_text.endswith("/"):
        socket_text += DEFAULT_PREFIX
    sock = parse_socket(socket_text)  # its errors show the password as ***
    refused = [what for what, given in (
        ("tls", sock.tls), ("failover hosts", sock.failover), ("an exchange", sock.exchange),
        ("persistent", sock.persistent), ("format=", sock.format)) if given]
    if refused:
        raise ValueError(f"--socket {redact(socket_text)!r}: the bench takes no {', '.join(refused)}: it "
                         "publishes plain AMQP, transient, in the default body format, through the default "
                         "exchange into queues of its own, as its baselines do")
    return SocketBroker(sock)


def notice(broker: SocketBroker) -> str:
    """What the bench will do on a user's broker, said before it does it."""
    return (f"on the broker at {broker.label} (password not shown) the bench declares transient "
            f"classic queues named {broker.prefix}-<run id>-<n>-<what>, publishes into them, and "
            f"deletes each after its run (each also expires {QUEUE_EXPIRES_MS // 60_000} min after its "
            "last use, should the bench die first); it makes or changes no exchange, binding, "
            "policy, user, vhost or permission")


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with any socket's password shown as ``***`` (for the JSON and docs/benchmark.md)."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if eq and flag == "--socket":
            arg = f"{flag}={redact(value)}"
        elif arg.startswith("rabbitmq:"):
            arg = redact(arg)
        out.append(arg)
    return out


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
