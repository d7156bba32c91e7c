"""Event bodies as JSON-RPC notifications, the body of OpenSIPS 3.1.1 and later.

Use it through :func:`opsevent.payload.encode_event` (``format="json"``) and
:func:`opsevent.payload.decode_event`; this module holds the JSON half.

Shape (OpenSIPS ``evi_build_payload()``, printed compact)::

    {"jsonrpc":"2.0","method":EVENT}                     no parameters
    {"jsonrpc":"2.0","method":EVENT,"params":{...}}      named parameters
    {"jsonrpc":"2.0","method":EVENT,"params":[...]}      unnamed parameters

Example, the event the pike module raises to block an address::

    {"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"192.168.2.11"}}

Writing rules. The encoder writes exactly these bytes, and
``encode_event(*decode_event(body), format="json") == body`` for every body
it wrote:

* Keys in the order ``jsonrpc``, ``method``, ``params``; separators ``,``
  and ``:`` with no spaces; text as UTF-8, not ``\\u`` escapes, except what
  JSON must escape (``"`` ``\\`` and control characters).
* No ``params`` key when there are no parameters; an object when they are
  all named, in their order; an array when they are all unnamed.
* A mix of named and unnamed parameters is refused (EventSyntaxError).
  OpenSIPS decides from the *first* parameter alone and so writes an array
  that drops the later names, or an object with empty keys; neither reads
  back as what was raised.
* A name given twice is refused: a JSON object with a duplicate key is
  ambiguous (most readers keep the last value, some the first).
* A value is a str (a JSON string), an int (a JSON number) or None (null);
  bool is refused as in the line format. A name is any non-empty str (the
  line format's rules on ``,`` ``"`` ``::`` do not apply); the event name
  follows the same rules in both formats.
* Lone surrogates are refused, and the body is at most ``MAX_BODY_SIZE``
  (16384) bytes like a line-format body (EventTooLargeError).

Reading: :func:`decode_jsonrpc` takes any JSON object of that shape
(whitespace anywhere JSON allows it, keys in any order, and the ``"id":null``
of OpenSIPS 3.1.0) and gives ``(event, [(name or None, value)])`` with the
values as they were typed: an int stays an int and null is None, where the
line format gives every value back as text. It refuses what the encoder
would refuse (a duplicate key, a float, a bool, a nested value, an empty
name, a lone surrogate, an ``id`` that is not null) with a
PayloadDecodeError giving the byte offset and line of the problem.
"""

import json
from json.decoder import JSONDecodeError, scanstring
from json.encoder import encode_basestring as _quote

from .errors import EventSyntaxError, EventTooLargeError
from . import _body
from ._body import (
    MAX_BODY_SIZE,
    as_pair,
    check_event_name,
    check_name_given,
    describe_param,
    encodable,
    fail_at,
    int_text,
    param_items,
    value_type_error,
)

__all__ = ["encode_jsonrpc", "decode_jsonrpc", "JSONRPC_VERSION"]

JSONRPC_VERSION = "2.0"

# Bound by assignment, not by import: CPython 3.11 compiles a method call on
# an imported name as an attribute load (modules are the usual case), which
# cost encode_event about 70 ns per search. Keep it this way.
_SPECIAL = _body.SPECIAL
_HEAD = '{"jsonrpc":"2.0","method":'
_WHITESPACE = " \t\n\r"


def encode_jsonrpc(name: str, params=()) -> bytes:
    """The compact JSON-RPC body for event *name* with *params*.

    *params* as for :func:`opsevent.payload.encode_event`. Raises
    EventSyntaxError (EventValueTypeError for a wrong type) naming the bad
    parameter, and EventTooLargeError over MAX_BODY_SIZE.
    """
    # This runs on every raise to a JSON subscriber, so the text is built by
    # hand: json's own encoder costs more to set up than to run on a few
    # parameters. _quote is json's, so strings are escaped as json.dumps
    # would with ensure_ascii=False.
    if type(name) is not str or not name or _SPECIAL.search(name):
        check_event_name(name)
    unique = type(params) is dict  # a dict cannot repeat a name
    if unique:
        params = params.items()
    elif type(params) is not list and type(params) is not tuple:
        params = param_items(name, params)
    named = None
    keys = []
    parts = []
    for index, pair in enumerate(params):
        if type(pair) is not tuple or len(pair) != 2:
            pair = as_pair(name, index, pair)
        key, value = pair
        if key is not None and (type(key) is not str or not key):
            check_name_given(name, index, key)
        if type(value) is str:
            value = _quote(value)
        elif value is None:
            value = "null"
        else:
            value = _json_number(name, index, key, value)
        if named is None:
            named = key is not None
        elif named is (key is None):
            _refuse_mix(name, index, key)
        if named:
            keys.append(key)
            parts.append(f"{_quote(key)}:{value}")
        else:
            parts.append(value)
    if named:
        if not unique and len(keys) > 1 and len(set(keys)) != len(keys):
            _refuse_duplicate(name, keys)
        text = f'{_HEAD}{_quote(name)},"params":{{{",".join(parts)}}}}}'
    elif named is None:
        text = f"{_HEAD}{_quote(name)}}}"
    else:
        text = f'{_HEAD}{_quote(name)},"params":[{",".join(parts)}]}}'
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:
        _explain_unencodable(name, keys, parts)
    if len(body) > MAX_BODY_SIZE:
        raise EventTooLargeError(name, len(body), MAX_BODY_SIZE)
    return body


