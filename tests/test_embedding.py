"""workers.serve() the way servers embed it: threads, asyncio, foreign reapers, forks and exits.

The real servers (gunicorn, uvicorn) are in test_servers.py; these tests
pin each behaviour down on its own, in this process or in a program
(tests/apps/embedded.py) when the scenario needs a process of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

import opsevent
import workers
from helpers import ROOT, wait_for
from opsevent import Status
from workers.channel.replies import Replier, ReplyBox
from workers.demo.broker import consume, queue_count
from workers.processes.service import AlreadyServed

pytestmark = pytest.mark.broker

QLEN = int(open("/proc/sys/net/unix/max_dgram_qlen").read())


def served_evi(broker, queue, **settings):
    evi = opsevent.EventInterface(**settings)
    evi.subscribe_event("E_EMBED", broker.socket(queue))
    return evi


def run_app(*args, timeout=60) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "apps" / "embedded.py"), *args], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "stderr": out.stderr}


# ---- start and stop ----------------------------------------------------------------------------------------

def test_events_raised_right_after_serve_and_before_stop_are_all_published(broker, clean_queue):
    for round_ in range(5):  # the race was a stop sent before the worker had its handler
        evi = served_evi(broker, clean_queue)
        with workers.serve(evi):
            for n in range(20):
                assert evi.raise_event("E_EMBED", {"round": round_, "n": n})
    bodies = consume(broker, clean_queue, 100, timeout=10)
    assert sorted(bodies) == sorted(b"E_EMBED\nround::%d\nn::%d\n" % (r, n) for r in range(5) for n in range(20))


def test_serving_one_event_interface_twice_is_refused_and_the_first_service_keeps_working(broker, clean_queue):
    evi = served_evi(broker, clean_queue, sync_mode=True)
    with workers.serve(evi):
        with pytest.raises(AlreadyServed, match="already served by a RabbitMQ worker service started in this"):
            workers.serve(evi)
        pid = os.fork()
        if pid == 0:  # a child that inherited it, as a gunicorn worker whose app calls serve() again
            try:
                workers.serve(evi)
                os._exit(1)
            except AlreadyServed as exc:
                os._exit(0 if "whose child this process is" in str(exc) else 2)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert evi.raise_event("E_EMBED", {"n": 1}).deliveries[0].status is Status.CONFIRMED
    assert evi.raise_event("E_EMBED", {"n": 2}).deliveries[0].status is Status.NOT_RUNNING


def test_a_served_event_interface_cannot_be_pickled_for_a_spawned_process_and_says_what_to_do(broker, queue_name):
    evi = served_evi(broker, queue_name)
    with workers.serve(evi):
        with pytest.raises(TypeError, match=r"only by fork.*get_context\('fork'\).*workers.serve\(evi\)"):
            pickle.dumps(evi)
        process = multiprocessing.get_context("spawn").Process(target=print, args=(evi,))
        with pytest.raises(TypeError, match="only by fork"):
            process.start()


def test_serving_changes_nothing_in_the_applications_logging(broker, clean_queue):
    root, pika_logger = logging.getLogger(), logging.getLogger("pika")
    before = (list(root.handlers), root.level, pika_logger.level, list(pika_logger.handlers))
    evi = served_evi(broker, clean_queue)
    with workers.serve(evi):
        assert evi.raise_event("E_EMBED", {"n": 0})
        during = (list(root.handlers), root.level, pika_logger.level, list(pika_logger.handlers))
    assert during == before
    assert (list(root.handlers), root.level, pika_logger.level, list(pika_logger.handlers)) == before


# ---- a dead worker ------------------------------------------------------------------------------------------

def test_a_worker_reaped_by_another_part_of_the_process_is_replaced_within_a_second_and_reported(
        broker, clean_queue):
    result = run_app("reaper", broker.socket(clean_queue))
    assert result["replaced"] <= 1.0, result  # from the kill to the new worker's fork
    assert result["new"] != result["old"] and result["worker_starts"] == 2
    # What the dead worker held (here: nothing, all 100 were confirmed) is in the stats and the log.
    assert result["lost"] == 0
    assert re.search(rf"pid {result['old']} died \((killed by SIGKILL|exit status unknown \(reaped by another "
                     rf"part of this process\))\) holding 0 events", result["stderr"]), result["stderr"]
    bodies = consume(broker, clean_queue, 300, timeout=15)
    assert sorted(bodies) == sorted(b"E_EMBED\nn::%d\n" % n for n in range(300))
    assert "Exception ignored" not in result["stderr"] and "Traceback" not in result["stderr"]


# ---- sync replies: any number of waiters ------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 8, 64, 256])
def test_every_thread_of_one_process_gets_its_own_sync_status(broker, clean_queue, threads):
    rounds = max(4, 512 // threads)
    evi = served_evi(broker, clean_queue, sync_mode=True, sync_timeout=10.0)
    results = {}

    def raiser(t):
        for r in range(rounds):
            results[(t, r)] = evi.raise_event("E_EMBED", {"t": t, "r": r})

    with workers.serve(evi) as service:
        pool = [threading.Thread(target=raiser, args=(t,)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(60)
        stats = wait_for(lambda: (s := service.stats()).get("confirmed") == threads * rounds and s, 5, "stats")
    statuses = {key: [(d.status, d.reason) for d in result.deliveries] for key, result in results.items()}
    assert len(results) == threads * rounds
    assert all(s == [(Status.CONFIRMED, "")] for s in statuses.values()), \
        {k: s for k, s in statuses.items() if s != [(Status.CONFIRMED, "")]}
    assert stats["replies_lost"] == 0 and stats["replies_sent"] == threads * rounds
    bodies = consume(broker, clean_queue, threads * rounds, timeout=15)
    assert sorted(bodies) == sorted(b"E_EMBED\nt::%d\nr::%d\n" % (t, r) for t in range(threads) for r in range(rounds))


def test_256_concurrent_asyncio_awaits_each_get_their_own_sync_status(broker, clean_queue):
    evi = served_evi(broker, clean_queue, sync_mode=True, sync_timeout=10.0)

    async def main():
        results = []
        for r in range(4):
            results += await asyncio.gather(*(evi.araise_event("E_EMBED", {"t": t, "r": r}) for t in range(256)))
        return results

    with workers.serve(evi) as service:
        results = asyncio.run(main())
        stats = wait_for(lambda: (s := service.stats()).get("confirmed") == 1024 and s, 5, "stats")
    assert [d.status for result in results for d in result.deliveries] == [Status.CONFIRMED] * 1024
    assert stats["replies_lost"] == 0
    bodies = consume(broker, clean_queue, 1024, timeout=15)
    assert sorted(bodies) == sorted(b"E_EMBED\nt::%d\nr::%d\n" % (t, r) for t in range(256) for r in range(4))


def test_an_awaited_sync_raise_never_blocks_the_event_loop_and_cancelling_it_leaves_the_others(broker, clean_queue):
    evi = served_evi(broker, clean_queue, sync_mode=True, sync_timeout=1.0)

    async def main(service):
        os.kill(service.process.pid, signal.SIGSTOP)  # nothing will answer for a while
        ticks = []  # (time, ns this thread waited for a CPU so far)
        schedstat = open("/proc/thread-self/schedstat", "rb", buffering=0)

        async def ticker():
            while True:
                ticks.append((time.monotonic(), int(os.pread(schedstat.fileno(), 128, 0).split()[1])))
                await asyncio.sleep(0.01)

        tick = asyncio.ensure_future(ticker())
        waiting = [asyncio.ensure_future(evi.araise_event("E_EMBED", {"n": n})) for n in range(20)]
        await asyncio.sleep(0.2)
        for task in waiting[:10]:
            task.cancel()
        done = await asyncio.gather(*waiting, return_exceptions=True)
        os.kill(service.process.pid, signal.SIGCONT)
        tick.cancel()
        schedstat.close()
        box = evi.transport._reply_box()
        return done, ticks, dict(box._waiting), dict(box._loops)

    with workers.serve(evi) as service:
        t0 = time.monotonic()
        done, ticks, waiting, loops = asyncio.run(main(service))
        elapsed = time.monotonic() - t0
    # The loop ran all along: no gap between ticks beyond 0.25 s, the loop's waits for a CPU aside.
    gaps = [(b - a) - (qb - qa) / 1e9 for (a, qa), (b, qb) in zip(ticks, ticks[1:])]
    assert max(gaps) < 0.25 and ticks[-1][0] - ticks[0][0] >= 0.2, (max(gaps), len(ticks))
    assert all(isinstance(d, asyncio.CancelledError) for d in done[:10])
    assert [d.deliveries[0].status for d in done[10:]] == [Status.TIMEOUT] * 10
    assert all(d.deliveries[0].reason.startswith("outcome unknown") for d in done[10:])
    assert elapsed < 1.0 + 1.0
    assert waiting == {} and loops == {}


# ---- replies the worker cannot deliver ----------------------------------------------------------------------

def test_replies_to_a_full_reply_box_are_held_until_it_has_room_then_delivered_in_order():
    box, replier = ReplyBox(), Replier()
    for seq in range(1, 41):
        box.expect(seq)
        replier.add(box.address, seq, (("confirmed", f"#{seq}"),), time.monotonic() + 10)
        replier.flush()  # one datagram each: more than the box's queue holds
    assert replier.sent == QLEN + 1 and replier.lost == 0
    got = {}
    for seq in range(1, 41):
        replier.sweep()  # the worker's tick retries what is held
        got[seq] = box.wait(seq, time.monotonic() + 2)
    assert got == {seq: (("confirmed", f"#{seq}"),) for seq in range(1, 41)}
    assert replier.sent == 40 and replier.lost == 0


def test_replies_nobody_can_receive_are_counted_and_logged_at_warning(caplog):
    box, replier = ReplyBox(), Replier()
    with caplog.at_level(logging.WARNING, logger="workers.channel.replies"):
        for seq in range(1, 31):  # a box whose owner stopped reading
            replier.add(box.address, seq, (("confirmed", ""),), time.monotonic() + 0.2)
            replier.flush()
        time.sleep(0.3)
        replier.sweep()  # their deadline passed
        replier.add(b"\0opsevent-reply-nobody-here", 1, (("confirmed", ""),), time.monotonic() + 5)
        replier.flush()  # a caller that is gone
        replier.close()  # the total of the episode
    assert replier.lost == 30 - (QLEN + 1) + 1
    assert "sync replies not delivered: the caller's deadline passed while its reply box was full" in caplog.text
    assert f"over; {replier.lost} in all" in caplog.text and "latest: caller gone" in caplog.text


# ---- a process that exits with jobs in its overflow buffer ---------------------------------------------------

def test_a_forked_process_exits_at_once_and_hands_its_buffered_jobs_to_a_stalled_worker(broker, clean_queue):
    result = run_app("handover", broker.socket(clean_queue))
    assert result["buffered"] >= 50 and result["child_exit"] == 0
    assert result["exited_in"] < 1.0, result  # it did not wait for the stopped worker
    assert result["confirmed"] == result["accepted"] == result["raised"]
    assert result["dropped_at_exit"] == 0 and result["depth"] == 0
    assert f"exits with {result['buffered']} queued events; handed to the RabbitMQ worker in a spool file" \
        not in result["stderr"]  # INFO: not shown without the application asking
    bodies = consume(broker, clean_queue, result["accepted"], timeout=15)
    assert sorted(bodies) == sorted(b"E_EMBED\nn::%d\npad::%s\n" % (n, b"x" * 3500)
                                    for n in range(result["accepted"]))


def test_jobs_in_the_buffer_of_a_process_killed_with_sigkill_are_counted_logged_and_free_their_slots(
        broker, clean_queue):
    result = run_app("killed", broker.socket(clean_queue))
    assert result["child_exit"] == -signal.SIGKILL and result["buffered"] >= 50
    assert result["lost_with_dead_frontends"] == result["buffered"], result
    assert result["confirmed"] == result["accepted"] - result["buffered"]
    assert result["depth"] == 0, result  # no slot leaked
    assert (f"ended with {result['buffered']} queued events in its buffer, never handed over (killed, or it "
            f"exited without its at-exit hand-over): lost; their queue slots are free again") in result["stderr"]
    bodies = consume(broker, clean_queue, result["confirmed"], timeout=15)
    assert sorted(bodies) == sorted(b"E_EMBED\nn::%d\npad::%s\n" % (n, b"x" * 3500)
                                    for n in range(result["accepted"] - result["buffered"]))


def test_jobs_a_process_cannot_hand_over_at_exit_are_counted_logged_and_free_their_slots(broker, clean_queue):
    result = run_app("drop", broker.socket(clean_queue))
    assert result["child_exit"] == 0 and result["buffered"] >= 50
    assert result["dropped_at_exit"] == result["buffered"], result
    assert result["confirmed"] == result["accepted"] - result["buffered"]
    assert result["raised"] == result["accepted"] and result["depth"] == 0  # no slot leaked
    assert f"exiting with {result['buffered']} queued events it cannot hand to the RabbitMQ worker" \
        in result["stderr"]
    assert queue_count(broker, clean_queue) == result["confirmed"]
