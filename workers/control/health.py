"""Is the service healthy?  Judged from the RabbitMQ worker's stats, for probes.

Healthy means: the worker writes its counters (at most ``STALE_AFTER``
seconds old) and every broker it knows has a connection open and is not
blocking publishes.  Brokers are connected lazily, at the first event for
them, so before any event there is none to judge.  ``worker_only`` leaves
the brokers out: a liveness probe that must not restart the application
while a broker is away.  ``Service.health()`` adds what only the serving
process knows (is the worker process alive); ``opsevent health`` and the
control socket's ``health`` command answer with it.
"""

from __future__ import annotations

import time

from workers.rabbitmq import link

STALE_AFTER = 5.0  # seconds: the worker writes every second; older counters mean stuck or gone
# The stats file's state names in which a link has a connection open.
CONNECTED_STATES = tuple(state.value for state in link.CONNECTED_STATES)


def judge(stats: dict, now: float | None = None, *, worker_only: bool = False) -> dict:
    """``{"healthy", "reasons", "pid", "age", "brokers": {label: state}}`` for a stats snapshot."""
    now = time.time() if now is None else now
    if not stats:
        return _verdict(["the RabbitMQ worker has written no statistics yet (it does every second)"], {})
    reasons = []
    age = max(0.0, now - stats.get("time", 0.0))
    if age > STALE_AFTER:
        reasons.append(f"the RabbitMQ worker's statistics are {age:.1f} s old: it is stuck or not running")
    brokers = stats.get("brokers") or {}
    if not worker_only:
        reasons += [why for label, broker in sorted(brokers.items()) if (why := _broker_trouble(label, broker))]
    return _verdict(reasons, stats, age)


def _broker_trouble(label: str, broker: dict) -> str:
    state = broker.get("state", "unknown")
    if state not in CONNECTED_STATES:
        error = broker.get("last_error")
        return f"broker {label} is not connected ({state}{': ' + error if error else ''})"
    if broker.get("blocked"):
        return f"broker {label} blocks publishes (connection.blocked)"
    return ""


def _verdict(reasons: list[str], stats: dict, age: float | None = None) -> dict:
    return {"healthy": not reasons, "reasons": reasons, "pid": stats.get("pid"),
            "age": None if age is None else round(age, 1),
            "brokers": {label: b.get("state") for label, b in sorted((stats.get("brokers") or {}).items())}}