def _json_number(name: str, index: int, key, value) -> str:
    """The JSON text of a value that is not a str or None (or raise)."""
    # int.__repr__ so subclasses (IntEnum...) give the plain number.
    if isinstance(value, int) and not isinstance(value, bool):
        return int_text(name, index, key, value)
    if isinstance(value, str):
        return _quote(str.__str__(value))
    value_type_error(name, index, key, value)


def _refuse_mix(name: str, index: int, key) -> None:
    first = "unnamed" if key is not None else "named"
    raise EventSyntaxError(
        f"event {name!r} mixes named and unnamed parameters (the first is "
        f"{first}, the one at index {index} is not); a JSON-RPC body holds an "
        f"object (every parameter named) or an array (none named), never both")


def _refuse_duplicate(name: str, keys: list) -> None:
    first = {}
    for index, key in enumerate(keys):
        if key in first:
            raise EventSyntaxError(
                f"parameter {key!r} of event {name!r} is given twice (index "
                f"{first[key]} and {index}); a JSON object cannot hold a name "
                f"twice unambiguously")
        first[key] = index
    raise AssertionError("unreachable: no duplicate name found")


def _explain_unencodable(name: str, keys: list, parts: list):
    check_event_name(name)  # names the event's own surrogate, if it has one
    for index, part in enumerate(parts):
        if not encodable(part):
            key = keys[index] if keys else None
            what = "name" if key is not None and not encodable(key) else "value"
            raise EventSyntaxError(
                f"{describe_param(name, index, key)} has a lone surrogate in its "
                f"{what}; it cannot be sent as UTF-8")
    raise AssertionError("unreachable: the JSON body did not encode")


# --- reading -------------------------------------------------------------

class _Object(list):
    """A JSON object read as its (key, value) pairs, duplicates kept."""


_DECODER = json.JSONDecoder(object_pairs_hook=_Object)


def decode_jsonrpc(text: str, raw: bool = False
                   ) -> tuple[str, list[tuple[str | None, str | int | None]]]:
    """Read a JSON-RPC body, already decoded from UTF-8 (module docstring).

    *raw* says the body was not UTF-8 and was decoded with surrogateescape:
    lone surrogates are then its own bytes (cJSON passes any byte through),
    and are given back instead of refused. Raises PayloadDecodeError with
    the byte offset and line of the problem.
    """
    found = _envelope(text)
    name = _method(text, found, raw)
    if "params" not in found:
        return name, []
    params, params_pos = found["params"]
    if text.startswith("{", params_pos):
        return name, _named(text, params_pos, raw)
    if text.startswith("[", params_pos):
        return name, [(None, _value(text, value, value_pos, raw))
                      for value, value_pos in _elements(text, params_pos)]
    fail_at(text, params_pos, f'"params" must be an object or an array, not '
                            f"{_shown(params)}")


