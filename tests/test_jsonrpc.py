"""JSON-RPC bodies (OpenSIPS 3.1.1+): exact bytes, refusals, bad bodies, round trips."""

import enum
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsevent import (
    MAX_BODY_SIZE,
    EventSyntaxError,
    EventTooLargeError,
    EventValueTypeError,
    PayloadDecodeError,
    decode_event,
    encode_event,
)


def json_body(name, params=()):
    return encode_event(name, params, format="json")


def test_the_pike_example_is_opensips_3_1_1s_body_byte_for_byte():
    body = json_body("E_PIKE_BLOCKED", {"ip": "192.168.2.11"})
    assert body == b'{"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"192.168.2.11"}}'
    assert decode_event(body) == ("E_PIKE_BLOCKED", [("ip", "192.168.2.11")])


class Level(enum.IntEnum):
    HIGH = 3


class Text(str):
    def __str__(self):
        return "not this"


# params -> the exact body of event E_X
EXACT = [
    ((), b'{"jsonrpc":"2.0","method":"E_X"}'),
    ({}, b'{"jsonrpc":"2.0","method":"E_X"}'),
    (None, b'{"jsonrpc":"2.0","method":"E_X"}'),
    ({"a": "x", "b": 7, "c": None},
     b'{"jsonrpc":"2.0","method":"E_X","params":{"a":"x","b":7,"c":null}}'),
    ([("b", 1), ("a", 2)], b'{"jsonrpc":"2.0","method":"E_X","params":{"b":1,"a":2}}'),
    ([(None, "x"), (None, -7), (None, None)],
     b'{"jsonrpc":"2.0","method":"E_X","params":["x",-7,null]}'),
    ([(None, "")], b'{"jsonrpc":"2.0","method":"E_X","params":[""]}'),
    ({"k": 10**30}, b'{"jsonrpc":"2.0","method":"E_X","params":{"k":' + str(10**30).encode() + b"}}"),
    ({"k": Level.HIGH}, b'{"jsonrpc":"2.0","method":"E_X","params":{"k":3}}'),
    ({"k": Text("t")}, b'{"jsonrpc":"2.0","method":"E_X","params":{"k":"t"}}'),
    # JSON escapes only what it must; the rest is UTF-8
    ({"k": 'a"b\\c'}, b'{"jsonrpc":"2.0","method":"E_X","params":{"k":"a\\"b\\\\c"}}'),
    ({"k": "\n\r\t\x00\x1f"},
     b'{"jsonrpc":"2.0","method":"E_X","params":{"k":"\\n\\r\\t\\u0000\\u001f"}}'),
    ({"k": "caf\u00e9 \u2603 \U0001f600"},
     '{"jsonrpc":"2.0","method":"E_X","params":{"k":"caf\u00e9 \u2603 \U0001f600"}}'.encode()),
    # names the line format refuses are fine in JSON
    ({"a::b": 1, "c:": 2, 'd,"e"': 3},
     b'{"jsonrpc":"2.0","method":"E_X","params":{"a::b":1,"c:":2,"d,\\"e\\"":3}}'),
]


@pytest.mark.parametrize("params, body", EXACT)
def test_the_body_is_compact_and_ordered_as_opensips_writes_it(params, body):
    assert json_body("E_X", params) == body
    # ...which is what json.dumps writes with these options
    message = json.loads(body)
    assert body == json.dumps(message, ensure_ascii=False,
                              separators=(",", ":")).encode()


@pytest.mark.parametrize("params, body", EXACT)
def test_values_read_back_as_they_were_typed(params, body):
    name, decoded = decode_event(body)
    assert name == "E_X"
    pairs = list(params.items()) if isinstance(params, dict) else list(params or ())
    assert decoded == [(key, value if value is None else
                        int(value) if isinstance(value, int) else str.__str__(value))
                       for key, value in pairs]
    assert json_body(*decode_event(body)) == body


