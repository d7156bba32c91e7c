"""Event bodies: the guide's example, quoting, bad input, size, round trips."""

import enum

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from opsevent import (
    MAX_BODY_SIZE,
    ConfigError,
    EventSyntaxError,
    EventTooLargeError,
    EventValueTypeError,
    PayloadDecodeError,
    decode_event,
    encode_event,
)
from opsevent.errors import PayloadTypeError
from opsevent.payload import detect_format


def test_the_guides_pike_example_encodes_exactly():
    body = encode_event("E_PIKE_BLOCKED", {"ip": "192.168.2.11"})
    assert body == b"E_PIKE_BLOCKED\nip::192.168.2.11\n"
    assert decode_event(body) == ("E_PIKE_BLOCKED", [("ip", "192.168.2.11")])


def test_an_event_without_parameters_is_its_name_and_a_newline():
    assert encode_event("E_RABBITMQ_EVENT") == b"E_RABBITMQ_EVENT\n"
    assert decode_event(b"E_RABBITMQ_EVENT\n") == ("E_RABBITMQ_EVENT", [])


class Level(enum.IntEnum):
    HIGH = 3


# (name, value) -> the parameter's line in the body, without its newline
QUOTING = [
    (("k", "plain"), b"k::plain"),
    (("k", "a,b"), b'k::"a,b"'),
    (("k", 'say "hi"'), b'k::"say \\"hi\\""'),
    (("k", "two\nlines"), b'k::"two\nlines"'),
    (("k", "cr\rhere"), b'k::"cr\rhere"'),
    (("k", 'back\\slash, "quoted"'), b'k::"back\\\\slash, \\"quoted\\""'),
    (("k", "back\\slash"), b"k::back\\slash"),
    (("k", "a::b"), b"k::a::b"),
    (("k", ":starts"), b"k:::starts"),
    ((None, "a::b"), b'"a::b"'),
    ((None, "plain"), b"plain"),
    ((None, '"quoted'), b'"\\"quoted"'),
    (("k", ""), b"k::"),
    ((None, ""), b""),
    (("k", None), b"k::"),
    ((None, None), b""),
    (("k", -42), b"k::-42"),
    (("k", 0), b"k::0"),
    (("k", 10**30), b"k::" + str(10**30).encode()),
    (("k", Level.HIGH), b"k::3"),
    (("k", "caf\u00e9 \u2603 \U0001f600"), "k::caf\u00e9 \u2603 \U0001f600".encode()),
    (("k", "nul\x00inside"), b"k::nul\x00inside"),
    (("k", "tab\tand space "), b"k::tab\tand space "),
]


@pytest.mark.parametrize("param, line", QUOTING)
def test_a_value_is_quoted_only_when_it_must_be(param, line):
    body = encode_event("E_X", [param])
    assert body == b"E_X\n" + line + b"\n"
    name, value = param
    expected = "" if value is None else str(int(value)) if isinstance(value, int) else value
    assert decode_event(body) == ("E_X", [(name, expected)])


def test_mapping_and_pairs_give_the_same_body_in_order():
    pairs = [("user", "alice"), ("msg", "hello, world")]
    body = b'E_SIP_MESSAGE\nuser::alice\nmsg::"hello, world"\n'
    assert encode_event("E_SIP_MESSAGE", pairs) == body
    assert encode_event("E_SIP_MESSAGE", dict(pairs)) == body
    assert encode_event("E_SIP_MESSAGE", iter(pairs)) == body
    assert encode_event("E_SIP_MESSAGE", tuple(list(p) for p in pairs)) == body


BAD_EVENT_NAMES = [
    ("", "event name is empty"),
    ("E,X", "has ',' at position 1"),
    ('E"X', "has '\"' at position 1"),
    ("E\nX", "has '\\n' at position 1"),
    ("E\rX", "has '\\r' at position 1"),
    ("E\udc80", "lone surrogate at position 1"),
]


@pytest.mark.parametrize("name, message", BAD_EVENT_NAMES)
def test_a_bad_event_name_is_refused(name, message):
    with pytest.raises(EventSyntaxError, match=message.replace("\\", "\\\\")):
        encode_event(name, {"k": "v"})


@pytest.mark.parametrize("name", [None, 5, b"E_X"])
def test_an_event_name_that_is_not_text_is_a_type_error(name):
    with pytest.raises(EventValueTypeError, match="event name must be a str"):
        encode_event(name)


