"""The SIP demo: the guide's example 1.5 driven by a real SIP client (sipp).

It starts a private RabbitMQ broker, declares the ``sipmsg`` queue,
subscribes ``E_SIP_MESSAGE`` to ``rabbitmq:127.0.0.1:<port>/sipmsg`` as the
guide's ``startup_route`` does, runs the example SIP server (workers/demo/sip.py)
under a Supervisor with N front-ends, drives it with sipp sending MESSAGE
requests (each body unique: it carries sipp's call number) at a given rate
for a given time, consumes the queue and prints a summary: requests sent and
answered, events received, events/s, sipp's response times, a sample event,
and whether every answered MESSAGE produced exactly one, byte-exact, event.

    python -m workers.demo --rate 2000 --duration 10 [--processes 4] [--limit 32]   # ./run demo

``run()`` is the same thing as a function (the test and the bench call it).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pika.exceptions

import opsevent
import workers
from workers.demo import sip
from workers.demo.broker import PrivateBroker, consume, declare_queue
from workers.demo.procstat import cpu_seconds, machine_busy_seconds

log = logging.getLogger(__name__)

QUEUE = "sipmsg"
USER = "alice"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
# sipp ends every line it sends with CRLF, the body's last line included.
BODY = "opsevent demo message {n} via sipp\r\n"
_BODY_RE = re.compile(r"opsevent demo message (\d+) via sipp\r\n\Z")
FAST_RATE = 100_000  # "as fast as --limit allows"

# sipp's built-in uac scenario, made a MESSAGE: one request, a 200 (or a 503
# when the server sheds load) ends the call. The request is retransmitted
# over UDP as RFC 3261 says (Timer E: T1 = 500 ms, doubling up to T2 = 4 s;
# sipp retransmits only when asked to). Response time 1 runs from the first
# send to the final answer; each answer is logged with the call number.
SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="opsevent MESSAGE">
  <send start_rtd="1" retrans="500">
    <![CDATA[

      MESSAGE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 MESSAGE
      Max-Forwards: 70
      Content-Type: text/plain
      Content-Length: [len]

      opsevent demo message [call_number] via sipp

    ]]>
  </send>
  <recv response="503" optional="true" rtd="1" next="done">
    <action><log message="503 [call_number]"/></action>
  </recv>
  <recv response="200" rtd="1">
    <action><log message="200 [call_number]"/></action>
  </recv>
  <label id="done"/>
</scenario>
"""


def expected_event(n: int, user: str = USER) -> bytes:
    """The exact event body the server must publish for sipp's call number *n*."""
    return opsevent.encode_event(sip.EVENT, [("user", user), ("msg", BODY.format(n=n))])


# ---- the server, started and stopped --------------------------------------------------

@contextlib.contextmanager
def running_server(subscriber: str, processes: int = 4, *, queue_size: int = sip.QUEUE_SIZE,
                   sync: bool = False, **server_options):
    """Start the SIP server's Supervisor (main thread); yield ``(server, supervisor)``.

    The caller may turn ``supervisor.loop_once()`` while it waits; the
    front-ends answer whether or not it does.
    """
    evi = opsevent.EventInterface(sync_mode=sync, queue_size=queue_size)
    evi.subscribe_event(sip.EVENT, subscriber)
    server = sip.SipServer(processes=processes, **server_options)
    sup = workers.Supervisor(evi, server.target, processes=processes)
    try:
        sup.start()
        wait_ready(server.port)
        yield server, sup
    finally:
        try:
            sup.stop()
        finally:
            server.close()


