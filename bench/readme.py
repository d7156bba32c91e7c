"""The benchmark page's generated section (``docs/benchmark.md``), rendered from a bench JSON file.

    python -m bench.readme bench/results/latest.json            # print it
    python -m bench.readme bench/results/latest.json --write    # into docs/benchmark.md

``--write [FILE]`` replaces only what lies between ``<!-- bench:start -->``
and ``<!-- bench:end -->`` of FILE (``docs/benchmark.md`` by default;
appending the two markers if the file has none).  Links are relative to
``docs/``, where the page is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import report, verdicts
from bench.limits import bound

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
PAGE = Path(__file__).resolve().parent.parent / "docs" / "benchmark.md"
COMMAND = "./run bench --json bench/results/latest.json"

INTRO = """\
```sh
./run bench --json bench/results/latest.json   # the full run, ~8 minutes on 2 cores
./run bench --smoke                            # every scenario once, tiny counts (CI runs it)
./run bench --only throughput,sync             # groups: throughput, sync, body, fanout, memory
OPSEVENT_BENCH_SOCKET='rabbitmq:USER:PASSWORD@HOST:PORT/vhost=V;?opsevent-bench' ./run bench
```

`./run bench` is `python -m bench`. It starts its own private RabbitMQ broker, shows
live progress, prints the tables below, what limits each figure and the verdict on
every target, writes `bench/results/throughput.png` and `bench/results/sync_latency.png`
(`--charts DIR` elsewhere) and, with `--json FILE`, every figure (with the
HdrHistograms, memory and CPU per process). The exit code is 0 whatever the verdicts,
1 on an internal error or if an event went missing.

**Your own broker.** `--socket SOCKET` (or `$OPSEVENT_BENCH_SOCKET`, which keeps the
password out of `ps`) runs everything against a broker named as a subscriber socket;
its routing key is the prefix of the queue names (`opsevent-bench` when the socket ends
at `/`), so a user with configure and read rights on `^opsevent-bench-.*` and write
rights on `^(opsevent-bench-.*|amq\\.default)$` (the default exchange) can run it.
There the bench declares only its own transient classic queues,
`PREFIX-<run id>-<n>-<what>`, deletes each after its run (each also expires 10 minutes
after its last use, should the bench die first), and says so before it starts; it
makes or changes no exchange, binding, policy, user, vhost or permission. The
password is shown as `***` in everything it prints or writes. Broker CPU is measured
only for a broker on this machine's loopback. `--broker-port N` is short for
`--socket rabbitmq:guest:guest@127.0.0.1:N/opsevent-bench`.

What it measures, always against baselines measured in the same run, on the same
broker, with the same ~95-byte `E_SIP_MESSAGE` body, into a transient classic queue
with no consumer:

- **async throughput**: P front-ends (a `workers.Supervisor`) raise as fast as they
  can; the clock runs from the start until the queue's message count reaches N
  ("in broker"), and `missing` is N minus the final count; a raise refused with
  `queue full` is counted, and the front-end raises that event again after 0.5 ms;
- **caller cost**: how long each `raise_event` blocked its caller (HdrHistogram);
- **sync mode**: P forked callers (`workers.serve`) raising in a loop, 64 threads of
  one process, and 256 asyncio tasks of one process awaiting `araise_event`; every
  success must be `confirmed`; and a fixed offered load on an absolute schedule, its
  latency measured from the scheduled time (no coordinated omission) and from the call;
