"""The opsevent CLI: its grammar, its tables, its exit codes, and end to end against a real service."""

from __future__ import annotations

import json
import time

import pytest

import opsevent
import workers
from opsevent import Status, decode_event
from workers.control.cli import UsageError, main, parse_expire, parse_param, render_stats, table
from workers.demo.broker import consume

from helpers import SECRET, assert_no_secret, opsevent_cli, secret_socket, wait_for

# ---- the grammar ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, pair", [
    ("user=alice", ("user", "alice")),
    ("zip=01234", ("zip", "01234")),          # '=' is always a string
    ("n:=42", ("n", 42)),
    ("n:=-7", ("n", -7)),
    ("msg=a=b", ("msg", "a=b")),             # split at the first '='
    ("msg=", ("msg", "")),
    ("hello", (None, "hello")),               # no '=': unnamed
    ("=a=b", (None, "a=b")),                  # empty name: unnamed, any text
    (":=5", (None, 5)),
    ("", (None, "")),
])
def test_a_raise_param_is_a_named_or_unnamed_string_or_integer(text, pair):
    assert parse_param(text) == pair


@pytest.mark.parametrize("text", ["n:=4.2", "n:=abc", "n:=", ":=0x10"])
def test_colon_equals_takes_only_an_integer(text):
    with pytest.raises(UsageError, match="':=' takes an integer"):
        parse_param(text)


@pytest.mark.parametrize("text, value", [("30", 30), ("0.5", 0.5), ("1e3", 1000.0)])
def test_expire_is_seconds(text, value):
    assert parse_expire(text) == value


@pytest.mark.parametrize("text", ["0", "-3", "abc", "nan", "inf", ""])
def test_a_bad_expire_is_a_usage_error(text):
    with pytest.raises(UsageError, match=f"EXPIRE must be a number of seconds > 0, not {text!r}"):
        parse_expire(text)


@pytest.mark.parametrize("args, message", [
    (["events"], "no control socket: give --socket PATH or set OPSEVENT_CONTROL"),
    (["--socket", "/x", "subscribe", "E_X", "rabbitmq:h/k", "soon"], "EXPIRE must be a number"),
    (["--socket", "/x", "raise", "E_X", "n:=many"], "':=' takes an integer, not 'many'"),
    (["--socket", "/x", "frob"], "invalid choice: 'frob'"),
    (["--socket", "/x", "subscribe", "E_X"], "the following arguments are required: SOCKET"),
    (["--socket", "/x", "unsubscribe", "E_X", "rabbitmq:h/k", "extra"], "unrecognized arguments: extra"),
    (["--socket", "/x", "--timeout", "0", "events"], "a number of seconds > 0, not '0'"),
    (["--socket", "/x", "events", "--timeout", "soon"], "a number of seconds > 0, not 'soon'"),
])
def test_a_usage_error_exits_2_saying_what_was_wrong(args, message, capsys, monkeypatch):
    monkeypatch.delenv("OPSEVENT_CONTROL", raising=False)
    try:
        code = main(args)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_no_service_at_the_path_exits_1_saying_so(tmp_path, capsys):
    assert main(["--socket", str(tmp_path / "ctl"), "events"]) == 1
    assert f"no running supervisor (or workers.serve) at control socket {tmp_path / 'ctl'}: no such file" \
        in capsys.readouterr().err


# ---- the tables ---------------------------------------------------------------------------------

def test_tables_align_text_left_and_numbers_right():
    assert table(["EVENT", "N"], [["E_LONG_NAME", 5], ["E_X", 12345]]).splitlines() == [
        "EVENT             N",
        "E_LONG_NAME       5",
        "E_X          12,345",
    ]
    # A missing value ('-') does not turn a column of numbers into text.
    assert table(["B", "N"], [["a", None], ["b", 10]]).splitlines() == ["B   N", "a   -", "b  10"]


STATS = {
    "pid": 4242, "time": time.time(), "jobs": 10, "outstanding": 0, "confirmed": 9, "unroutable": 1, "queue_depth": 3,
    "brokers": {"guest@127.0.0.1:5672/%2F": {
        "state": "open", "blocked": False, "pending": 0, "inflight": 0, "published": 10,
        "connects": 1, "connection_lost": 0, "last_error": "", "zz_new_counter": 7}},
    "subscriptions": [
        {"event": "E_X", "socket": "rabbitmq:guest:***@127.0.0.1:5672/q", "raised": 10, "queued": 10,
         "published": 10, "confirmed": 9, "nacked": 0, "unroutable": 1, "failed": 0,
         "timeout": 0, "dropped_queue_full": 0, "dropped_expired": 0, "too_large": 0}],
}


