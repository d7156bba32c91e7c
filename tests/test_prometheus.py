"""A real Prometheus (Debian's package; ./run installs it) scrapes the metrics endpoint.

The test starts its own Prometheus on 127.0.0.1 and a free port, with a
scrape configuration and a storage folder of its own, scraping every half
second, and asks Prometheus's HTTP API what it stored: while events flow,
while the broker (a private one) is stopped, and after it is back.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import opsevent
import workers
from workers.demo.broker import PrivateBroker, consume, declare_queue, free_port

from helpers import ROOT, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]

PROMETHEUS = Path("/usr/bin/prometheus")
FORK = multiprocessing.get_context("fork")
SCRAPE_EVERY = "500ms"
CONFIG = """\
global:
  scrape_interval: {every}
  scrape_timeout: 400ms
  evaluation_interval: {every}
rule_files: ["{rules}"]
scrape_configs:
  - job_name: opsevent
    static_configs:
      - targets: ["{target}"]
"""


class Prometheus:
    """One Prometheus server of the test's own; ``query()`` and ``query_range()`` ask its HTTP API."""

    def __init__(self, folder: Path, target: str):
        self.folder, self.target = folder, target
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Prometheus":
        assert PROMETHEUS.exists(), f"{PROMETHEUS} is missing: ./run installs Debian's prometheus package"
        config = self.folder / "prometheus.yml"
        rules = self.folder / "alerts.yml"
        rules.write_text(documented_alerts())
        config.write_text(CONFIG.format(every=SCRAPE_EVERY, target=self.target, rules=rules))
        self.log = open(self.folder / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={self.folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(self._ready, 30, f"Prometheus ready on 127.0.0.1:{self.port}", interval=0.2)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _ready(self) -> bool:
        assert self.proc.poll() is None, f"Prometheus exited:\n{self.log_text()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def __exit__(self, *_unused_exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()

    def log_text(self) -> str:
        self.log.flush()
        return (self.folder / "prometheus.log").read_text(errors="replace")[-3000:]

    def api(self, path: str, **params) -> list:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            reply = json.load(response)
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The one value of an instant query; None when it has no result."""
        result = self.api("query", query=expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def values(self, expr: str, start: float, end: float) -> list[float]:
        """The one series of a range query, at every scrape interval from *start* to *end*."""
        (series,) = self.api("query_range", query=expr, start=start, end=end, step=0.5)
        return [float(v) for _t, v in series["values"]]

    def wait(self, expr: str, wanted: float | None, what: str, timeout: float = 30) -> None:
        """Until the instant query's value is *wanted* (None: no result)."""
        wait_for(lambda: self.value(expr) == wanted, timeout, f"{what} ({expr} == {wanted} in Prometheus)",
                 interval=0.25)


def documented_alerts() -> str:
    """The alerting rules docs/metrics.md proposes, as written there."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "metrics.md").read_text(), re.S)
    (rules,) = [block for block in blocks if block.startswith("groups:")]
    return rules


def raise_paced(evi, event: str, count: int, seconds: float, processes: int = 2) -> None:
    """*count* raises from forked processes, spread over about *seconds*, so scrapes see them flow."""
    children = [FORK.Process(target=_raise_paced, args=(evi, event, rank, count // processes, seconds))
                for rank in range(processes)]
    for child in children:
        child.start()
    for child in children:
        child.join(seconds + 30)
        assert child.exitcode == 0


def _raise_paced(evi, event: str, rank: int, count: int, seconds: float) -> None:
    start = time.monotonic()
    for i in range(count):
        time.sleep(max(0.0, start + seconds * i / count - time.monotonic()))
        assert evi.raise_event(event, {"rank": rank, "n": i})


def test_a_real_prometheus_stores_exact_counters_a_backlog_that_grows_and_drains_and_the_failed_connection(
        tmp_path):
    with PrivateBroker() as broker:
        declare_queue(broker, "metrics")
        evi = opsevent.EventInterface(reconnect_max=0.5)
        evi.subscribe_event("E_PROM", broker.socket("metrics"))
        with workers.serve(evi, metrics_address=("127.0.0.1", 0), quiet_pika=True) as service:
            host, port = service.metrics.address
            with Prometheus(tmp_path, f"{host}:{port}") as prom:
                _check_through_an_outage(prom, broker, evi)


def _check_through_an_outage(prom: Prometheus, broker: PrivateBroker, evi) -> None:
    sub = f'event="E_PROM",socket="rabbitmq:guest:***@127.0.0.1:{broker.port}/metrics"'
    link = f'broker="guest@127.0.0.1:{broker.port}/%2F"'
    prom.wait('up{job="opsevent"}', 1, "the endpoint scraped")

    # Events flow: 300 over 4 s, every one confirmed.
    t0 = time.time()
    raise_paced(evi, "E_PROM", 300, 4.0)
    prom.wait(f"opsevent_events_confirmed_total{{{sub}}}", 300, "300 confirmed")
    flowing = prom.values(f"opsevent_events_confirmed_total{{{sub}}}", t0, time.time())
    assert len({v for v in flowing if 0 < v < 300}) >= 2, f"no scrape while the events flowed: {flowing}"
    assert prom.value(f"opsevent_events_raised_total{{{sub}}}") == 300
    assert prom.value(f"opsevent_broker_connected{{{link}}}") == 1
    assert len(consume(broker, "metrics", 300)) == 300  # taken now: a stopped broker forgets transient messages

    # The broker stops: the link's connection fails, and the backlog grows by 50 a round.
    broker.stop_app()
    down = time.time()
    try:
        prom.wait(f"opsevent_broker_connection_failed{{{link}}}", 1, "the failed connection")
        failed_at = time.time()
        assert prom.value(f"opsevent_broker_connected{{{link}}}") == 0
        # The docs' alert sees it (pending: it fires after its "for: 1m").
        prom.wait('count(ALERTS{alertname="OpseventBrokerDisconnected"})', 1, "the docs' disconnected alert")
        for level in (50, 100, 150):
            raise_paced(evi, "E_PROM", 50, 0.2)
            prom.wait(f"opsevent_broker_backlog{{{link}}}", level, f"a backlog of {level}")
        outage = prom.values(f"opsevent_broker_connection_failed{{{link}}}", failed_at, time.time())
    finally:
        broker.start_app()
    assert set(outage) == {1.0}, f"the failed-connection gauge during the outage: {outage}"

    # Back: the backlog drains, and every event is counted once, exactly.
    prom.wait(f"opsevent_events_confirmed_total{{{sub}}}", 450, "all 450 confirmed")
    prom.wait(f"opsevent_broker_backlog{{{link}}}", 0, "the backlog drained")
    time.sleep(1.0)  # the range's last step (every 0.5 s from the start) is after the drained sample
    backlog = prom.values(f"opsevent_broker_backlog{{{link}}}", down, time.time())
    peak = backlog.index(max(backlog))
    assert max(backlog) == 150 and backlog[-1] == 0
    assert backlog[:peak + 1] == sorted(backlog[:peak + 1]), f"the backlog did not only grow: {backlog}"
    assert {50.0, 100.0, 150.0} <= set(backlog[:peak + 1])
    exact = {f"opsevent_events_raised_total{{{sub}}}": 450, f"opsevent_events_published_total{{{sub}}}": 450,
             f"opsevent_events_failed_total{{{sub}}}": 0, f'sum(opsevent_events_dropped_total{{{sub}}})': 0,
             f"opsevent_broker_confirm_latency_seconds_count{{{link}}}": 450,
             f"opsevent_broker_connected{{{link}}}": 1, f"opsevent_broker_connection_failed{{{link}}}": 0}
    assert {expr: prom.value(expr) for expr in exact} == exact
    assert prom.value(f"opsevent_broker_reconnects_total{{{link}}}") >= 1
    assert prom.value(f"opsevent_broker_connections_lost_total{{{link}}}") >= 1
    assert prom.value('count(ALERTS{alertname="OpseventEventsDropped"})') is None  # nothing was dropped
    prom.wait('count(ALERTS{alertname="OpseventBrokerDisconnected"})', None, "the disconnected alert gone")
    assert len(consume(broker, "metrics", 150, timeout=30)) == 150
