"""EventInterface: raising through a fake transport, results, settings."""

import asyncio
import os
import pathlib
import re

import pytest

from opsevent import (
    MAX_BODY_SIZE,
    ConfigError,
    Delivery,
    EventInterface,
    EventSyntaxError,
    EventValueTypeError,
    OpseventError,
    RaiseResult,
    Settings,
    Status,
    Transport,
    parse_socket,
)
from opsevent.messageid import new_message_id

PIKE = "rabbitmq:127.0.0.1/pike"
QUEUE = "rabbitmq:127.0.0.1/queue"
SIPMSG = "rabbitmq:127.0.0.1/sipmsg"


class RecordingTransport(Transport):
    """Records every submit and answers with fixed statuses (or QUEUED)."""

    def __init__(self, answers=None):
        self.calls = []
        self.answers = answers

    def submit(self, event, sockets, body, sync, timeout, message_id):
        self.calls.append((sockets, body, sync, timeout))
        if self.answers is not None:
            return self.answers
        return [(Status.QUEUED, "")] * len(sockets)


def interface(*sockets, transport=None, **settings):
    evi = EventInterface(**settings)
    for socket in sockets:
        evi.subscribe_event("E_SIP_MESSAGE", socket)
    if transport is not None:
        evi.attach(transport)
    return evi


def test_raising_with_no_subscribers_succeeds_without_the_transport():
    transport = RecordingTransport()
    evi = interface(transport=transport)
    result = evi.raise_event("E_RABBITMQ_EVENT", {"a": 1.5})  # body never built
    assert result == RaiseResult("E_RABBITMQ_EVENT", ())
    assert bool(result) is True
    assert transport.calls == []


@pytest.mark.parametrize("event", ["", "E,X", "E\nX"])
def test_a_bad_event_name_raises_even_with_no_subscribers(event):
    with pytest.raises(EventSyntaxError):
        interface().raise_event(event)


def test_an_unhashable_event_name_is_a_clear_type_error():
    with pytest.raises(EventValueTypeError, match="event name must be a str, not list"):
        interface(SIPMSG).raise_event(["E_SIP_MESSAGE"])


SIP_BODY = b'E_SIP_MESSAGE\nuser::alice\nmsg::"hello, world"\n'


@pytest.mark.parametrize("args, kwargs, body", [
    (({"user": "alice", "msg": "hello, world"},), {}, SIP_BODY),
    (([("user", "alice"), ("msg", "hello, world")],), {}, SIP_BODY),
    ((), {"attrs": ["user", "msg"], "vals": ["alice", "hello, world"]}, SIP_BODY),
    ((), {"vals": ["alice", 7]}, b"E_SIP_MESSAGE\nalice\n7\n"),
    ((), {"attrs": [], "vals": []}, b"E_SIP_MESSAGE\n"),
    ((), {}, b"E_SIP_MESSAGE\n"),
    ((None,), {}, b"E_SIP_MESSAGE\n"),
])
def test_every_form_of_parameters_gives_the_expected_body(args, kwargs, body):
    transport = RecordingTransport()
    evi = interface(SIPMSG, transport=transport)
    result = evi.raise_event("E_SIP_MESSAGE", *args, **kwargs)
    assert [call[1] for call in transport.calls] == [body]
    assert result.deliveries == (Delivery(parse_socket(SIPMSG), Status.QUEUED, ""),)


def test_the_body_is_built_once_for_all_subscribers():
    transport = RecordingTransport()
    evi = interface(PIKE, QUEUE, SIPMSG, transport=transport)
    result = evi.raise_event("E_SIP_MESSAGE", {"user": "alice"})
    (sockets, body, sync, timeout), = transport.calls
    assert sockets == tuple(parse_socket(s) for s in (PIKE, QUEUE, SIPMSG))
    assert body == b"E_SIP_MESSAGE\nuser::alice\n"
    assert (sync, timeout) == (False, 2.0)
    assert [d.socket for d in result.deliveries] == list(sockets)


def test_the_transport_gets_the_sync_settings():
    transport = RecordingTransport()
    evi = interface(SIPMSG, transport=transport, sync_mode=1, sync_timeout=0.5)
    evi.raise_event("E_SIP_MESSAGE")
    assert transport.calls[0][2:] == (True, 0.5)


