"""The bench's smoke run: every scenario and baseline once, tiny counts, no timing assertions.

It keeps ``python -m bench`` from rotting: it must exit 0, and its JSON must
hold every scenario and baseline with a positive rate and no missing event.
It runs against the session's broker (``--broker-port``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = ["async.p1", "async.p4", "async.p4.noheader", "sync.p1", "sync.p8", "sync.fixed",
             "async.body100", "async.body1024", "async.body16384",
             "async.fanout1", "async.fanout4", "async.fanout16", "memory.frontend"]
BASELINES = ["b1", "b2.p1", "b2.p4", "b3", "b3.fixed",
             "b1.body100", "b1.body1024", "b1.body16384",
             "b1.fanout1", "b1.fanout4", "b1.fanout16"]


@pytest.mark.broker
@pytest.mark.timeout(180)
def test_bench_smoke(broker, tmp_path):
    out = tmp_path / "bench.json"
    charts = tmp_path / "charts"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out), "--charts", str(charts),
         "--broker-host", broker.host, "--broker-port", str(broker.port)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"

    doc = json.loads(out.read_text())
    assert doc["smoke"] is True
    assert doc["errors"] == [] and doc["missing_total"] == 0
    assert sorted(doc["scenarios"]) == sorted(SCENARIOS)
    assert sorted(doc["baselines"]) == sorted(BASELINES)
    for name, run in {**doc["scenarios"], **doc["baselines"]}.items():
        rate = run.get("events_per_s") or run.get("confirmed_per_s")
        assert rate and rate > 0, f"{name}: no rate in {run}"
        assert run["missing"] == 0, f"{name}: {run['missing']} events missing"
        assert not run["errors"], f"{name}: {run['errors']}"
    for name in ("async.p4", "b2.p4"):
        assert doc["scenarios" if name.startswith("async") else "baselines"][name]["caller_us"]["count"] > 0
    assert doc["scenarios"]["sync.fixed"]["latency_from_schedule_us"]["count"] > 0
    assert doc["scenarios"]["memory.frontend"]["frontend_rss"][0]["growth_kib"] is not None
    assert {t["verdict"] for t in doc["targets"]} <= {"PASS", "MISS", "n/a"}
    assert len(doc["targets"]) == 8
    assert sorted(p.name for p in charts.iterdir()) == ["sync_latency.png", "throughput.png"]
