"""Embedding opsevent in a server that forks its own workers (here a multiprocessing.Pool).

The master starts the RabbitMQ worker *before* it forks the pool; the pool's
children raise events; the master stops the RabbitMQ worker after the pool is
closed, which publishes whatever is still queued.

    python examples/pool_example.py                      # starts a private broker itself
    python examples/pool_example.py --socket rabbitmq:127.0.0.1:5673/sipmsg --count 100

For gunicorn, ``workers.gunicorn.Hooks`` does the same in its server hooks
(docs/embedding.md, "Embedding in the server you already run").
"""

import argparse
import multiprocessing
import os

import opsevent
import workers

evi = opsevent.EventInterface(sync_mode=True)


def handle(n: int) -> bool:
    # Runs in a pool child: the EventInterface and its job queue were inherited.
    result = evi.raise_event("E_SIP_MESSAGE", attrs=["user", "msg"],
                             vals=[f"user{n}", f"message {n} from pid {os.getpid()}"])
    return bool(result)


def run(socket: str, count: int) -> int:
    evi.subscribe_event("E_SIP_MESSAGE", socket)
    with workers.serve(evi):
        with multiprocessing.get_context("fork").Pool(4) as pool:
            ok = sum(pool.map(handle, range(count)))
            # Let the children exit normally (the with's exit would SIGTERM them):
            # an async raise's job may still wait in a child's buffer.
            pool.close()
            pool.join()
    print(f"{ok} of {count} events confirmed by the broker")
    return 0 if ok == count else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="a rabbitmq: socket; default: a private broker's sipmsg queue")
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    if args.socket:
        return run(args.socket, args.count)
    from workers.demo.broker import PrivateBroker, consume, declare_queue
    with PrivateBroker() as broker:
        declare_queue(broker, "sipmsg")
        status = run(broker.socket("sipmsg"), args.count)
        print(f"{len(consume(broker, 'sipmsg', args.count, timeout=30))} events in the queue")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