BAD_PARAM_NAMES = [
    ("", "is empty"),
    ("a,b", "has ','"),
    ('a"b', "has '\"'"),
    ('"a', "has '\"' at position 0"),
    ("a\nb", "has '\\\\n'"),
    ("a\rb", "has '\\\\r'"),
    ("a::b", "contains '::'"),
    ("a:", "ends with ':'"),
    ("a\udc80", "lone surrogate in its name"),
]


@pytest.mark.parametrize("key, message", BAD_PARAM_NAMES)
def test_a_bad_parameter_name_is_refused_and_named(key, message):
    with pytest.raises(EventSyntaxError, match=message) as caught:
        encode_event("E_X", [("ok", "v"), (key, "v")])
    assert "index 1" in str(caught.value) or repr(key) in str(caught.value)
    assert "'E_X'" in str(caught.value)


BAD_VALUES = [
    (1.5, "is a float"),
    (True, "is a bool"),
    (b"bytes", "is a bytes"),
    (object(), "is a object"),
    (["list"], "is a list"),
]


@pytest.mark.parametrize("value, message", BAD_VALUES)
def test_a_value_of_the_wrong_type_is_refused_and_names_the_parameter(value, message):
    with pytest.raises(EventValueTypeError, match=message) as caught:
        encode_event("E_X", {"ip": value})
    assert "parameter 'ip' of event 'E_X'" in str(caught.value)
    with pytest.raises(TypeError, match="unnamed parameter at index 1"):
        encode_event("E_X", [(None, "ok"), (None, value)])


def test_a_value_with_a_lone_surrogate_is_refused_and_names_the_parameter():
    with pytest.raises(EventSyntaxError,
                       match="parameter 'msg' of event 'E_X' has a lone surrogate"):
        encode_event("E_X", {"user": "alice", "msg": "bad \udc80"})


@pytest.mark.parametrize("params, message", [
    ("user=alice", "must be a mapping or an iterable of (name, value) pairs, not str"),
    (b"user", "not bytes"),
    (5, "not int"),
    (["ab"], "index 0 of event 'E_X' is not a (name, value) pair but a str"),
    ([("a", "b", "c")], "is not a (name, value) pair but a tuple"),
])
def test_params_of_the_wrong_shape_are_refused(params, message):
    with pytest.raises(EventValueTypeError) as caught:
        encode_event("E_X", params)
    assert message in str(caught.value)


def _body_of_size(size: int) -> tuple[str, dict]:
    """An event whose body is exactly *size* bytes."""
    overhead = len(b"E_BIG\nk::\n")
    return "E_BIG", {"k": "x" * (size - overhead)}


def test_a_body_of_exactly_the_limit_is_accepted():
    assert MAX_BODY_SIZE == 16384
    body = encode_event(*_body_of_size(16384))
    assert len(body) == 16384


def test_a_body_one_byte_over_the_limit_is_refused_not_truncated():
    with pytest.raises(EventTooLargeError) as caught:
        encode_event(*_body_of_size(16385))
    error = caught.value
    assert (error.size, error.limit) == (16385, 16384)
    assert str(error) == ("event 'E_BIG' body is 16385 bytes, over the "
                          "16384-byte limit; it was not published")
    assert isinstance(error, EventSyntaxError)


def test_the_limit_counts_utf8_bytes_not_characters():
    with pytest.raises(EventTooLargeError):
        encode_event("E_BIG", {"k": "\u00e9" * 8190})  # 16380 bytes of value


BAD_BODIES = [
    (b"", "byte 0 (line 1): the event name is not followed by a newline"),
    (b"E_X", "byte 3 (line 1): the event name is not followed by a newline"),
    (b"\n", "byte 0 (line 1): the event name is empty"),
    (b"E,X\n", "byte 1 (line 1): the event name has ','"),
    (b"E_X\nk::v", "byte 8 (line 2): the last parameter is not followed by a newline"),
    (b"E_X\nk::v\nw", "byte 10 (line 3): the last parameter is not followed"),
    (b'E_X\nk::"open\n', "byte 7 (line 2): a quoted value has no closing quote"),
    (b'E_X\nk::"a\\q"\n', "byte 9 (line 2): bad escape '\\\\q'"),
    (b'E_X\nk::"a"junk\n', "byte 10 (line 2): unexpected 'j' after a closing quote"),
    (b'E_X\nk::"a"', "byte 10 (line 2): the last parameter is not followed"),
    (b"E_X\nk::a,b\n", "byte 8 (line 2): an unquoted value has ','"),
    (b'E_X\nk::a"b\n', "byte 8 (line 2): an unquoted value has '\"'"),
    (b"E_X\nk::a\rb\n", "byte 8 (line 2): an unquoted value has '\\r'"),
    (b"E_X\n::v\n", "byte 4 (line 2): a parameter name is empty"),
    (b'E_X\nk"::v\n', "byte 5 (line 2): a parameter name has '\"'"),
    ("E_X\n\u00e9,\n".encode(), "byte 6 (line 2): an unquoted value has ','"),
    (b"E_X\n\xc3\xa9\xff,\n", "byte 7 (line 2): an unquoted value has ','"),  # counts the body's bytes
]


