"""raise_event under hostile input, through a recording fake transport (no broker, no worker).

Wrong types, huge values, non-UTF-8 bytes, NUL, lone surrogates, misshapen
parameter lists: ``raise_event`` either accepts the event (and the body it
hands the transport decodes back to exactly what was given), returns TOO_LARGE,
or raises an ``OpseventError`` (also a ValueError or TypeError) whose message
names what was wrong: the event name, ``params``, ``attrs``/``vals``, or the
parameter itself (its name, or its index when unnamed).  Nothing else escapes,
nothing reaches the transport on a rejection, and no call hangs.

(The socket parser, the encoder and the decoder have their own properties in
tests/test_sockets.py and tests/test_payload.py.)
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Mapping

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import opsevent
from opsevent import EventInterface, EventSyntaxError, OpseventError, RaiseResult, Status, decode_event, encode_event

FORMATS = ("lines", "json", "opensips")  # docs/guide.md's body formats: each one fuzzed, none skipped
EVENT = "E_FUZZ"
SOCKET = "rabbitmq:127.0.0.1/fuzz"
CALL_BOUND = 1.0  # seconds any one raise may take: no hang, no quadratic blow-up
FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class RecordingTransport(opsevent.Transport):
    def __init__(self):
        self.calls = []

    def submit(self, event, sockets, body, sync, timeout, message_id):
        self.calls.append(body)
        return [(Status.QUEUED, "")] * len(sockets)


def interface(*events, body_format="lines"):
    transport = RecordingTransport()
    evi = EventInterface() if body_format == "lines" else EventInterface(format=body_format)
    for event in events:
        evi.subscribe_event(event, SOCKET)
    evi.attach(transport)
    return evi, transport


@contextlib.contextmanager
def any_int_digits():
    """Let the test itself print ints of any size (Python 3.11 limits str(int) to 4300 digits)."""
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(old)


# ---- strategies -------------------------------------------------------------------------------------------

# Any code point, lone surrogates and NUL included.
any_char = st.characters(exclude_categories=[])
any_text = st.text(any_char, max_size=40)
nasty_text = st.one_of(any_text, st.sampled_from(
    ["", "\0", "a\0b", "\ud800", "x\udfffy", "::", "a::b", "a:", ",", '"', "\\", "\r\n", "é€😀", " "]))
huge_ints = st.sampled_from([10 ** 4299, 10 ** 4300, -(10 ** 5000), 2 ** 64, -(2 ** 63) - 1, 10 ** 16000])
values = st.one_of(
    nasty_text, st.integers(), huge_ints, st.none(), st.booleans(), st.floats(allow_nan=True),
    st.binary(max_size=20), st.just(b"\xff\xfe\x80"), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.just(object()),
    st.text(max_size=3).map(lambda s: s * 6000),  # big strings, some over the body limit
)
keys = st.one_of(st.none(), nasty_text, st.integers(), st.binary(max_size=8), st.just(("a", "b")))
pairs = st.tuples(keys, values)
odd_items = st.one_of(pairs, st.lists(st.one_of(keys, values), max_size=3), nasty_text, st.integers(), st.none())
params = st.one_of(
    st.none(),
    st.lists(pairs, max_size=6),
    st.lists(pairs, max_size=6).map(tuple),
    st.lists(pairs, max_size=6).map(lambda ps: iter(ps)),  # a one-shot iterator
    st.dictionaries(st.one_of(st.none(), nasty_text, st.integers()), values, max_size=6),
    st.lists(odd_items, max_size=5),
    nasty_text, st.binary(max_size=10), st.integers(), st.floats(), st.booleans(), st.just(object()),
)


# ---- the oracle -------------------------------------------------------------------------------------------

def _where_pairs_go_wrong(event, given, body_format="lines"):
    """What a correct error message may name for ``params=given``: fragments naming a bad part.

    ``["params"]`` for a container of the wrong shape; else, for every pair the
    encoder refuses on its own, its index and (when named) its name.  None when
    every pair is fine by itself.
    """
    if given is None:
        return None
    if isinstance(given, Mapping):
        items = list(given.items())
    elif isinstance(given, (str, bytes, bytearray)) or not isinstance(given, Iterable):
        return ["params"]
    else:
        items = list(given)
    fragments = []
    for index, pair in enumerate(items):
        try:
            encode_event(event, [pair]) if body_format == "lines" else encode_event(event, [pair], body_format)
        except opsevent.EventTooLargeError:
            continue
        except Exception:  # noqa: BLE001 - whatever it is, this pair is a bad one
            fragments.append(f"index {index}")
            if isinstance(pair, (tuple, list)) and len(pair) == 2 and pair[0] is not None:
                with contextlib.suppress(ValueError):
                    fragments.append(repr(pair[0]))
    if body_format != "lines":
        # Rules across parameters (JSON: all named or none, no name twice) may fire first: any may be named.
        for index, pair in enumerate(items):
            fragments.append(f"index {index}")
            if isinstance(pair, (tuple, list)) and len(pair) == 2 and pair[0] is not None:
                with contextlib.suppress(ValueError):
                    fragments.append(repr(pair[0]))
    return fragments or None


def expected_params(items, body_format="lines"):
    """What decoding the body gives back: text values in the line formats, the values themselves in JSON."""
    if body_format == "json":
        return [(key, int(value) if isinstance(value, int) else value) for key, value in items]
    out = []
    with any_int_digits():
        for key, value in items:
            out.append((key, "" if value is None else str(int(value)) if isinstance(value, int) else value))
    return out


def good_event_name(name) -> bool:
    """docs/guide.md's rule for an event name, written out here (not the code under test's check):
    a non-empty str without ',' '"' CR or LF, that UTF-8 can write (no lone surrogate)."""
    if not isinstance(name, str) or not name or any(c in name for c in ',"\r\n'):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def attrs_vals_shape_error(attrs, vals) -> list[str] | None:
    """What the message must name when ``attrs``/``vals`` are refused by their shape alone (each
    None or a list, paired one to one); None when the shape is right.  The strategies below
    make only lists, text, bytes, ints and None."""
    for what, values in (("attrs", attrs), ("vals", vals)):
        if values is not None and not isinstance(values, list):
            return [what]
    if attrs is not None and len(attrs) != len(vals or []):
        return ["attrs", "vals"]
    return None


def raise_checked(evi, transport, event, *args, **kwargs):
    """One raise: it succeeds (and the body decodes right) or fails with a clear OpseventError."""
    sent = len(transport.calls)
    started = time.monotonic()
    try:
        result = evi.raise_event(event, *args, **kwargs)
    except OpseventError as err:
        assert isinstance(err, (ValueError, TypeError)), f"{type(err).__name__} is neither ValueError nor TypeError"
        assert str(err), f"{type(err).__name__} with an empty message"
        assert len(transport.calls) == sent, "a refused event reached the transport"
        return err
    except Exception as err:  # noqa: BLE001
        raise AssertionError(f"raise_event({event!r}, ...) escaped with {type(err).__name__}: {err}") from err
    finally:
        assert time.monotonic() - started < CALL_BOUND, "raise_event took too long"
    assert isinstance(result, RaiseResult) and result.event == event
    return result


# ---- properties -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body_format", FORMATS)
@FUZZ
@given(given=params)
@example(given={"big": 10 ** 5000})
@example(given=[(None, 10 ** 4301)])
@example(given={"ok": 10 ** 4299})
@example(given={"nul\0name": "nul\0value"})
@example(given={"bytes": b"\xff\xfe"})
@example(given={"lone": "\udc80"})
@example(given={"\udc80": 1})
@example(given={b"name": 1})
@example(given=[("a", 1, 2)])
@example(given=["ab"])
@example(given={"x": "y" * 20000})
@example(given=[("a", 1), ("a", 2)])
@example(given=[("a", 1), (None, 2)])
def test_any_params_are_accepted_and_round_trip_or_refused_naming_the_parameter(body_format, given):
    evi, transport = interface(EVENT, body_format=body_format)
    one_shot = type(given).__name__.endswith("iterator")
    materialised = list(given) if one_shot else given  # the oracle needs to read it too
    result = raise_checked(evi, transport, EVENT, iter(materialised) if one_shot else given)
    if isinstance(result, OpseventError):
        must_name = _where_pairs_go_wrong(EVENT, materialised, body_format)
        assert must_name is not None, f"refused params the encoder accepts pair by pair: {result}"
        assert any(fragment in str(result) for fragment in must_name), \
            f"the message does not name {' or '.join(must_name)}: {result}"
        return
    (delivery,) = result.deliveries
    if delivery.status is Status.TOO_LARGE:
        assert EVENT in delivery.reason and "16384" in delivery.reason, delivery.reason
        return
    assert delivery.status is Status.QUEUED
    items = [] if materialised is None else list(
        materialised.items() if isinstance(materialised, Mapping) else materialised)
    # Named, since an OpenSIPS-format body ending in an empty unnamed value reads as the guide's.
    assert decode_event(transport.calls[-1], body_format) == (EVENT, expected_params(items, body_format))


@FUZZ
@given(st.one_of(nasty_text, st.binary(max_size=10), st.integers(), st.none(), st.floats(),
                 st.lists(st.integers(), max_size=2), st.just(object())))
@example("E\0NUL")
@example("E\udc80")
@example("E,X")
@example("")
@example(b"E_BYTES")
def test_any_event_name_is_accepted_or_refused_as_a_bad_event_name(name):
    evi, transport = interface(EVENT)
    result = raise_checked(evi, transport, name, {"a": 1})
    if good_event_name(name):
        assert not isinstance(result, OpseventError), f"a good name refused: {result}"
        assert result.deliveries == ()  # nobody subscribed to it
    else:
        assert isinstance(result, OpseventError), f"a bad name accepted: {name!r}"
        assert "event name" in str(result), result


@FUZZ
@given(st.one_of(st.none(), st.lists(st.one_of(st.none(), nasty_text, st.integers(), st.binary(max_size=4)),
                                     max_size=4), nasty_text, st.integers(), st.binary(max_size=4)),
       st.one_of(st.none(), st.lists(values, max_size=4), nasty_text, st.integers(), st.binary(max_size=4)))
@example(None, [10 ** 5000])
@example(["a", "b"], [1])
@example("ab", [1, 2])
@example(["a"], "x")
def test_any_attrs_and_vals_are_accepted_or_refused_naming_attrs_vals_or_the_parameter(attrs, vals):
    evi, transport = interface(EVENT)
    result = raise_checked(evi, transport, EVENT, attrs=attrs, vals=vals)
    shape = attrs_vals_shape_error(attrs, vals)
    if shape is not None:
        assert isinstance(result, OpseventError), f"attrs={attrs!r} vals={vals!r} accepted: {result}"
        assert all(word in str(result) for word in shape), (shape, str(result))
        return
    vals = [] if vals is None else vals
    pairs_given = list(zip(attrs if attrs is not None else [None] * len(vals), vals))
    must_name = _where_pairs_go_wrong(EVENT, pairs_given)
    if isinstance(result, OpseventError):
        assert must_name and any(fragment in str(result) for fragment in must_name), (must_name, str(result))
        return
    assert must_name is None, f"accepted pairs the encoder refuses: {pairs_given!r}"
    (delivery,) = result.deliveries
    if delivery.status is Status.TOO_LARGE:
        assert EVENT in delivery.reason and "16384" in delivery.reason, delivery.reason
        return
    assert delivery.status is Status.QUEUED
    assert decode_event(transport.calls[-1]) == (EVENT, expected_params(pairs_given))


def test_params_and_attrs_together_are_refused_naming_both():
    evi, transport = interface(EVENT)
    err = raise_checked(evi, transport, EVENT, {"a": 1}, attrs=["a"], vals=[1])
    assert isinstance(err, EventSyntaxError) and "params" in str(err) and "attrs" in str(err)
