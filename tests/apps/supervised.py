"""A supervised app for the process tests: 4 front-ends raise async events until stopped.

Usage: supervised.py SOCKET OUTDIR.  Bounded: it stops by itself after
LIFETIME seconds, and when the test that started it dies.  Writes OUTDIR/pids (main, worker, front-ends)
once started, and OUTDIR/count-RANK (events accepted) when each front-end stops.
"""

import os
import signal
import sys
import time

import opsevent
import workers
from workers.base.process import set_parent_death_signal

LIFETIME = 60.0


def target(rank, evi):
    accepted = 0
    try:
        while not workers.stopping():
            if evi.raise_event("E_LOAD", {"rank": rank, "n": accepted}):
                accepted += 1
    finally:
        with open(os.path.join(sys.argv[2], f"count-{rank}"), "w") as f:
            f.write(str(accepted))


def main():
    set_parent_death_signal(signal.SIGTERM)
    deadline = time.monotonic() + LIFETIME
    socket, outdir = sys.argv[1], sys.argv[2]
    evi = opsevent.EventInterface(queue_size=10_000)
    evi.subscribe_event("E_LOAD", socket)
    sup = workers.Supervisor(evi, target, processes=4)
    sup.start()
    pids = [os.getpid(), sup.service.process.pid] + [p.pid for p in sup.frontends.values()]
    with open(os.path.join(outdir, "pids.tmp"), "w") as f:
        f.write(" ".join(map(str, pids)))
    os.rename(os.path.join(outdir, "pids.tmp"), os.path.join(outdir, "pids"))
    try:
        while sup.loop_once() and time.monotonic() < deadline:
            pass
    finally:
        sup.stop()


if __name__ == "__main__":
    main()