@pytest.mark.parametrize("body, message", BAD_BODIES)
def test_a_malformed_guide_format_body_is_refused_with_its_position(body, message):
    with pytest.raises(PayloadDecodeError) as caught:
        decode_event(body, format="lines")
    assert message in str(caught.value)


@pytest.mark.parametrize("body, expected", [
    (b"E_X\nk::\xff\n", ("E_X", [("k", "\udcff")])),
    (b"E_X\nk::caf\xe9\n", ("E_X", [("k", "caf\udce9")])),            # Latin-1
    (b"E_\xc3X\nk::v\n", ("E_\udcc3X", [("k", "v")])),
    (b'{"jsonrpc":"2.0","method":"E_X","params":{"k\xff":"\x80"}}',
     ("E_X", [("k\udcff", "\udc80")])),
    (b"E_X\nmsg::caf\xe9", ("E_X", [("msg", "caf\udce9")])),           # OpenSIPS 2.4
])
def test_a_body_that_is_not_utf8_reads_back_with_its_bytes_as_lone_surrogates(body, expected):
    assert decode_event(body) == expected
    name, params = decode_event(body)
    again = [name] + [part for pair in params for part in pair if part is not None]
    for text in again:  # surrogateescape gives every original byte back
        assert text.encode("utf-8", "surrogateescape") in body


@pytest.mark.parametrize("body", ["E_X\n", None, ["E_X\n"]])
def test_a_body_that_is_not_bytes_is_a_type_error(body):
    with pytest.raises(PayloadTypeError, match="must be bytes"):
        decode_event(body)


def test_decode_accepts_any_bytes_like_body():
    body = b"E_X\nk::v\n"
    expected = ("E_X", [("k", "v")])
    assert decode_event(bytearray(body)) == expected
    assert decode_event(memoryview(body)) == expected


# --- properties ---------------------------------------------------------

_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
_name_chars = st.characters(exclude_categories=("Cs",), exclude_characters=',"\n\r')
_event_names = st.text(alphabet=_name_chars, min_size=1, max_size=30)
_param_names = st.text(alphabet=_name_chars, min_size=1, max_size=20).filter(
    lambda name: "::" not in name and not name.endswith(":"))
_values = _text | st.integers() | st.none()
_params = st.lists(st.tuples(_param_names | st.none(), _values), max_size=12)


def _as_text(value) -> str:
    return "" if value is None else str(value)


@settings(max_examples=500)
@given(_event_names, _params)
def test_decode_gives_back_what_encode_was_given(name, params):
    decoded = decode_event(encode_event(name, params))
    assert decoded == (name, [(key, _as_text(value)) for key, value in params])


@settings(max_examples=500)
@given(_event_names, _params)
def test_encode_of_a_decoded_body_gives_the_same_bytes(name, params):
    body = encode_event(name, params)
    assert encode_event(*decode_event(body)) == body


_anything = st.text() | st.integers() | st.none()


@settings(max_examples=500)
@given(st.text(max_size=30), st.lists(st.tuples(st.text(max_size=20) | st.none(),
                                                _anything), max_size=8))
def test_encode_either_succeeds_or_raises_a_syntax_error(name, params):
    try:
        body = encode_event(name, params)
    except EventSyntaxError:  # EventTooLargeError is one too
        return
    assert decode_event(body)[0] == name


@settings(max_examples=500)
@given(st.binary(max_size=60)
       | _params.map(lambda params: encode_event("E_X", params))
       | _params.map(lambda params: encode_event("E_X", params)[:-1] + b'"\n'))
def test_decode_either_raises_a_decode_error_or_gives_an_encodable_event(body):
    try:
        decoded = decode_event(body)
    except PayloadDecodeError as error:
        assert "byte" in str(error)
        return
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return  # its odd bytes come back as lone surrogates: readable, not sendable
    # Whatever decodes can be sent again, in its own format, and reads back the same.
    body_format = detect_format(body)
    try:
        again = encode_event(*decoded, format=body_format)
    except EventSyntaxError:
        # OpenSIPS's own bodies may hold what no writer here will repeat
        # (an event name with ',', a raw value that reads as quoted); the
        # guide's format must always be writable again.
        assert body_format == "opensips"
        return
    assert decode_event(again, format=body_format) == decoded


