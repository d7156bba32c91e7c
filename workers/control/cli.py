"""``opsevent``: manage a running Supervisor (or ``workers.serve``) through its control socket.

Usage::

    opsevent [--socket PATH] [--json] COMMAND ...
    opsevent subscribe EVENT SOCKET [EXPIRE]    # EXPIRE in seconds; none: never expires
    opsevent unsubscribe EVENT SOCKET
    opsevent events
    opsevent subscribers [EVENT]
    opsevent raise EVENT [PARAM ...]
    opsevent stats
    opsevent health [--worker-only]
    opsevent listen SOCKET [--queue NAME] [--count N] [--timeout S] [--json] [TLS FILES]

``--socket`` defaults to ``$OPSEVENT_CONTROL``. ``listen`` needs no service:
it is a consumer of the broker the SOCKET names, and prints each event
decoded with its properties (``workers/control/listen.py``); for a TLS socket give
``--tls-ca-file`` (and ``--tls-cert-file``/``--tls-key-file``). A raise ``PARAM`` is
``name=value`` (a string), ``name:=123`` (an integer), or an unnamed value:
``value`` (a string without ``=``), ``=value`` (any string), ``:=123`` (an
integer). Values are strings unless ``:=`` says otherwise, so ``zip=01234``
stays ``"01234"``.

Output: aligned tables for people, ``--json`` for scripts (the service's
``result`` as it came; for ``listen``, one JSON object per event). Exit
codes: 0 done, 1 the operation failed (the service refused it, no service
at that path, a raise not delivered to every subscriber: the statuses are
shown, or a listen that could not connect or got fewer than ``--count``
events in time, a ``health`` that found the service unhealthy: the reasons
are shown), 2 a usage error. Sockets are always shown with the
password masked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from opsevent import OpseventError, Settings, parse_socket
from opsevent.subscriptions import check_expire
from workers.control import listen
from workers.control.client import ControlError, request
from workers.rabbitmq.histogram import quantile_bound

ENV_SOCKET = "OPSEVENT_CONTROL"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_INT = re.compile(r"[+-]?[0-9]+")


class UsageError(ValueError):
    """A bad command line; argparse's exit code 2."""


def parse_param(text: str) -> tuple[str | None, str | int]:
    """One raise PARAM as ``(name, value)``; see the module docstring for the forms."""
    if "=" not in text:
        return None, text
    name, value = text.split("=", 1)
    if name.endswith(":"):
        name = name[:-1]
        if not _INT.fullmatch(value):
            raise UsageError(f"{text!r}: ':=' takes an integer, not {value!r} (use '=' for a string)")
        value = int(value)
    return name or None, value


def parse_expire(text: str) -> int | float:
    try:
        value = int(text) if _INT.fullmatch(text) else float(text)
        check_expire(value)
    except (ValueError, OpseventError):
        raise UsageError(f"EXPIRE must be a number of seconds > 0, not {text!r} "
                         f"(leave it out for a subscription that never expires)") from None
    return value


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"a number of seconds > 0, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given before or after the command, the option is kept.
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"the service's control socket (default: ${ENV_SOCKET})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the result as JSON")
    common.add_argument("--timeout", type=_seconds_arg, metavar="SECONDS", default=argparse.SUPPRESS,
                        help="how long to wait for the service's reply (default 10)")
    parser = argparse.ArgumentParser(
        prog="opsevent", parents=[common],
        description="Manage the event subscriptions of a running opsevent service.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub = commands.add_parser("subscribe", parents=[common], help="subscribe SOCKET to EVENT")
    sub.add_argument("event", metavar="EVENT")
    sub.add_argument("socket_text", metavar="SOCKET", help="rabbitmq:[user[:password]@]host[:port]/...")
    sub.add_argument("expire", metavar="EXPIRE", nargs="?", help="seconds (> 0); none: never expires")
    sub = commands.add_parser("unsubscribe", parents=[common], help="unsubscribe SOCKET from EVENT")
    sub.add_argument("event", metavar="EVENT")
    sub.add_argument("socket_text", metavar="SOCKET")
    commands.add_parser("events", parents=[common], help="the events that have subscribers")
    sub = commands.add_parser("subscribers", parents=[common], help="the subscribers (of EVENT)")
    sub.add_argument("event", metavar="EVENT", nargs="?")
    sub = commands.add_parser("raise", parents=[common], help="raise EVENT with PARAMs")
    sub.add_argument("event", metavar="EVENT")
    sub.add_argument("params", metavar="PARAM", nargs="*",
                     help="name=string, name:=integer, or an unnamed value (value, =value, :=integer)")
    commands.add_parser("stats", parents=[common], help="the RabbitMQ worker's counters")
    sub = commands.add_parser("health", parents=[common],
                              help="exit 0 when the RabbitMQ worker runs and every broker is connected")
    sub.add_argument("--worker-only", action="store_true",
                     help="judge the worker alone, whatever the brokers (a liveness probe)")
    _add_listen(commands)
    return parser


def _count_arg(text: str) -> int:
    if not (_INT.fullmatch(text) and int(text) > 0):
        raise argparse.ArgumentTypeError(f"a number of events > 0, not {text!r}")
    return int(text)


def _add_listen(commands) -> None:
    sub = commands.add_parser("listen", help="consume and print the events SOCKET receives (no service needed)")
    sub.add_argument("socket_text", metavar="SOCKET", help="rabbitmq:[user[:password]@]host[:port]/...")
    sub.add_argument("--queue", metavar="NAME", help="consume this queue (default: the socket's routing key "
                                                     "on the default exchange, else a temporary queue bound "
                                                     "to the socket's exchange and key)")
    sub.add_argument("--count", type=_count_arg, metavar="N", help="stop after N events")
    sub.add_argument("--timeout", type=_seconds_arg, metavar="SECONDS", default=argparse.SUPPRESS,
                     help="stop after SECONDS (default: run until interrupted)")
    sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                     help="one JSON object per event")
    for name in ("ca", "cert", "key"):
        sub.add_argument(f"--tls-{name}-file", metavar="PATH", help=f"TLS {name} file (PEM), for a TLS socket")
    sub.add_argument("--no-verify-hostname", action="store_true",
                     help="TLS: do not check that the broker's certificate names the host")