def test_stats_show_totals_brokers_and_subscriptions_with_the_columns_present():
    text = render_stats(STATS)
    lines = text.splitlines()
    assert lines[0].startswith("RabbitMQ worker pid 4242, ")
    totals = lines[lines.index("totals") + 2:lines.index("brokers") - 1]
    assert [line.split() for line in totals] == [
        ["jobs", "10"], ["outstanding", "0"], ["queue_depth", "3"], ["confirmed", "9"], ["unroutable", "1"]]
    broker_header = lines[lines.index("brokers") + 1].split()
    assert broker_header == ["BROKER", "STATE", "BLOCKED", "PENDING", "INFLIGHT", "PUBLISHED", "CONNECTS",
                             "CONNECTION_LOST", "ZZ_NEW_COUNTER", "LAST_ERROR"]
    sub_header = lines[lines.index("subscriptions") + 1].split()
    assert sub_header == ["EVENT", "SOCKET", "RAISED", "QUEUED", "PUBLISHED", "CONFIRMED", "NACKED",
                          "UNROUTABLE", "FAILED", "TIMEOUT", "DROPPED_QUEUE_FULL",
                          "DROPPED_EXPIRED", "TOO_LARGE"]
    assert "rabbitmq:guest:***@127.0.0.1:5672/q" in lines[lines.index("subscriptions") + 2]


def test_stats_without_the_per_subscription_section_show_no_such_table():
    stats = {k: v for k, v in STATS.items() if k not in ("subscriptions", "queue_depth")}
    text = render_stats(stats)
    assert "brokers" in text and "subscriptions" not in text and "queue_depth" not in text


def test_stats_before_the_first_snapshot_say_so():
    assert render_stats({}) == "no statistics yet: the RabbitMQ worker writes them every second"


# ---- end to end: the CLI as a subprocess against a running service -----------------------------

@pytest.mark.broker
def test_a_session_subscribe_list_raise_unsubscribe_through_the_cli(broker, secret_user, clean_queue, tmp_path):
    path = str(tmp_path / "ctl")
    env = {"OPSEVENT_CONTROL": path}
    sock = secret_socket(broker, clean_queue)
    outs = []
    with workers.serve(opsevent.EventInterface(), control_path=path, install_logging=False):
        out = opsevent_cli("subscribe", "E_CLI", sock, env=env)
        outs.append(out)
        assert (out.returncode, out.stderr) == (0, "")
        assert out.stdout.strip() == (f"subscribed rabbitmq:{secret_user}:***@127.0.0.1:{broker.port}/"
                                      f"{clean_queue} to E_CLI (never expires)")
        out = opsevent_cli("--json", "raise", "E_CLI", "user=alice", "n:=42", "zip=01234",
                           "=a=b", "msg=hi, \"there\"\n", env=env)
        outs.append(out)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["delivered"] is True
        assert [d["status"] for d in result["deliveries"]] == ["queued"]
        assert [d["socket"] for d in result["deliveries"]] == [
            f"rabbitmq:{secret_user}:***@127.0.0.1:{broker.port}/{clean_queue}"]
        ((body, props),) = consume(broker, clean_queue, 1, properties=True)
        assert props.message_id == result["message_id"]
        assert decode_event(body) == ("E_CLI", [("user", "alice"), ("n", "42"), ("zip", "01234"),
                                                (None, "a=b"), ("msg", 'hi, "there"\n')])
        # The guide's line format, written out: a value with ',' '"' or LF is quoted, '"' escaped.
        assert body == b'E_CLI\nuser::alice\nn::42\nzip::01234\na=b\nmsg::"hi, \\"there\\"\n"\n'
        out = opsevent_cli("raise", "E_CLI", "n:=1", env=env)
        outs.append(out)
        assert out.returncode == 0 and out.stdout.startswith("E_CLI raised: 1 of 1 subscribers ok"), out.stdout
        assert consume(broker, clean_queue, 1) == [b"E_CLI\nn::1\n"]
        out = opsevent_cli("events", env=env)
        assert out.stdout.splitlines() == ["EVENT  SUBSCRIBERS", "E_CLI            1"]
        out = opsevent_cli("unsubscribe", "E_CLI", sock, env=env)
        outs.append(out)
        assert out.returncode == 0 and out.stdout.startswith(f"unsubscribed rabbitmq:{secret_user}:***@")
        out = opsevent_cli("unsubscribe", "E_CLI", sock, env=env)
        outs.append(out)
        assert out.returncode == 1 and "is not subscribed to E_CLI" in out.stderr
        out = opsevent_cli("--json", "events", env=env)
        assert json.loads(out.stdout) == []
    assert_no_secret(*(out.stdout + out.stderr for out in outs))


