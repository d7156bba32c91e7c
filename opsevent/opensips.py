r"""Event bodies as OpenSIPS 1.8-3.0 really write them: the ``"opensips"`` format.

Use it through :func:`opsevent.payload.encode_event` (``format="opensips"``)
and :func:`opsevent.payload.decode_event`; this module holds that format.

The guide (1.2) describes a line format that event_rabbitmq's own code does
not follow. What ``rmq_build_params()`` writes, seen on the wire from a real
OpenSIPS 2.4 (``shared/notes/opensips-real-wire.md``)::

    body          = event-name *( LF parameter )       ; no LF at the end
    parameter     = [ param-name "::" ] value
    value         = raw-value / quoted-value
    raw-value     = *( any character but LF )          ; a value without LF, as it is
    quoted-value  = DQUOTE *( quoted-char / "\" DQUOTE ) DQUOTE
    quoted-char   = any character but DQUOTE           ; "\" included, never escaped

Examples (the guide's 1.5 script; OpenSIPS sends the AVPs newest first)::

    E_SIP_MESSAGE LF msg::"hello alice CR LF" LF user::alice
    E_SIP_MESSAGE LF msg::say "hi", ok LF user::alice
    E_SIP_MESSAGE                                       (no parameters)

Writing rules, OpenSIPS's:

* A value is quoted only when it contains LF. Inside the quotes each ``"``
  is written ``\"``; a backslash, a CR, a comma are written as they are.
  A value without LF is written as it is, quotes and all.
* None and ``""`` are an empty value; an int is its decimal text.

Where this writer refuses what OpenSIPS would write (EventSyntaxError naming
the parameter), because no reader could get the event back from the bytes:

* a NUL in the event name, a name or a value (OpenSIPS ends the body there,
  losing the rest of the event);
* a parameter name that is empty (OpenSIPS leaves ``name::`` out: it reads
  back unnamed), has LF or ``::``, ends with ``:`` or starts with ``"``;
* an unnamed value without LF whose first ``::`` is not at its start (it
  reads back as ``name::value``);
* a value with LF that ends with a backslash (its closing quote would read
  as an escaped ``\"``);
* a value without LF that starts with ``"`` and, with the lines after it,
  reads back as one quoted value (checked by reading the body back, only
  when such a value is there);
* a body over ``MAX_BODY_SIZE`` (16384) bytes: OpenSIPS cuts it short and
  still publishes it (EventTooLargeError).

And it differs in one way: a negative int is written ``-5``, where OpenSIPS
prints it through an unsigned conversion (``18446744073709551611``).

Reading (:func:`decode_opensips`) takes every body OpenSIPS 1.8-3.0 write
and this module writes: the event name is the first line (any text but LF);
a line starting ``"`` is an unnamed value; otherwise the text before the
first ``::`` of the line is the name (a line starting ``::`` is an unnamed
value, since OpenSIPS never writes an empty name); a value starting ``"``
is quoted when its first ``"`` not after a ``\`` is followed by LF or the
end of the body and it encloses a LF, else it is raw up to the end of the
line. Values come back as text; the last line is a parameter even when
empty, so ``E`` LF is the event with one empty unnamed value.
"""

import re

from . import _body
from ._body import (
    MAX_BODY_SIZE,
    as_pair,
    check_event_name,
    check_name_given,
    describe_param,
    encodable,
    fail_at,
    param_items,
    value_text,
)
from .errors import EventSyntaxError, EventTooLargeError

__all__ = ["encode_opensips", "decode_opensips"]

# Bound by assignment, not by import: CPython 3.11 compiles a method call on
# an imported name as an attribute load (modules are the usual case), which
# cost encode_event about 70 ns per search. Keep it this way.
_SPECIAL = _body.SPECIAL
# A quoted value: inside, a backslash escapes only a quote; possessive so a
# long unterminated one fails in linear time.
_QUOTED = re.compile(r'"((?:[^"\\]++|\\"?+)*+)"')
_ESCAPED_QUOTE = re.compile(r'\\"')
# What a parameter name may not have: LF, "::", a trailing ':', a NUL.
_BAD_NAME = re.compile(r'[\n\0]|::|:\Z')


def encode_opensips(name: str, params=()) -> bytes:
    """The body OpenSIPS 1.8-3.0 would write for event *name* with *params*.

    *params* as for :func:`opsevent.payload.encode_event`. Raises
    EventSyntaxError (EventValueTypeError for a wrong type) naming the bad
    parameter, and EventTooLargeError over MAX_BODY_SIZE.
    """
    if type(name) is not str or not name or _SPECIAL.search(name) or "\0" in name:
        _check_name(name)
    parts = [name]
    pairs = []  # (key, value text): to read the body back, when that is needed
    doubtful = False  # a raw value starts with '"'
    if type(params) is dict:
        params = params.items()
    elif type(params) is not list and type(params) is not tuple:
        params = param_items(name, params)
    for index, pair in enumerate(params):
        if type(pair) is not tuple or len(pair) != 2:
            pair = as_pair(name, index, pair)
        key, value = pair
        if key is not None and (type(key) is not str or not key or key[0] == '"'
                                or _BAD_NAME.search(key)):
            _check_param_name(name, index, key)
        if type(value) is not str:
            value = value_text(name, index, key, value)
        text = _value_written(name, index, key, value)
        doubtful = doubtful or (text is value and value[:1] == '"')
        pairs.append((key, value))
        parts.append(text if key is None else f"{key}::{text}")
    body = _join(parts, name, pairs)
    if doubtful:
        _check_reads_back(body, name, pairs)
    return body


