"""Real processes: graceful stop under load, a killed main process, embedding, one log stream."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import opsevent
import workers
from workers.demo.broker import consume, declare_queue, queue_count

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
APP = Path(__file__).resolve().parent / "apps" / "supervised.py"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def start_app(broker, queue_name, tmp_path):
    declare_queue(broker, queue_name)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(APP), broker.socket(queue_name), str(tmp_path)], env=env)
    wait_until(lambda: (tmp_path / "pids").exists(), 20, "the app to start its processes")
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    wait_until(lambda: queue_count(broker, queue_name) >= 2000, 30, "2,000 events in the queue")
    return proc, pids


def test_sigterm_under_load_stops_every_process_and_delivers_every_accepted_event(broker, queue_name, tmp_path):
    proc, pids = start_app(broker, queue_name, tmp_path)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert proc.wait(timeout=15) == 0
    assert time.monotonic() - started < 5
    assert not [pid for pid in pids if alive(pid)]
    accepted = sum(int((tmp_path / f"count-{rank}").read_text()) for rank in range(1, 5))
    assert accepted >= 2000
    bodies = consume(broker, queue_name, accepted, timeout=30)
    assert len(set(bodies)) == accepted  # every accepted event, once
    time.sleep(0.5)
    assert queue_count(broker, queue_name) == 0


def test_killing_the_main_process_leaves_no_process_behind(broker, queue_name, tmp_path):
    proc, pids = start_app(broker, queue_name, tmp_path)
    proc.kill()
    proc.wait(timeout=5)
    wait_until(lambda: not [pid for pid in pids[1:] if alive(pid)], 15, "the children to exit")


def test_the_pool_embedding_example_delivers_every_event(broker, queue_name):
    declare_queue(broker, queue_name)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "pool_example.py"),
                          "--socket", broker.socket(queue_name), "--count", "300"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "300 of 300 events confirmed by the broker" in out.stdout
    bodies = consume(broker, queue_name, 300, timeout=10)
    decoded = [opsevent.decode_event(b) for b in bodies]
    assert {name for name, _ in decoded} == {"E_SIP_MESSAGE"}
    assert sorted(params[0] for _, params in decoded) == sorted(("user", f"user{n}") for n in range(300))


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def logging_target(rank, evi):
    logging.getLogger("app").warning("hello from front-end %d", rank)


def test_records_from_every_process_reach_the_main_process_handlers_named_by_process(broker):
    handler = ListHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        evi = opsevent.EventInterface()
        workers.Supervisor(evi, logging_target, processes=3, install_logging=True).run()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    names = {(r.processName, r.getMessage()) for r in handler.records}
    for rank in (1, 2, 3):
        assert (f"frontend-{rank}", f"hello from front-end {rank}") in names
    assert any(process == "rabbitmq-worker" for process, _ in names)


def crash_once_target(marker_dir):
    def target(rank, evi):
        marker = os.path.join(marker_dir, f"crashed-{rank}")
        if rank == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("front-end 2 crashes on its first run")
        assert evi.raise_event("E_AFTER_CRASH", {"rank": rank})
    return target


def test_a_crashed_frontend_is_logged_and_restarted_without_disturbing_the_others(broker, queue_name, tmp_path,
                                                                                  caplog):
    declare_queue(broker, queue_name)
    evi = opsevent.EventInterface(sync_mode=True)
    evi.subscribe_event("E_AFTER_CRASH", broker.socket(queue_name))
    sup = workers.Supervisor(evi, crash_once_target(str(tmp_path)), processes=3, install_logging=False)
    with caplog.at_level(logging.INFO, logger="workers.processes.supervisor"):
        assert sup.run() == {1: 0, 2: 0, 3: 0}
    assert "front-end 2" in caplog.text and "exited with code 1" in caplog.text
    assert "restarting front-end 2" in caplog.text
    assert sorted(consume(broker, queue_name, 3, timeout=10)) == sorted(
        opsevent.encode_event("E_AFTER_CRASH", {"rank": r}) for r in (1, 2, 3))


def test_a_frontend_that_keeps_crashing_is_given_up_after_the_crash_limit(caplog):
    def always_crash(rank, evi):
        raise RuntimeError("boom")

    sup = workers.Supervisor(opsevent.EventInterface(), always_crash, processes=1, install_logging=False)
    with caplog.at_level(logging.INFO, logger="workers.processes.supervisor"):
        assert sup.run() == {1: 1}
    assert caplog.text.count("restarting front-end 1") == 2  # its third exit within the window is the last
    assert "not restarting it" in caplog.text


def test_the_crash_window_gives_up_at_the_third_death_within_ten_seconds_and_forgets_older_ones():
    from workers.processes.crashes import CrashWindow

    crashes = CrashWindow()
    assert [crashes.died(now) for now in (0.0, 5.0)] == [False, False]
    assert crashes.died(9.9) is True and crashes.count == 3  # the third within 10 s: not restarted
    crashes = CrashWindow()
    assert [crashes.died(now) for now in (0.0, 5.0, 10.0, 15.0)] == [False, False, False, False]
    assert crashes.count == 2  # the one at 0 s and 5 s are out of the window by then
