"""RabbitMQ socket text: the guide's examples, %-decoding, errors, secrecy."""

import dataclasses
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsevent import RabbitMQSocket, SocketSyntaxError, parse_socket
from opsevent.errors import SocketTypeError
from opsevent.sockets import redact

SECRET = "s3cr3t"

# text -> (user, password, host, port, exchange, routing_key)
GOOD_SOCKETS = [
    # guide example 1.4, both forms
    ("rabbitmq:guest:guest@127.0.0.1:5672/pike",
     ("guest", "guest", "127.0.0.1", 5672, "", "pike")),
    ("rabbitmq:127.0.0.1/pike",
     ("guest", "guest", "127.0.0.1", 5672, "", "pike")),
    # guide example 2.1 and the 1.8.1 config script
    ("rabbitmq:127.0.0.1/queue",
     ("guest", "guest", "127.0.0.1", 5672, "", "queue")),
    ("rabbitmq:127.0.0.1/sipmsg",
     ("guest", "guest", "127.0.0.1", 5672, "", "sipmsg")),
    # the optional parts one by one
    ("rabbitmq:alice@mq.example.com/events",
     ("alice", "guest", "mq.example.com", 5672, "", "events")),
    ("rabbitmq:alice:pw@mq:5673/events",
     ("alice", "pw", "mq", 5673, "", "events")),
    ("rabbitmq:mq/amq.topic?sip.message",
     ("guest", "guest", "mq", 5672, "amq.topic", "sip.message")),
    ("rabbitmq:mq/?key", ("guest", "guest", "mq", 5672, "", "key")),
    ("rabbitmq:mq/ex?a?b", ("guest", "guest", "mq", 5672, "ex", "a?b")),
    ("rabbitmq:mq/a/b", ("guest", "guest", "mq", 5672, "", "a/b")),
    ("rabbitmq:u:@mq/k", ("u", "", "mq", 5672, "", "k")),
    ("rabbitmq:mq:1/k", ("guest", "guest", "mq", 1, "", "k")),
    ("rabbitmq:mq:65535/k", ("guest", "guest", "mq", 65535, "", "k")),
    ("rabbitmq:[::1]:5673/k", ("guest", "guest", "::1", 5673, "", "k")),
    ("rabbitmq:[::1]/k", ("guest", "guest", "::1", 5672, "", "k")),
    # the userinfo ends at the last '@', the password at nothing but '@'
    ("rabbitmq:u:p@ss@mq/k", ("u", "p@ss", "mq", 5672, "", "k")),
    ("rabbitmq:u:a:b@mq/k", ("u", "a:b", "mq", 5672, "", "k")),
    # %-decoding in every field
    ("rabbitmq:u%40x:p%40%3A%2Fw@mq/k", ("u@x", "p@:/w", "mq", 5672, "", "k")),
    ("rabbitmq:u%3Ax:pw@mq/k", ("u:x", "pw", "mq", 5672, "", "k")),
    ("rabbitmq:m%71:%35672/k", ("guest", "guest", "mq", 5672, "", "k")),
    ("rabbitmq:mq/ex%3Fchange?key%3F", ("guest", "guest", "mq", 5672, "ex?change", "key?")),
    ("rabbitmq:mq/café%20bar", ("guest", "guest", "mq", 5672, "", "café bar")),
    ("rabbitmq:mq/%25", ("guest", "guest", "mq", 5672, "", "%")),
    ("rabbitmq:mq/café", ("guest", "guest", "mq", 5672, "", "café")),
    ("rabbitmq:mq/%20%7E", ("guest", "guest", "mq", 5672, "", " ~")),    # the printable bounds
    # what real OpenSIPS 2.4 and 3.1 accept (shared/notes/opensips-real-wire.md)
    ("rabbitmq:127.0.0.1/amq.fanout?", ("guest", "guest", "127.0.0.1", 5672, "amq.fanout", "")),
    ("rabbitmq:127.0.0.1/ex?key", ("guest", "guest", "127.0.0.1", 5672, "ex", "key")),
    ("rabbitmq:mq/a?b?c", ("guest", "guest", "mq", 5672, "a", "b?c")),
]


@pytest.mark.parametrize("text, expected", GOOD_SOCKETS)
def test_socket_text_parses_into_its_fields(text, expected):
    sock = parse_socket(text)
    assert (sock.user, sock.password, sock.host, sock.port, sock.exchange,
            sock.routing_key) == expected
    assert sock.vhost == "/"


def test_both_forms_of_the_guides_example_are_the_same_subscriber():
    long = parse_socket("rabbitmq:guest:guest@127.0.0.1:5672/pike")
    short = parse_socket("rabbitmq:127.0.0.1/pike")
    assert long == short
    assert hash(long) == hash(short)


def test_sockets_differing_only_in_password_are_equal_and_hash_alike():
    first = parse_socket("rabbitmq:u:one@mq/k")
    second = parse_socket("rabbitmq:u:two@mq/k")
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second}) == 1
    assert first.password != second.password