def request(method: str, port: int, *, user: str | None = USER, body: bytes = b"",
            call_id: str | None = None, branch: str | None = None, cseq: int = 1) -> bytes:
    """A SIP request datagram for 127.0.0.1:*port* (for probes and tests)."""
    call_id = call_id or f"{os.urandom(8).hex()}@127.0.0.1"
    branch = branch or f"z9hG4bK{os.urandom(8).hex()}"
    ruri = f"sip:{user}@127.0.0.1:{port}" if user else f"sip:127.0.0.1:{port}"
    head = (f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:9;branch={branch}\r\n"
            f"From: <sip:probe@127.0.0.1>;tag={os.urandom(4).hex()}\r\n"
            f"To: <{ruri}>\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: {cseq} {method}\r\n"
            f"Max-Forwards: 70\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def exchange(port: int, datagrams, timeout: float = 2.0, expect: int | None = None) -> list[bytes]:
    """Send *datagrams* from one UDP socket; return the replies (up to *expect*)."""
    expect = len(datagrams) if expect is None else expect
    replies = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        for data in datagrams:
            s.sendto(data, ("127.0.0.1", port))
        deadline = time.monotonic() + timeout
        while len(replies) < expect:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                replies.append(s.recv(65535))
            except (socket.timeout, TimeoutError):
                break
    return replies


def wait_ready(port: int, timeout: float = 10.0) -> None:
    """Return once a front-end answers OPTIONS on *port*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exchange(port, [request("OPTIONS", port)], timeout=0.2):
            return
    raise RuntimeError(f"the SIP server on udp:127.0.0.1:{port} did not answer OPTIONS "
                       f"within {timeout:g} s")


# ---- sipp ---------------------------------------------------------------------------

@dataclass
class SippResult:
    returncode: int | None
    elapsed: float                       # seconds from launch to exit
    stats: dict[str, str]                # the last line of sipp's statistics file
    answered: dict[int, int]             # call number -> final status sipp logged (200 or 503)
    rtt_ms: list[int]                    # response time 1 of every answered call, in ms
    workdir: str
    killed: bool = False

    def stat(self, name: str) -> int:
        value = self.stats.get(name, "0")
        try:
            return int(float(value))
        except ValueError:
            return 0

    @property
    def created(self) -> int:
        return self.stat("TotalCallCreated")

    @property
    def ok(self) -> set[int]:
        return {n for n, code in self.answered.items() if code == 200}

    @property
    def shed(self) -> set[int]:
        return {n for n, code in self.answered.items() if code == 503}

    def percentile(self, p: float) -> float | None:
        if not self.rtt_ms:
            return None
        ordered = sorted(self.rtt_ms)
        return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))]


def sipp_command(port: int, *, rate: int | None, duration: float, limit: int | None,
                 local_port: int, user: str = USER) -> list[str]:
    cmd = [SIPP, "-sf", "scenario.xml", f"127.0.0.1:{port}", "-i", "127.0.0.1",
           "-p", str(local_port), "-t", "u1", "-s", user, "-nostdin",
           "-r", str(rate or FAST_RATE),
           "-timeout", f"{int(duration + 40)}s",
           # sipp's default socket buffers are 64 KiB: a burst of answers would
           # overflow them and count as lost (and retransmitted) requests.
           "-buff_size", str(4 << 20),
           "-trace_stat", "-fd", "1", "-stf", "stats.csv",
           "-trace_logs", "-log_file", "answers.log",
           "-trace_rtt", "-rtt_freq", "1",
           "-trace_err", "-error_file", "errors.log"]
    if limit:
        cmd += ["-l", str(limit)]
    if rate:
        cmd += ["-m", str(max(1, int(rate * duration)))]
    return cmd


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_sipp(workdir: str, returncode, elapsed, killed=False) -> SippResult:
    wd = Path(workdir)
    stats: dict[str, str] = {}
    try:
        lines = (wd / "stats.csv").read_text(errors="replace").splitlines()
        if len(lines) >= 2:
            stats = dict(zip(lines[0].split(";"), lines[-1].split(";")))
    except OSError:
        pass
    answered: dict[int, int] = {}
    try:
        for line in (wd / "answers.log").read_text(errors="replace").splitlines():
            code, _, n = line.strip().partition(" ")
            if code.isdigit() and n.isdigit():
                answered[int(n)] = int(code)
    except OSError:
        pass
    rtt: list[int] = []
    for path in glob.glob(str(wd / "*_rtt.csv")):
        with open(path, errors="replace") as f:
            next(f, None)
            for line in f:
                parts = line.strip().split(";")
                if len(parts) == 3 and parts[2] == "1":
                    try:
                        rtt.append(int(float(parts[1])))
                    except ValueError:
                        pass
    return SippResult(returncode, elapsed, stats, answered, rtt, workdir, killed)


# ---- the queue, watched -------------------------------------------------------------

class QueueWatch:
    """Counts messages in a queue over one connection; remembers when the count moved."""

    def __init__(self, broker, queue: str):
        self.conn = broker.connect()
        self.channel = self.conn.channel()
        self.queue = queue
        self.count = 0
        self.changed_at = time.monotonic()

    def sample(self) -> int:
        count = self.channel.queue_declare(queue=self.queue, passive=True).method.message_count
        if count != self.count:
            self.count, self.changed_at = count, time.monotonic()
        return count

    def purge(self) -> None:
        self.channel.queue_purge(self.queue)
        self.count = 0

    def close(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            self.conn.close()


# ---- the run ------------------------------------------------------------------------

@dataclass
class DemoResult:
    rate: int | None
    duration: float
    processes: int
    limit: int | None
    port: int
    sipp: SippResult
    server: dict[str, int]
    events: int                          # messages that reached the queue
    events_per_s: float
    window: float                        # seconds: sipp's launch to the last event in the queue
    bodies: list[bytes] | None = None    # consumed, when asked for
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds used during the run, by process kind
    machine: dict[str, float] = field(default_factory=dict)  # cores, and cores busy with other work
    table_bytes: int = 0
    checks: dict[str, object] = field(default_factory=dict)

    @property
    def sample(self) -> bytes | None:
        return self.bodies[0] if self.bodies else None


def run(broker, *, rate: int | None, duration: float = 10.0, processes: int = 4,
        limit: int | None = 32, queue: str = QUEUE, consume_events: bool = True,
        workdir: str | None = None, keep_workdir: bool = False, sync: bool = False,
        settle_timeout: float = 30.0, progress=None, **server_options) -> DemoResult:
    """Run the server, drive it with sipp, and collect what happened.

    *rate* None: as fast as *limit* outstanding requests allow (sipp's
    ``-l``), for *duration* seconds, then sipp is stopped gracefully
    (SIGUSR1: no new calls, finish the open ones). With a rate, sipp sends
    ``rate * duration`` MESSAGEs (``-m``) and ends by itself; SIGUSR1 at
    ``duration + 2`` s if it has not. Either way it is killed at ``duration +
    45`` s (an unanswered request is retransmitted for ~24 s before sipp
    gives up on it). Then the queue is watched until it holds every event
    the front-ends raised (at most *settle_timeout* s), and consumed if
    *consume_events*. *server_options* go to ``SipServer`` (``shed_age``...).
    """
    if rate is None and not limit:
        raise ValueError("without a rate, a limit (sipp -l) is needed")
    say = progress or (lambda _msg: None)
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="opsevent-sipp-")
    Path(workdir, "scenario.xml").write_text(SCENARIO)
    declare_queue(broker, queue, durable=False)
    watch = QueueWatch(broker, queue)
    watch.purge()
    try:
        with running_server(broker.socket(queue), processes, sync=sync, **server_options) as (server, sup):
            say(f"SIP server on udp:127.0.0.1:{server.port}, {processes} front-ends; "
                f"E_SIP_MESSAGE -> {broker.socket(queue)}")
            cmd = sipp_command(server.port, rate=rate, duration=duration, limit=limit,
                               local_port=_free_udp_port())
            say("sipp " + " ".join(cmd[1:]))
            result = _drive(sup, server, watch, cmd, workdir, rate, duration, settle_timeout, broker)
        server_counts = server.totals()  # final: every front-end flushed at exit
        watch.sample()
        result.server = server_counts
        result.table_bytes = server.table.nbytes
        result.events = watch.count
        result.rate, result.duration, result.processes, result.limit = rate, duration, processes, limit
        if consume_events and result.events:
            say(f"consuming {result.events} events ...")
            result.bodies = consume(broker, queue, result.events, timeout=max(30.0, result.events / 2000))
        result.checks = check(result)
        return result
    finally:
        watch.close()
        if own_dir and not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _drive(sup, server, watch: QueueWatch, cmd, workdir, rate, duration, settle_timeout,
           broker) -> DemoResult:
    out = open(Path(workdir, "sipp.out"), "wb")
    pids = _server_pids(sup, broker)
    cpu_before = {kind: sum(cpu_seconds(pid) or 0.0 for pid in p) for kind, p in pids.items()}
    busy_before = machine_busy_seconds()
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    sipp_cpu = 0.0
    killed = False
    try:
        # With a rate, -m ends sipp on time; without one, time ends it.
        soft = started + duration + (2.0 if rate else 0.0)
        hard = started + duration + 45.0
        soft_sent = False
        next_sample = started
        while proc.poll() is None:
            if not sup.loop_once(0.05):
                raise RuntimeError("the SIP server stopped (a signal, or every front-end exited)")
            now = time.monotonic()
            if now >= next_sample:
                watch.sample()
                sipp_cpu = max(sipp_cpu, cpu_seconds(proc.pid) or 0.0)
                next_sample = now + 0.1
            if now >= soft and not soft_sent:
                proc.send_signal(signal.SIGUSR1)  # sipp: no new calls; finish the open ones
                soft_sent = True
            if now >= hard:
                proc.kill()
                killed = True
                proc.wait(5)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
            killed = True
        out.close()
    # Every event raised is in the queue once the count reaches the server's
    # own count (flushed by idle front-ends every poll interval) and stays.
    deadline = time.monotonic() + settle_timeout
    while time.monotonic() < deadline:
        sup.loop_once(0.05)
        watch.sample()
        if watch.count >= server.totals()["events"] and time.monotonic() - watch.changed_at > 0.5:
            break
    window = max(1e-9, watch.changed_at - started)
    cpu = {kind: sum(cpu_seconds(pid) or 0.0 for pid in p) - cpu_before[kind] for kind, p in pids.items()}
    cpu["sipp"] = sipp_cpu
    busy = machine_busy_seconds() - busy_before
    span = time.monotonic() - started
    machine = {"cores": os.cpu_count(),
               "others_cores": round(max(0.0, busy - sum(cpu.values())) / span, 2)}
    sipp_result = read_sipp(workdir, proc.returncode, elapsed, killed)
    return DemoResult(None, duration, 0, None, server.port, sipp_result, {}, watch.count,
                      watch.count / window, window, cpu=cpu, machine=machine)


def _server_pids(sup, broker) -> dict[str, list[int]]:
    pids = {"front-ends": [p.pid for p in sup.frontends.values()],
            "rabbitmq worker": [sup.service.process.pid] if sup.service.process else []}
    try:
        pids["broker"] = [broker.beam_pid()]
    except Exception:  # not ours to see (a broker started elsewhere)
        pids["broker"] = []
    return pids


def check(result: DemoResult) -> dict[str, object]:
    """The exactness properties, as numbers (and a verdict in ``ok``)."""
    s = result.server
    checks: dict[str, object] = {
        "server_events_vs_queue": (s.get("events", 0), result.events),
    }
    ok = s.get("events", 0) == result.events
    if result.bodies is not None:
        numbers: list[int] = []
        foreign = 0
        for body in result.bodies:
            try:
                params = dict(opsevent.decode_event(body)[1])
            except Exception:
                foreign += 1
                continue
            m = _BODY_RE.match(params.get("msg") or "")
            if m is None or body != expected_event(int(m.group(1))):
                foreign += 1
                continue
            numbers.append(int(m.group(1)))
        seen = set(numbers)
        ok_calls, shed_calls = result.sipp.ok, result.sipp.shed
        created = result.sipp.created
        checks.update({
            "events_not_byte_exact": foreign,
            "duplicate_events": len(numbers) - len(seen),
            "answered_200_without_event": len(ok_calls - seen),
            "shed_503_with_event": len(shed_calls & seen),
            "events_for_calls_never_sent": sum(1 for n in seen if n < 1 or n > created),
            # Raised and answered, but sipp did not log the 200 (it gave up, or was stopped).
            "events_whose_200_sipp_did_not_log": len(seen - ok_calls),
        })
        ok = ok and foreign == 0 and len(numbers) == len(seen) and not (ok_calls - seen) \
            and not (shed_calls & seen) and checks["events_for_calls_never_sent"] == 0
    checks["ok"] = ok
    return checks


# ---- the summary ----------------------------------------------------------------------

def summary(r: DemoResult) -> str:
    sp, s = r.sipp, r.server
    answered = len(sp.answered)
    p = {q: sp.percentile(q) for q in (50, 90, 99)}
    rate = f"{r.rate:,}/s" if r.rate else f"as fast as -l {r.limit} allows"
    lines = [
        f"sipp: {rate} for {r.duration:g} s, {r.processes} front-ends"
        + (f", at most {r.limit} outstanding" if r.limit else ""),
        f"requests sent       {sp.created:>9,}  (sipp calls; plus {sp.stat('Retransmissions(C)'):,} "
        f"retransmissions)",
        f"answered            {answered:>9,}  200: {len(sp.ok):,}  503 (shed): {len(sp.shed):,}  "
        f"failed calls: {sp.stat('FailedCall(C)'):,}",
        f"events received     {r.events:>9,}  in the queue 'sipmsg'" if r.bodies is None else
        f"events received     {len(r.bodies):>9,}  consumed from the queue",
        f"events/s            {r.events_per_s:>9,.0f}  ({r.events:,} in {r.window:.2f} s, "
        f"sipp's launch to the last event in the queue)",
        "response time (ms)  " + (f"p50 {p[50]}  p90 {p[90]}  p99 {p[99]}  max {max(sp.rtt_ms)}  "
                                  f"(sipp's response time 1, {len(sp.rtt_ms):,} answers)"
                                  if sp.rtt_ms else "none recorded"),
        f"server              {s.get('messages', 0):,} MESSAGE transactions, "
        f"{s.get('retrans_answered', 0):,} retransmissions re-answered, "
        f"{s.get('retrans_absorbed', 0):,} absorbed, {s.get('shed_age', 0):,} shed (waited too long), "
        f"{s.get('shed_queue', 0):,} shed (job queue full), "
        f"{s.get('malformed', 0):,} malformed",
        "time in the server  " + "  ".join(f"p{q} < {sip.sojourn_percentile(s, q)} ms" for q in (50, 99, 99.9))
        + "  (kernel receive timestamp to reply)",
    ]
    if r.cpu and r.events:
        lines.append("CPU per event (us)  " + "  ".join(
            f"{kind} {seconds / r.events * 1e6:,.0f}" for kind, seconds in r.cpu.items())
            + (f"  (other processes kept {r.machine['others_cores']:.2f} of {r.machine['cores']} cores busy)"
               if r.machine else ""))
    if r.sample is not None:
        lines.append(f"sample event        {r.sample!r}")
    c = r.checks
    if "duplicate_events" in c:
        lines.append(
            f"exactly once        {'yes' if c['ok'] else 'NO'}: {c['answered_200_without_event']} answered "
            f"without event, {c['duplicate_events']} duplicates, {c['events_not_byte_exact']} not byte-exact, "
            f"{c['shed_503_with_event']} shed with event, {c['events_for_calls_never_sent']} without a MESSAGE")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=2000,
                        help="MESSAGE requests per second (default 2000; 0: as fast as --limit allows)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of traffic (default 10)")
    parser.add_argument("--processes", type=int, default=4, help="front-end processes (default 4)")
    parser.add_argument("--limit", type=int, default=None,
                        help="sipp -l: most requests outstanding (default: sipp's own; 32 with --rate 0)")
    parser.add_argument("--shed-age", type=float, default=0.1,
                        help="503 for a MESSAGE that waited longer than this in the socket (s; default 0.1)")
    parser.add_argument("--sync", action="store_true",
                        help="sync_mode=1: answer 200 only after the broker confirmed the event")
    parser.add_argument("--keep", metavar="DIR", help="keep sipp's files in DIR")
    args = parser.parse_args(argv)
    if not os.access(SIPP, os.X_OK):
        print(f"{SIPP} not found: install Debian's sip-tester (apt-get install sip-tester)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format=workers.base.logs.FORMAT)
    rate = args.rate or None
    limit = args.limit if args.limit is not None else (32 if rate is None else None)
    print("starting a private RabbitMQ broker on 127.0.0.1 ...", flush=True)
    with PrivateBroker() as broker:
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
        result = run(broker, rate=rate, duration=args.duration, processes=args.processes,
                     limit=limit, workdir=args.keep, sync=args.sync, shed_age=args.shed_age,
                     progress=lambda m: print(m, flush=True))
    print()
    print(summary(result))
    return 0 if result.checks.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
