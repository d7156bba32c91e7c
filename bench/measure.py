"""Measuring instruments: latency histograms, RSS, queue counts, event bodies."""

from __future__ import annotations

import os
import platform
import threading
import time
from importlib import metadata

import pika
import pika.exceptions
from hdrh.histogram import HdrHistogram

from opsevent.payload import MAX_BODY_SIZE, encode_event
from workers.demo.procstat import cpu_seconds, machine_busy_seconds

# -- event bodies -------------------------------------------------------------

EVENT = "E_SIP_MESSAGE"
WARMUP_EVENT = "E_BENCH_WARMUP"
WARMUP_PARAMS = (("warm", "up"),)
# The guide's example: the R-URI user and a message body with a comma (quoted).
STANDARD_PARAMS = (("user", "alice"),
                   ("msg", "Hello Bob, this is Alice: are we still on for 10:30 tomorrow?"))


def params_for_size(size: int | None) -> tuple:
    """Event parameters whose encoded body is exactly ``size`` bytes (None: the standard ~90 B)."""
    if size is None:
        return STANDARD_PARAMS
    if not 40 <= size <= MAX_BODY_SIZE:
        raise ValueError(f"body size must be 40..{MAX_BODY_SIZE} bytes, not {size}")
    user, text = STANDARD_PARAMS[0][1], STANDARD_PARAMS[1][1]
    base = len(body_of((("user", user), ("msg", ",")))) - 1  # 'msg::' plus the quotes
    room = size - base
    msg = (text + " " + "x" * room)[:room]
    if "," not in msg:
        msg = "," + msg[1:]  # keep it a quoted value, as in the standard body
    params = (("user", user), ("msg", msg))
    if len(body_of(params)) != size:
        raise AssertionError(f"body of {len(body_of(params))} bytes, wanted {size}")
    return params


def body_of(params) -> bytes:
    """The bytes ``raise_event(EVENT, params)`` publishes (what the baselines publish)."""
    return encode_event(EVENT, params)


# -- latency histograms (nanoseconds) --------------------------------------------

LOWEST_NS, HIGHEST_NS, DIGITS = 1, 10_000_000_000, 3
SUMMARY_PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# Points of the percentile-distribution chart: 0 .. 99.999 percent.
CHART_PERCENTILES = tuple([0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5,
                           99.75, 99.9, 99.95, 99.975, 99.99, 99.995, 99.999])


def new_hist() -> HdrHistogram:
    """1 ns .. 10 s, 3 significant digits."""
    return HdrHistogram(LOWEST_NS, HIGHEST_NS, DIGITS)


def record(hist: HdrHistogram, ns: int) -> None:
    hist.record_value(min(max(ns, LOWEST_NS), HIGHEST_NS))


class Schedule:
    """``n`` calls on an absolute schedule, one every ``interval`` ns from ``first``.

    Latency is also measured from each call's scheduled time, so a stall is
    not hidden by the calls it delays (coordinated omission).
    """

    def __init__(self, first: int, interval: int, n: int):
        self.first, self.interval, self.n = first, interval, n
        self.hist = new_hist()
        self.behind = 0  # the most a call started after its scheduled time, ns

    def __iter__(self):
        """Yield ``(scheduled, started)`` monotonic ns, sleeping until each call is due."""
        clock = time.monotonic_ns
        for i in range(self.n):
            scheduled = self.first + i * self.interval
            now = clock()
            if scheduled > now:
                time.sleep((scheduled - now) / 1e9)
                now = clock()
            else:
                self.behind = max(self.behind, now - scheduled)
            yield scheduled, now

    def done(self, scheduled: int, ended: int) -> None:
        self.hist.record_value(max(1, ended - scheduled))

    def figures(self) -> dict:
        return {"hist_sched": self.hist.encode(), "behind_max_ms": round(self.behind / 1e6, 3)}


def merge_encoded(encoded: list[bytes | str]) -> HdrHistogram:
    total = new_hist()
    for enc in encoded:
        total.add(HdrHistogram.decode(enc))
    return total