@pytest.mark.broker
def test_subscribers_never_show_a_password_in_tables_json_or_the_log(broker, tmp_path, caplog):
    path = str(tmp_path / "ctl")
    odd = "s3cr3t@x:/?"  # characters the socket must %-encode: neither form may show
    secret = broker.socket("q-secret", user="ops", password=odd)
    evi = opsevent.EventInterface()
    evi.subscribe_event("E_BEFORE", broker.socket("q-before", user="ops", password=SECRET))
    with caplog.at_level("INFO"), workers.serve(evi, control_path=path, install_logging=False):
        subscribed = opsevent_cli("--socket", path, "subscribe", "E_SECRET", secret, "600")
        listed = opsevent_cli("--socket", path, "subscribers")
        as_json = opsevent_cli("--socket", path, "subscribers", "E_SECRET", "--json")
        unsubscribed = opsevent_cli("--socket", path, "unsubscribe", "E_SECRET", secret)
    outputs = [caplog.text]
    for out in (subscribed, listed, as_json, unsubscribed):
        assert out.returncode == 0, out.stderr
        outputs.append(out.stdout + out.stderr)
    for text in outputs:
        assert "s3cr3t" not in text and "s3cr3t%40x" not in text
    assert_no_secret(*outputs)
    assert "subscribed rabbitmq:ops:***@" in caplog.text
    assert "(expires in 600 s)" in subscribed.stdout
    header, before, after = listed.stdout.splitlines()
    assert header.split() == ["EVENT", "SOCKET", "EXPIRE", "TTL"]
    assert before.split()[:3] == ["E_BEFORE", f"rabbitmq:ops:***@127.0.0.1:{broker.port}/q-before", "never"]
    assert after.split()[:4] == ["E_SECRET", f"rabbitmq:ops:***@127.0.0.1:{broker.port}/q-secret", "600", "s"]
    (entry,) = json.loads(as_json.stdout)
    assert entry["socket"] == f"rabbitmq:ops:***@127.0.0.1:{broker.port}/q-secret"
    assert entry["expire"] == 600 and 590 < entry["ttl"] <= 600


@pytest.mark.broker
def test_a_raise_not_delivered_exits_1_and_shows_each_subscribers_status(broker, secret_user, clean_queue, tmp_path):
    path = str(tmp_path / "ctl")
    evi = opsevent.EventInterface(sync_mode=True, sync_timeout=2.0)
    evi.subscribe_event("E_HALF", secret_socket(broker, clean_queue))
    evi.subscribe_event("E_HALF", secret_socket(broker, "k", exchange="no.such.exchange"))
    with workers.serve(evi, control_path=path, install_logging=False):
        out = opsevent_cli("--socket", path, "raise", "E_HALF", "x=1")
        as_json = opsevent_cli("--socket", path, "--json", "raise", "E_HALF", "x=2")
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "E_HALF raised: 1 of 2 subscribers ok; NOT delivered to every subscriber"
    assert lines[1].split() == ["SOCKET", "STATUS", "REASON"]
    assert lines[2].split()[:2] == [f"rabbitmq:{secret_user}:***@127.0.0.1:{broker.port}/{clean_queue}", "confirmed"]
    assert lines[3].split()[1] == "failed" and "no.such.exchange" in lines[3]
    assert as_json.returncode == 1
    assert [d["status"] for d in json.loads(as_json.stdout)["deliveries"]] == ["confirmed", "failed"]
    assert_no_secret(out.stdout, out.stderr, as_json.stdout, as_json.stderr)


@pytest.mark.broker
def test_stats_json_parses_and_the_table_names_the_broker(broker, secret_user, clean_queue, tmp_path):
    path = str(tmp_path / "ctl")
    evi = opsevent.EventInterface(sync_mode=True)
    evi.subscribe_event("E_S", secret_socket(broker, clean_queue))
    evi.subscribe_event("E_S", secret_socket(broker, "k", exchange="no.such.exchange"))  # a last_error too
    with workers.serve(evi, control_path=path, install_logging=False) as service:
        assert [d.status for d in evi.raise_event("E_S", {"n": 1}).deliveries] == [Status.CONFIRMED, Status.FAILED]
        wait_for(lambda: service.stats().get("confirmed", 0) >= 1, 5, "the worker's stats to count it")
        as_json = opsevent_cli("--socket", path, "--json", "stats")
        as_table = opsevent_cli("--socket", path, "stats")
    stats = json.loads(as_json.stdout)
    assert stats["confirmed"] >= 1 and stats["pid"] > 0
    assert list(stats["brokers"]) == [f"{secret_user}@127.0.0.1:{broker.port}/%2F"]
    assert sorted(row["socket"] for row in stats["subscriptions"]) == sorted([
        f"rabbitmq:{secret_user}:***@127.0.0.1:{broker.port}/{clean_queue}",
        f"rabbitmq:{secret_user}:***@127.0.0.1:{broker.port}/no.such.exchange?k"])
    assert f"{secret_user}@127.0.0.1:{broker.port}/%2F" in as_table.stdout
    assert as_table.stdout.splitlines()[0].startswith(f"RabbitMQ worker pid {stats['pid']}")
    assert_no_secret(as_json.stdout, as_json.stderr, as_table.stdout, as_table.stderr)