@pytest.mark.parametrize("kwargs, message", [
    ({"attrs": ["user", "msg"], "vals": ["alice"]}, "attrs has 2 names but vals has 1 values"),
    ({"attrs": ["user"], "vals": ["alice", "hi"]}, "attrs has 1 names but vals has 2 values"),
    ({"attrs": ["user"]}, "attrs has 1 names but vals has 0 values"),
    ({"attrs": "user", "vals": ["alice"]}, "attrs must be a list, not str"),
    ({"vals": "alice"}, "vals must be a list, not str"),
])
def test_attrs_and_vals_that_do_not_pair_up_are_refused(kwargs, message):
    transport = RecordingTransport()
    evi = interface(SIPMSG, transport=transport)
    with pytest.raises(EventSyntaxError, match=message):
        evi.raise_event("E_SIP_MESSAGE", **kwargs)
    assert transport.calls == []


def test_params_and_attrs_together_are_refused():
    with pytest.raises(EventSyntaxError, match="params, or attrs/vals, not both"):
        interface().raise_event("E_X", {"a": "b"}, vals=["c"])


def test_a_bad_parameter_raises_and_nothing_is_sent():
    transport = RecordingTransport()
    evi = interface(SIPMSG, transport=transport)
    with pytest.raises(EventValueTypeError, match="parameter 'user' of event"):
        evi.raise_event("E_SIP_MESSAGE", {"user": 1.5})
    assert transport.calls == []


def test_a_body_over_the_limit_is_too_large_for_every_subscriber_and_never_sent():
    transport = RecordingTransport()
    evi = interface(PIKE, QUEUE, transport=transport)
    result = evi.raise_event("E_SIP_MESSAGE", {"msg": "x" * 20000})
    assert [d.status for d in result.deliveries] == [Status.TOO_LARGE] * 2
    assert all("over the 16384-byte limit" in d.reason for d in result.deliveries)
    assert not result
    assert transport.calls == []


def test_without_a_transport_every_subscriber_is_not_running():
    evi = interface(PIKE, QUEUE)
    result = evi.raise_event("E_SIP_MESSAGE")
    assert [d.status for d in result.deliveries] == [Status.NOT_RUNNING] * 2
    assert "start a workers.Supervisor or workers.serve(evi)" in result.deliveries[0].reason
    assert result.failures == result.deliveries
    assert not result


def test_detach_returns_the_transport_and_stops_sending():
    transport = RecordingTransport()
    evi = interface(PIKE, transport=transport)
    assert evi.transport is transport
    assert evi.detach() is transport
    assert evi.transport is None
    assert evi.raise_event("E_SIP_MESSAGE").deliveries[0].status is Status.NOT_RUNNING
    assert transport.calls == []


def test_attaching_something_that_is_not_a_transport_is_refused():
    with pytest.raises(TypeError, match="is not a Transport"):
        EventInterface().attach(object())

    class OnlySubmit:  # structural, but without the optional methods
        def submit(self, event, sockets, body, sync, timeout, message_id):
            return [(Status.QUEUED, "")] * len(sockets)

    with pytest.raises(TypeError, match="subclass opsevent.Transport"):
        EventInterface().attach(OnlySubmit())


def test_a_transport_that_subclasses_transport_gets_the_optional_methods():
    class OnlySubmit(Transport):
        def submit(self, event, sockets, body, sync, timeout, message_id):
            return [(Status.QUEUED, "")] * len(sockets)

    transport = OnlySubmit()
    evi = interface(PIKE, transport=transport)
    assert evi.raise_event("E_SIP_MESSAGE", {"big": "x" * MAX_BODY_SIZE}).deliveries[0].status is Status.TOO_LARGE
    assert (transport.flush(1.0), transport.at_exit()) == (0, None)