@pytest.mark.parametrize("text, other", [
    ("rabbitmq:mq/k", "rabbitmq:mq/k2"),
    ("rabbitmq:mq/k", "rabbitmq:mq/ex?k"),
    ("rabbitmq:mq/k", "rabbitmq:mq:5673/k"),
    ("rabbitmq:mq/k", "rabbitmq:mq2/k"),
    ("rabbitmq:mq/k", "rabbitmq:bob@mq/k"),
])
def test_sockets_differing_in_any_other_field_are_different(text, other):
    assert parse_socket(text) != parse_socket(other)


# text -> what the error message must say
BAD_SOCKETS = [
    ("amqp://mq/k", "does not start with 'rabbitmq:'"),
    ("RABBITMQ:mq/k", "does not start with 'rabbitmq:'"),
    ("rabbitmq:mq", "has no '/'"),
    ("rabbitmq:/k", "host is empty"),
    ("rabbitmq:u@/k", "host is empty"),
    ("rabbitmq:mq:5672/", "routing key is empty"),
    ("rabbitmq:mq/?", "routing key is empty; it may be empty only after an exchange"),
    ("rabbitmq:mq:0/k", "port 0 is not in 1..65535"),
    ("rabbitmq:mq:65536/k", "port 65536 is not in 1..65535"),
    ("rabbitmq:mq:99999999999/k", "is not in 1..65535"),
    ("rabbitmq:mq:abc/k", "port 'abc' is not a number"),
    ("rabbitmq:mq:-1/k", "port '-1' is not a number"),
    ("rabbitmq:mq:/k", "port is empty"),
    ("rabbitmq:mq/k%zz", "routing key has a bad %-escape '%zz' at position 13"),
    ("rabbitmq:mq/k%4", "routing key has a bad %-escape '%4' at position 13"),
    ("rabbitmq:mq/%ffk", "routing key has a %-escape '%ff' at position 12 that is not printable ASCII"),
    ("rabbitmq:mq/e%zz?k", "exchange has a bad %-escape"),
    ("rabbitmq:m%zz/k", "host has a bad %-escape"),
    ("rabbitmq:u%zz@mq/k", "user has a bad %-escape"),
    ("rabbitmq:u:%zz@mq/k", "password has a bad %-escape at position 11"),
    ("rabbitmq:u:%ff@mq/k", "password has a %-escape at position 11 that is not printable ASCII"),
    ("rabbitmq:@mq/k", "user is empty"),
    ("rabbitmq::pw@mq/k", "user is empty"),
    ("rabbitmq:[::1/k", "no closing ']'"),
    ("rabbitmq:[::1]x/k", "after the bracketed host"),
    (" rabbitmq:mq/k", "leading or trailing whitespace"),
    ("rabbitmq:mq/k\n", "leading or trailing whitespace"),
    ("rabbitmq:mq/k\udc80", "lone surrogate character at position 13"),
    ("rabbitmq:mq/" + "k" * 256, "routing key is 256 bytes; AMQP allows at most 255"),
    ("rabbitmq:mq/" + "e" * 256 + "?k", "exchange is 256 bytes"),
    # what real OpenSIPS refuses too: more than one ':' outside brackets...
    ("rabbitmq:::1/k", "host '::1' has more than one ':'; one separates the host from the port"),
    ("rabbitmq:127.0.0.1:5672:5673/k", "host '127.0.0.1:5672:5673' has more than one ':'"),
    ("rabbitmq:u:p@h:5672:5673/k", "host 'h:5672:5673' has more than one ':'"),
    # ...and an escape outside printable ASCII (a NUL would end a SASL PLAIN field)
    ("rabbitmq:u%00:p@mq/k", "user has a %-escape '%00' at position 10 that is not printable ASCII"),
    ("rabbitmq:u:p%0A@mq/k", "password has a %-escape at position 12 that is not printable ASCII"),
    ("rabbitmq:m%7Fq/k", "host has a %-escape '%7F' at position 10"),
    ("rabbitmq:mq/e%1F?k", "exchange has a %-escape '%1F' at position 13"),
    ("rabbitmq:mq/caf%C3%A9", "routing key has a %-escape '%C3' at position 15"),
    # a control character written raw
    ("rabbitmq:u\x00:p@mq/k", "user has a control character (U+0000) at position 10"),
    ("rabbitmq:u:p\x00@mq/k", "password has a control character (U+0000) at position 12"),
    ("rabbitmq:mq/e\tx?k", "exchange has a control character (U+0009) at position 13"),
    ("rabbitmq:m\x85q/k", "host has a control character (U+0085) at position 10"),
    ("rabbitmq:mq/k\x7fk", "routing key has a control character (U+007F) at position 13"),
]


@pytest.mark.parametrize("text, message", BAD_SOCKETS)
def test_a_bad_socket_is_refused_with_a_message_naming_the_problem(text, message):
    with pytest.raises(SocketSyntaxError) as caught:
        parse_socket(text)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("value", [None, 5, b"rabbitmq:mq/k", ["rabbitmq:mq/k"]])
def test_a_socket_that_is_not_text_is_a_type_error(value):
    with pytest.raises(SocketTypeError, match="must be a str, not"):
        parse_socket(value)
    with pytest.raises(TypeError):
        parse_socket(value)