def _envelope(text: str) -> dict:
    """The top-level members, key -> (value, position), checked for the JSON-RPC shape."""
    pos = _skip(text, 0)
    if not text.startswith("{", pos):
        fail_at(text, pos, "a JSON-RPC body must be a JSON object")
    members, end = _members(text, pos)
    end = _skip(text, end)
    if end != len(text):
        fail_at(text, end, "unexpected data after the JSON object")
    found = {}
    for key, key_pos, value, value_pos in members:
        if key in found:
            fail_at(text, key_pos, f"the key {key!r} is given twice")
        if key not in ("jsonrpc", "method", "params", "id"):
            fail_at(text, key_pos, f"unexpected key {key!r}; a JSON-RPC "
                                 "notification has jsonrpc, method and params")
        found[key] = (value, value_pos)
    for key in ("jsonrpc", "method"):
        if key not in found:
            fail_at(text, pos, f"the JSON-RPC body has no {key!r} key")
    version, version_pos = found["jsonrpc"]
    if version != JSONRPC_VERSION:
        fail_at(text, version_pos, f'"jsonrpc" must be "2.0", not '
                                 f"{_shown(version)}")
    # OpenSIPS 3.1.0 writes "id":null; 3.1.1 and later leave it out.
    if "id" in found and found["id"][0] is not None:
        fail_at(text, found["id"][1], '"id" must be null or absent: an event is '
                                    "a notification, not a request")
    return found


def _method(text: str, found: dict, raw: bool) -> str:
    name, name_pos = found["method"]
    if type(name) is not str:
        fail_at(text, name_pos, f'"method" must be a string, not '
                              f"{_shown(name)}")
    try:
        check_event_name(name)
    except EventSyntaxError as err:
        if not (raw and name and not _SPECIAL.search(name)):
            fail_at(text, name_pos, f'"method" is not an event name: {err}')
    return name


def _named(text: str, pos: int, raw: bool) -> list:
    pairs, _end = _members(text, pos)
    seen = set()
    result = []
    for key, key_pos, value, value_pos in pairs:
        if not key:
            fail_at(text, key_pos, "a parameter name is empty")
        if key in seen:
            fail_at(text, key_pos, f"the parameter {key!r} is given twice")
        if not raw and not encodable(key):
            fail_at(text, key_pos, "a parameter name has a lone surrogate")
        seen.add(key)
        result.append((key, _value(text, value, value_pos, raw)))
    return result


def _value(text: str, value, pos: int, raw: bool):
    if value is None or type(value) is int:
        return value
    if type(value) is str:
        if not raw and not encodable(value):
            fail_at(text, pos, "a value has a lone surrogate")
        return value
    fail_at(text, pos, f"a value must be a string, an integer or null, not "
                     f"{_shown(value)}")


def _shown(value) -> str:
    """A decoded JSON value, described for a message."""
    if isinstance(value, _Object):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"the non-integer number {value!r}"
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _scan(text: str, pos: int):
    """The JSON value at *pos* and where it ends."""
    try:
        return _DECODER.raw_decode(text, pos)
    except JSONDecodeError as err:
        fail_at(text, err.pos, f"bad JSON: {err.msg}")
    except ValueError as err:  # an integer too long to convert
        fail_at(text, pos, f"bad JSON: {err}")


def _members(text: str, pos: int) -> tuple[list, int]:
    """The ``(key, key_pos, value, value_pos)`` of the object at *pos*, and its end."""
    members = []
    pos = _skip(text, pos + 1)
    if text.startswith("}", pos):
        return members, pos + 1
    while True:
        if not text.startswith('"', pos):
            fail_at(text, pos, "bad JSON: expecting a key in double quotes")
        key_pos = pos
        try:
            key, pos = scanstring(text, pos + 1, True)
        except JSONDecodeError as err:
            fail_at(text, err.pos, f"bad JSON: {err.msg}")
        pos = _skip(text, pos)
        if not text.startswith(":", pos):
            fail_at(text, pos, "bad JSON: expecting ':' after a key")
        value_pos = _skip(text, pos + 1)
        value, pos = _scan(text, value_pos)
        members.append((key, key_pos, value, value_pos))
        pos = _skip(text, pos)
        if text.startswith("}", pos):
            return members, pos + 1
        if not text.startswith(",", pos):
            fail_at(text, pos, "bad JSON: expecting ',' or '}' in an object")
        pos = _skip(text, pos + 1)


def _elements(text: str, pos: int) -> list:
    """The ``(value, value_pos)`` of the array at *pos*."""
    elements = []
    pos = _skip(text, pos + 1)
    if text.startswith("]", pos):
        return elements
    while True:
        value_pos = pos
        value, pos = _scan(text, value_pos)
        elements.append((value, value_pos))
        pos = _skip(text, pos)
        if text.startswith("]", pos):
            return elements
        if not text.startswith(",", pos):
            fail_at(text, pos, "bad JSON: expecting ',' or ']' in an array")
        pos = _skip(text, pos + 1)