def test_the_result_is_false_when_any_delivery_fails():
    transport = RecordingTransport([(Status.CONFIRMED, ""), (Status.TIMEOUT, "no answer in 2.0s")])
    evi = interface(PIKE, QUEUE, transport=transport)
    result = evi.raise_event("E_SIP_MESSAGE")
    assert not result
    assert result.failures == (Delivery(parse_socket(QUEUE), Status.TIMEOUT, "no answer in 2.0s"),)
    assert [d.ok for d in result.deliveries] == [True, False]


def test_a_transport_giving_the_wrong_number_of_statuses_is_an_error():
    evi = interface(PIKE, QUEUE, transport=RecordingTransport([(Status.QUEUED, "")]))
    with pytest.raises(OpseventError, match="gave 1 statuses for 2 sockets"):
        evi.raise_event("E_SIP_MESSAGE")


@pytest.mark.parametrize("status, ok", [
    (Status.QUEUED, True), (Status.CONFIRMED, True), (Status.QUEUE_FULL, False),
    (Status.TIMEOUT, False), (Status.TOO_LARGE, False), (Status.UNROUTABLE, False),
    (Status.NACKED, False), (Status.FAILED, False), (Status.NOT_RUNNING, False),
])
def test_only_queued_and_confirmed_are_ok_and_a_result_is_true_when_every_delivery_is(status, ok):
    assert status.ok is ok
    assert str(status) == status.value
    assert Status(status.value) is status
    one, fine = Delivery(parse_socket(PIKE), status), Delivery(parse_socket(QUEUE), Status.CONFIRMED)
    for deliveries in ((one,), (fine, one), (one, fine)):
        assert bool(RaiseResult("E_X", deliveries)) is ok, deliveries


def test_subscribing_accepts_text_or_a_parsed_socket_and_reports_novelty():
    evi = EventInterface()
    assert evi.subscribe_event("E_X", PIKE) is True
    assert evi.subscribe_event("E_X", parse_socket(PIKE)) is False
    assert evi.subscribers("E_X") == (parse_socket(PIKE),)
    assert evi.unsubscribe_event("E_X", PIKE) is True
    assert evi.unsubscribe_event("E_X", PIKE) is False
    assert evi.subscribers("E_X") == ()


def test_the_guides_module_parameters_map_onto_settings():
    evi = EventInterface(heartbeat=3, sync_mode=1)
    assert evi.settings == Settings(heartbeat=3, sync_mode=True)
    assert evi.settings.sync_mode is True


