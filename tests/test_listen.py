"""``opsevent listen``: a consumer's view of a socket, against the private broker."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

import opsevent
import workers
from helpers import ROOT, assert_no_secret, opsevent_cli, secret_socket
from workers.control.listen import as_json, as_table
from workers.demo.broker import declare_queue, queue_count
from workers.rabbitmq.consumer import Message

SECRET = "s3cr3t"


def publish_raw(broker, routing_key: str, body: bytes, exchange: str = "") -> None:
    """Publish as OpenSIPS does: no properties at all."""
    conn = broker.connect()
    try:
        conn.channel().basic_publish(exchange, routing_key, body)
    finally:
        conn.close()


# ---- how an event is printed (no broker) ---------------------------------------------------

OURS = Message(1, "", "sipmsg", False,
               {"content_type": "text/plain", "message_id": "ab12-7", "timestamp": 1795689120,
                "app_id": "opsevent", "headers": {"event": "E_SIP_MESSAGE"}},
               b'E_SIP_MESSAGE\nuser::alice\nmsg::"hello,\r\n"\n')
OPENSIPS_2_4 = Message(2, "", "sipmsg", True, {}, b'E_SIP_MESSAGE\nmsg::"hello alice\r\n"\nuser::alice')


def test_an_event_prints_as_a_head_line_and_a_table_of_its_parameters():
    assert as_table(OURS).splitlines() == [
        "#1 E_SIP_MESSAGE  format=lines  exchange=''  routing_key='sipmsg'  content_type=text/plain  "
        'message_id=ab12-7  timestamp=1795689120  app_id=opsevent  headers={"event": "E_SIP_MESSAGE"}',
        "PARAM  VALUE",
        "user   alice",
        "msg    hello,\\r\\n",
    ]
    assert as_table(OPENSIPS_2_4).splitlines() == [
        "#2 E_SIP_MESSAGE  format=opensips  exchange=''  routing_key='sipmsg'  redelivered",
        "PARAM  VALUE",
        "msg    hello alice\\r\\n",
        "user   alice",
    ]


def test_an_event_prints_as_one_json_line_with_its_properties():
    assert json.loads(as_json(OURS)) == {
        "n": 1, "exchange": "", "routing_key": "sipmsg", "redelivered": False,
        "properties": {"content_type": "text/plain", "message_id": "ab12-7", "timestamp": 1795689120,
                       "app_id": "opsevent", "headers": {"event": "E_SIP_MESSAGE"}},
        "event": "E_SIP_MESSAGE", "format": "lines", "params": [["user", "alice"], ["msg", "hello,\r\n"]]}


def test_what_is_not_an_event_or_not_utf8_still_prints_on_one_line():
    junk = Message(3, "x", "k", False, {"content_type": "application/json"}, b"\xff not json")
    record = json.loads(as_json(junk))
    assert record["error"].startswith("event body, byte 0 (line 1): a JSON-RPC body must be a JSON object")
    assert base64.b64decode(record["body_base64"]) == b"\xff not json"
    assert as_table(junk).splitlines()[0].startswith("#3 not an event: event body, byte 0")
    latin1 = Message(4, "", "q", False, {}, b"E_X\nmsg::caf\xe9")
    assert json.loads(as_json(latin1))["params"] == [["msg", "caf\udce9"]]  # JSON's \udce9 escape
    assert as_table(latin1).splitlines()[-1] == "msg    caf\\udce9"


# ---- against the broker ----------------------------------------------------------------------

@pytest.mark.broker
def test_listen_reads_our_events_and_opensips_ones_from_the_sockets_queue_with_their_properties(
        broker, secret_user, queue_name):
    declare_queue(broker, queue_name)
    socket = secret_socket(broker, queue_name)
    evi = opsevent.EventInterface(sync_mode=True)
    evi.subscribe_event("E_PIKE_BLOCKED", socket)
    with workers.serve(evi, install_logging=False):
        raised = evi.raise_event("E_PIKE_BLOCKED", {"ip": "192.168.2.11"})
        assert raised, raised.failures
    publish_raw(broker, queue_name, b'E_SIP_MESSAGE\nmsg::say "hi", ok\nuser::alice')          # 2.4
    publish_raw(broker, queue_name, b'{"jsonrpc":"2.0","method":"E_SEND_SMS","params":{"to":"+40"}}')  # 3.1.1+
    out = opsevent_cli("listen", socket, "--count", "3", "--timeout", "20", "--json")
    assert out.returncode == 0, out.stderr
    first, second, third = (json.loads(line) for line in out.stdout.splitlines())
    assert (first["event"], first["format"], first["params"]) == (
        "E_PIKE_BLOCKED", "lines", [["ip", "192.168.2.11"]])
    assert first["properties"]["content_type"] == "text/plain"
    assert first["properties"]["message_id"] == raised.message_id
    assert first["properties"]["headers"] == {"event": "E_PIKE_BLOCKED"}
    assert (second["event"], second["format"], second["params"], second["properties"]) == (
        "E_SIP_MESSAGE", "opensips", [["msg", 'say "hi", ok'], ["user", "alice"]], {})
    assert (third["event"], third["format"], third["params"]) == ("E_SEND_SMS", "json", [["to", "+40"]])
    assert f"listening on queue '{queue_name}' at {secret_user}@127.0.0.1:{broker.port}/%2F" in out.stderr
    assert queue_count(broker, queue_name) == 0  # taken, as a consumer takes them
    assert_no_secret(out.stdout, out.stderr, repr(raised))


@pytest.mark.broker
def test_listen_binds_a_queue_of_its_own_to_the_sockets_exchange_and_takes_nothing_from_others(
        broker, queue_name):
    declare_queue(broker, queue_name)
    conn = broker.connect()
    conn.channel().queue_bind(queue_name, "amq.fanout")
    conn.close()
    listener = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "listen", f"rabbitmq:127.0.0.1:{broker.port}/amq.fanout?",
         "--count", "1", "--timeout", "20"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        ready = listener.stderr.readline()  # bound: from here on it sees every event
        assert "(a queue of our own, bound to exchange 'amq.fanout' with key '')" in ready, ready
        evi = opsevent.EventInterface(sync_mode=True, format="opensips")
        evi.subscribe_event("E_FANOUT", f"rabbitmq:127.0.0.1:{broker.port}/amq.fanout?")
        with workers.serve(evi, install_logging=False):
            assert evi.raise_event("E_FANOUT", [("n", 1), (None, "x\ny")])
        out, err = listener.communicate(timeout=25)
    finally:
        listener.kill()
    assert listener.returncode == 0, err
    assert out.splitlines()[1:4] == [
        "PARAM  VALUE",
        "n      1",
        "-      x\\ny",
    ]
    assert out.startswith("#1 E_FANOUT  format=opensips  exchange='amq.fanout'  routing_key=''  "
                          "content_type=text/x-opensips-event")
    assert queue_count(broker, queue_name) == 1  # the other queue bound to it still got its copy
    conn = broker.connect()
    conn.channel().queue_delete(queue_name)
    conn.close()


@pytest.mark.broker
def test_listen_stops_at_its_timeout_and_fails_when_the_count_was_not_reached(broker, clean_queue):
    publish_raw(broker, clean_queue, b"E_ONE")
    out = opsevent_cli("listen", broker.socket(clean_queue), "--count", "2", "--timeout", "1.5")
    assert out.returncode == 1
    assert out.stdout.startswith("#1 E_ONE  format=opensips")
    assert "1 of 2 events arrived within 1.5 s" in out.stderr
    assert queue_count(broker, clean_queue) == 0
    publish_raw(broker, clean_queue, b"E_TWO")
    out = opsevent_cli("listen", broker.socket(clean_queue), "--timeout", "1")
    assert out.returncode == 0 and "E_TWO" in out.stdout  # no count: a timeout is the plan


@pytest.mark.parametrize("make_socket, message", [
    (lambda b: f"rabbitmq:guest:{SECRET}@127.0.0.1:{b.port}/q", "access refused for user 'guest'"),
    (lambda b: f"rabbitmq:127.0.0.1:{b.port}/no-such-queue-here", "no queue 'no-such-queue-here'"),
    (lambda b: f"rabbitmq:127.0.0.1:{b.port}/no.such.exchange?k",
     "cannot bind to exchange 'no.such.exchange'"),
    (lambda b: f"rabbitmq:u:{SECRET}@127.0.0.1:1,127.0.0.1:{b.port}/q", "access refused"),
])
@pytest.mark.broker
def test_listen_says_what_failed_and_never_shows_the_password(broker, make_socket, message):
    out = opsevent_cli("listen", make_socket(broker), "--timeout", "5")
    assert out.returncode == 1
    assert message in out.stderr, out.stderr
    assert SECRET not in out.stdout + out.stderr


@pytest.mark.parametrize("args, message", [
    (["listen", "rabbitmq:u:s3cr3t@h:1:2/q"], "host 'h:1:2' has more than one ':'"),
    (["listen", "rabbitmq:u:s3cr3t@mq/tls;?q"], "uses TLS: give --tls-ca-file"),
    (["listen", "rabbitmq:mq/q", "--count", "0"], "a number of events > 0, not '0'"),
])
def test_a_bad_listen_command_is_a_usage_error_naming_the_problem(args, message):
    out = opsevent_cli(*args)
    assert out.returncode == 2
    assert message in out.stderr and "s3cr3t" not in out.stderr
