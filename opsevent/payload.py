r"""Event bodies: the text of one raised event, as the bytes of one AMQP message.

Three formats, chosen per EventInterface (``format`` setting) and per socket
(its ``format=`` parameter):

``"lines"`` (the default)
    The guide's line format, below.
``"json"``
    The JSON-RPC notification of OpenSIPS 3.1.1 and later:
    ``{"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"192.168.2.11"}}``.
    Its exact rules are in :mod:`opsevent.jsonrpc`.
``"opensips"``
    The bytes OpenSIPS 1.8-3.0 really send, which are not the guide's
    grammar: no newline at the end, a value quoted only when it has a
    newline: ``E_PIKE_BLOCKED\nip::192.168.2.11``. Its exact rules are in
    :mod:`opsevent.opensips`.

``encode_event(name, params, format="lines")`` writes any of them;
``decode_event(body, format=None)`` reads any of them.

Telling the formats apart (``format=None``, :func:`detect_format`), in order:

1. A body that starts with the two bytes ``{"`` is JSON: every JSON-RPC body
   OpenSIPS writes starts ``{"jsonrpc"`` (3.1.1+) or ``{"id":null`` (3.1.0),
   and no line body does, since an event name cannot contain ``"`` (an
   event named ``{x`` is still read as lines). A JSON body that opens with
   whitespace (``{ "jsonrpc"...``) is not detected: pass ``format="json"``.
2. A body that ends with a newline is the guide's format: every guide-format
   body ends with one.
3. Any other body is OpenSIPS 1.8-3.0's: theirs never end with a newline,
   unless their last parameter is an empty unnamed value. Such a body
   (``E\nvalue\n``) is read as the guide's format, where it means something
   else: pass ``format="opensips"`` (or use the content type, as
   :func:`opsevent.consumer.read_event` does).

What comes back differs in one way: the line formats give every value back
as text (``7`` and None are written ``7`` and an empty value), the JSON
format gives values back as they were typed (int, None or str). Either
way, ``encode_event(*decode_event(body), format=F) == body`` for a body
the encoder wrote in format F (in ``opensips`` only when it ends without a
newline, or with ``format="opensips"`` given). A body that is not UTF-8
(OpenSIPS copies a value's bytes as they are) is read all the same: each
byte that is not part of UTF-8 text comes back as a lone surrogate
U+DC80..U+DCFF, as Python's ``surrogateescape`` does, so
``value.encode("utf-8", "surrogateescape")`` gives the original bytes; such
a value cannot be raised again as it is (the encoders refuse lone
surrogates).

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
  same limit holds in the other formats.
"""

import re
from collections.abc import Iterable, Mapping

from . import _body
from ._body import (
    MAX_BODY_SIZE,
    NAME_HINT,
    as_pair,
    check_event_name,
    check_name_given,
    describe_param,
    encodable,
    fail_at,
    param_items,
    value_text,
)
from .errors import (
    ConfigError,
    EventSyntaxError,
    EventTooLargeError,
    PayloadTypeError,
)
from .jsonrpc import decode_jsonrpc as _decode_jsonrpc
from .jsonrpc import encode_jsonrpc as _encode_jsonrpc
from .opensips import decode_opensips as _decode_opensips
from .opensips import encode_opensips as _encode_opensips

__all__ = ["MAX_BODY_SIZE", "FORMATS", "Params", "encode_event", "decode_event",
           "detect_format", "check_event_name"]

# The body formats: the guide's line format (the default), JSON-RPC, and
# the line format OpenSIPS 1.8-3.0 really writes.
FORMATS = ("lines", "json", "opensips")

Value = str | int | None
Params = Mapping[str | None, Value] | Iterable[tuple[str | None, Value]]

# Bound by assignment, not by import: CPython 3.11 compiles a method call on
# an imported name as an attribute load (modules are the usual case), which
# cost encode_event about 70 ns per search. Keep it this way.
_SPECIAL = _body.SPECIAL
# Everything that makes a parameter name unreadable, as one search.
_BAD_PARAM_NAME = re.compile(r'[,"\n\r]|::|:\Z')
# A quoted value; possessive so a long unterminated one fails in linear time.
_QUOTED = re.compile(r'"((?:[^"\\]++|\\["\\])*+)"')
_QUOTED_PREFIX = re.compile(r'"(?:[^"\\]++|\\["\\])*+')
_UNESCAPE = re.compile(r'\\(["\\])')


def encode_event(name: str, params: Params = (), format: str = "lines") -> bytes:
    """The UTF-8 body for event *name* with *params*, in *format*.

    *params* is a mapping of name to value, or an iterable of
    ``(name, value)`` pairs where a None name makes an unnamed value. Values
    are str, int or None. *format* is ``"lines"`` (the guide's), ``"json"``
    (JSON-RPC, :mod:`opsevent.jsonrpc`; it also refuses a mix of named and
    unnamed parameters and a name given twice) or ``"opensips"`` (OpenSIPS
    1.8-3.0's bytes, :mod:`opsevent.opensips`; it refuses what would not
    read back). Raises EventSyntaxError (EventValueTypeError for a wrong
    type) naming the bad parameter, EventTooLargeError when the body would
    be over MAX_BODY_SIZE, and ConfigError for an unknown *format*.
    """
    if format != "lines":
        # json first and opensips after: the default formats pay nothing more.
        if format == "json":
            return _encode_jsonrpc(name, params)
        if format == "opensips":
            return _encode_opensips(name, params)
        _bad_format(format)
    # This runs on every raise: the common case costs a few regex searches,
    # one join and one encode. The helpers only run to explain an error.
    if type(name) is not str or name not in _GOOD_EVENTS:
        if type(name) is not str or not name or _SPECIAL.search(name):
            check_event_name(name)
        _remember(_GOOD_EVENTS, name)
    parts = [name]
    if type(params) is dict:
        params = params.items()
    elif type(params) is not list and type(params) is not tuple:
        params = param_items(name, params)
    for index, pair in enumerate(params):
        if type(pair) is not tuple or len(pair) != 2:
            pair = as_pair(name, index, pair)
        key, value = pair
        if key is not None and (type(key) is not str or key not in _GOOD_KEYS):
            if type(key) is not str or not key or _BAD_PARAM_NAME.search(key):
                _check_param_name(name, index, key)
            _remember(_GOOD_KEYS, key)
        if type(value) is not str:
            value = value_text(name, index, key, value)
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