def test_settings_defaults_are_the_documented_ones():
    assert Settings() == Settings(heartbeat=0, sync_mode=False, sync_timeout=2.0,
                                  queue_size=100_000, connect_timeout=2.0,
                                  drain_timeout=5.0, reconnect_min=0.1,
                                  reconnect_max=5.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"heartbeat": -1}, "heartbeat must be 0..65535, not -1"),
    ({"heartbeat": 65536}, "heartbeat must be 0..65535, not 65536"),
    ({"heartbeat": True}, "heartbeat must be an int (0..65535), not bool True"),
    ({"heartbeat": "x"}, "heartbeat must be an int (0..65535), not str 'x'"),
    ({"heartbeat": 1.0}, "heartbeat must be an int"),
    ({"sync_mode": 2}, "sync_mode must be a bool (or 0/1), not 2"),
    ({"sync_mode": "yes"}, "sync_mode must be a bool (or 0/1), not 'yes'"),
    ({"sync_timeout": 0}, "sync_timeout must be a finite number of seconds > 0, not 0"),
    ({"sync_timeout": float("nan")}, "sync_timeout must be a finite number"),
    ({"sync_timeout": "2"}, "sync_timeout must be a number of seconds (> 0), not str '2'"),
    ({"queue_size": 0}, "queue_size must be >= 1, not 0"),
    ({"queue_size": 10.0}, "queue_size must be an int (>= 1), not float 10.0"),
    ({"connect_timeout": -1}, "connect_timeout must be a finite number of seconds > 0"),
    ({"drain_timeout": -0.5}, "drain_timeout must be a finite number of seconds >= 0, not -0.5"),
    ({"drain_timeout": float("inf")}, "drain_timeout must be a finite number"),
    ({"linger": -0.001}, "linger must be a finite number of seconds >= 0, not -0.001"),
    ({"linger": "1ms"}, "linger must be a number of seconds (>= 0), not str '1ms'"),
    ({"linger": 0.5}, "linger must be at most 0.1 s (it delays async publishes), not 0.5"),
    ({"reconnect_min": 0}, "reconnect_min must be a finite number of seconds > 0"),
    ({"reconnect_min": 2.0, "reconnect_max": 1.0},
     "reconnect_max (1.0) is less than reconnect_min (2.0)"),
    ({"failback_interval": 0}, "failback_interval must be a finite number of seconds > 0, not 0"),
    ({"failback_interval": "5"}, "failback_interval must be a number of seconds (> 0), not str '5'"),
    ({"app_id": ""}, "app_id must be text of 1..255 UTF-8 bytes, not ''"),
    ({"app_id": "\u00e9" * 128}, "app_id must be text of 1..255 UTF-8 bytes"),
    ({"app_id": 7}, "app_id must be text of 1..255 UTF-8 bytes, not 7"),
    ({"app_id": "sbc\udc80"}, "app_id must be text of 1..255 UTF-8 bytes, not 'sbc\\udc80'"),
    ({"event_header": 1}, "event_header must be a bool, not 1"),
    ({"tls_ca_file": 5}, "tls_ca_file must be a path (str) or None, not int 5"),
    ({"tls_ca_file": ""}, "tls_ca_file must be a non-empty path without NUL, not ''"),
    ({"tls_ca_file": b"ca.pem"}, "tls_ca_file must be a path (str) or None, not bytes"),
    ({"tls_cert_file": "c.pem"}, "tls_cert_file is set but tls_key_file is not: a client certificate needs its key"),
    ({"tls_key_file": "k.pem"}, "tls_key_file is set but tls_cert_file is not"),
    ({"tls_verify_hostname": 1}, "tls_verify_hostname must be a bool, not 1"),
    ({"failback": "no"}, "failback must be a bool, not 'no'"),
    ({"spread_hosts": 1}, "spread_hosts must be a bool, not 1"),
    ({"tls_domains": ["rmq"]}, "tls_domains must map domain names to TLSDomain, not list"),
    ({"tls_domains": {"": {"ca_file": "ca.pem"}}}, "tls_domains['']: a domain name must be non-empty"),
    ({"tls_domains": {"a\nb": {"ca_file": "ca.pem"}}}, "a domain name must be non-empty printable text"),
    ({"tls_domains": {"rmq": "ca.pem"}}, "tls_domains['rmq'] must be a TLSDomain or a mapping of its fields"),
    ({"tls_domains": {"rmq": {"ca": "ca.pem"}}}, "tls_domains['rmq']: TLSDomain.__init__() got an unexpected"),
    ({"tls_domains": {"rmq": {"cert_file": "c.pem", "key_file": "c.pem"}}},
     "tls_domains['rmq']: TLSDomain.__init__() missing 1 required positional argument: 'ca_file'"),
    ({"tls_domains": {"rmq": {"ca_file": None}}}, "tls_domains['rmq'].ca_file is not set"),
    ({"tls_domains": {"rmq": {"ca_file": "ca.pem", "cert_file": "c.pem"}}},
     "tls_domains['rmq']: cert_file and key_file go together"),
    ({"tls_domains": {"rmq": {"ca_file": 5}}}, "tls_domains['rmq'].ca_file must be a path (str) or None, not int"),
    ({"tls_domains": {"rmq": {"ca_file": "a\0b"}}}, "tls_domains['rmq'].ca_file must be a non-empty path"),
    ({"tls_domains": {"rmq": {"ca_file": "ca.pem", "verify_hostname": 0}}},
     "tls_domains['rmq'].verify_hostname must be a bool, not 0"),
])
def test_a_bad_setting_is_refused_naming_the_parameter_and_value(kwargs, message):
    with pytest.raises(ConfigError) as caught:
        Settings(**kwargs)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(ConfigError):
        EventInterface(**kwargs)


def test_the_tls_and_failback_settings_default_to_no_files_verified_hostnames_and_five_seconds():
    s = Settings()
    assert (s.tls_ca_file, s.tls_cert_file, s.tls_key_file) == (None, None, None)
    assert s.tls_verify_hostname is True and s.failback_interval == 5.0
    assert s.failback is True and s.spread_hosts is False