def listen_main(args, parser) -> int:
    """``opsevent listen``: parse the socket and TLS files, then consume."""
    try:
        sock = parse_socket(args.socket_text)
        if sock.tls and args.tls_ca_file is None:
            raise UsageError(f"{sock} uses TLS: give --tls-ca-file (the CA that signed the broker's certificate)")
        # For a tls_domain=NAME socket too: the files given stand for the domain's.
        tls_settings = Settings(tls_ca_file=args.tls_ca_file, tls_cert_file=args.tls_cert_file,
                                tls_key_file=args.tls_key_file, tls_verify_hostname=not args.no_verify_hostname)
    except (OpseventError, UsageError) as exc:
        parser.print_usage(sys.stderr)
        print(f"opsevent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return listen.run(sock, json_lines=getattr(args, "json", False), queue=args.queue, count=args.count,
                      timeout=getattr(args, "timeout", None), tls_settings=tls_settings)


def build_request(args) -> dict:
    """The control request for parsed *args*; UsageError for what argparse cannot check."""
    if args.command == "subscribe":
        message = {"cmd": "subscribe", "event": args.event, "socket": args.socket_text}
        if args.expire is not None:
            message["expire"] = parse_expire(args.expire)
        return message
    if args.command == "unsubscribe":
        return {"cmd": "unsubscribe", "event": args.event, "socket": args.socket_text}
    if args.command == "subscribers" and args.event is not None:
        return {"cmd": "subscribers", "event": args.event}
    if args.command == "raise":
        return {"cmd": "raise", "event": args.event, "params": [list(parse_param(p)) for p in args.params]}
    if args.command == "health" and args.worker_only:
        return {"cmd": "health", "worker_only": True}
    return {"cmd": args.command}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "listen":
        return listen_main(args, parser)
    path = getattr(args, "socket", None) or os.environ.get(ENV_SOCKET)
    try:
        if not path:
            raise UsageError(f"no control socket: give --socket PATH or set {ENV_SOCKET}")
        message = build_request(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"opsevent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = request(path, message, timeout=getattr(args, "timeout", 10.0))
    except ControlError as exc:
        print(f"opsevent: {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(RENDER[args.command](result))
    failed = ((args.command == "raise" and not result["delivered"])
              or (args.command == "health" and not result["healthy"]))
    return EXIT_FAILED if failed else EXIT_OK


# ---- human-readable output ------------------------------------------------------------

def table(headers: list[str], rows: list[list]) -> str:
    """Aligned columns: numbers right, text left; None as '-'."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [_numeric([row[i] for row in rows]) for i in range(len(headers))]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(headers)] + [line(row) for row in cells])


def _numeric(column: list) -> bool:
    present = [v for v in column if v is not None]
    return bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def _seconds(value) -> str:
    return "never" if value is None else f"{value:g} s"


def render_subscribe(result: dict) -> str:
    verb = "subscribed" if result["new"] else "re-subscribed"
    until = "never expires" if result["expire"] is None else f"expires in {result['expire']:g} s"
    return f"{verb} {result['socket']} to {result['event']} ({until})"


def render_unsubscribe(result: dict) -> str:
    return f"unsubscribed {result['socket']} from {result['event']}"


def render_events(result: list) -> str:
    if not result:
        return "no event has subscribers"
    return table(["EVENT", "SUBSCRIBERS"], [[e["event"], e["subscribers"]] for e in result])


def render_subscribers(result: list) -> str:
    if not result:
        return "no subscribers"
    return table(["EVENT", "SOCKET", "EXPIRE", "TTL"],
                 [[s["event"], s["socket"], _seconds(s["expire"]),
                   "-" if s["ttl"] is None else f"{s['ttl']:g} s"] for s in result])


def render_raise(result: dict) -> str:
    deliveries = result["deliveries"]
    ok = sum(d["status"] in ("queued", "confirmed") for d in deliveries)
    head = (f"{result['event']} raised: {ok} of {len(deliveries)} subscribers ok"
            + ("" if result["delivered"] else "; NOT delivered to every subscriber"))
    rows = [[d["socket"], d["status"], d["reason"] or "-"] for d in deliveries]
    return head + "\n" + table(["SOCKET", "STATUS", "REASON"], rows)


# Column order for the stats tables; keys not listed follow, sorted, and last_error ends a row.
BROKER_ORDER = ["state", "blocked", "pending", "inflight", "published", "confirmed", "nacked",
                "unroutable", "failed", "connects", "connection_lost", "republished",
                "dropped_expired"]
SUBSCRIPTION_ORDER = ["raised", "queued", "published", "confirmed", "nacked", "unroutable", "failed",
                      "timeout", "dropped_queue_full", "dropped_expired", "too_large", "dropped_at_exit"]
TOTALS_ORDER = ["jobs", "outstanding", "queue_depth", "held", "queued", "confirmed", "nacked", "unroutable",
                "failed", "timeout", "replies_lost", "lost_with_dead_workers", "lost_with_dead_frontends"]
_NOT_TOTALS = {"pid", "time", "brokers", "subscriptions", "sync_wait"}
_HISTOGRAMS = {"confirm_latency"}  # per broker: shown in the latency table, not as a column


def _columns(rows: list[dict], preferred: list[str], skip: set[str]) -> list[str]:
    present = {k for row in rows for k in row} - skip
    rest = sorted(present - set(preferred) - {"last_error"})
    tail = ["last_error"] if "last_error" in present else []
    return [k for k in preferred if k in present] + rest + tail


def render_stats(stats: dict) -> str:
    if not stats:
        return "no statistics yet: the RabbitMQ worker writes them every second"
    parts = []
    if "pid" in stats:
        age = f", {time.time() - stats['time']:.1f} s old" if "time" in stats else ""
        parts.append(f"RabbitMQ worker pid {stats['pid']}{age}")
    totals = {k: v for k, v in stats.items() if k not in _NOT_TOTALS}
    keys = _columns([totals], TOTALS_ORDER, set())
    parts.append("totals\n" + table(["COUNTER", "VALUE"], [[k, totals[k]] for k in keys]))
    brokers = stats.get("brokers") or {}
    if brokers:
        columns = _columns(list(brokers.values()), BROKER_ORDER, _HISTOGRAMS)
        rows = [[label] + [b.get(c) for c in columns] for label, b in brokers.items()]
        parts.append("brokers\n" + table(["BROKER"] + [c.upper() for c in columns], rows))
    subscriptions = stats.get("subscriptions") or []
    if subscriptions:
        columns = _columns(subscriptions, SUBSCRIPTION_ORDER, {"event", "socket"})
        rows = [[s.get("event"), s.get("socket")] + [s.get(c) for c in columns] for s in subscriptions]
        parts.append("subscriptions\n" + table(["EVENT", "SOCKET"] + [c.upper() for c in columns], rows))
    latency = render_latency(stats)
    if latency:
        parts.append(latency)
    return "\n\n".join(parts)


def render_latency(stats: dict) -> str:
    """The worker's histograms: how many, the mean, and the buckets holding the median and the 99th."""
    series = [(f"confirm {label}", b.get("confirm_latency")) for label, b in (stats.get("brokers") or {}).items()]
    series.append(("sync wait", stats.get("sync_wait")))
    rows = []
    for name, snapshot in series:
        count = sum(snapshot["counts"]) if snapshot else 0
        if count:
            rows.append([name, count, f"{snapshot['sum'] / count * 1000:.2f}",
                         _bound_ms(quantile_bound(snapshot, 0.5)), _bound_ms(quantile_bound(snapshot, 0.99))])
    if not rows:
        return ""
    return "latency (ms)\n" + table(["WHAT", "COUNT", "MEAN", "P50", "P99"], rows)


def _bound_ms(bound: float) -> str:
    return "> max" if bound == float("inf") else f"<= {bound * 1000:g}"


def render_health(result: dict) -> str:
    brokers = ", ".join(f"{label} {state}" for label, state in result.get("brokers", {}).items()) or "none yet"
    age = "" if result.get("age") is None else f", counters {result['age']:g} s old"
    worker = f"RabbitMQ worker pid {result['pid']}{age}" if result.get("pid") else "no RabbitMQ worker counters"
    if result["healthy"]:
        return f"healthy: {worker}; brokers: {brokers}"
    return "\n".join([f"unhealthy: {worker}; brokers: {brokers}"] + [f"  {why}" for why in result["reasons"]])


RENDER = {"subscribe": render_subscribe, "unsubscribe": render_unsubscribe, "events": render_events,
          "subscribers": render_subscribers, "raise": render_raise, "stats": render_stats,
          "health": render_health}


if __name__ == "__main__":
    sys.exit(main())