# Event names and parameter names already found good (two sets: the rules
# differ): the same few names come with every raise, so each is searched
# once, not per raise. Bounded; a program that makes names up as it goes
# only refills them.
_GOOD_EVENTS: set = set()
_GOOD_KEYS: set = set()
_GOOD_MAX = 4096


def _remember(good: set, name: str) -> None:
    if len(good) >= _GOOD_MAX:
        good.clear()
    good.add(name)


def _check_param_name(name: str, index: int, key) -> None:
    where = check_name_given(name, index, key)
    bad = _BAD_PARAM_NAME.search(key)
    if not bad:
        return
    if bad.group() == "::":
        problem = "contains '::', the name/value separator"
    elif bad.group() == ":":
        problem = "ends with ':', which would read back as part of the value"
    else:
        problem = f"has {bad.group()!r} at position {bad.start()}; {NAME_HINT}"
    raise EventSyntaxError(f"{where}, {key!r}, {problem}")


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
            if key is not None and not encodable(key):
                what = "name"
            raise EventSyntaxError(
                f"{describe_param(name, index, key)} has a lone surrogate in its {what}; "
                f"it cannot be sent as UTF-8") from None
    raise AssertionError("unreachable: the joined parts did not encode")


def detect_format(body: bytes) -> str:
    """The format :func:`decode_event` reads *body* in when it is given none.

    ``"json"`` when it starts with ``{"``, ``"lines"`` when it ends with a
    newline, else ``"opensips"`` (module docstring, "Telling the formats
    apart").
    """
    if body[:2] == b'{"':
        return "json"
    if body[-1:] == b"\n":
        return "lines"
    return "opensips"


def decode_event(body: bytes, format: str | None = None
                 ) -> tuple[str, list[tuple[str | None, str | int | None]]]:
    """Read an event body: ``(name, [(param, value)])``.

    *format* is ``"lines"``, ``"json"``, ``"opensips"``, or None to tell
    them apart (:func:`detect_format`). Unnamed values come with a None
    name. Line-format values (both kinds) come back as text; JSON values as
    they were typed (str, int or None). A body that is not UTF-8 is read all
    the same: each byte that is not part of UTF-8 text comes back as a lone
    surrogate U+DC80..U+DCFF (``value.encode("utf-8", "surrogateescape")``
    gives the bytes back). Raises PayloadDecodeError with the byte offset
    and line of the first problem, and ConfigError for an unknown *format*.
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise PayloadTypeError(
            f"an event body must be bytes, not {type(body).__name__}")
    data = bytes(body)
    if format is None:
        format = detect_format(data)
    elif format not in FORMATS:
        _bad_format(format)
    try:
        text, raw = data.decode("utf-8"), False
    except UnicodeDecodeError:
        # OpenSIPS copies values byte for byte: a Latin-1 SIP body goes out
        # as it came. Read it rather than refuse the whole event.
        text, raw = data.decode("utf-8", "surrogateescape"), True
    if format == "json":
        return _decode_jsonrpc(text, raw)
    if format == "opensips":
        return _decode_opensips(text)
    return _decode_lines(text)


def _decode_lines(text: str) -> tuple[str, list[tuple[str | None, str]]]:
    """Read a guide-format body (module docstring), already decoded."""
    end = text.find("\n")
    if end < 0:
        fail_at(text, len(text), "the event name is not followed by a newline")
    name = text[:end]
    if not name:
        fail_at(text, 0, "the event name is empty")
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
        fail_at(text, pos, "a parameter name is empty before '::'")
    key = text[pos:sep]
    _check_plain(text, pos, key, "a parameter name", "is not allowed in names")
    return key, sep + 2


def _read_value(text: str, pos: int) -> tuple[str, int]:
    """The value at *pos* and where the next line starts."""
    if not text.startswith('"', pos):
        eol = text.find("\n", pos)
        if eol < 0:
            fail_at(text, len(text), "the last parameter is not followed by a newline")
        value = text[pos:eol]
        _check_plain(text, pos, value, "an unquoted value", "must be quoted")
        return value, eol + 1
    quoted = _QUOTED.match(text, pos)
    if not quoted:
        stop = _QUOTED_PREFIX.match(text, pos).end()
        if stop == len(text):
            fail_at(text, pos, "a quoted value has no closing quote")
        fail_at(text, stop, f"bad escape {text[stop:stop + 2]!r} in a quoted "
                          'value; only \\" and \\\\ are allowed')
    end = quoted.end()
    if end == len(text):
        fail_at(text, end, "the last parameter is not followed by a newline")
    if text[end] != "\n":
        fail_at(text, end, f"unexpected {text[end]!r} after a closing quote")
    value = quoted.group(1)
    if "\\" in value:
        value = _UNESCAPE.sub(r"\1", value)
    return value, end + 1


def _check_plain(text: str, pos: int, part: str, what: str, rule: str) -> None:
    bad = _SPECIAL.search(part)
    if bad:
        fail_at(text, pos + bad.start(), f"{what} has {bad.group()!r}, which {rule}")