def _value_written(name: str, index: int, key, value: str) -> str:
    """*value* as OpenSIPS writes it (the same object when it is written raw)."""
    if "\0" in value:
        raise EventSyntaxError(
            f"{describe_param(name, index, key)} has a NUL at position {value.index(chr(0))}; "
            f"OpenSIPS 1.8-3.0 end the body there, losing the rest of the event")
    if "\n" not in value:
        if key is None and value.find("::") > 0:
            raise EventSyntaxError(
                f"{describe_param(name, index, key)} has '::' after its start, so it "
                f"would read back as 'name::value'; name it, or use another format")
        return value
    if value.endswith("\\"):
        raise EventSyntaxError(
            f"{describe_param(name, index, key)} has a newline and ends with a backslash: "
            f"OpenSIPS's quoting cannot say that (the closing quote would read as "
            f"an escaped one)")
    return '"' + value.replace('"', '\\"') + '"'


def _check_name(name) -> None:
    check_event_name(name)
    if "\0" in name:
        raise EventSyntaxError(
            f"event name {name!r} has a NUL at position {name.index(chr(0))}; "
            f"OpenSIPS 1.8-3.0 end the body there")


def _check_param_name(name: str, index: int, key) -> None:
    where = check_name_given(name, index, key)
    if key[0] == '"':
        problem = "starts with '\"', which would read back as a quoted value"
    else:
        bad = _BAD_NAME.search(key).group()
        problem = {"::": "contains '::', the name/value separator",
                   ":": "ends with ':', which would read back as part of the value",
                   "\n": "has a newline, which ends the parameter",
                   "\0": "has a NUL, where OpenSIPS 1.8-3.0 end the body"}[bad]
    raise EventSyntaxError(f"{where}, {key!r}, {problem}")


def _join(parts: list[str], name: str, pairs: list) -> bytes:
    try:
        body = "\n".join(parts).encode("utf-8")
    except UnicodeEncodeError:
        for index, (key, value) in enumerate(pairs):
            if not encodable(key or "") or not encodable(value):
                what = "name" if not encodable(key or "") else "value"
                raise EventSyntaxError(
                    f"{describe_param(name, index, key)} has a lone surrogate in its "
                    f"{what}; it cannot be sent as UTF-8") from None
        raise AssertionError("unreachable: the joined parts did not encode")
    if len(body) > MAX_BODY_SIZE:
        raise EventTooLargeError(name, len(body), MAX_BODY_SIZE)
    return body


def _check_reads_back(body: bytes, name: str, pairs: list) -> None:
    """Refuse the first parameter that reads back as something else."""
    _name, got = decode_opensips(body.decode("utf-8"))
    for index, (key, value) in enumerate(pairs):
        if index >= len(got) or got[index] != (key, value):
            raise EventSyntaxError(
                f"{describe_param(name, index, key)} starts with '\"' and, with the "
                f"parameters after it, would read back as one quoted value "
                f"(OpenSIPS quotes only values with a newline, so no reader "
                f"can tell); use another format")
    if len(got) != len(pairs):
        raise AssertionError("unreachable: the body read back longer than written")


# --- reading -------------------------------------------------------------

def decode_opensips(text: str) -> tuple[str, list[tuple[str | None, str]]]:
    """Read a body in OpenSIPS 1.8-3.0's line format, already decoded (module docstring).

    Raises PayloadDecodeError (with the byte offset and line) for an empty
    event name, the only thing this format cannot have.
    """
    end = text.find("\n")
    name = text if end < 0 else text[:end]
    if not name:
        fail_at(text, 0, "the event name is empty")
    if end < 0:
        return name, []
    params = []
    pos = end + 1
    while True:
        key, pos = _read_name(text, pos)
        value, pos = _read_value(text, pos)
        params.append((key, value))
        if pos == len(text):
            return name, params
        pos += 1  # the LF before the next parameter


def _read_name(text: str, pos: int) -> tuple[str | None, int]:
    """The parameter name at *pos* (None if unnamed) and where its value starts."""
    if text.startswith('"', pos):
        return None, pos
    eol = text.find("\n", pos)
    sep = text.find("::", pos, len(text) if eol < 0 else eol)
    if sep <= pos:  # no '::', or one at the start: OpenSIPS writes no empty name
        return None, pos
    return text[pos:sep], sep + 2


def _read_value(text: str, pos: int) -> tuple[str, int]:
    """The value at *pos* and where it ends (at a LF or the end of the body)."""
    if text.startswith('"', pos):
        quoted = _QUOTED.match(text, pos)
        if quoted is not None:
            end = quoted.end()
            inside = quoted.group(1)
            # OpenSIPS quotes only values with LF: anything else is raw text.
            if "\n" in inside and (end == len(text) or text[end] == "\n"):
                return _ESCAPED_QUOTE.sub('"', inside), end
    eol = text.find("\n", pos)
    if eol < 0:
        eol = len(text)
    return text[pos:eol], eol