def test_an_error_message_quotes_the_socket_with_the_password_masked():
    with pytest.raises(SocketSyntaxError) as caught:
        parse_socket(f"rabbitmq:guest:{SECRET}@h:99999/x")
    assert str(caught.value) == (
        "rabbitmq socket 'rabbitmq:guest:***@h:99999/x': "
        "port 99999 is not in 1..65535")


# Each of these holds SECRET somewhere a password could be.
SECRET_BEARING_BAD_SOCKETS = [
    f"rabbitmq:u:{SECRET}@mq:0/k",
    f"rabbitmq:u:{SECRET}@mq/",
    f"rabbitmq:u:{SECRET}%zz@mq/k",
    f"rabbitmq:u:{SECRET}%ff@mq/k",
    f"rabbitmq:u:{SECRET}@:5672/k",
    f"rabbitmq:u:{SECRET}@mq",
    f" rabbitmq:u:{SECRET}@mq/k",
    f"amqp://u:{SECRET}@mq/k",
    f"rabbitmq:u:{SECRET}:{SECRET}@mq:0/k",
    # a raw '/' in the password cuts the authority short
    f"rabbitmq:u:{SECRET}/x@mq/k",
    "rabbitmq:u:123456/x@mq/k",
    f"rabbitmq:u:{SECRET}@mq/" + "k" * 300,
    f"rabbitmq:u:{SECRET}%00@mq/k",
    f"rabbitmq:u:{SECRET}%0a@mq/k",
    f"rabbitmq:u:{SECRET}\x00@mq/k",
    f"rabbitmq:u:{SECRET}@h:1:2/k",
    f"rabbitmq:u:{SECRET}:x@::1/k",
]


@pytest.mark.parametrize("text", SECRET_BEARING_BAD_SOCKETS)
def test_an_error_message_never_contains_the_password(text):
    with pytest.raises(SocketSyntaxError) as caught:
        parse_socket(text)
    message = str(caught.value)
    assert SECRET not in message and "123456" not in message
    assert "***" in message


def test_repr_str_and_broker_label_never_contain_the_password():
    sock = parse_socket(f"rabbitmq:alice:{SECRET}@mq:5673/ex?key")
    for shown in (repr(sock), str(sock), sock.broker_label, repr([sock]),
                  f"{sock}", f"{sock!r}"):
        assert SECRET not in shown
    assert "password='***'" in repr(sock)


def test_direct_construction_errors_never_contain_the_password():
    with pytest.raises(SocketSyntaxError) as caught:
        RabbitMQSocket("u", SECRET, "mq", 0, "", "k")
    assert "port 0 is not in 1..65535" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_str_is_the_full_form_with_the_password_masked():
    sock = parse_socket("rabbitmq:127.0.0.1/pike")
    assert str(sock) == "rabbitmq:guest:***@127.0.0.1:5672/pike"
    exchange = parse_socket("rabbitmq:bob:pw@mq:5673/amq.topic?a.b")
    assert str(exchange) == "rabbitmq:bob:***@mq:5673/amq.topic?a.b"


@pytest.mark.parametrize("text, printed", [
    ("rabbitmq:u%40x%3A:p@mq/k", "rabbitmq:u%40x%3A:***@mq:5672/k"),
    ("rabbitmq:[::1]/k", "rabbitmq:guest:***@[::1]:5672/k"),
    ("rabbitmq:mq/e%3F?k%3Fx%25", "rabbitmq:guest:***@mq:5672/e%3F?k%3Fx%25"),
    ("rabbitmq:mq/a%20b%7E", "rabbitmq:guest:***@mq:5672/a%20b~"),
    ("rabbitmq:mq/café", "rabbitmq:guest:***@mq:5672/café"),
    ("rabbitmq:mq/k\u00a0", "rabbitmq:guest:***@mq:5672/k\u00a0"),   # only printable ASCII is escaped
    ("rabbitmq:mq/amq.fanout?", "rabbitmq:guest:***@mq:5672/amq.fanout?"),
    ("rabbitmq:mq/%70ersistent?k", "rabbitmq:guest:***@mq:5672/%70ersistent?k"),  # not the flag
])
def test_str_percent_encodes_only_what_would_not_parse_back(text, printed):
    assert str(parse_socket(text)) == printed


@pytest.mark.parametrize("text", [text for text, _ in GOOD_SOCKETS] + [
    "rabbitmq:mq/a%20b",
    "rabbitmq:u%40x%3A%2F:p@m%40q/e%3F%25?k%3F",
    "rabbitmq:mq/%74ls?k",
    "rabbitmq:mq/a/b?c",
])
def test_str_parses_back_to_an_equal_socket(text):
    sock = parse_socket(text)
    again = parse_socket(str(sock))
    assert again == sock
    assert again.password == "***"


def test_the_worker_can_rebuild_a_socket_from_astuple():
    sock = parse_socket(f"rabbitmq:u:{SECRET}@mq:5673/ex?k")
    rebuilt = RabbitMQSocket(*dataclasses.astuple(sock))
    assert rebuilt == sock
    assert rebuilt.password == SECRET
    assert pickle.loads(pickle.dumps(sock)).password == SECRET