def summarize(hist: HdrHistogram) -> dict:
    """Count, mean, p50/p90/p99/p99.9 and max in microseconds, plus the encoded histogram."""
    count = hist.get_total_count()
    out = {"count": count}
    if count == 0:
        return out
    us = lambda ns: round(ns / 1000.0, 3)  # noqa: E731
    out["mean_us"] = us(hist.get_mean_value())
    for p in SUMMARY_PERCENTILES:
        out[f"p{p:g}_us"] = us(hist.get_value_at_percentile(p))
    out["max_us"] = us(hist.get_max_value())
    out["distribution_us"] = [[p, us(hist.get_value_at_percentile(p))] for p in CHART_PERCENTILES]
    out["hdr"] = _as_text(hist.encode())
    return out


def _as_text(enc) -> str:
    return enc.decode("ascii") if isinstance(enc, bytes) else str(enc)


# -- memory ------------------------------------------------------------------------

def proc_status(pid: int | str = "self") -> dict:
    """VmRSS and VmHWM of a process in KiB (empty when it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except OSError:
        return {}
    return out


def proc_private_kib(pid: int | str = "self") -> int | None:
    """Private (unshared) resident memory in KiB, from smaps_rollup."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        return None
    return total


class ProcSampler:
    """A thread sampling the RSS and CPU time of some processes.

    Memory: ``VmHWM`` is the kernel's own peak (exact); ``VmRSS`` sampled every
    ``interval`` seconds gives the sampled peak and the last value.  CPU:
    each process's CPU seconds between ``watch`` and ``mark_end()`` (or its
    last sample, if it exited first), and the machine's busy CPU seconds over
    the same window: what the rest is, other processes used (a noisy
    neighbour shows there).
    """

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self._pids: dict[str, int] = {}
        self.peaks: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ended = False
        self._window = [time.monotonic(), None]
        self._busy = [machine_busy_seconds(), None]
        self._probes: list = []
        self.probe_max: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)

    def watch(self, name: str, pid: int | None) -> None:
        if pid is None:
            return
        with self._lock:
            self._pids[name] = pid
            self.peaks.setdefault(name, {"pid": pid, "cpu_start_s": cpu_seconds(pid)})
        self._sample_one(name, pid)

    def probe(self, fn) -> None:
        """Also call ``fn() -> {name: number}`` at every sample; keep each number's maximum."""
        self._probes.append(fn)

    def mark_start(self) -> None:
        """Start the CPU window now (processes watched before count from here)."""
        with self._lock:
            self._window[0] = time.monotonic()
            self._busy[0] = machine_busy_seconds()
            for name, pid in self._pids.items():
                self.peaks[name]["cpu_start_s"] = cpu_seconds(pid)

    def mark_end(self) -> None:
        """End the CPU window now: the run's clock has stopped.  Also the private-memory sample."""
        self._sample_all(private=True)
        with self._lock:
            self._ended = True
            self._window[1] = time.monotonic()
            self._busy[1] = machine_busy_seconds()

    def start(self) -> "ProcSampler":
        self._thread.start()
        return self

    def stop(self) -> dict[str, dict]:
        """Stop; return ``{name: {pid, hwm_kib, rss_max_kib, rss_last_kib, cpu_s, ...}}``."""
        if not self._ended:
            self.mark_end()
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._sample_all()
        out = {}
        for name, v in self.peaks.items():
            v = dict(v)
            start, end = v.pop("cpu_start_s", None), v.pop("cpu_end_s", None)
            if start is not None and end is not None:
                v["cpu_s"] = round(end - start, 3)
            out[name] = v
        return out

    def cpu(self, memory: dict[str, dict], events: int | None = None) -> dict:
        """CPU over the window by kind of process (``worker``, ``frontend``...), plus others."""
        window = (self._window[1] or time.monotonic()) - self._window[0]
        busy = (self._busy[1] or machine_busy_seconds()) - self._busy[0]
        by_kind: dict[str, float] = {}
        for name, v in memory.items():
            if "cpu_s" in v:
                kind = name.split("-", 1)[0]
                by_kind[kind] = round(by_kind.get(kind, 0.0) + v["cpu_s"], 3)
        ours = sum(by_kind.values())
        out = {"window_s": round(window, 3), "capacity_s": round(window * (os.cpu_count() or 1), 3),
               "machine_busy_s": round(busy, 3), "by_process_s": by_kind,
               "others_s": round(max(0.0, busy - ours), 3)}
        if events:
            out["us_per_event"] = {k: round(v / events * 1e6, 2) for k, v in by_kind.items()}
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample_all()

    def _sample_all(self, private: bool = False) -> None:
        with self._lock:
            pids = list(self._pids.items())
        for name, pid in pids:
            self._sample_one(name, pid, private and name not in ("beam", "main"))
        for fn in self._probes:
            try:
                values = fn() or {}
            except Exception:  # noqa: BLE001 - a probe is best effort
                continue
            for key, value in values.items():
                self.probe_max[key] = max(self.probe_max.get(key, value), value)

    def _sample_one(self, name: str, pid: int, private: bool = False) -> None:
        st = proc_status(pid)
        if not st:
            return
        cpu = cpu_seconds(pid)
        with self._lock:
            peak = self.peaks[name]
            peak["hwm_kib"] = max(peak.get("hwm_kib", 0), st.get("VmHWM", 0))
            peak["rss_max_kib"] = max(peak.get("rss_max_kib", 0), st.get("VmRSS", 0))
            peak["rss_last_kib"] = st.get("VmRSS", 0)
            if cpu is not None and not self._ended:
                peak["cpu_end_s"] = cpu
        if private:
            # Walks every mapping in the kernel: only once, at the end of the window.
            kib = proc_private_kib(pid)
            if kib is not None:
                with self._lock:
                    peak["private_at_end_kib"] = kib