def test_the_event_name_follows_the_same_rules_as_in_the_line_format():
    with pytest.raises(EventSyntaxError, match="has ',' at position 1"):
        json_body("E,X")
    with pytest.raises(EventSyntaxError, match="event name is empty"):
        json_body("")
    with pytest.raises(EventValueTypeError, match="event name must be a str"):
        json_body(None)
    with pytest.raises(EventSyntaxError, match="lone surrogate at position 1"):
        json_body("E\udc80", {"k": "v"})


@pytest.mark.parametrize("params, message", [
    ([("a", 1), (None, 2)], "mixes named and unnamed parameters (the first is named, "
                            "the one at index 1 is not)"),
    ([(None, 1), (None, 2), ("a", 3)], "(the first is unnamed, the one at index 2 is not)"),
    ({"a": 1, None: 2}, "mixes named and unnamed parameters"),
    ([("a", 1), ("b", 2), ("a", 3)], "parameter 'a' of event 'E_X' is given twice "
                                     "(index 0 and 2)"),
    ([("", 1)], "parameter name at index 0 of event 'E_X' is empty"),
    ({"a\udc80": "x"}, "parameter 'a\\udc80' of event 'E_X' has a lone surrogate in its name"),
    ({"a": "x\udc80"}, "parameter 'a' of event 'E_X' has a lone surrogate in its value"),
    ([(None, "ok"), (None, "\udc80")], "unnamed parameter at index 1 of event 'E_X' "
                                       "has a lone surrogate in its value"),
])
def test_what_json_cannot_say_unambiguously_is_refused(params, message):
    with pytest.raises(EventSyntaxError) as caught:
        json_body("E_X", params)
    assert message in str(caught.value)


@pytest.mark.parametrize("value, message", [
    (True, "is a bool"), (1.5, "is a float"), (b"x", "is a bytes"), (["x"], "is a list"),
    ({"x": 1}, "is a dict"),
])
def test_a_value_of_the_wrong_type_is_refused_as_in_the_line_format(value, message):
    with pytest.raises(EventValueTypeError, match=message):
        json_body("E_X", {"ip": value})
    with pytest.raises(EventValueTypeError, match="must be a str or None, not int"):
        json_body("E_X", [(1, "x")])
    with pytest.raises(EventValueTypeError, match="not a \\(name, value\\) pair"):
        json_body("E_X", ["ab"])


def _json_of_size(size: int) -> tuple[str, dict]:
    overhead = len(json_body("E_BIG", {"k": ""}))
    return "E_BIG", {"k": "x" * (size - overhead)}


def test_the_size_limit_holds_for_json_bodies_too():
    assert len(json_body(*_json_of_size(MAX_BODY_SIZE))) == MAX_BODY_SIZE
    with pytest.raises(EventTooLargeError) as caught:
        json_body(*_json_of_size(MAX_BODY_SIZE + 1))
    assert (caught.value.size, caught.value.limit) == (16385, 16384)
    # escapes count: 6000 newlines are 12000 bytes of JSON
    with pytest.raises(EventTooLargeError):
        json_body("E_BIG", {"k": "\n" * 6000, "j": "x" * 5000})


def test_a_body_starting_with_an_object_key_is_read_as_json():
    assert decode_event(b'{"jsonrpc":"2.0","method":"E_X","params":[1]}') == (
        "E_X", [(None, 1)])
    # OpenSIPS 3.1.0 wrote a null id first; it is accepted and dropped
    assert decode_event(b'{"id":null,"jsonrpc":"2.0","method":"E_X"}') == ("E_X", [])


def test_an_event_name_starting_with_a_brace_is_still_the_line_format():
    body = encode_event("{E_X}", {"k": "v"})
    assert body == b"{E_X}\nk::v\n"
    assert decode_event(body) == ("{E_X}", [("k", "v")])
    assert json_body("{E_X}") == b'{"jsonrpc":"2.0","method":"{E_X}"}'
    assert decode_event(json_body("{E_X}")) == ("{E_X}", [])


