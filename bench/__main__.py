"""python -m bench (./run bench): opsevent's benchmark, baselines included.

Starts a private RabbitMQ broker (unless --socket or --broker-port names one),
runs every scenario and baseline with a live progress display, prints the
summary tables, what limits each figure and the target verdicts, and writes
charts (and JSON with --json).

Exit code 0 whatever the verdicts (it is a measurement tool); 1 on an
internal error or when an event is missing in any run.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path

import opsevent
from bench import charts, plan, report, target, verdicts
from bench.harness import Env
from bench.measure import body_of, machine_info, params_for_size, proc_status
from workers.rabbitmq import pika_private

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny counts, every scenario and baseline once, a few seconds (CI); "
                        "writes no charts unless --charts is given")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")
    p.add_argument("--charts", metavar="DIR",
                   help=f"where to write throughput.png and sync_latency.png (default: {RESULTS_DIR})")
    p.add_argument("--no-charts", action="store_true", help="write no charts")
    p.add_argument("--markdown", metavar="FILE", help="also write the summary tables as Markdown")
    p.add_argument("--events", type=int, metavar="N",
                   help=f"events per throughput run (default {plan.FULL_EVENTS:,}; smoke {plan.SMOKE_EVENTS:,})")
    p.add_argument("--rss-events", type=int, metavar="N",
                   help="events of the front-end memory run (default 1,000,000; smoke 5,000)")
    p.add_argument("--only", metavar="GROUPS",
                   help=f"comma-separated groups to run: {', '.join(plan.GROUPS)}")
    p.add_argument("--socket", metavar="SOCKET", default=os.environ.get(target.ENV_SOCKET),
                   help="run against this broker instead of a private one, named as a subscriber "
                        "socket: 'rabbitmq:USER:PASSWORD@HOST:PORT/[vhost=VHOST;?]PREFIX' (PREFIX: of "
                        "the bench's own queue names, default opsevent-bench); also taken from "
                        f"${target.ENV_SOCKET}, which keeps the password out of ps")
    p.add_argument("--broker-host", default="127.0.0.1", help="host of --broker-port's broker")
    p.add_argument("--broker-port", type=int,
                   help="run against the broker at this port (guest/guest): "
                        "--socket rabbitmq:guest:guest@HOST:PORT/opsevent-bench")
    args = p.parse_args(argv)
    try:
        args.given = target.from_args(args.socket, args.broker_host, args.broker_port)
    except (ValueError, opsevent.OpseventError) as exc:
        p.error(str(exc))
    if args.only:
        args.only = {g.strip() for g in args.only.split(",") if g.strip()}
        unknown = args.only - set(plan.GROUPS)
        if unknown:
            p.error(f"unknown group(s) {', '.join(sorted(unknown))}; the groups are {', '.join(plan.GROUPS)}")
    for name in ("events", "rss_events"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.ERROR)
    steps = plan.build(args.smoke, args.events, args.only, args.rss_events)
    from bench.ui import Display, plain_console
    from rich.console import Console
    console = Console()
    summary_console = console if console.is_terminal else plain_console()

    started = time.monotonic()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    results: dict[str, dict] = {}
    errors: list[str] = []
    broker_info = {}
    with _broker(args, console) as broker:
        broker_info = _broker_info(broker, args)
        env = Env(broker, multiprocessing.get_context("fork"))
        machine = machine_info()
        machine["rabbitmq"] = broker_info.get("version") or machine["rabbitmq"]
        machine["bench_main_rss_kib_at_start"] = proc_status().get("VmRSS")
        with Display(len(steps), console) as display:
            display.note(f"opsevent bench{' (smoke)' if args.smoke else ''}: {len(steps)} runs on "
                         f"RabbitMQ {machine['rabbitmq']} at {broker_info['label']}; "
                         f"{machine['cpus']} cores, load average {machine['load_average_at_start'][0]:.2f}")
            if args.given is not None:
                display.note(target.notice(broker))
            _run_steps(steps, env, display, results, errors)

    duration = time.monotonic() - started
    tabs = report.tables(results)
    judged = verdicts.targets(results)
    summary_console.print()
    report.print_summary(summary_console, tabs, judged, verdicts.SUPERSEDED)
    missing = sum(r.get("missing") or 0 for r in results.values())
    summary_console.print(f"\n{len(results)} runs in {duration:.0f} s; {missing} events missing; "
                          f"{len(errors)} errors" + (" (smoke run: figures not meaningful)" if args.smoke else ""))
    for key, r in results.items():
        if r.get("unavailable"):
            summary_console.print(f"NOT MEASURED {key}: {r['unavailable']}", style="bold red", highlight=False)

    doc = {
        "bench": "opsevent", "schema": 1, "date": date, "smoke": args.smoke,
        "command": "python -m bench " + " ".join(target.redact_argv(sys.argv[1:] if argv is None else argv)),
        "machine": machine, "broker": broker_info,
        "body": {"standard_bytes": len(body_of(params_for_size(None))),
                 "standard": body_of(params_for_size(None)).decode()},
        "duration_s": round(duration, 1),
        "scenarios": {k: v for k, v in results.items() if v.get("kind") == "ours"},
        "baselines": {k: v for k, v in results.items() if v.get("kind") == "baseline"},
        "targets": judged, "missing_total": missing, "errors": errors,
    }
    if args.markdown:
        Path(args.markdown).write_text(report.markdown(tabs, judged, verdicts.SUPERSEDED))
    charts_dir = args.charts or (None if args.smoke or args.no_charts else RESULTS_DIR)
    if charts_dir and not args.no_charts:
        subtitle = (f"{machine['cpus']} cores ({machine['cpu_model'] or 'cpu'}), RabbitMQ {machine['rabbitmq']}, "
                    f"Python {machine['python']}, pika {machine['pika']}, body {doc['body']['standard_bytes']} B, "
                    f"{date[:10]}")
        try:
            doc["charts"] = charts.charts(charts_dir, results, subtitle)
            if doc["charts"]:
                summary_console.print("charts: " + ", ".join(_rel(p) for p in doc["charts"]))
        except Exception:
            errors.append(f"charts: {traceback.format_exc()}")
    if args.json:
        report.write_json(args.json, doc)
        summary_console.print(f"JSON: {_rel(args.json)}")
    for e in errors:
        print(f"bench: error: {e}", file=sys.stderr)
    return 1 if errors or missing else 0


def _run_steps(steps, env, display, results: dict, errors: list) -> None:
    """Run each step in turn into ``results`` (by id); stop at Ctrl-C."""
    for step in steps:
        display.begin(step)
        t0 = time.monotonic()
        try:
            result = step.run(env, display.progress, results)
        except KeyboardInterrupt:
            errors.append(f"{step.id}: interrupted")
            display.end(step, "interrupted", ok=False)
            return
        except Exception:
            tb = traceback.format_exc()
            errors.append(f"{step.id}: {tb}")
            result = {"kind": step.kind, "errors": [tb]}
        result.update(id=step.id, group=step.group, label=step.label,
                      wall_s=round(time.monotonic() - t0, 2), loadavg_1m=os.getloadavg()[0])
        results[step.id] = result
        bad = bool(result.get("errors") or result.get("missing") or result.get("unavailable"))
        display.end(step, report.one_line(result), ok=not bad)
        errors.extend(f"{step.id}: {e}" for e in result.get("errors", []))


def _broker(args, console):
    if args.given is not None:
        return args.given
    from workers.demo.broker import PrivateBroker
    console.print("starting a private RabbitMQ broker on 127.0.0.1 ...", highlight=False)
    return PrivateBroker()


def _broker_info(broker, args) -> dict:
    """Where the runs went, with no password: the JSON and docs/benchmark.md show it."""
    given = args.given is not None
    info = {"label": broker.label if given else f"{broker.user}@{broker.host}:{broker.port}/%2F",
            "host": broker.host, "port": broker.port, "private": not given,
            "queue": "classic, transient, no consumer"}
    if getattr(broker, "startup_seconds", None):
        info["startup_s"] = round(broker.startup_seconds, 1)
    try:
        conn = broker.connect()
        try:
            props = pika_private.server_properties(conn)
            info["version"] = _text(props.get("version"))
            info["product"] = _text(props.get("product"))
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - only descriptive
        info["version_error"] = str(exc)
    return info


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _rel(path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
