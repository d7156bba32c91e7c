r"""Event bodies: the text of one raised event, as the bytes of one AMQP message.

Two formats, chosen per EventInterface (``format`` setting) and per socket
(its ``format=`` parameter):

``"lines"`` (the default)
    The guide's line format, below.
``"json"``
    The JSON-RPC notification of OpenSIPS 3.1.1 and later:
    ``{"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"192.168.2.11"}}``.
    Its exact rules are in :mod:`opsevent.jsonrpc`.

``encode_event(name, params, format="lines")`` writes either;
``decode_event(body)`` reads either. It reads a body as JSON when it starts
with the two bytes ``{"`` and as lines otherwise. That is exact: a
line-format body starts with its event name, and an event name cannot
contain ``"``, so no line-format body starts with ``{"`` (an event named
``{x`` is still read as lines), while every JSON body the encoder writes
starts with ``{"jsonrpc"``. A JSON body that opens with whitespace
(``{ "jsonrpc"...``) is not detected: pass ``format="json"``.

What comes back differs in one way: the line format gives every value back
as text (``7`` and None are written ``7`` and an empty value), the JSON
format gives values back as they were typed (int, None or str). Either
way, ``encode_event(*decode_event(body), format=F) == body`` for a body
the encoder wrote in format F.

Line format grammar (admin guide 1.2, made exact; LF is "\n", CR is "\r")::

    event-body   = event-name LF *( parameter LF )
    parameter    = [ param-name "::" ] value
    event-name   = 1*plain-char
    param-name   = 1*plain-char                  ; and the name rules below
    value        = plain-value / quoted-value
    plain-value  = *plain-char
    quoted-value = DQUOTE *( quoted-char / "\" DQUOTE / "\" "\" ) DQUOTE
    plain-char   = any character but "," DQUOTE CR LF
    quoted-char  = any character but DQUOTE "\"

Example (guide 1.3), the event the pike module raises to block an address::

    E_PIKE_BLOCKED LF
    ip::192.168.2.11 LF

Writing rules. The encoder follows them and the decoder enforces them, so
``decode_event(encode_event(...))`` gives back every name and value:

* A value is written between double quotes when it contains ``,`` ``"``
  LF or CR. Inside quotes ``"`` is written ``\"`` and ``\`` is written
  ``\\``; outside quotes a backslash is an ordinary character.
* Our disambiguation: an *unnamed* value that contains ``::`` is quoted too,
  otherwise it would read back as ``name::value``.
* A parameter name is not empty, has no ``::``, does not end with ``:``
  (``a:`` then ``::`` is ``a:::``, which reads back as ``a`` and ``:...``),
  and has no ``"`` (a leading one would read back as a quoted value).
* Integers are written in signed decimal and None as an empty value; values
  read back as text. bool is refused: ``True`` is neither ``1`` nor ``true``
  with any certainty.
* The body is UTF-8, NUL included, and at most ``MAX_BODY_SIZE`` (16384)
  bytes (guide FAQ 2.1). A bigger event is refused, never truncated. The
  same limit holds for JSON bodies.
"""

import re
import sys
from collections.abc import Iterable, Mapping

from .errors import (
    ConfigError,
    EventSyntaxError,
    EventTooLargeError,
    EventValueTypeError,
    PayloadDecodeError,
    PayloadTypeError,
)

__all__ = ["MAX_BODY_SIZE", "FORMATS", "encode_event", "decode_event",
           "check_event_name"]

MAX_BODY_SIZE = 16384
# The body formats: the guide's line format (the default) and JSON-RPC.
FORMATS = ("lines", "json")

Value = str | int | None
Params = Mapping[str | None, Value] | Iterable[tuple[str | None, Value]]

# Characters that force quotes in a value and are never allowed in a name.
_SPECIAL = re.compile(r'[,"\n\r]')
# Everything that makes a parameter name unreadable, as one search.
_BAD_PARAM_NAME = re.compile(r'[,"\n\r]|::|:\Z')
# A quoted value; possessive so a long unterminated one fails in linear time.
_QUOTED = re.compile(r'"((?:[^"\\]++|\\["\\])*+)"')
_QUOTED_PREFIX = re.compile(r'"(?:[^"\\]++|\\["\\])*+')
_UNESCAPE = re.compile(r'\\(["\\])')
_NAME_HINT = 'names cannot contain "," \'"\' CR or LF'