def test_broker_is_the_connection_identity_and_includes_the_password():
    sock = parse_socket(f"rabbitmq:u:{SECRET}@mq:5673/ex?k")
    # (host, port, user, password, vhost, tls, failover, tls_domain)
    assert sock.broker == ("mq", 5673, "u", SECRET, "/", False, (), None)
    assert sock.broker_label == "u@mq:5673/%2F"
    other_queue = parse_socket(f"rabbitmq:u:{SECRET}@mq:5673/other")
    assert other_queue.broker == sock.broker


@pytest.mark.parametrize("fields, message", [
    (("u", "p", "mq", "5672", "", "k"), "port must be an int, not str"),
    (("u", "p", "mq", True, "", "k"), "port must be an int, not bool"),
    (("u", "p", None, 5672, "", "k"), "host must be a str, not NoneType"),
    (("u", "p", "mq", 5672, "", ""), "routing key is empty"),
    (("", "p", "mq", 5672, "", "k"), "user is empty"),
    (("u", "p", "", 5672, "", "k"), "host is empty"),
    (("u", "p", "mq", 65536, "", "k"), "port 65536 is not in 1..65535"),
    (("u", "p", "mq", 5672, "", "k\udc80"), "routing key has a lone surrogate"),
    (("u", "p\x00", "mq", 5672, "", "k"), r"password has a control character \(U\+0000\) at position 1"),
    (("u\n", "p", "mq", 5672, "", "k"), r"user has a control character \(U\+000A\)"),
    (("u", "p", "mq", 5672, "e\x9f", "k"), r"exchange has a control character \(U\+009F\)"),
])
def test_direct_construction_checks_every_field(fields, message):
    with pytest.raises(SocketSyntaxError, match=message):
        RabbitMQSocket(*fields)


@pytest.mark.parametrize("text, shown", [
    (f"rabbitmq:u:{SECRET}@mq/k", "rabbitmq:u:***@mq/k"),
    ("rabbitmq:u@mq/k", "rabbitmq:u@mq/k"),
    ("rabbitmq:mq:5672/k", "rabbitmq:mq:5672/k"),
    (f"u:{SECRET}@mq/k", "u:***@mq/k"),
])
def test_redact_masks_just_the_password(text, shown):
    assert redact(text) == shown


# --- extensions: OpenSIPS 3.2 parameters, vhost, tls, format, failover ---

# The fields past the guide's, with their defaults; each row says what differs.
EXTENSION_DEFAULTS = {"exchange": "", "vhost": "/", "tls": False,
                      "persistent": False, "format": None, "failover": (),
                      "tls_domain": None}
PLAIN = {"user": "guest", "password": "guest", "host": "mq", "port": 5672,
         "routing_key": "k", **EXTENSION_DEFAULTS}