def test_every_setting_is_documented_in_the_settings_docstring():
    # A heading line: "    name (default)", or two: "    a (1), b (2)".
    documented = {name for line in Settings.__doc__.splitlines()
                  if line.startswith("    ") and not line.startswith("        ")
                  for name in re.findall(r"(\w+) \(", line)}
    assert {f for f in Settings.__dataclass_fields__} <= documented


def test_tls_file_settings_take_path_objects_and_keep_them_as_text():
    s = Settings(tls_ca_file=pathlib.Path("/etc/ca.pem"), tls_cert_file="c.pem", tls_key_file="c.pem")
    assert (s.tls_ca_file, s.tls_cert_file, s.tls_key_file) == ("/etc/ca.pem", "c.pem", "c.pem")


def test_tls_domains_are_kept_as_name_and_domain_pairs_in_their_order():
    from opsevent import TLSDomain
    s = Settings(tls_domains={"rmq": TLSDomain("ca.pem"), "cdr": {"ca_file": pathlib.Path("/etc/cdr-ca.pem"),
                                                                  "cert_file": "c.pem", "key_file": "c.pem"}})
    assert s.tls_domains == (("rmq", TLSDomain("ca.pem")),
                             ("cdr", TLSDomain("/etc/cdr-ca.pem", "c.pem", "c.pem", True)))
    assert hash(s) == hash(Settings(tls_domains=s.tls_domains))  # still a frozen, hashable value
    assert Settings().tls_domains == ()


def test_a_socket_naming_a_tls_domain_the_settings_lack_is_refused_at_subscribe():
    evi = EventInterface(tls_domains={"rmq": {"ca_file": "ca.pem"}})
    assert evi.subscribe_event("E_X", "rabbitmq:u:s3cr3t@mq/tls_domain=rmq?k")
    with pytest.raises(ConfigError) as caught:
        evi.subscribe_event("E_X", "rabbitmq:u:s3cr3t@mq/tls_domain=cdr?k")
    assert str(caught.value) == ("rabbitmq socket 'rabbitmq:u:***@mq:5671/tls_domain=cdr?k': tls_domain 'cdr' "
                                 "is not in the tls_domains setting (the domains are 'rmq')")
    with pytest.raises(ConfigError, match="no tls_domains are set"):
        EventInterface().subscribe_event("E_X", "rabbitmq:mq/tls_domain=rmq?k")


def test_an_unknown_setting_is_refused_by_name():
    with pytest.raises(ConfigError, match="unknown setting.* heartbeet"):
        EventInterface(heartbeet=3)


def test_linger_is_a_millisecond_by_default_and_zero_turns_it_off():
    assert Settings().linger == 0.001
    assert Settings(linger=0).linger == 0.0 and Settings(linger=0.1).linger == 0.1


def test_drain_timeout_of_zero_is_allowed():
    assert Settings(drain_timeout=0).drain_timeout == 0.0


def test_the_repr_of_an_interface_shows_no_passwords():
    evi = interface("rabbitmq:u:s3cr3t@mq/k", transport=RecordingTransport())
    assert "s3cr3t" not in repr(evi)
    assert "RecordingTransport" in repr(evi)


# --- body formats -----------------------------------------------------------

SIP_JSON = b'{"jsonrpc":"2.0","method":"E_SIP_MESSAGE","params":{"user":"alice","msg":"hello, world"}}'
SIP_PARAMS = {"user": "alice", "msg": "hello, world"}
JSON_QUEUE = "rabbitmq:127.0.0.1/format=json?queue"
LINES_PIKE = "rabbitmq:127.0.0.1/format=lines?pike"


def test_the_format_setting_defaults_to_lines_and_is_validated():
    assert Settings().format == "lines"
    assert EventInterface(format="json").settings.format == "json"
    assert EventInterface(format="opensips").settings.format == "opensips"
    for bad in ("xml", "JSON", None, 1):
        with pytest.raises(ConfigError, match="format must be one of 'lines', 'json', 'opensips'"):
            EventInterface(format=bad)