- **body sizes** (100 B, 1 KiB, 16 KiB) and **fan-out** (1, 4, 16 subscribers per event);
- **memory**: the RabbitMQ worker's peak RSS (VmHWM) in every scenario, and a
  front-end's RSS before and after raising one million events (paced under what the
  worker sustains, queue-full counted as a failure); RSS includes the pages a forked
  process still shares with its parent (the bench's main process is ~33 MiB);
- **CPU** of every process over each run's window, what other processes on the
  machine used meanwhile (the bench shares its 2 cores with the broker and with
  anything else that runs), and from those, **what limits each figure**: the machine
  (its cores busy), one process at a core (the broker's one queue, the worker, a
  caller), or else waiting (in flight x time per raise).

Baselines: **B4** the C client OpenSIPS uses (rabbitmq-c, Debian's `librabbitmq-dev`,
`bench/b4/publisher.c`, built by the bench with gcc) with our guarantees: publisher
confirms streamed with at most 10,000 (or 8) unconfirmed, the mandatory flag (a
`basic.return` is a failure), the properties our worker gives every message
(content-type, `headers {"event": NAME}`, message-id, timestamp, app-id) and the same
body: the yardstick of issue #14's targets. **B1** one process publishing with pika
`BlockingConnection.basic_publish` in a loop; **B2** P processes, each with its own
`BlockingConnection`, publishing in the caller; **B3** one process with
`confirm_delivery()`, each publish waiting for its ack. B1-B3 have no mandatory flag
and only a content type; the targets that compared us with them are superseded.
"""


def render(doc: dict) -> str:
    results = {**doc.get("scenarios", {}), **doc.get("baselines", {})}
    m, broker = doc.get("machine", {}), doc.get("broker", {})
    where = "private broker on loopback" if broker.get("private", True) else f"at {broker.get('label')}"
    parts = [INTRO, "## Latest results\n"]
    parts.append(
        f"- machine: {m.get('cpus')} cores (`nproc`), {m.get('cpu_model')}, {m.get('memory_gib')} GiB, "
        f"{m.get('os')}, Linux {m.get('kernel')}\n"
        f"- software: RabbitMQ {m.get('rabbitmq')} ({where}), Python {m.get('python')}, "
        f"pika {m.get('pika')}, hdrhistogram {m.get('hdrhistogram')}\n"
        f"- date: {doc.get('date')}; the run took {doc.get('duration_s', 0):.0f} s\n"
        f"- command: `{COMMAND}` (recorded: `{doc.get('command')}`)\n"
        f"- load average when it started: {', '.join(f'{x:.2f}' for x in m.get('load_average_at_start', []))}; "
        f"the \"other processes\" column below is CPU that processes other than the bench's used "
        f"during each run (a shared machine): read ratios, not absolute figures\n"
        f"- every figure, with its histogram: [`bench/results/latest.json`](../bench/results/latest.json)\n")
    parts.append(report.markdown(report.tables(results), doc.get("targets", []), verdicts.SUPERSEDED))
    parts.append(limits(results, doc.get("targets", [])))
    parts.append("![Async events/s against the number of front-ends: opsevent, B4, B1 and B2]"
                 "(../bench/results/throughput.png)\n")
    parts.append("![Sync latency distribution: opsevent against B3](../bench/results/sync_latency.png)\n")
    return "\n".join(parts)


def limits(results: dict, judged: list[dict]) -> str:
    """What bounds the figures the targets judge, in words, from this run's own measurements."""
    lines = ["**What limits these figures** (the last column of the CPU table, from each run's own CPU "
             "measurements: `bench/limits.py`):\n"]
    pairs = ((verdicts.ASYNC, report.B4_ASYNC), (verdicts.SYNC, report.B4_SYNC))
    for ours, base in pairs:
        line = _broker_cost(results.get(ours), results.get(base), ours, base)
        if line:
            lines.append(line)
    for v in judged:
        r = results.get(v.get("run") or "")
        if v["verdict"] == "MISS" and r and v["run"] not in dict(pairs):
            lines.append(f"- missed: {v['target']}. `{v['run']}` was limited by {bound(r)}.")
    return "\n".join(lines) + "\n" if len(lines) > 1 else ""


def _broker_cost(ours: dict | None, b4: dict | None, ours_key: str, b4_key: str) -> str:
    """Ours against B4: figures, the broker's CPU per message for each, and what limited each."""
    def per(r, who):
        return ((r.get("cpu") or {}).get("us_per_event") or {}).get(who)

    if not ours or not b4 or b4.get("unavailable"):
        return ""
    side = (per(ours, "worker") or 0) + (per(ours, "frontend") or per(ours, "caller") or 0)
    return (f"- `{ours_key}` {report.n0(report.figure(ours))}/s against `{b4_key}` {report.n0(report.figure(b4))}/s: the broker "
            f"spent {per(ours, 'beam') or 0:.1f} µs per message on ours and {per(b4, 'beam') or 0:.1f} µs on "
            f"B4's; our own processes {side:.1f} µs per event, B4's publisher {per(b4, 'publisher') or 0:.1f} µs. "
            f"Ours was limited by {bound(ours)}; B4 by {bound(b4)}.")


def write(readme: Path, section: str) -> None:
    text = readme.read_text()
    if START in text and END in text and text.index(START) < text.index(END):
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
    else:
        head, tail = text.rstrip("\n") + "\n\n", "\n"
    readme.write_text(f"{head}{START}\n{section.rstrip()}\n{END}{tail}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__.splitlines()[0])
    p.add_argument("json", help="a file written by python -m bench --json")
    p.add_argument("--write", metavar="FILE", nargs="?", const=str(PAGE),
                   help=f"replace the generated section of FILE (default {PAGE.relative_to(PAGE.parents[1])})")
    args = p.parse_args(argv)
    section = render(json.loads(Path(args.json).read_text()))
    if args.write:
        write(Path(args.write), section)
    else:
        sys.stdout.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
