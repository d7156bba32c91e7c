"""What every body format shares: event names, parameter lists, value errors, decode errors.

Private: :mod:`opsevent.payload` (the guide's line format and the public
``encode_event``/``decode_event``), :mod:`opsevent.jsonrpc` and
:mod:`opsevent.opensips` build on it, so neither body format imports another
and no public module imports another's private names. The names below are
public within the package (``__all__``), not part of opsevent's API.
"""

import re
import sys
from collections.abc import Iterable, Mapping

from .errors import EventSyntaxError, EventValueTypeError, PayloadDecodeError

__all__ = ["MAX_BODY_SIZE", "SPECIAL", "NAME_HINT", "check_event_name", "param_items", "as_pair",
           "describe_param", "check_name_given", "int_text", "value_text", "value_type_error",
           "encodable", "fail_at"]

MAX_BODY_SIZE = 16384

# Characters that force quotes in a guide-format value and are never allowed
# in an event name, whatever the format.
SPECIAL = re.compile(r'[,"\n\r]')
NAME_HINT = 'names cannot contain "," \'"\' CR or LF'


def check_event_name(name: str) -> str:
    """Return *name* if it can be an event name, else raise EventSyntaxError."""
    if not isinstance(name, str):
        raise EventValueTypeError(
            f"event name must be a str, not {type(name).__name__}")
    if not name:
        raise EventSyntaxError("event name is empty")
    bad = SPECIAL.search(name)
    if bad:
        raise EventSyntaxError(
            f"event name {name!r} has {bad.group()!r} at position "
            f"{bad.start()}; {NAME_HINT}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as err:
        raise EventSyntaxError(
            f"event name {name!r} has a lone surrogate at position "
            f"{err.start}; it cannot be sent as UTF-8") from None
    return name


def param_items(name: str, params) -> Iterable:
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


def as_pair(name: str, index: int, pair) -> tuple:
    # A str of length 2 would unpack into two characters: refuse it.
    if isinstance(pair, (list, tuple)) and len(pair) == 2:
        return tuple(pair)
    raise EventValueTypeError(
        f"parameter at index {index} of event {name!r} is not a (name, value) "
        f"pair but a {type(pair).__name__}")


def describe_param(name: str, index: int, key) -> str:
    if key is None:
        return f"unnamed parameter at index {index} of event {name!r}"
    return f"parameter {key!r} of event {name!r}"


def check_name_given(name: str, index: int, key) -> str:
    """What every format asks of a parameter name: a non-empty str. Returns where it is."""
    where = f"parameter name at index {index} of event {name!r}"
    if not isinstance(key, str):
        raise EventValueTypeError(
            f"{where} must be a str or None, not {type(key).__name__}")
    if not key:
        raise EventSyntaxError(f"{where} is empty (use None for an unnamed value)")
    return where


def int_text(name: str, index: int, key, value: int) -> str:
    """The decimal text of an int; refused (not a bare ValueError) past Python's digit limit."""
    try:
        return int.__repr__(value)
    except ValueError:  # over sys.get_int_max_str_digits() digits (Python >= 3.11)
        raise EventSyntaxError(
            f"{describe_param(name, index, key)} is an int of more than {sys.get_int_max_str_digits()} "
            f"digits; send it as a str") from None


def value_text(name: str, index: int, key, value) -> str:
    """The text of a value that is not a plain str (None is empty, ints are decimal)."""
    if value is None:
        return ""
    # int.__repr__ and str.__str__ so subclasses (IntEnum...) give plain text.
    if isinstance(value, int) and not isinstance(value, bool):
        return int_text(name, index, key, value)
    if isinstance(value, str):
        return str.__str__(value)
    value_type_error(name, index, key, value)


def value_type_error(name: str, index: int, key, value):
    """Raise the error for a value that is not str, int or None."""
    if isinstance(value, bool):
        raise EventValueTypeError(
            f"{describe_param(name, index, key)} is a bool, which is ambiguous; pass "
            f"an int (1/0) or a str ('true'/'false')")
    raise EventValueTypeError(
        f"{describe_param(name, index, key)} is a {type(value).__name__}; values must "
        f"be str, int or None")


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def fail_at(text: str, pos: int, problem: str):
    """Raise PayloadDecodeError for the body *text* (decoded) at character *pos*."""
    # surrogateescape: a body that was not UTF-8 still counts its own bytes.
    offset = len(text[:pos].encode("utf-8", "surrogateescape"))
    line = text.count("\n", 0, pos) + 1
    raise PayloadDecodeError(f"event body, byte {offset} (line {line}): {problem}")