# text -> the fields that differ from PLAIN
EXTENDED_SOCKETS = [
    # OpenSIPS 3.2's parameter form
    ("rabbitmq:mq/exchange=amq.topic;persistent?k",
     {"exchange": "amq.topic", "persistent": True}),
    ("rabbitmq:mq/persistent;exchange=ex?k", {"exchange": "ex", "persistent": True}),
    ("rabbitmq:mq/exchange=ex?k", {"exchange": "ex"}),
    ("rabbitmq:mq/exchange=a=b?k", {"exchange": "a=b"}),
    ("rabbitmq:mq/exchange=a%3Bb%3Fc?k", {"exchange": "a;b?c"}),
    ("rabbitmq:mq/exch%61nge=ex?k", {"exchange": "ex"}),
    # a lone flag needs a ';', empty parameters are skipped
    ("rabbitmq:mq/persistent;?k", {"persistent": True}),
    ("rabbitmq:mq/;persistent?k", {"persistent": True}),
    ("rabbitmq:mq/;;persistent;;?k", {"persistent": True}),
    ("rabbitmq:mq/;?k", {}),
    # vhost, %-decoded like every field
    ("rabbitmq:mq/vhost=prod?k", {"vhost": "prod"}),
    ("rabbitmq:mq/vhost=/prod?k", {"vhost": "/prod"}),
    ("rabbitmq:mq/vhost=%2Fa%3Bb%20c?k", {"vhost": "/a;b c"}),
    # tls: amqps, default port 5671, an explicit port wins
    ("rabbitmq:mq/tls;?k", {"tls": True, "port": 5671}),
    ("rabbitmq:mq:5672/tls;?k", {"tls": True, "port": 5672}),
    ("rabbitmq:u:pw@[::1]/tls;exchange=ex?k",
     {"user": "u", "password": "pw", "host": "::1", "tls": True, "port": 5671,
      "exchange": "ex"}),
    # OpenSIPS 3.2's tls_domain: TLS with that domain's files (Settings.tls_domains)
    ("rabbitmq:127.0.0.1/tls_domain=rmq?pike",
     {"host": "127.0.0.1", "routing_key": "pike", "tls": True, "port": 5671, "tls_domain": "rmq"}),
    ("rabbitmq:mq:5672/exchange=e;tls_domain=a%3Bb;persistent?k",
     {"exchange": "e", "tls": True, "tls_domain": "a;b", "persistent": True}),
    ("rabbitmq:mq/tls;tls_domain=rmq?k", {"tls": True, "port": 5671, "tls_domain": "rmq"}),
    # 3.2 writes a lone flag bare
    ("rabbitmq:mq/persistent?k", {"persistent": True}),
    ("rabbitmq:mq/tls?k", {"tls": True, "port": 5671}),
    # a fanout exchange needs no routing key, in either form
    ("rabbitmq:mq/exchange=amq.fanout?", {"exchange": "amq.fanout", "routing_key": ""}),
    ("rabbitmq:mq/exchange=amq.fanout;persistent?",
     {"exchange": "amq.fanout", "routing_key": "", "persistent": True}),
    # format
    ("rabbitmq:mq/format=json?k", {"format": "json"}),
    ("rabbitmq:mq/format=lines?k", {"format": "lines"}),
    ("rabbitmq:mq/format=opensips?k", {"format": "opensips"}),
    # failover hosts: one user and password, a port each, the default follows tls
    ("rabbitmq:mq,mq2/k", {"failover": (("mq2", 5672),)}),
    ("rabbitmq:u:p@ss@mq:1,mq2:2,[::1]:3/k",
     {"user": "u", "password": "p@ss", "port": 1,
      "failover": (("mq2", 2), ("::1", 3))}),
    ("rabbitmq:mq,mq2:5673/tls;?k",
     {"port": 5671, "tls": True, "failover": (("mq2", 5673),)}),
    ("rabbitmq:mq:5672,mq/tls;?k",  # same host, other port: not a duplicate
     {"port": 5672, "tls": True, "failover": (("mq", 5671),)}),
    ("rabbitmq:m%2Cq,mq/k", {"host": "m,q", "failover": (("mq", 5672),)}),
    # everything at once
    ("rabbitmq:alice:s3cr3t@mq1,mq2:5673/exchange=ex;vhost=v;tls;persistent;format=json?k",
     {"user": "alice", "password": "s3cr3t", "host": "mq1", "port": 5671,
      "exchange": "ex", "vhost": "v", "tls": True, "persistent": True,
      "format": "json", "failover": (("mq2", 5673),)}),
    # the parameter form needs the '?': without it all is the routing key
    ("rabbitmq:mq/exchange=x", {"routing_key": "exchange=x"}),
    ("rabbitmq:mq/tls;format=json", {"routing_key": "tls;format=json"}),
    # a target with neither '=' nor ';' that is not a flag is the guide's exchange name
    ("rabbitmq:mq/tlsx?k", {"exchange": "tlsx"}),
    ("rabbitmq:mq/%74ls?k", {"exchange": "tls"}),
    ("rabbitmq:mq/a%3Db?k", {"exchange": "a=b"}),
]


def _fields(sock):
    return {name: getattr(sock, name) for name in PLAIN}


@pytest.mark.parametrize("text, differs", EXTENDED_SOCKETS)
def test_extended_socket_text_parses_into_its_fields(text, differs):
    assert _fields(parse_socket(text)) == {**PLAIN, **differs}


@pytest.mark.parametrize("text", [text for text, _ in GOOD_SOCKETS])
def test_the_guides_sockets_use_no_extension(text):
    sock = parse_socket(text)
    assert (sock.vhost, sock.tls, sock.persistent, sock.format, sock.failover) == (
        "/", False, False, None, ())


