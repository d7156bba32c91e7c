"""The "opensips" body format: OpenSIPS 1.8-3.0's bytes, what it refuses and why, reading them back."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from opsevent import (
    EventInterface,
    EventSyntaxError,
    EventTooLargeError,
    MAX_BODY_SIZE,
    Status,
    Transport,
    decode_event,
    encode_event,
)
from opsevent.opensips import decode_opensips


def opensips_body(name, params=()):
    return encode_event(name, params, format="opensips")


# params -> the exact body of E_SIP_MESSAGE; the first rows are what OpenSIPS 2.4 was seen to send
# for the guide's example 1.5 (shared/notes/opensips-real-wire.md)
WIRE = [
    ([("msg", "hello alice\r\n"), ("user", "alice")],
     b'E_SIP_MESSAGE\nmsg::"hello alice\r\n"\nuser::alice'),
    ([("msg", 'say "hi", ok'), ("user", "alice")],
     b'E_SIP_MESSAGE\nmsg::say "hi", ok\nuser::alice'),
    ([], b"E_SIP_MESSAGE"),
    # the same rules, one at a time
    ([("msg", 'two\nlines, "quoted"')], b'E_SIP_MESSAGE\nmsg::"two\nlines, \\"quoted\\""'),
    ([("msg", "back\\slash\nx")], b'E_SIP_MESSAGE\nmsg::"back\\slash\nx"'),
    ([("msg", 'a\\"b\nc')], b'E_SIP_MESSAGE\nmsg::"a\\\\"b\nc"'),
    ([("msg", "cr\ronly")], b"E_SIP_MESSAGE\nmsg::cr\ronly"),
    ([("msg", "")], b"E_SIP_MESSAGE\nmsg::"),
    ([("msg", None)], b"E_SIP_MESSAGE\nmsg::"),
    ([("n", 42), ("z", 0)], b"E_SIP_MESSAGE\nn::42\nz::0"),
    ([(None, "alice"), (None, "")], b"E_SIP_MESSAGE\nalice\n"),
    ([(None, "::starts")], b"E_SIP_MESSAGE\n::starts"),
    ([(None, "a::b\nc")], b'E_SIP_MESSAGE\n"a::b\nc"'),
    ([("k", "a::b")], b"E_SIP_MESSAGE\nk::a::b"),
    ([('a"b,c\r', "v")], b'E_SIP_MESSAGE\na"b,c\r::v'),
    ([("msg", '"hi" she said')], b'E_SIP_MESSAGE\nmsg::"hi" she said'),
    ([("msg", '"open'), ("user", "alice")], b'E_SIP_MESSAGE\nmsg::"open\nuser::alice'),
    ([("k", "caf\u00e9 \U0001f600")], "E_SIP_MESSAGE\nk::caf\u00e9 \U0001f600".encode()),
]


@pytest.mark.parametrize("params, body", WIRE)
def test_the_body_is_what_opensips_1_8_to_3_0_write(params, body):
    assert opensips_body("E_SIP_MESSAGE", params) == body
    assert decode_event(body, format="opensips") == (
        "E_SIP_MESSAGE", [(key, "" if value is None else str(value)) for key, value in params])


def test_it_is_chosen_per_interface_and_per_socket_like_json():
    class Recorder(Transport):
        def __init__(self):
            self.bodies = []

        def submit(self, event, sockets, body, sync, timeout, message_id):
            self.bodies.append(body)
            return [(Status.QUEUED, "")] * len(sockets)

    for evi, socket in ((EventInterface(format="opensips"), "rabbitmq:mq/k"),
                        (EventInterface(), "rabbitmq:mq/format=opensips?k")):
        recorder = Recorder()
        evi.attach(recorder)
        evi.subscribe_event("E_PIKE_BLOCKED", socket)
        assert evi.raise_event("E_PIKE_BLOCKED", {"ip": "192.168.2.11"})
        assert recorder.bodies == [b"E_PIKE_BLOCKED\nip::192.168.2.11"]


# params -> what the error names; each is a body OpenSIPS would write and no reader can read back
REFUSED = [
    ([("k", "a\0b")], "parameter 'k' of event 'E_X' has a NUL at position 1"),
    ([("a\0", "v")], "has a NUL, where OpenSIPS 1.8-3.0 end the body"),
    ([("", "v")], "parameter name at index 0 of event 'E_X' is empty"),
    ([("a\nb", "v")], "has a newline"),
    ([("a::b", "v")], "contains '::'"),
    ([("a:", "v")], "ends with ':'"),
    ([('"a', "v")], "starts with '\"'"),
    ([(None, "a::b")], "unnamed parameter at index 0 of event 'E_X' has '::' after its start"),
    ([("k", "line\nends\\")], "has a newline and ends with a backslash"),
    ([("k", '"open'), ("j", 'x'), (None, 'y"')], "parameter 'k' of event 'E_X' starts with '\"'"),
    ([(None, '"a'), (None, 'b"')], "unnamed parameter at index 0"),
    ([("k", "\udc80")], "parameter 'k' of event 'E_X' has a lone surrogate in its value"),
]


@pytest.mark.parametrize("params, message", REFUSED)
def test_what_no_reader_could_get_back_is_refused_naming_the_parameter(params, message):
    with pytest.raises(EventSyntaxError) as caught:
        opensips_body("E_X", params)
    assert message in str(caught.value)


def test_a_nul_in_the_event_name_is_refused():
    with pytest.raises(EventSyntaxError, match="event name 'E\\\\x00X' has a NUL at position 1"):
        opensips_body("E\0X")


def test_a_body_over_the_limit_is_refused_not_cut_short_as_opensips_does():
    overhead = len(b"E_BIG\nk::")
    assert len(opensips_body("E_BIG", {"k": "x" * (MAX_BODY_SIZE - overhead)})) == MAX_BODY_SIZE
    with pytest.raises(EventTooLargeError):
        opensips_body("E_BIG", {"k": "x" * (MAX_BODY_SIZE - overhead + 1)})


def test_a_negative_int_is_written_signed_not_through_opensips_unsigned_conversion():
    assert opensips_body("E_X", {"n": -1}) == b"E_X\nn::-1"  # OpenSIPS: n::18446744073709551615


# body -> what it reads as (bodies OpenSIPS writes that this writer would not)
READ = [
    (b"E_X\n::v", ("E_X", [(None, "::v")])),            # an unnamed value OpenSIPS wrote raw
    (b"E_X\nk::a\nb", ("E_X", [("k", "a"), (None, "b")])),
    (b"E_X\n", ("E_X", [(None, "")])),                  # the last line is a parameter, even empty
    (b'E_X\n"a"b\nc"', ("E_X", [(None, '"a"b'), (None, 'c"')])),   # no LF inside the first quotes
    (b'E_X\nk::"a\nb"x\nj::v', ("E_X", [("k", '"a'), (None, 'b"x'), ("j", "v")])),
    (b"E,X\nk::v", ("E,X", [("k", "v")])),              # any name OpenSIPS was given
    (b"E_X\nk::a\0b", ("E_X", [("k", "a\0b")])),
]


@pytest.mark.parametrize("body, expected", READ)
def test_the_reader_takes_any_body_opensips_writes(body, expected):
    assert decode_opensips(body.decode()) == expected


def test_only_an_empty_event_name_is_unreadable():
    with pytest.raises(Exception, match="byte 0 \\(line 1\\): the event name is empty"):
        decode_event(b"\nk::v", format="opensips")


# --- the refusals are exactly the bodies OpenSIPS would write unreadably ----

def rmq_build_params(name: str, params) -> bytes:
    """event_rabbitmq.c rmq_build_params() (1.8-3.0), rebuilt from the C code, and what goes out."""
    buff = name.encode()
    for key, value in params:
        buff += b"\n"
        if key:  # node->name.len && node->name.s
            buff += key.encode() + b"::"
        text = ("" if value is None else str(value)).encode()
        if b"\n" not in text:
            buff += text
        else:
            buff += b'"' + text.replace(b'"', b'\\"') + b'"'
    # the buffer is a C string, published with amqp_cstring_bytes: a NUL ends it
    return buff.split(b"\0")[0][:MAX_BODY_SIZE]


_chars = st.sampled_from(list('ab"\\:\n\r,\0 ')) | st.characters(exclude_categories=("Cs",))
_texts = st.text(alphabet=_chars, max_size=8)
_event_names = st.text(alphabet=st.characters(exclude_categories=("Cs",),
                                              exclude_characters=',"\n\r\0'), min_size=1, max_size=8)
_params = st.lists(st.tuples(st.none() | _texts, _texts | st.none() | st.integers(0, 10 ** 6)),
                   max_size=5)


def _as_text(params):
    return [(key, "" if value is None else str(value)) for key, value in params]


@settings(max_examples=2000)
@given(_event_names, _params)
@example("E", [("k", '"a'), (None, 'b"')])
@example("E", [(None, 'x\ny\\')])
@example("E", [(None, ':a::')])
def test_the_writer_refuses_exactly_the_events_opensips_would_write_unreadably(name, params):
    opensips_bytes = rmq_build_params(name, params)
    try:
        body = opsevent_body = opensips_body(name, params)
    except EventSyntaxError:
        assert decode_opensips(opensips_bytes.decode()) != (name, _as_text(params))
        return
    assert opsevent_body == opensips_bytes
    assert decode_event(body, format="opensips") == (name, _as_text(params))
