"""opsevent.read_event: what a consumer calls on every message body, whatever published it."""

import pytest

from opsevent import PayloadDecodeError, ReceivedEvent, encode_event, read_event
from opsevent.consumer import CONTENT_TYPES

PARAMS = [("user", "alice"), ("msg", "hello,\nworld"), (None, "")]


@pytest.mark.parametrize("body_format, content_type", sorted(CONTENT_TYPES.items()))
def test_a_body_of_ours_reads_in_the_format_its_content_type_names(body_format, content_type):
    body = encode_event("E_SIP_MESSAGE", [("user", "alice"), ("n", 7)], body_format)
    event = read_event(body, content_type)
    assert event.format == body_format and event.name == "E_SIP_MESSAGE"
    assert event.get("n") == (7 if body_format == "json" else "7")


def test_the_content_type_decides_where_the_body_alone_would_guess_wrong():
    # OpenSIPS's format ending in an empty unnamed value ends with a newline, like the guide's.
    body = encode_event("E_X", [("user", "alice"), (None, "")], "opensips")
    assert body == b"E_X\nuser::alice\n"
    assert read_event(body, "text/x-opensips-event").params == (("user", "alice"), (None, ""))
    assert read_event(body).params == (("user", "alice"),)  # read as the guide's format


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "APPLICATION/JSON",
                                          " application/json "])
def test_content_type_parameters_case_and_spaces_are_ignored(content_type):
    assert read_event(b'{"jsonrpc":"2.0","method":"E_X"}', content_type).format == "json"


# (body OpenSIPS sent, with no properties at all) -> what the consumer gets
OPENSIPS_BODIES = [
    (b'E_SIP_MESSAGE\nmsg::"hello alice\r\n"\nuser::alice',
     ReceivedEvent("E_SIP_MESSAGE", (("msg", "hello alice\r\n"), ("user", "alice")), "opensips")),
    (b"E_SIP_MESSAGE", ReceivedEvent("E_SIP_MESSAGE", (), "opensips")),
    (b'{"id":null,"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"192.168.2.11"}}',
     ReceivedEvent("E_PIKE_BLOCKED", (("ip", "192.168.2.11"),), "json")),
    (b'{"jsonrpc":"2.0","method":"E_SEND_SMS","params":{"text":"hi","to":"+40","from":"+41"}}',
     ReceivedEvent("E_SEND_SMS", (("text", "hi"), ("to", "+40"), ("from", "+41")), "json")),
]


@pytest.mark.parametrize("body, event", OPENSIPS_BODIES)
@pytest.mark.parametrize("content_type", [None, "", "application/octet-stream"])
def test_without_a_known_content_type_the_body_decides(body, event, content_type):
    assert read_event(body, content_type) == event


def test_get_and_as_dict_give_the_first_of_a_repeated_name():
    event = read_event(b"E_X\nk::1\nk::2\nunnamed\nj::3")
    assert event.get("k") == "1" and event.get("j") == "3" and event.get("nope", "-") == "-"
    assert event.as_dict() == {"k": "1", "j": "3"}


def test_a_body_that_is_not_utf8_comes_back_with_its_bytes_recoverable():
    event = read_event(b"E_X\nmsg::caf\xe9")
    assert event.get("msg") == "caf\udce9"
    assert event.get("msg").encode("utf-8", "surrogateescape") == b"caf\xe9"


def test_a_body_that_is_not_an_event_raises_saying_where():
    with pytest.raises(PayloadDecodeError, match="byte 0 \\(line 1\\): a JSON-RPC body must be a JSON object"):
        read_event(b"<xml/>", "application/json")
    with pytest.raises(PayloadDecodeError, match="the event name is empty"):
        read_event(b"")