# text -> what the error message must say
BAD_EXTENDED_SOCKETS = [
    ("rabbitmq:mq/tls_domain=?k", "tls_domain= is empty"),
    ("rabbitmq:mq/tls_domain;?k", "parameter 'tls_domain' needs a value"),
    ("rabbitmq:mq/tls_domain=a%00?k", "tls_domain has a %-escape '%00' at position 24"),
    ("rabbitmq:mq/exchange=e;bogus=1?k", "unknown parameter 'bogus' at position 23"),
    ("rabbitmq:mq/bogus;?k",
     "the parameters are exchange, format, persistent, tls, tls_domain, vhost"),
    ("rabbitmq:mq/Exchange=e?k", "unknown parameter 'Exchange'"),
    ("rabbitmq:mq/exchange=?k", "exchange= is empty; leave it out for the default"),
    ("rabbitmq:mq/exchange;?k", "parameter 'exchange' needs a value: 'exchange=...'"),
    ("rabbitmq:mq/vhost=?k", "vhost= is empty"),
    ("rabbitmq:mq/format=xml?k", "format 'xml' is not one of 'lines', 'json', 'opensips'"),
    ("rabbitmq:mq/format=JSON?k", "format 'JSON' is not one of"),
    ("rabbitmq:mq/format=?k", "format= is empty"),
    ("rabbitmq:mq/tls=1?k", "parameter 'tls' takes no value; write just 'tls'"),
    ("rabbitmq:mq/tls=?k", "parameter 'tls' takes no value"),
    ("rabbitmq:mq/persistent=yes?k", "parameter 'persistent' takes no value"),
    ("rabbitmq:mq/tls;tls?k", "parameter 'tls' is given twice"),
    ("rabbitmq:mq/exchange=a;exchange=b?k", "parameter 'exchange' is given twice"),
    ("rabbitmq:mq/=x?k", "a parameter name is empty"),
    ("rabbitmq:mq/vhost=%zz?k", "vhost has a bad %-escape '%zz' at position 18"),
    ("rabbitmq:mq/vhost=%ff?k", "vhost has a %-escape '%ff' at position 18 that is not printable"),
    ("rabbitmq:mq/vhost=" + "v" * 256 + "?k", "vhost is 256 bytes; AMQP allows at most 255"),
    ("rabbitmq:mq/exchange=" + "e" * 256 + "?k", "exchange is 256 bytes"),
    ("rabbitmq:mq/persistent;?", "routing key is empty; it may be empty only after an exchange"),
    ("rabbitmq:mq/persistent?", "routing key is empty"),
    ("rabbitmq:mq,mq2:5672:1/k", "host 2 'mq2:5672:1' has more than one ':'"),
    ("rabbitmq:mq,/k", "host 2 is empty"),
    ("rabbitmq:,mq/k", "host 1 is empty"),
    ("rabbitmq:mq,,mq2/k", "host 2 is empty"),
    ("rabbitmq:mq,mq2:0/k", "port 0 is not in 1..65535"),
    ("rabbitmq:mq,mq2:x/k", "port 'x' is not a number"),
    ("rabbitmq:mq,mq2:/k", "port is empty"),
    ("rabbitmq:mq,[::1/k", "host 2 starts with '[' but has no closing ']'"),
    ("rabbitmq:mq,mq/k", "mq:5672 is listed twice"),
    ("rabbitmq:mq:5672,mq/k", "mq:5672 is listed twice"),
    ("rabbitmq:mq,mq:5671/tls;?k", "mq:5671 is listed twice"),
    ("rabbitmq:mq2,mq,mq2/k", "mq2:5672 is listed twice"),
]


@pytest.mark.parametrize("text, message", BAD_EXTENDED_SOCKETS)
def test_a_bad_extended_socket_is_refused_naming_the_problem(text, message):
    with pytest.raises(SocketSyntaxError) as caught:
        parse_socket(text)
    assert message in str(caught.value)


@pytest.mark.parametrize("text", [
    f"rabbitmq:u:{SECRET}@mq,mq2:0/k",
    f"rabbitmq:u:{SECRET}@mq,/k",
    f"rabbitmq:u:{SECRET}@mq,mq/k",
    f"rabbitmq:u:{SECRET}@mq/tls=1?k",
    f"rabbitmq:u:{SECRET}@mq/bogus=1?k",
    # a raw '/' in the password: its tail is read as the parameters
    f"rabbitmq:u:123/{SECRET}=1?x@mq/k",
    f"rabbitmq:u:123/format={SECRET}?x@mq/k",
])
def test_an_extended_error_message_never_contains_the_password(text):
    with pytest.raises(SocketSyntaxError) as caught:
        parse_socket(text)
    assert SECRET not in str(caught.value)
    assert "***" in str(caught.value)


# text -> str() of the parsed socket
PRINTED = [
    # the guide's form when no extension is used, as before
    ("rabbitmq:mq/;?k", "rabbitmq:guest:***@mq:5672/k"),
    ("rabbitmq:mq/exchange=ex?k", "rabbitmq:guest:***@mq:5672/ex?k"),
    ("rabbitmq:mq/a%3Db%3B?k", "rabbitmq:guest:***@mq:5672/a%3Db%3B?k"),
    ("rabbitmq:mq/exchange=a=b?k", "rabbitmq:guest:***@mq:5672/a%3Db?k"),
    ("rabbitmq:mq/k=v;w", "rabbitmq:guest:***@mq:5672/k=v;w"),
    # failover hosts alone keep the guide's path
    ("rabbitmq:u:p@mq,mq2:5673/ex?k", "rabbitmq:u:***@mq:5672,mq2:5673/ex?k"),
    ("rabbitmq:m%2Cq,[::1]/k", "rabbitmq:guest:***@m%2Cq:5672,[::1]:5672/k"),
    # the parameter form, in a fixed order, defaults left out
    ("rabbitmq:mq/tls;?k", "rabbitmq:guest:***@mq:5671/tls;?k"),
    ("rabbitmq:mq/persistent;?k", "rabbitmq:guest:***@mq:5672/persistent;?k"),
    ("rabbitmq:mq/format=json?k", "rabbitmq:guest:***@mq:5672/format=json?k"),
    ("rabbitmq:mq/format=lines;vhost=v?k",
     "rabbitmq:guest:***@mq:5672/vhost=v;format=lines?k"),
    ("rabbitmq:mq/persistent;tls;exchange=ex?k",
     "rabbitmq:guest:***@mq:5671/exchange=ex;tls;persistent?k"),
    ("rabbitmq:mq/vhost=%2Fa%3Bb%3Fc%25?k%3F",
     "rabbitmq:guest:***@mq:5672/vhost=/a%3Bb%3Fc%25?k%3F"),
    ("rabbitmq:mq/exchange=a=b;persistent?k",
     "rabbitmq:guest:***@mq:5672/exchange=a=b;persistent?k"),
    ("rabbitmq:alice:pw@mq1,mq2:5673/tls;?events",
     "rabbitmq:alice:***@mq1:5671,mq2:5673/tls;?events"),
    # a bare flag is written with its ';', which OpenSIPS 3.2 accepts too
    ("rabbitmq:mq/persistent?k", "rabbitmq:guest:***@mq:5672/persistent;?k"),
    # tls_domain stands for tls
    ("rabbitmq:127.0.0.1/tls_domain=rmq?pike", "rabbitmq:guest:***@127.0.0.1:5671/tls_domain=rmq?pike"),
    ("rabbitmq:mq/tls;tls_domain=a%3Bb;exchange=amq.fanout?",
     "rabbitmq:guest:***@mq:5671/exchange=amq.fanout;tls_domain=a%3Bb?"),
]


