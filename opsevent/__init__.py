"""opsevent: the event interface for publishing events to RabbitMQ.

This package is pure: it parses and prints subscriber sockets, encodes and
decodes event bodies, keeps the subscription table and turns a raise into one
status per subscriber. It has no networking code and starts no processes; a
Transport (the ``workers`` package) carries the bodies to RabbitMQ. It
imports only the standard library, and a test keeps it that way.

Modules: ``sockets`` (the guide's socket syntax, and the extended one:
OpenSIPS 3.2 parameters, vhost, tls, per-socket format, failover hosts),
``payload`` (event bodies in the guide's line format, through ``jsonrpc``
as the JSON-RPC notification of OpenSIPS 3.1.1+, or through ``opensips`` as
the bytes OpenSIPS 1.8-3.0 send; the format is chosen per EventInterface and
per socket), ``subscriptions``, ``messageid`` (the id every message of a
raise carries), ``interface``, ``tlsdomain`` (the files a
``tls_domain=NAME`` socket uses) and ``consumer`` (reading events on the
consuming side, whoever published them).
"""

from .errors import (
    ConfigError,
    EventSyntaxError,
    EventTooLargeError,
    EventValueTypeError,
    OpseventError,
    PayloadDecodeError,
    SocketSyntaxError,
)
from .interface import (
    Delivery,
    EventInterface,
    RaiseResult,
    Settings,
    Status,
    Transport,
)
from .consumer import ReceivedEvent, read_event
from .payload import MAX_BODY_SIZE, decode_event, encode_event
from .sockets import RabbitMQSocket, parse_socket
from .subscriptions import Subscription, Subscriptions
from .tlsdomain import TLSDomain

__all__ = [
    "OpseventError",
    "SocketSyntaxError",
    "EventSyntaxError",
    "EventValueTypeError",
    "EventTooLargeError",
    "PayloadDecodeError",
    "ConfigError",
    "RabbitMQSocket",
    "parse_socket",
    "encode_event",
    "decode_event",
    "read_event",
    "ReceivedEvent",
    "MAX_BODY_SIZE",
    "Subscription",
    "Subscriptions",
    "Status",
    "Delivery",
    "RaiseResult",
    "Settings",
    "TLSDomain",
    "Transport",
    "EventInterface",
]