# --- formats --------------------------------------------------------------

def test_the_line_format_is_the_default_and_can_be_named():
    params = {"ip": "192.168.2.11"}
    assert encode_event("E_PIKE_BLOCKED", params, "lines") == encode_event(
        "E_PIKE_BLOCKED", params)
    assert encode_event("E_PIKE_BLOCKED", params, format="json") == (
        b'{"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"192.168.2.11"}}')


# body -> (its format, what it reads as); every OpenSIPS shape the notes saw on the wire
DETECTED = [
    (b"E_X\nk::7\n", "lines", ("E_X", [("k", "7")])),              # lines: text
    (b'{"jsonrpc":"2.0","method":"E_X","params":{"k":7}}', "json", ("E_X", [("k", 7)])),
    (b"{E_X\nk::7\n", "lines", ("{E_X", [("k", "7")])),            # '{' alone: lines
    (b'{"jsonrpc":"2.0","method":"E_X","params":[null]}', "json", ("E_X", [(None, None)])),
    # OpenSIPS 3.1.0 and 3.1.1+
    (b'{"id":null,"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"192.168.2.11"}}',
     "json", ("E_PIKE_BLOCKED", [("ip", "192.168.2.11")])),
    (b'{"jsonrpc":"2.0","method":"E_SEND_SMS"}', "json", ("E_SEND_SMS", [])),
    # OpenSIPS 2.4, as captured: no final newline, quotes only around a LF
    (b'E_SIP_MESSAGE\nmsg::"hello alice\r\n"\nuser::alice', "opensips",
     ("E_SIP_MESSAGE", [("msg", "hello alice\r\n"), ("user", "alice")])),
    (b'E_SIP_MESSAGE\nmsg::say "hi", ok\nuser::alice', "opensips",
     ("E_SIP_MESSAGE", [("msg", 'say "hi", ok'), ("user", "alice")])),
    (b"E_SIP_MESSAGE", "opensips", ("E_SIP_MESSAGE", [])),
    (b"E_PIKE_BLOCKED\nip::192.168.2.11", "opensips", ("E_PIKE_BLOCKED", [("ip", "192.168.2.11")])),
    (b"E_X\nback\\slash", "opensips", ("E_X", [(None, "back\\slash")])),
]


@pytest.mark.parametrize("body, body_format, expected", DETECTED)
def test_decode_tells_the_formats_apart_and_reads_what_opensips_sends(body, body_format, expected):
    assert detect_format(body) == body_format
    assert decode_event(body) == expected
    assert decode_event(body, format=body_format) == expected
    assert decode_event(bytearray(body)) == expected


@pytest.mark.parametrize("format", ["xml", "JSON", "", 1])
def test_an_unknown_format_is_a_config_error(format):
    with pytest.raises(ConfigError, match="format must be one of 'lines', 'json'"):
        encode_event("E_X", {}, format)
    with pytest.raises(ConfigError, match="format must be one of"):
        decode_event(b"E_X\n", format=format)


@settings(max_examples=300)
@given(_event_names | st.text(max_size=30).map(lambda tail: '{"' + tail), _params)
@example('{"jsonrpc":"2.0","method":"E_X"}', [])
@example('{"', [("k", "v")])
@example("{x", [])
def test_a_line_body_is_never_taken_for_json(name, params):
    # Names that would open a line body with '{"' included: the encoder must refuse them.
    try:
        body = encode_event(name, params)
    except EventSyntaxError as error:
        assert "event name" in str(error), error
        return
    assert not body.startswith(b'{"')
    assert decode_event(body) == decode_event(body, format="lines") == (
        name, [(key, _as_text(value)) for key, value in params])


def test_a_name_remembered_as_a_good_event_name_is_still_checked_as_a_parameter_name():
    # Good names are remembered so that a raise does not search them again;
    # an event name may hold '::' and a parameter name may not.
    assert encode_event("A::B", {}) == b"A::B\n"
    for _ in range(2):  # the second time, after a good raise would have remembered it
        with pytest.raises(EventSyntaxError, match="contains '::', the name/value separator"):
            encode_event("E", {"A::B": 1})
    assert encode_event("E", {"key": "v"}) == b"E\nkey::v\n"
    with pytest.raises(EventSyntaxError, match="has ',' at position 1"):
        encode_event("E", {"k,ey": "v"})
