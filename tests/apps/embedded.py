"""Scenarios of opsevent embedded in a process the way servers do it, run as a program by the tests.

Usage: embedded.py SCENARIO SOCKET; prints one JSON object (the scenario's
measurements) on its last line of stdout.  Each scenario is bounded and
stops its service itself.

``reaper``
    A thread of this process reaps every child with ``waitpid(-1)``, as
    gunicorn's arbiter does.  The RabbitMQ worker is SIGKILLed; how long until
    a new one is forked (its start time less the kill's: the polling here is
    not in it), what the service reported, and that 200 events raised
    meanwhile and after are published.
``handover`` / ``drop``
    The worker is stopped (SIGSTOP) while a child forked with ``os.fork``
    raises big events until some wait in its overflow buffer, then exits
    with ``sys.exit`` (atexit runs, as in a recycled gunicorn worker) while
    the worker is still stopped; then the worker is resumed.
    ``handover``: the child hands its buffer over in a spool file and exits
    at once.  ``drop``: the spool folder is gone, so the child counts its
    buffer as dropped_at_exit, logs it and frees the slots.
``killed``
    As ``handover``, but the child SIGKILLs itself instead of exiting: its
    buffer is lost, and the worker must count it and free its slots.
"""

import json
import os
import shutil
import signal
import sys
import threading
import time

import opsevent
import workers
from workers.demo.procstat import started_at

PAD = "x" * 3500  # a job of about 3.6 KiB: one frame, and few fit in the pipe


def reaper():
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.01)


def scenario_reaper(socket_text):
    threading.Thread(target=reaper, daemon=True).start()
    evi = opsevent.EventInterface()
    evi.subscribe_event("E_EMBED", socket_text)
    service = workers.serve(evi, quiet_pika=True)
    for n in range(100):
        assert evi.raise_event("E_EMBED", {"n": n})
    _wait(lambda: service.stats().get("confirmed") == 100, 10)
    old = service.process.pid
    os.kill(old, signal.SIGKILL)
    killed_at = time.clock_gettime(time.CLOCK_BOOTTIME)
    for n in range(100, 200):  # raised while the worker is dead or being replaced: they wait in the queue
        assert evi.raise_event("E_EMBED", {"n": n})
    _wait(lambda: service.process is not None and service.process.pid != old and service.process.is_alive(), 5)
    replaced = started_at(service.process.pid) - killed_at
    for n in range(200, 300):
        assert evi.raise_event("E_EMBED", {"n": n})
    _wait(lambda: service.stats().get("pid") not in (None, old) and service.stats().get("jobs") == 200, 10)
    stats = service.stats()
    service.stop()
    return {"replaced": replaced, "old": old, "new": stats["pid"], "stats_confirmed": stats.get("confirmed"),
            "lost": stats["lost_with_dead_workers"], "worker_starts": stats["worker_starts"]}


def scenario_overflow(socket_text, spool, killed=False):
    evi = opsevent.EventInterface(queue_size=100_000, drain_timeout=2.0)
    evi.subscribe_event("E_EMBED", socket_text)
    service = workers.serve(evi, quiet_pika=True)
    worker = service.process.pid
    _wait(lambda: service.stats().get("pid") == worker, 10)  # it is up, with its inbox bound
    os.kill(worker, signal.SIGSTOP)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # a server's worker process
        os.close(r)
        accepted = 0
        while evi.transport._queue.unsent() < 50:
            assert evi.raise_event("E_EMBED", {"n": accepted, "pad": PAD})
            accepted += 1
        os.write(w, json.dumps({"accepted": accepted, "buffered": evi.transport._queue.unsent()}).encode())
        os.close(w)
        if killed:
            os.kill(os.getpid(), signal.SIGKILL)  # nothing runs: no atexit, no spool file
        sys.exit(0)  # atexit hands the buffer over, or counts it
    os.close(w)
    if not spool:
        shutil.rmtree(service.jobs.spool_dir)  # before the child can have spooled anything
    report = json.loads(os.read(r, 1000))
    t0 = time.monotonic()
    _unused, status = os.waitpid(child, 0)  # the worker is still stopped
    exited_in = time.monotonic() - t0
    os.kill(worker, signal.SIGCONT)
    resumed = time.time()  # stats written before the stop said 0 too: wait for newer ones

    def settled():
        stats = service.stats()
        return stats.get("time", 0) > resumed and stats.get("queue_depth") == 0 and stats.get("outstanding") == 0
    _wait(settled, 20)
    time.sleep(1.2)  # the child's last report reaches the stats
    stats = service.stats()
    service.stop()
    (row,) = stats["subscriptions"]
    return {**report, "child_exit": os.waitstatus_to_exitcode(status), "exited_in": exited_in,
            "confirmed": row["confirmed"], "lost_with_dead_frontends": stats["lost_with_dead_frontends"],
            "dropped_at_exit": row["dropped_at_exit"], "raised": row["raised"], "depth": stats["queue_depth"]}


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {predicate}")
        time.sleep(0.01)


def main():
    scenario, socket_text = sys.argv[1], sys.argv[2]
    if scenario == "reaper":
        result = scenario_reaper(socket_text)
    elif scenario == "handover":
        result = scenario_overflow(socket_text, spool=True)
    elif scenario == "drop":
        result = scenario_overflow(socket_text, spool=False)
    elif scenario == "killed":
        result = scenario_overflow(socket_text, spool=True, killed=True)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