def test_an_interface_in_json_format_sends_json_bodies():
    transport = RecordingTransport()
    evi = interface(PIKE, SIPMSG, transport=transport, format="json")
    evi.raise_event("E_SIP_MESSAGE", SIP_PARAMS)
    (sockets, body, _sync, _timeout), = transport.calls
    assert body == SIP_JSON
    assert len(sockets) == 2


def test_a_sockets_format_overrides_the_interfaces():
    transport = RecordingTransport()
    evi = interface(JSON_QUEUE, transport=transport)
    evi.raise_event("E_SIP_MESSAGE", SIP_PARAMS)
    assert [call[1] for call in transport.calls] == [SIP_JSON]
    transport = RecordingTransport()
    evi = interface(LINES_PIKE, transport=transport, format="json")
    evi.raise_event("E_SIP_MESSAGE", SIP_PARAMS)
    assert [call[1] for call in transport.calls] == [SIP_BODY]


def test_each_formats_body_is_built_and_submitted_once_in_subscriber_order():
    transport = RecordingTransport()
    evi = interface(PIKE, JSON_QUEUE, SIPMSG, "rabbitmq:mq/format=json?q4",
                    transport=transport)
    result = evi.raise_event("E_SIP_MESSAGE", iter(SIP_PARAMS.items()))  # read once
    sockets = evi.subscribers("E_SIP_MESSAGE")
    assert [(call[0], call[1]) for call in transport.calls] == [
        ((sockets[0], sockets[2]), SIP_BODY),
        ((sockets[1], sockets[3]), SIP_JSON),
    ]
    assert [d.socket for d in result.deliveries] == list(sockets)
    assert result


class AnsweringTransport(Transport):
    """Answers each socket with the status named by its routing key."""

    def __init__(self):
        self.calls = []

    def submit(self, event, sockets, body, sync, timeout, message_id):
        self.calls.append((sockets, body, sync, timeout))
        return [(Status(s.routing_key.replace("_", " ")), body.decode()[:1])
                for s in sockets]


def test_statuses_of_several_submits_go_back_to_their_subscribers():
    transport = AnsweringTransport()
    evi = interface("rabbitmq:mq/format=json?confirmed", "rabbitmq:mq/timeout",
                    "rabbitmq:mq/format=json?nacked", "rabbitmq:mq/queued",
                    transport=transport, sync_mode=True, sync_timeout=0.5)
    result = evi.raise_event("E_SIP_MESSAGE")
    assert [(d.status, d.reason) for d in result.deliveries] == [
        (Status.CONFIRMED, "{"), (Status.TIMEOUT, "E"), (Status.NACKED, "{"),
        (Status.QUEUED, "E")]
    assert [call[2:] for call in transport.calls] == [(True, 0.5), (True, 0.5)]


def test_a_body_too_large_in_one_format_fails_only_its_subscribers():
    transport = RecordingTransport()
    evi = interface(PIKE, JSON_QUEUE, transport=transport)
    # A newline is one byte in a quoted line value, two in JSON.
    result = evi.raise_event("E_SIP_MESSAGE", {"msg": "\n" * 10000})
    assert [d.status for d in result.deliveries] == [Status.QUEUED, Status.TOO_LARGE]
    assert "over the 16384-byte limit" in result.deliveries[1].reason
    assert [call[0] for call in transport.calls] == [(parse_socket(PIKE),)]


@pytest.mark.parametrize("sync", [False, True])
def test_raises_of_one_body_format_hand_the_transport_the_subscribers_own_tuple_every_time(sync):
    # The transport keeps each tuple's bytes by identity (workers.channel.job.SocketBytes):
    # a fresh tuple per raise meant building them again, a quarter of an awaited raise's cost.
    transport = RecordingTransport([(Status.CONFIRMED, "")] * 2 if sync else None)
    evi = interface(PIKE, QUEUE, transport=transport, sync_mode=sync)
    for _ in range(3):
        assert evi.raise_event("E_SIP_MESSAGE")
        assert asyncio.run(evi.araise_event("E_SIP_MESSAGE"))
    first = transport.calls[0][0]
    assert first == (parse_socket(PIKE), parse_socket(QUEUE))
    assert len(transport.calls) == 6 and all(call[0] is first for call in transport.calls)