def test_json_with_whitespace_needs_the_format_named():
    body = b'{ "jsonrpc": "2.0",\n  "method": "E_X",\n  "params": {"a": 1} }\n'
    with pytest.raises(PayloadDecodeError):
        decode_event(body)  # read as lines: '"' in the event name
    assert decode_event(body, format="json") == ("E_X", [("a", 1)])
    assert decode_event(b'{"method":"E_X","jsonrpc":"2.0","params":[]}') == ("E_X", [])


def test_a_body_that_is_not_utf8_is_read_with_its_bytes_as_lone_surrogates():
    # cJSON passes every byte >= 0x7f through, so OpenSIPS 3.1 can send these.
    body = b'{"jsonrpc":"2.0","method":"E\xff","params":{"msg":"caf\xe9"}}'
    assert decode_event(body) == ("E\udcff", [("msg", "caf\udce9")])
    # in a UTF-8 body a lone surrogate can only be an escape: still refused
    with pytest.raises(PayloadDecodeError, match="a value has a lone surrogate"):
        decode_event(_HEAD + b',"params":["\\udc80"]}')


def test_naming_the_format_reads_only_that_format():
    with pytest.raises(PayloadDecodeError, match="must be a JSON object"):
        decode_event(b"E_X\n", format="json")
    with pytest.raises(PayloadDecodeError, match="not followed by a newline"):
        decode_event(json_body("E_X"), format="lines")


_HEAD = b'{"jsonrpc":"2.0","method":"E_X"'

# body -> what the error must say, byte offset and line included
BAD_BODIES = [
    (b'{"jsonrpc":"2.0"}', "byte 0 (line 1): the JSON-RPC body has no 'method' key"),
    (b'{"method":"E_X"}', "byte 0 (line 1): the JSON-RPC body has no 'jsonrpc' key"),
    (b'{"jsonrpc":"1.0","method":"E_X"}', "byte 11 (line 1): \"jsonrpc\" must be \"2.0\", not '1.0'"),
    (b'{"jsonrpc":2,"method":"E_X"}', "byte 11 (line 1): \"jsonrpc\" must be \"2.0\", not 2"),
    (b'{"jsonrpc":"2.0","method":5}', "byte 26 (line 1): \"method\" must be a string, not 5"),
    (b'{"jsonrpc":"2.0","method":"E,X"}', "byte 26 (line 1): \"method\" is not an event name"),
    (b'{"jsonrpc":"2.0","method":""}', "\"method\" is not an event name: event name is empty"),
    (b'{"jsonrpc":"2.0","method":"E_X","id":1}', "byte 37 (line 1): \"id\" must be null or absent"),
    (b'{"jsonrpc":"2.0","method":"E_X","result":1}', "byte 32 (line 1): unexpected key 'result'"),
    (b'{"jsonrpc":"2.0","jsonrpc":"2.0","method":"E_X"}', "byte 17 (line 1): the key 'jsonrpc' is given twice"),
    (_HEAD + b',"params":5}', "byte 41 (line 1): \"params\" must be an object or an array, not 5"),
    (_HEAD + b',"params":"x"}', "\"params\" must be an object or an array, not 'x'"),
    (_HEAD + b',"params":{"a":1,"a":2}}', "byte 48 (line 1): the parameter 'a' is given twice"),
    (_HEAD + b',"params":{"":1}}', "byte 42 (line 1): a parameter name is empty"),
    (_HEAD + b',"params":{"\\ud800":1}}', "byte 42 (line 1): a parameter name has a lone surrogate"),
    (_HEAD + b',"params":["\\udc80"]}', "byte 42 (line 1): a value has a lone surrogate"),
    (_HEAD + b',"params":[1.5]}', "byte 42 (line 1): a value must be a string, an integer or "
                                  "null, not the non-integer number 1.5"),
    (_HEAD + b',"params":[1e2]}', "not the non-integer number 100.0"),
    (_HEAD + b',"params":[NaN]}', "not the non-integer number nan"),
    (_HEAD + b',"params":{"a":true}}', "byte 46 (line 1): a value must be a string, an integer "
                                       "or null, not the boolean true"),
    (_HEAD + b',"params":[[1]]}', "not an array"),
    (_HEAD + b',"params":[{"a":1}]}', "not an object"),
    (_HEAD + b',"params":[' + b"1" * 5000 + b"]}", "byte 41 (line 1): bad JSON: Exceeds the limit"),
    (_HEAD + b"} x", "byte 33 (line 1): unexpected data after the JSON object"),
    (_HEAD + b",\n\"params\":[1 2]}", "byte 45 (line 2): bad JSON: Expecting ',' delimiter"),
    (_HEAD + b',"params":[1,]}', "byte 44 (line 1): bad JSON: Expecting value"),
    (_HEAD, "byte 31 (line 1): bad JSON: expecting ',' or '}' in an object"),
    (b'{"jsonrpc":"2.0",}', "byte 17 (line 1): bad JSON: expecting a key in double quotes"),
    (b'{"jsonrpc" "2.0"}', "byte 11 (line 1): bad JSON: expecting ':' after a key"),
    (b'{"jsonrpc', "byte 1 (line 1): bad JSON: Unterminated string"),
    (b'{"', "byte 1 (line 1): bad JSON: Unterminated string"),
    ('{"jsonrpc":"2.0","method":"\u00e9,"}'.encode(), "byte 26 (line 1)"),
    (b'{"jsonrpc":"2.0","method":"\xff,"}', "byte 26 (line 1): \"method\" is not an event name"),
]


