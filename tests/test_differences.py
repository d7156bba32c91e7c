"""Every row of docs/differences.md's "Where this library differs from OpenSIPS" table, proved.

The rows are read from docs/differences.md; each has a check here, and each check a
row. A check tests the behaviour itself against literal bytes or values;
where only a broker or real processes can show it, it also names the test
that does (and this file fails if that test is gone).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import trustme
from pika import spec

from opsevent import (
    ConfigError,
    EventInterface,
    EventSyntaxError,
    EventTooLargeError,
    MAX_BODY_SIZE,
    SocketSyntaxError,
    Status,
    Transport,
    TLSDomain,
    decode_event,
    encode_event,
    parse_socket,
)
from opsevent.subscriptions import Subscriptions
from workers.rabbitmq import tls
from workers.rabbitmq.amqp import MessageProperties, Publisher

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("lines", "json", "opensips")


def table_rows() -> list[str]:
    text = (ROOT / "docs" / "differences.md").read_text()
    table = text.split("<!-- differences:start -->")[1].split("<!-- differences:end -->")[0]
    return re.findall(r"^\| `([a-z0-9.-]+)` \|", table, re.MULTILINE)


def proved_by(*node_ids: str) -> None:
    """Fail unless each ``tests/file.py::test_name`` still exists (it runs in the suite)."""
    for node_id in node_ids:
        path, name = node_id.split("::")
        tree = ast.parse((ROOT / path).read_text())
        names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert name in names, f"{node_id} is gone: this row has lost its proof"


def refused(text: str, message: str) -> None:
    with pytest.raises(SocketSyntaxError) as caught:
        parse_socket(text)
    assert message in str(caught.value)


class Recorder(Transport):
    def __init__(self, statuses=None):
        self.bodies, self.statuses = [], statuses

    def submit(self, event, sockets, body, sync, timeout, message_id):
        self.bodies.append(body)
        return self.statuses or [(Status.QUEUED, "")] * len(sockets)


# ---- sockets ------------------------------------------------------------------------------

def check_sock_ipv6(tmp_path):
    sock = parse_socket("rabbitmq:[::1]:5673/k")
    assert (sock.host, sock.port) == ("::1", 5673)
    refused("rabbitmq:::1/k", "host '::1' has more than one ':'")


def check_sock_port(tmp_path):
    for port in ("65536", "99999"):
        refused(f"rabbitmq:mq:{port}/k", f"port {port} is not in 1..65535")


def check_sock_empty_host(tmp_path):
    refused("rabbitmq:/k", "host is empty")


def check_sock_at(tmp_path):
    sock = parse_socket("rabbitmq:u@v@host/k")
    assert (sock.user, sock.host) == ("u@v", "host")


def check_sock_1x(tmp_path):
    sock = parse_socket("rabbitmq:mq/a?b")
    assert (sock.exchange, sock.routing_key) == ("a", "b")
    assert parse_socket("rabbitmq:mq/a%3Fb").routing_key == "a?b"
    refused("rabbitmq:mq/", "routing key is empty")


def check_sock_3_2_exchange(tmp_path):
    guide, opensips_3_2 = parse_socket("rabbitmq:mq/ex?key"), parse_socket("rabbitmq:mq/exchange=ex?key")
    assert guide == opensips_3_2 and guide.exchange == "ex"


def check_sock_bare_flag(tmp_path):
    flag = parse_socket("rabbitmq:mq/persistent?k")
    assert flag.persistent and flag.exchange == ""
    assert parse_socket("rabbitmq:mq/tls?k").tls
    assert parse_socket("rabbitmq:mq/%70ersistent?k").exchange == "persistent"
    assert parse_socket("rabbitmq:mq/exchange=persistent?k").exchange == "persistent"


def check_sock_tls_domain(tmp_path):
    sock = parse_socket("rabbitmq:127.0.0.1/tls_domain=rmq?pike")
    assert (sock.tls, sock.tls_domain, sock.port) == (True, "rmq", 5671)
    with pytest.raises(ConfigError, match="tls_domain 'rmq' is not in the tls_domains setting"):
        EventInterface().subscribe_event("E_X", sock)
    assert TLSDomain("ca.pem").verify_hostname is True
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    settings = EventInterface(tls_domains={"rmq": {"ca_file": str(ca)}}).settings
    context = tls.client_context(tls.settings_for(settings, sock))
    assert context.check_hostname and context.minimum_version.name == "TLSv1_2"


def check_sock_extensions(tmp_path):
    sock = parse_socket("rabbitmq:mq1,mq2:5673/vhost=prod;format=json?k")
    assert (sock.vhost, sock.format, sock.failover) == ("prod", "json", (("mq2", 5673),))


def check_sock_control(tmp_path):
    refused("rabbitmq:u:p\x00@mq/k", "password has a control character (U+0000)")
    refused("rabbitmq:u:p%0A@mq/k", "password has a %-escape at position 12 that is not printable ASCII")
    refused("rabbitmq:mq/k ", "leading or trailing whitespace")


def check_sock_shortstr(tmp_path):
    refused("rabbitmq:mq/" + "e" * 256 + "?k", "exchange is 256 bytes; AMQP allows at most 255")


def check_sock_match(tmp_path):
    base = parse_socket("rabbitmq:u:one@mq/tls;exchange=ex?k")
    assert base == parse_socket("rabbitmq:u:two@mq/tls_domain=d;persistent;format=json;exchange=ex?k")
    for other in ("rabbitmq:u@mq/tls;exchange=ex;vhost=v?k", "rabbitmq:u@mq/exchange=ex?k",
                  "rabbitmq:u@mq,mq2/tls;exchange=ex?k"):
        assert parse_socket(other) != base


def check_sock_print(tmp_path):
    sock = parse_socket("rabbitmq:u:pw@mq/ex?k")
    assert str(sock) == "rabbitmq:u:***@mq:5672/ex?k"
    assert str(parse_socket("rabbitmq:mq/tls_domain=d;persistent?k")) == (
        "rabbitmq:guest:***@mq:5671/tls_domain=d;persistent?k")
    assert parse_socket(str(sock)) == sock


# ---- bodies -------------------------------------------------------------------------------

SIP = [("msg", 'say "hi",\nok'), ("user", "alice")]


def check_body_default(tmp_path):
    assert encode_event("E_SIP_MESSAGE", SIP) == b'E_SIP_MESSAGE\nmsg::"say \\"hi\\",\nok"\nuser::alice\n'
    assert encode_event("E_SIP_MESSAGE", SIP, "opensips") == (
        b'E_SIP_MESSAGE\nmsg::"say \\"hi\\",\nok"\nuser::alice')
    assert encode_event("E_SIP_MESSAGE", SIP, "json") == (
        b'{"jsonrpc":"2.0","method":"E_SIP_MESSAGE","params":{"msg":"say \\"hi\\",\\nok","user":"alice"}}')
    assert encode_event("E_X", {"k": "a\\b"}) == b'E_X\nk::a\\b\n'
    assert encode_event("E_X", {"k": "a\\b,"}) == b'E_X\nk::"a\\\\b,"\n'
    assert encode_event("E_X", {"k": "a\\b,"}, "opensips") == b"E_X\nk::a\\b,"


def check_body_3_1_0_id(tmp_path):
    assert decode_event(b'{"id":null,"jsonrpc":"2.0","method":"E_X","params":{"a":1}}') == ("E_X", [("a", 1)])
    assert encode_event("E_X", {"a": 1}, "json") == b'{"jsonrpc":"2.0","method":"E_X","params":{"a":1}}'


def check_body_order(tmp_path):
    assert encode_event("E_X", [("user", "u"), ("msg", "m")]) == b"E_X\nuser::u\nmsg::m\n"


def check_body_nul(tmp_path):
    assert encode_event("E_X", {"k": "a\0b"}) == b"E_X\nk::a\0b\n"
    assert encode_event("E_X", {"k": "a\0b"}, "json") == b'{"jsonrpc":"2.0","method":"E_X","params":{"k":"a\\u0000b"}}'
    with pytest.raises(EventSyntaxError, match="has a NUL at position 1"):
        encode_event("E_X", {"k": "a\0b"}, "opensips")


def check_body_size(tmp_path):
    for body_format in FORMATS:
        with pytest.raises(EventTooLargeError, match="over the 16384-byte limit"):
            encode_event("E_X", {"k": "x" * MAX_BODY_SIZE}, body_format)
    evi, recorder = EventInterface(), Recorder()
    evi.attach(recorder)
    evi.subscribe_event("E_X", "rabbitmq:mq/k")
    (delivery,) = evi.raise_event("E_X", {"k": "x" * MAX_BODY_SIZE}).deliveries
    assert delivery.status is Status.TOO_LARGE and recorder.bodies == []


def check_body_negative_int(tmp_path):
    assert encode_event("E_X", {"n": -1}) == b"E_X\nn::-1\n"
    assert encode_event("E_X", {"n": -1}, "opensips") == b"E_X\nn::-1"
    assert encode_event("E_X", {"n": -1}, "json") == b'{"jsonrpc":"2.0","method":"E_X","params":{"n":-1}}'


def check_body_int_range(tmp_path):
    assert encode_event("E_X", {"n": 2 ** 40}, "json") == (
        b'{"jsonrpc":"2.0","method":"E_X","params":{"n":1099511627776}}')
    with pytest.raises(EventSyntaxError, match="is an int of more than 4300 digits; send it as a str"):
        encode_event("E_X", {"n": 10 ** 5000})


def check_body_json_shape(tmp_path):
    with pytest.raises(EventSyntaxError, match="mixes named and unnamed parameters"):
        encode_event("E_X", [("a", 1), (None, 2)], "json")
    with pytest.raises(EventSyntaxError, match="parameter 'a' of event 'E_X' is given twice"):
        encode_event("E_X", [("a", 1), ("a", 2)], "json")


def check_body_empty_name(tmp_path):
    for body_format in FORMATS:
        with pytest.raises(EventSyntaxError, match="is empty \\(use None for an unnamed value\\)"):
            encode_event("E_X", [("", "v")], body_format)


def check_body_opensips_ambiguous(tmp_path):
    for params, message in [
            ([(None, "a::b")], "has '::' after its start"),
            ([("k", "a\nb\\")], "has a newline and ends with a backslash"),
            ([("k", '"a'), (None, 'b"')], "starts with '\"' and, with the parameters after it"),
            ([("a::b", "v")], "contains '::'"), ([("a\nb", "v")], "has a newline"),
            ([("a:", "v")], "ends with ':'"), ([('"a', "v")], "starts with '\"'")]:
        with pytest.raises(EventSyntaxError, match=re.escape(message)):
            encode_event("E_X", params, "opensips")


def check_body_event_name(tmp_path):
    for body_format in FORMATS:
        with pytest.raises(EventSyntaxError, match="event name 'E,X' has ','"):
            encode_event("E,X", (), body_format)
    assert encode_event("E" * 100, (), "opensips") == b"E" * 100


def check_body_bytes(tmp_path):
    with pytest.raises(EventSyntaxError, match="lone surrogate"):
        encode_event("E_X", {"k": "caf\udce9"}, "opensips")
    assert decode_event(b"E_X\nk::caf\xe9") == ("E_X", [("k", "caf\udce9")])


# ---- message properties ---------------------------------------------------------------------

def _properties(persistent: bool) -> spec.BasicProperties:
    marshalled = MessageProperties("opsevent").head(b"E_X", "text/plain", persistent)
    marshalled += MessageProperties("opsevent").tail(b"ab12-7", 1795689120)
    props = spec.BasicProperties()
    props.decode(marshalled)
    return props


def check_prop_none(tmp_path):
    props = _properties(False)
    assert (props.content_type, props.headers, props.message_id, props.timestamp, props.app_id,
            props.delivery_mode) == ("text/plain", {"event": "E_X"}, "ab12-7", 1795689120, "opsevent", None)
    proved_by("tests/test_properties.py::test_every_message_carries_its_content_type_delivery_mode_event_header_"
              "time_id_and_app_id")


def check_prop_mandatory(tmp_path):
    method_frame = Publisher(1, 131072).frames("ex", "k", b"E_X\n", b"")[0]
    assert method_frame[-2] == 1  # the bits octet before the frame end: mandatory
    proved_by("tests/test_faults.py::test_an_unroutable_event_is_reported_to_a_sync_caller_and_counted_for_async_ones")


def check_prop_persistent(tmp_path):
    assert _properties(True).delivery_mode == 2
    assert parse_socket("rabbitmq:mq/persistent?k").persistent


# ---- raise and sync semantics ----------------------------------------------------------------

def check_sync_confirm(tmp_path):
    assert EventInterface(sync_mode=True).settings.sync_timeout == 2.0
    proved_by("tests/test_event_path.py::test_a_sync_raise_to_a_port_without_a_broker_fails_within_the_sync_timeout",
              "tests/test_faults.py::test_a_silent_peer_fails_sync_raises_in_time_never_blocks_async_ones_and_"
              "publishing_resumes")


def check_sync_3_2(tmp_path):
    assert EventInterface(sync_mode=1).settings.sync_mode is True


def check_sync_result(tmp_path):
    evi = EventInterface()
    evi.attach(Recorder([(Status.QUEUED, ""), (Status.QUEUE_FULL, "full")]))
    evi.subscribe_event("E_X", "rabbitmq:mq/a")
    evi.subscribe_event("E_X", "rabbitmq:mq/b")
    result = evi.raise_event("E_X", {"k": 1})
    assert not result and [d.status for d in result.deliveries] == [Status.QUEUED, Status.QUEUE_FULL]
    assert [d.socket.routing_key for d in result.failures] == ["b"]


def check_sync_queue_full(tmp_path):
    proved_by("tests/test_channel.py::test_a_raise_on_a_full_queue_fails_at_once_in_both_modes",
              "tests/test_faults.py::test_a_full_shared_queue_refuses_async_raises_at_once_and_counts_them")


def check_sync_missing_exchange(tmp_path):
    proved_by("tests/test_event_path.py::test_a_raise_to_a_missing_exchange_fails_and_the_next_raise_succeeds")


def check_sync_expire(tmp_path):
    now = [100.0]
    table = Subscriptions(clock=lambda: now[0])
    table.add("E_X", parse_socket("rabbitmq:mq/k"), 10)
    table.add("E_X", parse_socket("rabbitmq:mq/forever"))
    now[0] = 109.9
    assert [s.routing_key for s in table.get("E_X")] == ["k", "forever"]
    now[0] = 110.0
    assert [s.routing_key for s in table.get("E_X")] == ["forever"]


def check_sync_heartbeat(tmp_path):
    proved_by("tests/test_event_path.py::test_an_idle_worker_keeps_its_connection_alive_with_heartbeats")


def check_sync_reconnect(tmp_path):
    proved_by("tests/test_faults.py::test_a_broker_restart_under_sustained_async_load_loses_no_event_and_"
              "duplicates_only_unconfirmed_ones")


def _key(row: str) -> str:
    """A row's check function name: ``body-3.1.0-id`` is ``check_body_3_1_0_id``."""
    return "check_" + re.sub(r"[-.]", "_", row)


CHECKS = {name: check for name, check in dict(globals()).items() if name.startswith("check_")}


def test_every_row_of_the_table_has_a_check_and_every_check_a_row():
    rows = table_rows()
    assert len(rows) == len(set(rows)), "a row is listed twice"
    assert sorted(map(_key, rows)) == sorted(CHECKS)


@pytest.mark.parametrize("row", table_rows())
def test_the_row_holds(row, tmp_path):
    CHECKS[_key(row)](tmp_path)
