"""What the control socket's requests do: OpenSIPS's MI event commands, and stats.

Each request is a JSON object with ``cmd`` and that command's fields:

==============  =============================  ===========================================
cmd             fields                         result
==============  =============================  ===========================================
``subscribe``   event, socket, [expire]        ``{event, socket, new, expire}``
``unsubscribe`` event, socket                  ``{event, socket}``
``events``                                     ``[{event, subscribers}]``
``subscribers`` [event]                        ``[{event, socket, expire, ttl}]``
``raise``       event, [params]                ``{event, delivered, deliveries: [{socket, status, reason}]}``
``stats``                                      the RabbitMQ worker's counters (``Service.stats()``)
``health``      [worker_only]                  ``{healthy, reasons, pid, age, brokers}`` (``Service.health()``)
``ping``                                       ``{pid}``
==============  =============================  ===========================================

``expire`` is seconds (> 0); left out, the subscription never expires (the
MI's default of 3600 is not copied: OpenSIPS never expires a RabbitMQ
subscriber at all). ``ttl`` is the seconds left, null for never. ``params``
is a list of ``[name, value]`` pairs (name null for an unnamed value) or an
object of named values, as the MI's ``raise_event`` takes; values are
strings, integers or null. Sockets always come back with the password
masked. Raising an event nobody subscribed to is an error, as the MI's 480.
"""

from __future__ import annotations

import json
import logging
import os
import time

from opsevent import OpseventError, parse_socket
from opsevent.payload import check_event_name
from opsevent.subscriptions import check_expire
from workers.control.health import judge

log = logging.getLogger(__name__)


class CommandError(ValueError):
    """A request the commands refuse; the message says why."""


class Commands:
    """``Commands(evi, stats[, health])(line) -> reply``: *stats* returns the counters; *health*
    (``health(worker_only)``) the verdict, judged from the counters alone when not given."""

    def __init__(self, evi, stats, health=None):
        self.evi = evi
        self.stats = stats
        self.health = health or (lambda worker_only: judge(self.stats(), worker_only=worker_only))

    def __call__(self, line: bytes) -> dict:
        try:
            method, fields = self._parse(line)
            return {"ok": True, "result": method(**fields)}
        except (CommandError, OpseventError, TimeoutError) as exc:
            return {"ok": False, "error": str(exc)}

    def _parse(self, line: bytes):
        try:
            request = json.loads(line)
        except ValueError as exc:
            raise CommandError(f"the request is not JSON ({exc})") from None
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            raise CommandError('a request is a JSON object with a "cmd", like {"cmd": "events"}')
        name = request.pop("cmd")
        if name not in FIELDS:
            raise CommandError(f"unknown command {name!r}; the commands are {', '.join(FIELDS)}")
        required, optional = FIELDS[name]
        missing = [f for f in required if f not in request]
        unknown = sorted(request.keys() - set(required) - set(optional))
        if missing:
            raise CommandError(f"{name} needs {', '.join(map(repr, missing))}")
        if unknown:
            takes = ", ".join(required + optional) or "no fields"
            raise CommandError(f"{name} takes {takes}; not {', '.join(map(repr, unknown))}")
        return getattr(self, "do_" + name), request

    # ---- the commands -------------------------------------------------------------------

    def do_ping(self) -> dict:
        return {"pid": os.getpid()}

    def do_subscribe(self, event, socket, expire=None) -> dict:
        sock = parse_socket(socket)
        expire = check_expire(expire)
        new = self.evi.subscribe_event(event, sock, expire)
        log.info("control: %s %s to %s%s", "subscribed" if new else "re-subscribed", sock, event,
                 f" for {expire:g} s" if expire is not None else "")
        return {"event": event, "socket": str(sock), "new": new, "expire": expire}

    def do_unsubscribe(self, event, socket) -> dict:
        sock = parse_socket(socket)
        if not self.evi.unsubscribe_event(event, sock):
            raise CommandError(f"{sock} is not subscribed to {event}")
        log.info("control: unsubscribed %s from %s", sock, event)
        return {"event": event, "socket": str(sock)}

    def do_events(self) -> list:
        return [{"event": event, "subscribers": len(sockets)}
                for event, sockets in self.evi.subscriptions.items()]

    def do_subscribers(self, event=None) -> list:
        if event is not None:
            check_event_name(event)
        now = time.monotonic()
        return [{"event": s.event, "socket": str(s.socket), "expire": s.expire,
                 "ttl": None if s.expires_at is None else round(s.ttl(now), 1)}
                for s in self.evi.subscriptions.entries(event)]

    def do_raise(self, event, params=None) -> dict:
        check_event_name(event)
        pairs = _params(params)
        if not self.evi.subscribers(event):
            raise CommandError(f"{event} has no subscribers; nothing was raised")
        result = self.evi.raise_event(event, pairs)
        return {"event": event, "delivered": bool(result), "message_id": result.message_id,
                "deliveries": [{"socket": str(d.socket), "status": d.status.value, "reason": d.reason}
                               for d in result.deliveries]}

    def do_stats(self) -> dict:
        return self.stats()

    def do_health(self, worker_only=False) -> dict:
        if not isinstance(worker_only, bool):
            raise CommandError(f"worker_only is true or false, not {worker_only!r}")
        return self.health(worker_only)


# cmd -> (required fields, optional fields)
FIELDS = {
    "subscribe": (["event", "socket"], ["expire"]),
    "unsubscribe": (["event", "socket"], []),
    "events": ([], []),
    "subscribers": ([], ["event"]),
    "raise": (["event"], ["params"]),
    "stats": ([], []),
    "health": ([], ["worker_only"]),
    "ping": ([], []),
}


def _params(params) -> list:
    """The request's params as ``(name, value)`` pairs; the values are checked by encode_event."""
    if params is None:
        return []
    if isinstance(params, dict):
        return list(params.items())
    if not isinstance(params, list) or not all(
            isinstance(p, list) and len(p) == 2 for p in params):
        raise CommandError('params is a list of [name, value] pairs (name null for an unnamed '
                           'value) or an object of named values')
    return [(name, value) for name, value in params]