@pytest.mark.parametrize("body, message", BAD_BODIES)
def test_a_malformed_json_body_is_refused_with_its_position(body, message):
    with pytest.raises(PayloadDecodeError) as caught:
        decode_event(body)
    assert message in str(caught.value)
    assert "byte" in str(caught.value)


# --- properties ---------------------------------------------------------

_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
_name_chars = st.characters(exclude_categories=("Cs",), exclude_characters=',"\n\r')
_event_names = st.text(alphabet=_name_chars, min_size=1, max_size=30)
_param_names = st.text(alphabet=st.characters(exclude_categories=("Cs",)),
                       min_size=1, max_size=20)
_values = _text | st.integers() | st.none()
_named = st.lists(st.tuples(_param_names, _values), max_size=12,
                  unique_by=lambda pair: pair[0])
_unnamed = st.lists(st.tuples(st.none(), _values), max_size=12)
_params = _named | _unnamed


@settings(max_examples=500)
@given(_event_names, _params)
def test_decode_gives_back_what_encode_was_given(name, params):
    assert decode_event(json_body(name, params)) == (name, params)


@settings(max_examples=500)
@given(_event_names, _params)
def test_encode_of_a_decoded_body_gives_the_same_bytes(name, params):
    body = json_body(name, params)
    assert json_body(*decode_event(body)) == body
    assert json.loads(body) == {"jsonrpc": "2.0", "method": name, **(
        {"params": dict(params) if params[0][0] is not None else
         [value for _, value in params]} if params else {})}


_anything = st.text() | st.integers() | st.none() | st.booleans() | st.floats()


@settings(max_examples=500)
@given(st.text(max_size=30), st.lists(st.tuples(st.text(max_size=20) | st.none(),
                                                _anything), max_size=8))
def test_encode_either_succeeds_or_raises_a_syntax_error(name, params):
    try:
        body = json_body(name, params)
    except EventSyntaxError:  # EventTooLargeError and EventValueTypeError too
        return
    assert decode_event(body) == (name, params)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@settings(max_examples=500)