def test_without_a_transport_mixed_formats_are_not_running():
    result = interface(PIKE, JSON_QUEUE).raise_event("E_SIP_MESSAGE")
    assert [d.status for d in result.deliveries] == [Status.NOT_RUNNING] * 2


def test_a_parameter_json_cannot_carry_raises_before_anything_is_sent():
    transport = RecordingTransport()
    evi = interface(PIKE, JSON_QUEUE, transport=transport)
    with pytest.raises(EventSyntaxError, match="mixes named and unnamed"):
        evi.raise_event("E_SIP_MESSAGE", [("user", "alice"), (None, "hi")])
    with pytest.raises(EventValueTypeError, match="must be a mapping"):
        evi.raise_event("E_SIP_MESSAGE", "user=alice")
    assert transport.calls == []


def test_a_wrong_number_of_statuses_is_an_error_with_mixed_formats_too():
    evi = interface(PIKE, JSON_QUEUE, transport=RecordingTransport([]))
    with pytest.raises(OpseventError, match="gave 0 statuses for 1 sockets"):
        evi.raise_event("E_SIP_MESSAGE")


def test_subscribing_again_with_another_format_replaces_the_subscriber():
    evi = EventInterface()
    assert evi.subscribe_event("E_X", "rabbitmq:mq/k") is True
    assert evi.subscribe_event("E_X", "rabbitmq:mq/format=json;persistent?k") is False
    (sock,) = evi.subscribers("E_X")
    assert (sock.format, sock.persistent) == ("json", True)
    assert evi.unsubscribe_event("E_X", "rabbitmq:mq/k") is True


class NotingTransport(RecordingTransport):
    """Also records the event names it is given and the refusals it is told of."""

    def __init__(self):
        super().__init__()
        self.events, self.notes = [], []

    def submit(self, event, sockets, body, sync, timeout, message_id):
        self.events.append(event)
        return super().submit(event, sockets, body, sync, timeout, message_id)

    def note(self, event, sockets, status):
        self.notes.append((event, sockets, status))


def test_the_transport_gets_the_event_name_and_is_told_of_too_large_raises_per_format():
    transport = NotingTransport()
    evi = interface("rabbitmq:mq/format=json?a", "rabbitmq:mq/b", transport=transport)
    assert evi.raise_event("E_SIP_MESSAGE", {"n": 1})
    assert transport.events == ["E_SIP_MESSAGE", "E_SIP_MESSAGE"]  # one submit per format
    result = evi.raise_event("E_SIP_MESSAGE", {"big": "x" * MAX_BODY_SIZE})
    assert [d.status for d in result.deliveries] == [Status.TOO_LARGE] * 2
    assert [(event, status) for event, _, status in transport.notes] == [
        ("E_SIP_MESSAGE", Status.TOO_LARGE)] * 2
    plain = interface("rabbitmq:mq/c", transport=transport)
    plain.raise_event("E_SIP_MESSAGE", {"big": "x" * MAX_BODY_SIZE})
    assert transport.notes[-1] == ("E_SIP_MESSAGE", plain.subscribers("E_SIP_MESSAGE"), Status.TOO_LARGE)


def test_a_raise_answered_with_the_same_statuses_reuses_its_deliveries_and_new_statuses_make_new_ones():
    queued = [(Status.QUEUED, "")]
    transport = RecordingTransport(answers=queued)
    evi = interface(PIKE, transport=transport)
    first = evi.raise_event("E_SIP_MESSAGE", {"n": 1})
    second = evi.raise_event("E_SIP_MESSAGE", {"n": 2})
    assert second.deliveries is first.deliveries and second.message_id != first.message_id
    transport.answers = [(Status.QUEUE_FULL, "full")]
    refused = evi.raise_event("E_SIP_MESSAGE", {"n": 3})
    assert not refused and refused.deliveries[0].reason == "full"
    evi.subscribe_event("E_SIP_MESSAGE", QUEUE)  # new subscribers, new tuple: never the old result
    transport.answers = queued * 2
    assert len(evi.raise_event("E_SIP_MESSAGE", {"n": 4}).deliveries) == 2


