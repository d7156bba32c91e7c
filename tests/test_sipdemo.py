"""The SIP demo end to end: sipp -> the example SIP server -> RabbitMQ -> the queue.

Exactness, not speed: every MESSAGE sipp saw answered 200 produced exactly
one event, byte-exact; no event exists without its MESSAGE; a retransmitted
MESSAGE produces one event and the same reply every time; junk is counted
and does not stop the server.
"""

from __future__ import annotations

import os
import time

import pytest

from workers.demo import sipdemo
from workers.demo.broker import consume, delete_queue, queue_count

pytestmark = pytest.mark.broker


@pytest.fixture(autouse=True)
def sipp_installed():
    # Like the broker, sipp is a requirement: missing, the test fails and says so.
    assert os.access(sipdemo.SIPP, os.X_OK), \
        f"{sipdemo.SIPP} not found: install Debian's sip-tester (apt-get install sip-tester)"


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def expected_event(n: int) -> bytes:
    """The event for sipp's call *n* (its MESSAGE body is ``opsevent demo message N via sipp`` CR LF),
    written out in the guide's line format, not by the code under test: the CR LF makes it quoted."""
    return b'E_SIP_MESSAGE\nuser::alice\nmsg::"opsevent demo message %d via sipp\r\n"\n' % n


@pytest.mark.timeout(120)
def test_every_answered_message_has_exactly_one_byte_exact_event(broker, queue_name):
    rate, duration = 400, 3
    try:
        r = sipdemo.run(broker, rate=rate, duration=duration, processes=4, limit=None, queue=queue_name)
    finally:
        delete_queue(broker, queue_name)
    sp = r.sipp
    assert sp.returncode == 0 and not sp.killed, sp.stats
    assert sp.created == rate * duration
    # Every request was answered: 200, or 503 if a front-end was kept off the
    # CPU for longer than shed_age (a busy machine) and the server shed it.
    assert set(sp.answered) == set(range(1, sp.created + 1))
    assert len(sp.ok) >= 0.9 * sp.created and set(sp.answered.values()) <= {200, 503}
    assert len(sp.rtt_ms) == sp.created
    # Events: exactly one per MESSAGE answered 200, byte-exact; none for a 503;
    # none without its MESSAGE.
    assert r.bodies is not None and len(r.bodies) == r.events == len(sp.ok)
    assert len(set(r.bodies)) == len(r.bodies)                        # no duplicates
    assert set(r.bodies) == {expected_event(n) for n in sp.ok}  # byte-exact, no strays
    assert r.checks["ok"], r.checks
    assert r.checks["duplicate_events"] == r.checks["answered_200_without_event"] == 0
    assert r.checks["shed_503_with_event"] == r.checks["events_for_calls_never_sent"] == 0
    assert r.server["events"] == r.events and r.server["malformed"] == r.server["errors"] == 0
    assert r.sample == expected_event(int(r.sample.split(b"message ")[1].split(b" ")[0]))
    # The summary prints.
    text = sipdemo.summary(r)
    assert "exactly once        yes" in text and "events/s" in text


@pytest.mark.timeout(60)
def test_a_retransmitted_message_makes_one_event_and_the_same_reply(broker, clean_queue):
    # shed_age 1 s: on a busy machine a front-end may be off the CPU for a while; this
    # test is about retransmissions, not shedding.
    with sipdemo.running_server(broker.socket(clean_queue), processes=4, shed_age=1.0) as (server, sup):
        port = server.port
        data = sipdemo.request("MESSAGE", port, body=b"once, only once")
        # A retransmission, as a UAC sends it: the same datagram again, after the answer.
        replies = []
        for _ in range(3):
            replies += sipdemo.exchange(port, [data], timeout=2.0)
        # Copies in flight together (they may land on different front-ends):
        burst = sipdemo.request("MESSAGE", port, body=b"burst")
        burst_replies = sipdemo.exchange(port, [burst] * 3, timeout=1.0)
        # Junk is counted and ignored; the next request is answered.
        junk = [b"", b"\x00\xff" * 50, b"MESSAGE sip:a@h SIP/2.0\r\nVia: x\r\n", data[:-5]]
        assert sipdemo.exchange(port, junk, timeout=0.3, expect=1) == []
        after = sipdemo.exchange(port, [sipdemo.request("MESSAGE", port, body=b"after junk")])
        no_user = sipdemo.exchange(port, [sipdemo.request("MESSAGE", port, user=None, body=b"x")])
    totals = server.totals()  # final: every front-end flushed its counters at exit

    assert len(replies) == 3 and len(set(replies)) == 1 and status(replies[0]) == 200
    assert b";tag=" in replies[0].split(b"\r\nTo: ", 1)[1].split(b"\r\n", 1)[0]
    assert 1 <= len(burst_replies) <= 3 and len(set(burst_replies)) == 1 and status(burst_replies[0]) == 200
    assert [status(r) for r in after] == [200]
    assert [status(r) for r in no_user] == [484]
    assert totals["malformed"] == len(junk)
    assert totals["events"] == 3 and totals["messages"] == 3
    assert totals["retrans_answered"] + totals["retrans_absorbed"] == 2 + 2

    # The worker drained at stop: the queue holds exactly the three events.
    deadline = time.monotonic() + 5
    while queue_count(broker, clean_queue) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue_count(broker, clean_queue) == 3
    bodies = consume(broker, clean_queue, 3, timeout=5)
    assert sorted(bodies) == sorted([
        b'E_SIP_MESSAGE\nuser::alice\nmsg::"once, only once"\n',
        b"E_SIP_MESSAGE\nuser::alice\nmsg::burst\n",
        b"E_SIP_MESSAGE\nuser::alice\nmsg::after junk\n",
    ])


@pytest.mark.timeout(90)
def test_the_bench_ceiling_answers_every_message_and_publishes_nothing(broker):
    from bench import sip_scenario

    f = sip_scenario.ceiling(broker, limit=32, duration=2, processes=2)
    assert f["sent"] > 0 and f["failed_calls"] == 0 and f["answered_503"] == 0
    assert f["answered_200"] == f["sent"] == f["server"]["messages"] == f["server"]["replied_200"]
    assert f["events"] == f["server"]["events"] == f["server"]["shed_queue"] == 0
    assert f["answered_per_s"] > 0 and f["cpu_us_per_answer"]["front-ends"] > 0