@given(st.dictionaries(st.sampled_from(["jsonrpc", "method", "params", "id", "x"]),
                       _json_values | st.just("2.0") | st.just("E_X"))
       .map(lambda message: json.dumps(message, ensure_ascii=False).encode())
       | _params.map(lambda params: json_body("E_X", params))
       | _params.map(lambda params: json_body("E_X", params)[:-2])
       | st.binary(max_size=40).map(lambda tail: b'{"' + tail))
def test_decode_either_raises_a_decode_error_or_gives_an_encodable_event(body):
    try:
        decoded = decode_event(body, format="json")
    except PayloadDecodeError as error:
        assert "byte" in str(error)
        return
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return  # read with its odd bytes as lone surrogates, which cannot be sent again
    # Whatever decodes can be sent again, and reads back the same.
    assert decode_event(json_body(*decoded)) == decoded


# --- byte for byte with OpenSIPS 3.1's cJSON ------------------------------

_CJSON_ESCAPES = {0x22: b'\\"', 0x5C: b"\\\\", 0x08: b"\\b", 0x0C: b"\\f",
                  0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t"}


def cjson_string(text: str) -> bytes:
    """lib/cJSON.c print_string_ptr, byte by byte over the UTF-8 text (as C sees a char *)."""
    out = bytearray(b'"')
    for byte in text.encode("utf-8"):
        if byte > 31 and byte not in (0x22, 0x5C):
            out.append(byte)  # 0x7f and every byte of a multi-byte character: raw
        else:
            out += _CJSON_ESCAPES.get(byte, b"\\u%04x" % byte)
    return bytes(out + b'"')


def cjson_value(value) -> bytes:
    if value is None:
        return b"null"  # 3.1.1+: a str param with a NULL pointer
    if isinstance(value, int):
        return b"%d" % value  # print_number: an int-valued double prints with "%d"
    return cjson_string(value)


def opensips_3_1_body(name: str, params: list) -> bytes:
    """evi_build_payload() + cJSON_PrintUnformatted, rebuilt from the C code."""
    body = b'{"jsonrpc":"2.0","method":' + cjson_string(name)
    if params:
        if params[0][0] is not None:  # decided from the first parameter, as OpenSIPS does
            members = b",".join(cjson_string(key) + b":" + cjson_value(value) for key, value in params)
            body += b',"params":{' + members + b"}"
        else:
            body += b',"params":[' + b",".join(cjson_value(value) for _, value in params) + b"]"
    return body + b"}"


# OpenSIPS params are C strings (a NUL ends them) and C ints.
_c_text = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\0"),
                  max_size=30)
_c_values = _c_text | st.integers(-(2 ** 31), 2 ** 31 - 1) | st.none()
_c_names = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\0"),
                   min_size=1, max_size=12)
_c_event_names = st.text(alphabet=st.characters(exclude_categories=("Cs",),
                                                exclude_characters=',"\n\r\0'),
                         min_size=1, max_size=20)
_c_params = (st.lists(st.tuples(_c_names, _c_values), max_size=8, unique_by=lambda pair: pair[0])
             | st.lists(st.tuples(st.none(), _c_values), max_size=8))


@settings(max_examples=1000)
@given(_c_event_names, _c_params)
def test_the_json_body_is_byte_for_byte_what_opensips_3_1s_cjson_writes(name, params):
    assert json_body(name, params) == opensips_3_1_body(name, params)


@pytest.mark.parametrize("value, written", [
    ("\x01\x07\x08\x0b\x0c\x1f", b'"\\u0001\\u0007\\b\\u000b\\f\\u001f"'),
    ("\x7f\x80\u2028\U0001f600", '"\x7f\x80\u2028\U0001f600"'.encode()),
    ("/", b'"/"'),                                   # cJSON does not escape '/'
    ('\\"', b'"\\\\\\""'),
])
def test_cjsons_escapes_are_the_writers_escapes(value, written):
    assert cjson_string(value) == written  # the model itself, against literal bytes
    assert json_body("E_X", [(None, value)]) == _HEAD + b',"params":[' + written + b"]}"