# ---- message ids ---------------------------------------------------------------------------------

class IdTransport(RecordingTransport):
    """Also records the message id of each submit."""

    def __init__(self):
        super().__init__()
        self.ids = []

    def submit(self, event, sockets, body, sync, timeout, message_id):
        self.ids.append(message_id)
        return super().submit(event, sockets, body, sync, timeout, message_id)


def test_each_raise_gets_a_message_id_of_its_own_which_the_transport_and_the_result_carry():
    transport = IdTransport()
    evi = interface(PIKE, transport=transport)
    results = [evi.raise_event("E_SIP_MESSAGE", {"n": n}) for n in range(3)]
    assert [r.message_id for r in results] == transport.ids
    assert len(set(transport.ids)) == 3 and all(transport.ids)


def test_a_given_message_id_is_used_for_every_format_and_failure_alike():
    transport = IdTransport()
    evi = interface(PIKE, JSON_QUEUE, transport=transport)
    assert evi.raise_event("E_SIP_MESSAGE", {"n": 1}, message_id="order-42").message_id == "order-42"
    assert transport.ids == ["order-42", "order-42"]  # one submit per format, one id per event
    big = evi.raise_event("E_SIP_MESSAGE", {"big": "x" * MAX_BODY_SIZE}, message_id="order-43")
    assert not big and big.message_id == "order-43"
    assert interface(PIKE).raise_event("E_SIP_MESSAGE", message_id="x").message_id == "x"  # not running
    assert interface().raise_event("E_SIP_MESSAGE").message_id == ""  # no subscribers: nothing to name


def test_the_same_deliveries_are_equal_results_only_with_the_same_message_id():
    transport = RecordingTransport()
    evi = interface(PIKE, transport=transport)
    first = evi.raise_event("E_SIP_MESSAGE", message_id="a")
    assert first == evi.raise_event("E_SIP_MESSAGE", message_id="a")
    assert first != evi.raise_event("E_SIP_MESSAGE", message_id="b")
    assert first == RaiseResult("E_SIP_MESSAGE", first.deliveries, "a")  # the cheap path builds the same thing


@pytest.mark.parametrize("message_id, error, message", [
    ("", EventSyntaxError, "message_id must be 1..255 UTF-8 bytes (an AMQP shortstr), not 0"),
    ("x" * 256, EventSyntaxError, "message_id must be 1..255 UTF-8 bytes (an AMQP shortstr), not 256"),
    ("\u00e9" * 128, EventSyntaxError, "not 256"),  # 128 characters, 256 bytes
    ("id\udc80", EventSyntaxError, "message_id 'id\\udc80' has no UTF-8 form (a lone surrogate)"),
    (b"id-1", EventValueTypeError, "message_id must be a str, not bytes b'id-1'"),
    (42, EventValueTypeError, "message_id must be a str, not int 42"),
])
def test_a_message_id_that_cannot_be_an_amqp_shortstr_is_refused_saying_why(message_id, error, message):
    evi = interface(PIKE, transport=RecordingTransport())
    for target in (evi, interface()):  # with subscribers or without: a programmer error either way
        with pytest.raises(error) as caught:
            target.raise_event("E_SIP_MESSAGE", message_id=message_id)
        assert message in str(caught.value)
        assert isinstance(caught.value, (ValueError, TypeError)) and isinstance(caught.value, OpseventError)


def test_a_message_id_of_255_bytes_is_the_longest_allowed():
    evi = interface(PIKE, transport=RecordingTransport())
    assert evi.raise_event("E_SIP_MESSAGE", message_id="\u00e9" * 127 + "x").message_id.endswith("x")


def test_a_forked_child_makes_message_ids_no_other_process_makes():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first ids, to the parent
        os.write(write_end, " ".join(new_message_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [new_message_id() for _ in range(3)]
    prefix = lambda mid: mid.rsplit("-", 1)[0]  # noqa: E731
    assert len(child) == 3 and {prefix(m) for m in child}.isdisjoint({prefix(m) for m in parent})
    assert len({prefix(m) for m in parent}) == 1 and len(set(parent)) == 3
