"""The bench's smoke run: every scenario and baseline once, tiny counts, no timing assertions.

It keeps ``python -m bench`` from rotting: it must exit 0, and its JSON must
hold every scenario and baseline with a positive rate and no missing event.
It runs against the session's broker the way a user points the bench at their
own: ``--socket`` with a user and a vhost of its own, whose password must
appear nowhere in what the bench prints or writes, and which must be left with
no queue.  The last test renders a run whose B4 could not be built.
"""

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from bench import report, verdicts

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = ["async.p1", "async.p4", "async.p4.noheader", "sync.p1", "sync.p8", "sync.t64", "sync.a256",
             "sync.fixed", "async.body100", "async.body1024", "async.body16384",
             "async.fanout1", "async.fanout4", "async.fanout16", "memory.frontend"]
BASELINES = ["b1", "b2.p1", "b2.p4", "b4.w10000", "b3", "b4.w8", "b3.fixed",
             "b1.body100", "b1.body1024", "b1.body16384",
             "b1.fanout1", "b1.fanout4", "b1.fanout16"]
PREFIX = "smoke-bench"


@pytest.fixture
def bench_account(broker):
    """A vhost and a user of the bench's own, allowed only its queues (and the default exchange)."""
    tag = uuid.uuid4().hex[:8]
    vhost, user, password = f"bench-{tag}", f"bench-{tag}", f"pw:/@%{tag}"
    broker.ctl("add_vhost", vhost)
    broker.ctl("add_user", user, password)
    mine = f"^{PREFIX}-.*"
    broker.ctl("set_permissions", "-p", vhost, user, mine, rf"^({PREFIX}-.*|amq\.default)$", mine)
    yield vhost, user, password
    broker.ctl("delete_user", user)
    broker.ctl("delete_vhost", vhost)


@pytest.mark.broker
@pytest.mark.timeout(240)
def test_bench_smoke(broker, bench_account, tmp_path):
    vhost, user, password = bench_account
    socket = f"rabbitmq:{user}:{quote(password, safe='')}@{broker.host}:{broker.port}/vhost={vhost};?{PREFIX}"
    out = tmp_path / "bench.json"
    charts = tmp_path / "charts"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out), "--charts", str(charts), "--socket", socket],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"

    text = out.read_text()
    for shown in (proc.stdout, proc.stderr, text):
        assert password not in shown and quote(password, safe="") not in shown
    assert broker.ctl("list_queues", "-p", vhost, "name", "--silent").strip() == ""
    doc = json.loads(text)
    assert doc["smoke"] is True
    assert doc["errors"] == [] and doc["missing_total"] == 0
    assert doc["broker"]["label"] == f"{user}@{broker.host}:{broker.port}/{vhost}"
    assert sorted(doc["scenarios"]) == sorted(SCENARIOS)
    assert sorted(doc["baselines"]) == sorted(BASELINES)
    _check_runs(doc)
    assert {t["verdict"] for t in doc["targets"]} <= {"PASS", "MISS", "n/a"}
    assert len(doc["targets"]) == 10
    assert sorted(p.name for p in charts.iterdir()) == ["sync_latency.png", "throughput.png"]


def _check_runs(doc):
    for name, run in {**doc["scenarios"], **doc["baselines"]}.items():
        rate = run.get("events_per_s") or run.get("confirmed_per_s")
        assert rate and rate > 0, f"{name}: no rate in {run}"
        assert run["missing"] == 0, f"{name}: {run['missing']} events missing"
        assert not run["errors"], f"{name}: {run['errors']}"
    scenarios, baselines = doc["scenarios"], doc["baselines"]
    assert scenarios["async.p4"]["caller_us"]["count"] > 0 and baselines["b2.p4"]["caller_us"]["count"] > 0
    assert scenarios["sync.fixed"]["latency_from_schedule_us"]["count"] > 0
    assert scenarios["memory.frontend"]["frontend_rss"][0]["growth_kib"] is not None
    assert scenarios["sync.t64"]["threads"] == 64 and scenarios["sync.a256"]["awaits"] == 256
    ours = scenarios["async.p4"]["properties"]
    for name, window in (("b4.w10000", 10_000), ("b4.w8", 8)):
        b4 = baselines[name]
        assert b4["confirmed"] == b4["events"] and b4["nacked"] == b4["returned"] == 0
        assert 0 < b4["max_outstanding"] <= window
        # The same message as ours, but for its own id and time.
        same = {k: v for k, v in b4["properties"].items() if k not in ("message_id", "timestamp")}
        assert same == {k: v for k, v in ours.items() if k not in ("message_id", "timestamp")}
        for shown in (b4["properties"], ours):
            assert re.fullmatch(r"[0-9a-f]{16}-\d+", shown["message_id"]) and shown["timestamp"] > 0


def test_a_b4_that_cannot_be_built_leaves_its_figures_and_verdicts_missing():
    reason = "B4 did not build (gcc ...): amqp.h: No such file or directory"
    res = {"b4.w10000": {"kind": "baseline", "group": "throughput", "window": 10_000, "unavailable": reason,
                         "errors": []},
           "async.p4": {"kind": "ours", "mode": "async", "group": "throughput", "events_per_s": 30_000.0,
                        "missing": 0, "errors": []}}
    rows = {row[0]: row for _title, _headers, rows in report.tables(res) for row in rows}
    b4_row = next(row for label, row in rows.items() if label.startswith("B4"))
    assert b4_row[1] == "not built"
    assert rows["opsevent async, 4 front-ends"][2] == "—"  # no ratio to a figure that does not exist
    judged = {v["target"].split(":")[0]: v for v in verdicts.targets(res)}
    verdict = judged["async, 4 front-ends"]
    assert verdict["verdict"] == "n/a" and "B4 not measured: B4 did not build" in verdict["detail"]
    assert report.one_line(res["b4.w10000"]).startswith("NOT MEASURED: B4 did not build")