def check_event_name(name: str) -> str:
    """Return *name* if it can be an event name, else raise EventSyntaxError."""
    if not isinstance(name, str):
        raise EventValueTypeError(
            f"event name must be a str, not {type(name).__name__}")
    if not name:
        raise EventSyntaxError("event name is empty")
    bad = _SPECIAL.search(name)
    if bad:
        raise EventSyntaxError(
            f"event name {name!r} has {bad.group()!r} at position "
            f"{bad.start()}; {_NAME_HINT}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as err:
        raise EventSyntaxError(
            f"event name {name!r} has a lone surrogate at position "
            f"{err.start}; it cannot be sent as UTF-8") from None
    return name


def encode_event(name: str, params: Params = (), format: str = "lines") -> bytes:
    """The UTF-8 body for event *name* with *params*, in *format*.

    *params* is a mapping of name to value, or an iterable of
    ``(name, value)`` pairs where a None name makes an unnamed value. Values
    are str, int or None. *format* is ``"lines"`` (the guide's) or
    ``"json"`` (JSON-RPC, :mod:`opsevent.jsonrpc`; it also refuses a mix of
    named and unnamed parameters and a name given twice). Raises
    EventSyntaxError (EventValueTypeError for a wrong type) naming the bad
    parameter, EventTooLargeError when the body would be over MAX_BODY_SIZE,
    and ConfigError for an unknown *format*.
    """
    if format != "lines":
        if format == "json":
            return _encode_jsonrpc(name, params)
        _bad_format(format)
    # This runs on every raise: the common case costs a few regex searches,
    # one join and one encode. The helpers only run to explain an error.
    if type(name) is not str or not name or _SPECIAL.search(name):
        check_event_name(name)
    parts = [name]
    if type(params) is dict:
        params = params.items()
    elif type(params) is not list and type(params) is not tuple:
        params = _items(name, params)
    for index, pair in enumerate(params):
        if type(pair) is not tuple or len(pair) != 2:
            pair = _as_pair(name, index, pair)
        key, value = pair
        if key is not None and (
                type(key) is not str or not key or _BAD_PARAM_NAME.search(key)):
            _check_param_name(name, index, key)
        if type(value) is not str:
            value = _value_text(name, index, key, value)
        if _SPECIAL.search(value) or (key is None and "::" in value):
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(value if key is None else f"{key}::{value}")
    parts.append("")  # every line, the last one included, ends in LF
    try:
        body = "\n".join(parts).encode("utf-8")
    except UnicodeEncodeError:
        _explain_unencodable(parts)
    if len(body) > MAX_BODY_SIZE:
        raise EventTooLargeError(name, len(body), MAX_BODY_SIZE)
    return body


def _items(name: str, params: Params) -> Iterable:
    if isinstance(params, Mapping):
        return params.items()
    if params is None:
        return ()
    if isinstance(params, (str, bytes, bytearray)) or not isinstance(
            params, Iterable):
        raise EventValueTypeError(
            f"params of event {name!r} must be a mapping or an iterable of "
            f"(name, value) pairs, not {type(params).__name__}")
    return params


def _as_pair(name: str, index: int, pair) -> tuple:
    # A str of length 2 would unpack into two characters: refuse it.
    if isinstance(pair, (list, tuple)) and len(pair) == 2:
        return tuple(pair)
    raise EventValueTypeError(
        f"parameter at index {index} of event {name!r} is not a (name, value) "
        f"pair but a {type(pair).__name__}")


def _where(name: str, index: int, key) -> str:
    if key is None:
        return f"unnamed parameter at index {index} of event {name!r}"
    return f"parameter {key!r} of event {name!r}"


def _check_name_given(name: str, index: int, key) -> str:
    """What both formats ask of a parameter name: a non-empty str. Returns where it is."""
    where = f"parameter name at index {index} of event {name!r}"
    if not isinstance(key, str):
        raise EventValueTypeError(
            f"{where} must be a str or None, not {type(key).__name__}")
    if not key:
        raise EventSyntaxError(f"{where} is empty (use None for an unnamed value)")
    return where


def _check_param_name(name: str, index: int, key) -> None:
    where = _check_name_given(name, index, key)
    bad = _BAD_PARAM_NAME.search(key)
    if not bad:
        return
    if bad.group() == "::":
        problem = "contains '::', the name/value separator"
    elif bad.group() == ":":
        problem = "ends with ':', which would read back as part of the value"
    else:
        problem = f"has {bad.group()!r} at position {bad.start()}; {_NAME_HINT}"
    raise EventSyntaxError(f"{where}, {key!r}, {problem}")


def _value_text(name: str, index: int, key, value) -> str:
    """The text of a value that is not a plain str."""
    if value is None:
        return ""
    # int.__repr__ and str.__str__ so subclasses (IntEnum...) give plain text.
    if isinstance(value, int) and not isinstance(value, bool):
        return _int_text(name, index, key, value)
    if isinstance(value, str):
        return str.__str__(value)
    _value_type_error(name, index, key, value)


def _int_text(name: str, index: int, key, value: int) -> str:
    """The decimal text of an int; refused (not a bare ValueError) past Python's digit limit."""
    try:
        return int.__repr__(value)
    except ValueError:  # over sys.get_int_max_str_digits() digits (Python >= 3.11)
        raise EventSyntaxError(
            f"{_where(name, index, key)} is an int of more than {sys.get_int_max_str_digits()} "
            f"digits; send it as a str") from None


def _value_type_error(name: str, index: int, key, value):
    """Raise the error for a value that is not str, int or None."""
    if isinstance(value, bool):
        raise EventValueTypeError(
            f"{_where(name, index, key)} is a bool, which is ambiguous; pass "
            f"an int (1/0) or a str ('true'/'false')")
    raise EventValueTypeError(
        f"{_where(name, index, key)} is a {type(value).__name__}; values must "
        f"be str, int or None")


def _bad_format(format):
    raise ConfigError(f"format must be one of {', '.join(map(repr, FORMATS))}, "
                      f"not {format!r}")


def _explain_unencodable(parts: list[str]):
    """Raise an error naming the part of the body that is not UTF-8 text."""
    name = parts[0]
    check_event_name(name)
    for index, part in enumerate(parts[1:]):
        try:
            part.encode("utf-8")
        except UnicodeEncodeError:
            key = None
            if not part.startswith('"') and "::" in part:
                key = part.partition("::")[0]
            what = "value"
            if key is not None and not _encodable(key):
                what = "name"
            raise EventSyntaxError(
                f"{_where(name, index, key)} has a lone surrogate in its {what}; "
                f"it cannot be sent as UTF-8") from None
    raise AssertionError("unreachable: the joined parts did not encode")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode_event(body: bytes, format: str | None = None
                 ) -> tuple[str, list[tuple[str | None, str | int | None]]]:
    """Read a body written by :func:`encode_event`: ``(name, [(param, value)])``.

    *format* is ``"lines"``, ``"json"`` or None to tell them apart: a body
    that starts with ``{"`` is JSON, any other is lines (module docstring).
    Unnamed values come with a None name. Line-format values come back as
    text; JSON values as they were typed (str, int or None). Raises
    PayloadDecodeError with the byte offset and line of the first problem,
    and ConfigError for an unknown *format*.
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise PayloadTypeError(
            f"an event body must be bytes, not {type(body).__name__}")
    data = bytes(body)
    if format is None:
        format = "json" if data.startswith(b'{"') else "lines"
    elif format not in FORMATS:
        _bad_format(format)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PayloadDecodeError(
            f"event body is not valid UTF-8 at byte {err.start}") from None
    if format == "json":
        return _decode_jsonrpc(text)
    end = text.find("\n")
    if end < 0:
        _fail(text, len(text), "the event name is not followed by a newline")
    name = text[:end]
    if not name:
        _fail(text, 0, "the event name is empty")
    _check_plain(text, 0, name, "the event name", "is not allowed in names")
    params = []
    pos = end + 1
    while pos < len(text):
        key, pos = _read_name(text, pos)
        value, pos = _read_value(text, pos)
        params.append((key, value))
    return name, params


def _read_name(text: str, pos: int) -> tuple[str | None, int]:
    """The parameter name at *pos* (None if unnamed) and where its value starts."""
    if text.startswith('"', pos):
        return None, pos
    # A name has no LF, so its '::' must come before the end of this line.
    eol = text.find("\n", pos)
    sep = text.find("::", pos, len(text) if eol < 0 else eol)
    if sep < 0:
        return None, pos
    if sep == pos:
        _fail(text, pos, "a parameter name is empty before '::'")
    key = text[pos:sep]
    _check_plain(text, pos, key, "a parameter name", "is not allowed in names")
    return key, sep + 2


def _read_value(text: str, pos: int) -> tuple[str, int]:
    """The value at *pos* and where the next line starts."""
    if not text.startswith('"', pos):
        eol = text.find("\n", pos)
        if eol < 0:
            _fail(text, len(text), "the last parameter is not followed by a newline")
        value = text[pos:eol]
        _check_plain(text, pos, value, "an unquoted value", "must be quoted")
        return value, eol + 1
    quoted = _QUOTED.match(text, pos)
    if not quoted:
        stop = _QUOTED_PREFIX.match(text, pos).end()
        if stop == len(text):
            _fail(text, pos, "a quoted value has no closing quote")
        _fail(text, stop, f"bad escape {text[stop:stop + 2]!r} in a quoted "
                          'value; only \\" and \\\\ are allowed')
    end = quoted.end()
    if end == len(text):
        _fail(text, end, "the last parameter is not followed by a newline")
    if text[end] != "\n":
        _fail(text, end, f"unexpected {text[end]!r} after a closing quote")
    value = quoted.group(1)
    if "\\" in value:
        value = _UNESCAPE.sub(r"\1", value)
    return value, end + 1


def _check_plain(text: str, pos: int, part: str, what: str, rule: str) -> None:
    bad = _SPECIAL.search(part)
    if bad:
        _fail(text, pos + bad.start(), f"{what} has {bad.group()!r}, which {rule}")


def _fail(text: str, pos: int, problem: str):
    offset = len(text[:pos].encode("utf-8"))
    line = text.count("\n", 0, pos) + 1
    raise PayloadDecodeError(f"event body, byte {offset} (line {line}): {problem}")


# Last, because opsevent.jsonrpc builds on the helpers above.
from .jsonrpc import decode_jsonrpc as _decode_jsonrpc  # noqa: E402
from .jsonrpc import encode_jsonrpc as _encode_jsonrpc  # noqa: E402
