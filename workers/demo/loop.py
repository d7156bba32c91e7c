"""The demo without SIP: the guide's example 1.5, raised in a loop, end to end.

It starts a private broker, subscribes ``E_SIP_MESSAGE`` to
``rabbitmq:127.0.0.1:<port>/sipmsg`` as the guide's ``startup_route`` does,
runs a Supervisor whose front-ends raise the event with the guide's
``attrs``/``vals`` (the R-URI user and the message body), consumes the queue
and prints what arrived with the counts.  ``python -m workers.demo.loop``;
``./run demo`` is the SIP demo (``sipdemo.py``).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
import time

import opsevent
import workers
from workers.base import logs
from workers.demo.broker import PrivateBroker, consume, declare_queue

QUEUE = "sipmsg"


def make_target(events: int, results):
    def target(rank, evi):
        ok = failed = 0
        for i in range(events):
            if workers.stopping():
                break
            result = evi.raise_event("E_SIP_MESSAGE", attrs=["user", "msg"],
                                     vals=[f"alice{rank}", f"Hello from front-end {rank}, message {i}"])
            if result:
                ok += 1
            else:
                failed += 1
                if failed == 1:
                    logging.getLogger("demo").warning("raise failed: %s", result.failures[0].reason)
        results.put((rank, ok, failed))
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.demo.loop", description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4, help="front-end processes (default 4)")
    parser.add_argument("--events", type=int, default=2500, help="events per front-end (default 2500)")
    parser.add_argument("--sync", action="store_true", help="sync_mode=1: each raise waits for the broker's confirm")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=logs.FORMAT)
    logging.getLogger("pika").setLevel(logging.WARNING)  # the demo's own consumer is chatty at INFO

    print("starting a private RabbitMQ broker on 127.0.0.1 ...", flush=True)
    with PrivateBroker() as broker:
        declare_queue(broker, QUEUE)
        socket = broker.socket(QUEUE)
        evi = opsevent.EventInterface(sync_mode=args.sync)
        evi.subscribe_event("E_SIP_MESSAGE", socket)
        print(f"subscribed E_SIP_MESSAGE to {evi.subscribers('E_SIP_MESSAGE')[0]}", flush=True)

        results = multiprocessing.get_context("fork").Queue()
        started = time.monotonic()
        workers.Supervisor(evi, make_target(args.events, results), processes=args.processes).run()
        counts = [results.get(timeout=10) for _ in range(args.processes)]
        ok = sum(c[1] for c in counts)
        failed = sum(c[2] for c in counts)
        bodies = consume(broker, QUEUE, ok, timeout=30)
        elapsed = time.monotonic() - started

    print("\nthree of the events that arrived:")
    for body in bodies[:3]:
        print("  " + body.decode().replace("\n", "\\n"))
    print(f"\nfront-ends: {args.processes}, mode: {'sync' if args.sync else 'async'}")
    print(f"raised {ok + failed}, accepted {ok}, failed {failed}, received {len(bodies)} "
          f"in {elapsed:.2f} s ({len(bodies) / elapsed:,.0f} events/s including start-up)")
    return 0 if len(bodies) == ok and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
