"""B4: rabbitmq-c with our guarantees (``publisher.c``), built and run by the bench.

The honest yardstick for opsevent is what the broker takes from the C client
OpenSIPS uses when every message gets what ours get: streamed publisher
confirms, the mandatory flag, the same properties (``workers/rabbitmq/amqp.py``), the
same body, into the same kind of queue.  ``window`` is how many messages may
be unconfirmed at once: 10,000 stands for the async worker's backlog, 8 for
eight sync callers each waiting for its confirm.

The program is compiled with gcc against Debian's ``librabbitmq-dev`` (``./run``
installs both) into ``bench/b4/build/`` (gitignored), again whenever the
source is newer.  When it cannot be built, the B4 runs say so and carry no
figures.

One run: the bench starts the program, which connects and turns confirms on,
then says ``ready``; a driver thread waits at the start barrier like any
other run's process and answers ``go``; the conductor clocks the queue until
the broker holds every event.  The program reports its counts, then stays
until the bench has read its CPU time and memory.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import opsevent
from workers.rabbitmq.worker import CONTENT_TYPES

from bench.harness import Gate, Target, conduct, rate
from bench.measure import (
    EVENT,
    ProcSampler,
    body_of,
    declare_queues,
    delete_queues,
    peek_message,
    proc_status,
)

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "publisher.c"
BUILD = HERE / "build"
BINARY = BUILD / "publisher"
CC = ("gcc", "-O2", "-Wall", "-Wextra", "-o")
LIBS = ("-lrabbitmq",)
STOP_TIMEOUT = 10.0


class Unavailable(RuntimeError):
    """B4 cannot be built here (no gcc, no librabbitmq-dev, a compile error)."""


@dataclass
class B4Spec:
    events: int
    window: int              # most messages unconfirmed at once
    params: tuple
    event_header: bool = True


@functools.cache
def built() -> Path:
    """The compiled publisher, (re)built when missing or older than its source; raises Unavailable."""
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    if shutil.which(CC[0]) is None:
        raise Unavailable(f"no {CC[0]} to build B4 (./run installs gcc and librabbitmq-dev)")
    BUILD.mkdir(exist_ok=True)
    tmp = BUILD / f"publisher.{os.getpid()}.tmp"  # two benches in one tree may build at once
    try:
        done = subprocess.run([*CC, str(tmp), str(SOURCE), *LIBS], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise Unavailable(f"B4 did not build ({' '.join(CC)} ... {' '.join(LIBS)}; librabbitmq-dev "
                              f"missing? ./run installs it):\n{done.stderr.strip()}")
        os.replace(tmp, BINARY)
    finally:
        tmp.unlink(missing_ok=True)
    return BINARY


def run_b4(env, spec: B4Spec, progress=None) -> dict:
    """One B4 run: the C publisher's events/s until the broker holds all, with its CPU and memory."""
    out = {"kind": "baseline", "processes": 1, "window": spec.window, "events": spec.events,
           "event_header": spec.event_header, "body_bytes": len(body_of(spec.params))}
    try:
        binary = built()
    except Unavailable as exc:
        return {**out, "unavailable": str(exc), "errors": []}
    q = env.queue(f"b4w{spec.window}")
    declare_queues(env.broker, (q,))
    proc = None
    try:
        proc = _launch(binary, env.broker, q, spec)
        out.update(_measure(env, proc, q, spec, progress))
        out["properties"] = peek_message(env.broker, q)
    finally:
        if proc is not None:
            _stop(proc)
        delete_queues(env.broker, (q,))
    return out


def _launch(binary: Path, broker, q: str, spec: B4Spec) -> subprocess.Popen:
    settings = opsevent.Settings()
    args = [str(binary), "-s", broker.host, "-p", str(broker.port), "-v", getattr(broker, "vhost", "/"),
            "-u", broker.user, "-k", q, "-n", str(spec.events), "-w", str(spec.window),
            "-b", body_of(spec.params).hex(), "-e", EVENT, "-c", CONTENT_TYPES[settings.format],
            "-a", settings.app_id] + ([] if spec.event_header else ["-N"])
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    proc.stdin.write(broker.password + "\n")  # not in argv: any local user can read that
    proc.stdin.flush()
    return proc


def _measure(env, proc: subprocess.Popen, q: str, spec: B4Spec, progress) -> dict:
    gate = Gate(env.ctx, 1)
    sampler = ProcSampler().start()
    driver = threading.Thread(target=_drive, args=(proc, gate), name="bench-b4", daemon=True)
    driver.start()

    def on_start():
        sampler.watch("publisher-1", proc.pid)
        sampler.watch("main", os.getpid())
        sampler.watch("beam", env.beam_pid)
        sampler.mark_start()

    clock = conduct(gate, env.broker, Target((q,), spec.events), on_start=on_start, on_end=sampler.mark_end,
                    progress=progress, alive=lambda: proc.poll() is None)
    memory = sampler.stop()
    driver.join(STOP_TIMEOUT)
    final = env.count((q,))
    results = [r for r in clock.results if "error" not in r]
    errors = [r["error"] for r in clock.results if "error" in r]
    if clock.error:
        errors.insert(0, clock.error)
    r = results[0] if results else {"published": 0, "acked": 0, "nacked": 0, "returned": 0}
    confirmed = r["acked"] - r["returned"]  # a returned message is acked too, but not in the queue
    return {
        "published": r["published"], "confirmed": confirmed, "nacked": r["nacked"],
        "returned": r["returned"], "max_outstanding": r.get("max_outstanding"),
        "in_broker": final, "missing": max(0, confirmed - final), "extra": max(0, final - confirmed),
        "seconds": clock.seconds, "events_per_s": rate(confirmed, clock.seconds),
        "own_seconds": r.get("seconds"), "own_events_per_s": rate(confirmed, r.get("seconds")),
        "memory": memory, "cpu": sampler.cpu(memory, spec.events), "errors": errors,
    }


def _drive(proc: subprocess.Popen, gate: Gate) -> None:
    """The program's side of the gate, in a thread: ready, start barrier, go, result, done."""
    try:
        _expect(proc, "ready")
        gate.wait_start()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        result = json.loads(_expect(proc, "{"))
        gate.handed_over(1, result["acked"] - result["returned"])
        gate.done.wait()
        result.update(pid=proc.pid, rss_end=proc_status(proc.pid))
        gate.results.put(result)
    except Exception as exc:  # noqa: BLE001 - reported as the run's error
        try:
            gate.barrier.abort()
        except Exception:  # noqa: BLE001
            pass
        gate.results.put({"error": f"B4 publisher: {exc}"})


def _expect(proc: subprocess.Popen, start: str) -> str:
    line = proc.stdout.readline()
    if not line.startswith(start):
        proc.kill()
        raise RuntimeError(f"exit {proc.wait()}: {proc.stderr.read().strip() or line.strip() or 'no output'}")
    return line


def _stop(proc: subprocess.Popen) -> None:
    """Close its stdin (it then closes its connection and exits); kill it if it does not."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()
    proc.stderr.close()