@pytest.mark.parametrize("text, printed", PRINTED)
def test_str_uses_the_extended_form_only_when_needed(text, printed):
    assert str(parse_socket(text)) == printed


@pytest.mark.parametrize("text", [text for text, _ in EXTENDED_SOCKETS])
def test_an_extended_socket_prints_and_parses_back_to_an_equal_one(text):
    sock = parse_socket(text)
    again = parse_socket(str(sock))
    assert again == sock
    assert (again.persistent, again.format) == (sock.persistent, sock.format)
    assert again.password == "***"


def test_equality_ignores_password_persistent_and_format():
    base = parse_socket("rabbitmq:u:one@mq/ex?k")
    for other in ("rabbitmq:u:two@mq/exchange=ex;persistent?k",
                  "rabbitmq:u@mq/exchange=ex;format=json?k",
                  "rabbitmq:u:x@mq:5672/exchange=ex;vhost=%2F;format=lines?k"):
        assert parse_socket(other) == base
        assert hash(parse_socket(other)) == hash(base)


@pytest.mark.parametrize("other", [
    "rabbitmq:u@mq:5672/tls;exchange=ex?k",   # tls, same port
    "rabbitmq:u@mq,mq2/ex?k",                 # a failover host
    "rabbitmq:u@mq/exchange=ex;vhost=v?k",    # vhost
])
def test_equality_includes_tls_failover_and_vhost(other):
    assert parse_socket(other) != parse_socket("rabbitmq:u@mq/ex?k")


def test_failover_order_matters():
    assert parse_socket("rabbitmq:a,b,c/k") != parse_socket("rabbitmq:a,c,b/k")


def test_broker_and_label_cover_tls_and_failover():
    sock = parse_socket(f"rabbitmq:guest:{SECRET}@h1,h2/tls;vhost=v;persistent?k")
    assert sock.broker == ("h1", 5671, "guest", SECRET, "v", True, (("h2", 5671),), None)
    assert sock.broker_label == "amqps://guest@h1:5671,h2:5671/v"
    assert sock.endpoints == (("h1", 5671), ("h2", 5671))
    assert parse_socket("rabbitmq:h1,h2/tls;?k").broker_label == (
        "amqps://guest@h1:5671,h2:5671/%2F")
    # persistent and format are per message, not per connection
    same = parse_socket(f"rabbitmq:guest:{SECRET}@h1,h2/tls;vhost=v;format=json?q")
    assert same.broker == sock.broker
    for shown in (repr(sock), str(sock), sock.broker_label):
        assert SECRET not in shown


def test_the_worker_can_rebuild_an_extended_socket_from_astuple():
    sock = parse_socket(
        f"rabbitmq:u:{SECRET}@mq,[::1]:5/exchange=e;vhost=v;tls_domain=d;persistent;format=json?k")
    wire = dataclasses.astuple(sock)
    assert wire[:7] == ("u", SECRET, "mq", 5671, "e", "k", "v")
    assert wire[7:] == (True, True, "json", (("::1", 5),), "d")
    rebuilt = RabbitMQSocket(*wire)
    assert rebuilt == sock and _fields(rebuilt) == _fields(sock)
    assert _fields(pickle.loads(pickle.dumps(sock))) == _fields(sock)


def test_seven_positional_fields_still_make_a_plain_socket():
    sock = RabbitMQSocket("u", "p", "mq", 5672, "", "k", "/")
    assert sock == parse_socket("rabbitmq:u:p@mq/k")
    assert (sock.tls, sock.persistent, sock.format, sock.failover) == (
        False, False, None, ())


def test_failover_given_as_lists_is_made_hashable():
    sock = RabbitMQSocket("u", "p", "mq", 5672, "", "k", failover=[["mq2", 5673]])
    assert sock.failover == (("mq2", 5673),)
    assert hash(sock) == hash(parse_socket("rabbitmq:u@mq,mq2:5673/k"))