# -- the broker's side ------------------------------------------------------------------

# The broker deletes a queue of ours unused this long: a bench that dies leaves none behind for good.
QUEUE_EXPIRES_MS = 600_000


class QueueCounter:
    """Message counts of queues over one connection (passive declares).

    Made and used in one thread (pika connections are not thread-safe).
    """

    def __init__(self, broker):
        self.conn = broker.connect()
        self.channel = self.conn.channel()

    def count(self, queues) -> int:
        return sum(self.channel.queue_declare(queue=q, passive=True).method.message_count
                   for q in queues)

    def close(self) -> None:
        try:
            if self.conn.is_open:
                self.conn.close()
        except (pika.exceptions.AMQPError, OSError):
            pass


def declare_queues(broker, names) -> None:
    """Transient classic queues (no consumer), named uniquely per run (``Env.queue``).

    Each expires QUEUE_EXPIRES_MS after its last use, so a bench that dies
    leaves nothing behind for long on a user's broker (``bench.target``).
    """
    conn = broker.connect()
    try:
        ch = conn.channel()
        for name in names:
            ch.queue_declare(queue=name, durable=False, arguments={"x-expires": QUEUE_EXPIRES_MS})
    finally:
        conn.close()


def peek_message(broker, queue: str) -> dict | None:
    """The first message of ``queue`` as plain data (its properties and body), left in the queue.

    What a run published, to compare B4's messages with ours.
    """
    conn = broker.connect()
    try:
        method, props, body = conn.channel().basic_get(queue, auto_ack=False)
    finally:
        conn.close()  # the unacknowledged message goes back to the queue
    if method is None:
        return None
    shown = ("content_type", "headers", "delivery_mode", "message_id", "timestamp", "app_id")
    out = {name: getattr(props, name) for name in shown if getattr(props, name) is not None}
    out["body"] = body.decode("utf-8", "replace")
    return out


def delete_queues(broker, names) -> None:
    conn = broker.connect()
    try:
        ch = conn.channel()
        for name in names:
            ch.queue_delete(queue=name)
    finally:
        conn.close()


# -- the machine ---------------------------------------------------------------------

def machine_info(broker=None) -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    info = {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "os": _os_release(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pika": _version("pika"),
        "hdrhistogram": _version("hdrhistogram"),
        "rabbitmq": rabbitmq_version(),
        "load_average_at_start": list(os.getloadavg()),
    }
    return info


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def rabbitmq_version() -> str:
    """The installed RabbitMQ server's version (from its lib folder)."""
    try:
        names = os.listdir("/usr/lib/rabbitmq/lib")
    except OSError:
        return "?"
    for name in sorted(names):
        if name.startswith("rabbitmq_server-"):
            return name.split("-", 1)[1]
    return "?"

