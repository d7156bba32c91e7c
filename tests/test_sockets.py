"""RabbitMQ socket text: the guide's examples, %-decoding, errors, secrecy."""

import dataclasses
import pickle

import pytest

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
    ("rabbitmq:mq/caf%C3%A9%20bar", ("guest", "guest", "mq", 5672, "", "café bar")),
    ("rabbitmq:mq/%25", ("guest", "guest", "mq", 5672, "", "%")),
    ("rabbitmq:mq/café", ("guest", "guest", "mq", 5672, "", "café")),
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
    ("rabbitmq:mq/ex?", "routing key is empty"),
    ("rabbitmq:mq:0/k", "port 0 is not in 1..65535"),
    ("rabbitmq:mq:65536/k", "port 65536 is not in 1..65535"),
    ("rabbitmq:mq:99999999999/k", "is not in 1..65535"),
    ("rabbitmq:mq:abc/k", "port 'abc' is not a number"),
    ("rabbitmq:mq:-1/k", "port '-1' is not a number"),
    ("rabbitmq:mq:/k", "port is empty"),
    ("rabbitmq:mq/k%zz", "routing key has a bad %-escape '%zz' at position 13"),
    ("rabbitmq:mq/k%4", "routing key has a bad %-escape '%4' at position 13"),
    ("rabbitmq:mq/%ffk", "routing key is not valid UTF-8 after %-decoding (at position 12)"),
    ("rabbitmq:mq/e%zz?k", "exchange has a bad %-escape"),
    ("rabbitmq:m%zz/k", "host has a bad %-escape"),
    ("rabbitmq:u%zz@mq/k", "user has a bad %-escape"),
    ("rabbitmq:u:%zz@mq/k", "password has a bad %-escape at position 11"),
    ("rabbitmq:u:%ff@mq/k", "password is not valid UTF-8"),
    ("rabbitmq:@mq/k", "user is empty"),
    ("rabbitmq::pw@mq/k", "user is empty"),
    ("rabbitmq:[::1/k", "no closing ']'"),
    ("rabbitmq:[::1]x/k", "after the bracketed host"),
    (" rabbitmq:mq/k", "leading or trailing whitespace"),
    ("rabbitmq:mq/k\n", "leading or trailing whitespace"),
    ("rabbitmq:mq/k\udc80", "lone surrogate character at position 13"),
    ("rabbitmq:mq/" + "k" * 256, "routing key is 256 bytes; AMQP allows at most 255"),
    ("rabbitmq:mq/" + "e" * 256 + "?k", "exchange is 256 bytes"),
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
    ("rabbitmq:mq/a%20b%0A", "rabbitmq:guest:***@mq:5672/a%20b%0A"),
    ("rabbitmq:mq/café", "rabbitmq:guest:***@mq:5672/café"),
])
def test_str_percent_encodes_only_what_would_not_parse_back(text, printed):
    assert str(parse_socket(text)) == printed


@pytest.mark.parametrize("text", [text for text, _ in GOOD_SOCKETS] + [
    "rabbitmq:mq/a%20b%0A",
    "rabbitmq:u%40x%3A%2F:p@m%40q/e%3F%25?k%3F",
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
    assert sock.broker == ("mq", 5673, "u", SECRET, "/")
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
