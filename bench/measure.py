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


class RssSampler:
    """A thread sampling the RSS of some processes; keeps each one's peak.

    ``VmHWM`` is the kernel's own peak (exact); ``VmRSS`` sampled every
    ``interval`` seconds gives the sampled peak and the last value.
    """

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self._pids: dict[str, int] = {}
        self.peaks: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self._pids[name] = pid
            self.peaks.setdefault(name, {"pid": pid})
        self._sample_one(name, pid)

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def stop(self) -> dict[str, dict]:
        """Stop, take a last sample, and return ``{name: {pid, hwm_kib, rss_max_kib, rss_last_kib}}``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._sample_all()
        return {name: dict(v) for name, v in self.peaks.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample_all()

    def _sample_all(self) -> None:
        with self._lock:
            pids = list(self._pids.items())
        for name, pid in pids:
            self._sample_one(name, pid)

    def _sample_one(self, name: str, pid: int) -> None:
        st = proc_status(pid)
        if not st:
            return
        peak = self.peaks[name]
        peak["hwm_kib"] = max(peak.get("hwm_kib", 0), st.get("VmHWM", 0))
        peak["rss_max_kib"] = max(peak.get("rss_max_kib", 0), st.get("VmRSS", 0))
        peak["rss_last_kib"] = st.get("VmRSS", 0)
        private = proc_private_kib(pid)
        if private is not None:
            peak["private_last_kib"] = private
            peak["private_max_kib"] = max(peak.get("private_max_kib", 0), private)


# -- the broker's side ------------------------------------------------------------------

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
    """Fresh transient classic queues (no consumer): deleted first if they exist."""
    conn = broker.connect()
    try:
        ch = conn.channel()
        for name in names:
            ch.queue_delete(queue=name)
            ch.queue_declare(queue=name, durable=False)
    finally:
        conn.close()


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


def now_monotonic() -> float:
    return time.monotonic()