@pytest.mark.parametrize("extra, message", [
    ({"tls": 1}, "tls must be a bool, not int"),
    ({"persistent": "yes"}, "persistent must be a bool, not str"),
    ({"format": "xml"}, "format 'xml' is not one of 'lines', 'json', 'opensips' or None"),
    ({"format": 1}, "format must be one of 'lines', 'json', 'opensips' or None, not int"),
    ({"tls_domain": "d"}, "tls_domain 'd' needs tls=True"),
    ({"tls": True, "tls_domain": ""}, "tls_domain is empty"),
    ({"tls": True, "tls_domain": 5}, "tls_domain must be a str, not int"),
    ({"tls": True, "tls_domain": "d\n"}, "tls_domain has a control character (U+000A)"),
    ({"failover": (("m\x00", 5672),)}, "host 2 has a control character (U+0000)"),
    ({"failover": "mq2:5672"}, "failover must be a tuple of (host, port) pairs, not str"),
    ({"failover": (("mq2",),)}, "failover host 2 must be a (host, port) pair"),
    ({"failover": (("mq2", "5672"),)}, "host 2: port must be an int, not str"),
    ({"failover": (("mq2", True),)}, "host 2: port must be an int, not bool"),
    ({"failover": (("", 5672),)}, "host 2 is empty"),
    ({"failover": (("mq2", 0),)}, "host 2: port 0 is not in 1..65535"),
    ({"failover": (("mq2", 1), ("mq3", 70000))}, "host 3: port 70000"),
    ({"failover": (("mq", 5672),)}, "mq:5672 is listed twice"),
    ({"failover": ((None, 5672),)}, "host 2 must be a str, not NoneType"),
    ({"failover": (("m\udc80", 5672),)}, "host 2 has a lone surrogate"),
    ({"vhost": ""}, "vhost is empty"),
])
def test_direct_construction_checks_the_extension_fields(extra, message):
    with pytest.raises(SocketSyntaxError) as caught:
        RabbitMQSocket("u", SECRET, "mq", 5672, "", "k", **extra)
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)


# --- property: any socket prints as text that parses back to it ---

# Any character but a control character (Cc) or a lone surrogate (Cs); the
# awkward ASCII ones often.
_field_text = st.text(alphabet=st.characters(exclude_categories=("Cs", "Cc"))
                      | st.sampled_from(list("%:@/?=;,[] ")), min_size=1, max_size=12)
_endpoint = st.tuples(_field_text, st.integers(1, 65535))
_flag_names = st.sampled_from(["tls", "persistent"])


@st.composite
def _sockets(draw):
    endpoints = draw(st.lists(_endpoint, min_size=1, max_size=3, unique=True))
    (host, port), failover = endpoints[0], tuple(endpoints[1:])
    exchange = draw(st.just("") | _field_text | _flag_names)
    routing_key = draw(_field_text | st.just("")) if exchange else draw(_field_text)
    tls_domain = draw(st.none() | _field_text)
    tls = tls_domain is not None or draw(st.booleans())
    return RabbitMQSocket(
        draw(_field_text), draw(_field_text), host, port, exchange, routing_key,
        draw(st.just("/") | _field_text), tls,
        draw(st.booleans()), draw(st.sampled_from([None, "lines", "json", "opensips"])),
        failover, tls_domain)


@settings(max_examples=500)
@given(_sockets())
def test_any_socket_prints_as_text_that_parses_back_to_it(sock):
    text = str(sock)
    again = parse_socket(text)
    assert again == sock
    assert _fields(again) == {**_fields(sock), "password": "***"}
    assert again.tls_domain == sock.tls_domain
    # The guide's form unless an extension past failover is used.
    target, question, _key = text.partition("/")[2].partition("?")
    parameters = bool(question) and ("=" in target or ";" in target)
    assert parameters is not ((sock.vhost, sock.tls, sock.persistent, sock.format)
                              == ("/", False, False, None))


def test_a_different_tls_domain_is_the_same_subscriber_on_another_connection():
    plain, domain = parse_socket("rabbitmq:mq/tls;?k"), parse_socket("rabbitmq:mq/tls_domain=rmq?k")
    assert plain == domain and hash(plain) == hash(domain)  # as OpenSIPS, which does not compare it
    assert plain.broker != domain.broker  # other certificates: another connection
    assert domain.broker_label == "amqps://guest@mq:5671/%2F (tls_domain rmq)"


# --- the docstring's grammar drives the tests -------------------------------

def _docstring_examples():
    """Every socket the module docstring shows, with what its comment says."""
    import opsevent.sockets
    examples = []
    for line in opsevent.sockets.__doc__.splitlines():
        line = line.strip()
        if line.startswith("rabbitmq:"):
            text, _, comment = line.partition("  ")
            examples.append((text, comment.strip()))
    return examples


def test_the_docstring_has_examples_of_every_extension():
    texts = " ".join(text for text, _ in _docstring_examples())
    for part in ("amq.fanout?", "exchange=", "persistent?", "tls_domain=", "tls;", "vhost=",
                 "format=", ","):
        assert part in texts


@pytest.mark.parametrize("text, comment", _docstring_examples())
def test_every_example_in_the_docstring_parses_and_prints_back(text, comment):
    sock = parse_socket(text)
    assert parse_socket(str(sock)) == sock
    if "fanout" in comment:
        assert sock.exchange == "amq.fanout" and sock.routing_key == ""
    if "lone flag" in comment:
        assert sock.persistent and sock.exchange == ""
    if "TLS" in comment:
        assert sock.tls
