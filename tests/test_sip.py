"""The example SIP server's pure parts: parser, replies, transaction table, handling.

No broker and no sockets to other processes: ``SipServer.handle`` is called
directly with an EventInterface whose transport records the bodies.
"""

from __future__ import annotations

import copy
import multiprocessing
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import opsevent
from opsevent import Status
from workers.demo import sip
from workers.demo.sip import (
    ANSWERED, FULL, NEW, PENDING, NotARequest, SipParseError, TransactionTable,
    build_reply, has_tag, parse_request, ruri_user, to_tag, transaction_key, via_branch,
)

GOOD = (b"MESSAGE sip:alice@127.0.0.1:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-1-0\r\n"
        b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag001\r\n"
        b"To: <sip:alice@127.0.0.1:5060>\r\n"
        b"Call-ID: 1-1@127.0.0.1\r\n"
        b"CSeq: 1 MESSAGE\r\n"
        b"Max-Forwards: 70\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: 13\r\n\r\n"
        b"Hello, world!")


def message(body=b"Hello", ruri=b"sip:alice@127.0.0.1", method=b"MESSAGE", branch=b"z9hG4bK1",
            call_id=b"c1@127.0.0.1", cseq=b"1", extra=b"", length=True):
    head = (method + b" " + ruri + b" SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=" + branch + b"\r\n"
            b"From: <sip:bob@127.0.0.1>;tag=f1\r\n"
            b"To: <" + ruri + b">\r\n"
            b"Call-ID: " + call_id + b"\r\n"
            b"CSeq: " + cseq + b" " + method + b"\r\n" + extra)
    if length:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


# ---- the parser ---------------------------------------------------------------------

def test_a_sipp_message_parses():
    req = parse_request(GOOD)
    assert req.method == b"MESSAGE"
    assert req.uri == b"sip:alice@127.0.0.1:5060"
    assert req.vias == [b"SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-1-0"]
    assert req.from_ == b"sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag001"
    assert req.to == b"<sip:alice@127.0.0.1:5060>"
    assert req.call_id == b"1-1@127.0.0.1"
    assert req.cseq == b"1 MESSAGE"
    assert req.body == b"Hello, world!"
    assert req.branch == b"z9hG4bK-1-1-0"


# (what, datagram, check on the parsed request)
PARSES = [
    ("compact forms v f t i l",
     b"MESSAGE sip:a@h SIP/2.0\r\nv: SIP/2.0/UDP h;branch=b1\r\nf: <sip:x@h>;tag=1\r\nt: <sip:a@h>\r\n"
     b"i: cid\r\nCSeq: 7 MESSAGE\r\nl: 2\r\n\r\nhi",
     lambda r: (r.vias, r.call_id, r.body, r.cseq) == ([b"SIP/2.0/UDP h;branch=b1"], b"cid", b"hi", b"7 MESSAGE")),
    ("header names in any case, space before the colon",
     b"MESSAGE sip:a@h SIP/2.0\r\nVIA : SIP/2.0/UDP h;branch=b1\r\nfrom:<sip:x@h>\r\nTO:   <sip:a@h>\r\n"
     b"call-ID:cid\r\ncseq: 1 MESSAGE\r\nCONTENT-LENGTH: 0\r\n\r\n",
     lambda r: (r.from_, r.to, r.body) == (b"<sip:x@h>", b"<sip:a@h>", b"")),
    ("folded header lines are joined with one space",
     b"MESSAGE sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n ;branch=b1\r\nFrom: <sip:x@h>\r\n\t;tag=9\r\n"
     b"To: <sip:a@h>\r\nCall-ID: cid\r\nCSeq: 1 MESSAGE\r\n\r\n",
     lambda r: (r.vias[0], r.from_, r.branch) == (b"SIP/2.0/UDP h ;branch=b1", b"<sip:x@h> ;tag=9", b"b1")),
    ("several Via headers keep their order; the branch is the top one's",
     b"MESSAGE sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP p1;branch=top, SIP/2.0/UDP p2;branch=two\r\n"
     b"v: SIP/2.0/UDP p3;branch=three\r\nFrom: <sip:x@h>\r\nTo: <sip:a@h>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\n\r\n",
     lambda r: (len(r.vias), r.branch, r.vias[1]) == (2, b"top", b"SIP/2.0/UDP p3;branch=three")),
    ("no Content-Length over UDP: the body is the rest of the datagram",
     b"MESSAGE sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:x@h>\r\nTo: <sip:a@h>\r\nCall-ID: c\r\n"
     b"CSeq: 1 MESSAGE\r\n\r\nrest\r\nof it",
     lambda r: (r.body, r.branch) == (b"rest\r\nof it", b"")),
    ("bytes past Content-Length are dropped",
     message(body=b"12345", extra=b"") .replace(b"Content-Length: 5", b"Content-Length: 3"),
     lambda r: r.body == b"123"),
    ("bare LF line ends throughout",
     b"MESSAGE sip:a@h SIP/2.0\nVia: SIP/2.0/UDP h;branch=b\nFrom: <sip:x@h>\nTo: <sip:a@h>\nCall-ID: c\n"
     b"CSeq: 1 MESSAGE\nContent-Length: 2\n\nok",
     lambda r: (r.body, r.branch) == (b"ok", b"b")),
    ("a body with CRLFs and non-ASCII bytes is kept as is",
     message(body="héllo\r\n\r\nwörld".encode()),
     lambda r: r.body == "héllo\r\n\r\nwörld".encode()),
    ("the version is case-insensitive", message().replace(b"SIP/2.0\r\nVia", b"sip/2.0\r\nVia", 1),
     lambda r: r.method == b"MESSAGE"),
]


@pytest.mark.parametrize("what,data,ok", PARSES, ids=[p[0] for p in PARSES])
def test_parses(what, data, ok):
    assert ok(parse_request(data))


MALFORMED = [
    ("empty", b""),
    ("only CRLFs (a keep-alive)", b"\r\n\r\n"),
    ("no blank line: truncated headers", GOOD[:60]),
    ("truncated body", GOOD[:-3]),
    ("binary junk", bytes(range(256)) * 4),
    ("request line with two parts", GOOD.replace(b"MESSAGE sip:alice@127.0.0.1:5060 SIP/2.0", b"MESSAGE sip:a@h")),
    ("request line with four parts", GOOD.replace(b" SIP/2.0\r\nVia", b" SIP/2.0 x\r\nVia", 1)),
    ("wrong version", GOOD.replace(b"SIP/2.0\r\nVia", b"SIP/3.0\r\nVia", 1)),
    ("method not a token", GOOD.replace(b"MESSAGE sip", b"MES(SAGE sip", 1)),
    ("no Via", GOOD.replace(b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-1-0\r\n", b"")),
    ("no From", GOOD.replace(b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag001\r\n", b"")),
    ("no To", GOOD.replace(b"To: <sip:alice@127.0.0.1:5060>\r\n", b"")),
    ("no Call-ID", GOOD.replace(b"Call-ID: 1-1@127.0.0.1\r\n", b"")),
    ("no CSeq", GOOD.replace(b"CSeq: 1 MESSAGE\r\n", b"")),
    ("empty Call-ID", GOOD.replace(b"Call-ID: 1-1@127.0.0.1", b"Call-ID:")),
    ("two Call-IDs", GOOD.replace(b"Call-ID: 1-1@127.0.0.1\r\n", b"Call-ID: a\r\ni: b\r\n")),
    ("CSeq method differs", GOOD.replace(b"CSeq: 1 MESSAGE", b"CSeq: 1 OPTIONS")),
    ("CSeq number not a number", GOOD.replace(b"CSeq: 1 MESSAGE", b"CSeq: x MESSAGE")),
    ("CSeq number too big", GOOD.replace(b"CSeq: 1 MESSAGE", b"CSeq: 2147483648 MESSAGE")),
    ("Content-Length not a number", GOOD.replace(b"Content-Length: 13", b"Content-Length: 1x")),
    ("Content-Length negative", GOOD.replace(b"Content-Length: 13", b"Content-Length: -1")),
    ("Content-Length larger than the datagram", GOOD.replace(b"Content-Length: 13", b"Content-Length: 99")),
    ("header line without colon", GOOD.replace(b"Max-Forwards: 70", b"Max-Forwards 70")),
    ("continuation before the first header", GOOD.replace(b"SIP/2.0\r\nVia", b"SIP/2.0\r\n folded\r\nVia", 1)),
    ("mixed line ends with no CRLF blank line", GOOD.replace(b"\r\n\r\n", b"\n\n").replace(b"\r\n", b"\n", 1)),
    ("NUL in a header name", GOOD.replace(b"Max-Forwards", b"Max\0Forwards")),
]


@pytest.mark.parametrize("what,data", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_raises_parse_error(what, data):
    with pytest.raises(SipParseError):
        parse_request(data)


def test_a_response_is_not_a_request():
    with pytest.raises(NotARequest):
        parse_request(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n\r\n")


def outcome(data):
    """What parse_request makes of *data*: the Request, or the error's type and text."""
    try:
        return parse_request(data)
    except SipParseError as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize("what,data", [(p[0], p[1]) for p in PARSES] + MALFORMED,
                         ids=[p[0] for p in PARSES] + [m[0] for m in MALFORMED])
def test_a_request_parses_the_same_whether_its_header_names_were_seen_before_or_not(what, data):
    sip._SEEN.clear()
    cold = outcome(data)
    assert outcome(data) == cold


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(GOOD) - 1), st.binary(min_size=1, max_size=8))
def test_a_mutated_request_parses_the_same_with_its_header_names_seen_before_or_not(at, junk):
    data = GOOD[:at] + junk + GOOD[at + len(junk):]
    sip._SEEN.clear()
    cold = outcome(data)
    assert outcome(data) == cold


def test_a_header_name_seen_before_is_still_refused_without_its_colon():
    parse_request(GOOD)
    assert b"Max-Forwards" in sip._SEEN
    with pytest.raises(SipParseError, match="bad header line"):
        parse_request(GOOD.replace(b"Max-Forwards: 70", b"Max-Forwards"))


def test_a_bad_header_name_is_never_remembered():
    sip._SEEN.clear()
    with pytest.raises(SipParseError, match="bad header line"):
        parse_request(GOOD.replace(b"Max-Forwards", b"Max\0Forwards"))
    assert b"Max\0Forwards" not in sip._SEEN


def test_made_up_header_names_do_not_grow_the_names_seen_past_their_bound():
    sip._SEEN.clear()
    for i in range(2 * sip._SEEN_MAX):
        req = parse_request(message(extra=b"X-Made-Up-%d: %d\r\n" % (i, i)))
        assert req.call_id == b"c1@127.0.0.1"
    assert len(sip._SEEN) == sip._SEEN_MAX
    assert parse_request(message(extra=b"v: SIP/2.0/UDP proxy;branch=p\r\n")).vias[1] == b"SIP/2.0/UDP proxy;branch=p"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_the_parser(data):
    try:
        parse_request(data)
    except SipParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(GOOD) - 1), st.binary(min_size=1, max_size=8), st.booleans())
def test_mutated_requests_never_crash_the_parser(at, junk, cut):
    data = GOOD[:at] if cut else GOOD[:at] + junk + GOOD[at + len(junk):]
    try:
        parse_request(data)
    except SipParseError:
        pass


RURIS = [
    (b"sip:alice@127.0.0.1", b"alice"),
    (b"sip:alice@127.0.0.1:5060;transport=udp", b"alice"),
    (b"sips:bob:secret@example.com", b"bob"),
    (b"SIP:Carol@h", b"Carol"),
    (b"sip:+1234;phone-context=x@h", b"+1234;phone-context=x"),
    (b"sip:127.0.0.1", None),
    (b"sip:127.0.0.1:5060;user=phone", None),
    (b"sip:@h", None),
    (b"tel:+4930123;phone-context=x", b"+4930123"),
]


@pytest.mark.parametrize("uri,user", RURIS)
def test_ruri_user(uri, user):
    assert ruri_user(uri) == user


@pytest.mark.parametrize("uri", [b"mailto:a@h", b"http://h/", b"nocolon"])
def test_ruri_user_refuses_other_schemes(uri):
    with pytest.raises(SipParseError):
        ruri_user(uri)


@pytest.mark.parametrize("via,branch", [
    (b"SIP/2.0/UDP h;branch=z9hG4bK1", b"z9hG4bK1"),
    (b"SIP/2.0/UDP h;rport;BRANCH = z9 ;received=1.2.3.4", b"z9"),
    (b"SIP/2.0/UDP h;branch=one, SIP/2.0/UDP g;branch=two", b"one"),
    (b"SIP/2.0/UDP h", b""),
])
def test_via_branch(via, branch):
    assert via_branch(via) == branch


@pytest.mark.parametrize("value,tagged", [
    (b"<sip:a@h>", False),
    (b"<sip:a@h>;tag=1", True),
    (b"<sip:a@h;tag=inside-the-uri>", False),
    (b'"Tag; tag=x" <sip:a@h>', False),
    (b"sip:a@h;TAG=2", True),
    (b"sip:a@h;tagx=2", False),
])
def test_has_tag(value, tagged):
    assert has_tag(value) is tagged


# ---- replies ------------------------------------------------------------------------

def test_a_reply_copies_the_headers_and_tags_the_to():
    req = parse_request(message(extra=b"v: SIP/2.0/UDP proxy;branch=p\r\n"))
    reply = build_reply(req, 200, b"abc")
    assert reply == (b"SIP/2.0 200 OK\r\n"
                     b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1\r\n"
                     b"Via: SIP/2.0/UDP proxy;branch=p\r\n"
                     b"From: <sip:bob@127.0.0.1>;tag=f1\r\n"
                     b"To: <sip:alice@127.0.0.1>;tag=abc\r\n"
                     b"Call-ID: c1@127.0.0.1\r\n"
                     b"CSeq: 1 MESSAGE\r\n"
                     b"Server: opsevent-sip\r\n"
                     b"Content-Length: 0\r\n\r\n")
    assert parse_request(b"MESSAGE sip:x@h SIP/2.0\r\n" + reply.split(b"\r\n", 1)[1]).call_id == b"c1@127.0.0.1"


def test_a_to_tag_already_there_is_kept():
    req = parse_request(message().replace(b"To: <sip:alice@127.0.0.1>", b"To: <sip:alice@127.0.0.1>;tag=old"))
    assert b"To: <sip:alice@127.0.0.1>;tag=old\r\n" in build_reply(req, 200, b"new")


def test_the_to_tag_depends_only_on_the_transaction():
    a = transaction_key(parse_request(message(body=b"one")))
    b = transaction_key(parse_request(message(body=b"two")))
    c = transaction_key(parse_request(message(branch=b"other")))
    d = transaction_key(parse_request(message(cseq=b"2")))
    e = transaction_key(parse_request(message(call_id=b"c2")))
    assert a == b and len({a, c, d, e}) == 4
    assert to_tag(a) == to_tag(b) and len(to_tag(a)) == 16


# ---- the transaction table ----------------------------------------------------------

def key(i: int) -> bytes:
    return i.to_bytes(16, "little")


def test_table_claims_then_recognises():
    t = TransactionTable(buckets=4, lifetime=10)
    assert t.begin(key(1), now=100) == (NEW, 0)
    assert t.begin(key(1), now=100.1) == (PENDING, 0)
    assert t.finish(key(1), 200, now=100.2)
    assert t.begin(key(1), now=109) == (ANSWERED, 200)
    assert t.begin(key(1), now=110.3) == (NEW, 0)  # the lifetime runs from the answer; expired
    assert t.begin(key(2), 503, now=100) == (NEW, 503)
    assert t.begin(key(2), now=101) == (ANSWERED, 503)


def test_table_bucket_full_then_expired_slots_are_reused():
    t = TransactionTable(buckets=1, lifetime=10)
    for i in range(t.SLOTS):
        assert t.begin(key(i), now=100 + i)[0] == NEW
    assert t.begin(key(999), now=105) == (FULL, 0)
    assert t.live(now=105) == t.SLOTS
    assert t.begin(key(999), now=110.5) == (NEW, 0)  # key(0) expired at 110
    assert t.begin(key(0), now=110.6) == (FULL, 0)   # gone from the table, but no slot is free yet
    assert t.begin(key(0), now=111.5) == (NEW, 0)    # key(1) expired at 111: its slot is taken


def test_table_finds_a_key_at_a_slot_boundary_only():
    t = TransactionTable(buckets=1, lifetime=10)
    a = bytes(range(16))
    b = bytes(range(8, 24))  # its first 8 bytes are a's last 8
    assert t.begin(a, now=1)[0] == NEW
    assert t.begin(b[:8] + a[:8], now=1)[0] == NEW  # a at an unaligned offset must not match
    assert t.begin(b, now=1)[0] == NEW


def test_table_finish_records_the_answer_of_any_claimed_key_not_only_the_last():
    t = TransactionTable(buckets=2, lifetime=10)
    first, last = key(1), key(2)
    assert t.begin(first, now=100) == (NEW, 0)
    assert t.begin(last, now=100) == (NEW, 0)
    assert t.finish(first, 404, now=101)  # not the last claim: looked up
    assert t.finish(last, 200, now=101)   # the last claim (the same object): its slot is known
    assert t.begin(key(1), now=102) == (ANSWERED, 404)
    assert t.begin(key(2), now=102) == (ANSWERED, 200)
    assert not t.finish(key(3), 200, now=102)  # never claimed


def test_table_finish_does_not_write_a_claimed_slot_another_key_has_taken():
    # A front-end stopped past its claim's lifetime: meanwhile another front-end
    # (a copy of the table: same memory, its own last claim) reused the slot.
    t = TransactionTable(buckets=1, lifetime=10)
    for i in range(1, t.SLOTS):
        assert t.begin(key(i), now=105)[0] == NEW  # live until 115
    stalled = key(0)
    assert t.begin(stalled, now=100) == (NEW, 0)    # the last claim here, live until 110
    other = copy.copy(t)
    assert other.begin(key(99), now=111) == (NEW, 0)  # stalled's slot, expired
    assert not t.finish(stalled, 200, now=112)
    assert t.begin(key(99), now=112) == (PENDING, 0)  # still being processed, not answered 200


def _claim_all(t, n, out):
    out.put(sum(t.begin(key(i))[0] == NEW for i in range(n)))


def test_table_is_shared_and_claims_once_across_processes():
    ctx = multiprocessing.get_context("fork")
    t = TransactionTable(buckets=1 << 10)
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(t, 2000, out)) for _ in range(4)]
    for p in procs:
        p.start()
    wins = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
    assert sum(wins) == 2000  # each key claimed by exactly one process
    assert t.begin(key(5))[0] == PENDING


# ---- handling ---------------------------------------------------------------------------

class Recorder(opsevent.Transport):
    def __init__(self, status=Status.QUEUED):
        self.bodies = []
        self.status = status

    def submit(self, event, sockets, body, sync, timeout, message_id):
        if self.status is Status.QUEUED:
            self.bodies.append(body)
        return [(self.status, "")] * len(sockets)


@pytest.fixture
def evi():
    e = opsevent.EventInterface()
    e.subscribe_event(sip.EVENT, "rabbitmq:127.0.0.1/sipmsg")
    e.attach(Recorder())
    return e


@pytest.fixture
def server():
    s = sip.SipServer(processes=1, table=TransactionTable(buckets=64))
    yield s
    s.close()


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_message_raises_the_guides_event_and_answers_200(server, evi):
    reply = server.handle(evi, message(body=b"Hello, world!"))
    assert status(reply) == 200
    assert evi.transport.bodies == [b'E_SIP_MESSAGE\nuser::alice\nmsg::"Hello, world!"\n']
    assert server.totals()["events"] == 1


def test_a_server_that_raises_no_events_answers_as_if_it_had(server, evi):
    quiet = sip.SipServer(processes=1, table=TransactionTable(buckets=64), raise_events=False)
    try:
        data = message(body=b"not raised")
        replies = [quiet.handle(evi, data) for _ in range(2)]
        assert evi.transport.bodies == []
        assert replies == [server.handle(evi, data)] * 2  # the raising server's reply, byte for byte
        assert len(evi.transport.bodies) == 1
        totals = quiet.totals()
        assert (totals["messages"], totals["events"], totals["replied_200"],
                totals["retrans_answered"]) == (1, 0, 2, 1)
    finally:
        quiet.close()


def test_a_retransmission_gets_the_same_reply_and_no_event(server, evi):
    data = message(body=b"once")
    replies = [server.handle(evi, data) for _ in range(3)]
    assert len(set(replies)) == 1 and status(replies[0]) == 200
    assert len(evi.transport.bodies) == 1
    t = server.totals()
    assert (t["messages"], t["events"], t["retrans_answered"], t["replied_200"]) == (1, 1, 2, 3)


def test_a_new_transaction_with_the_same_body_is_a_new_event(server, evi):
    server.handle(evi, message(body=b"same", branch=b"b1"))
    server.handle(evi, message(body=b"same", branch=b"b2"))
    server.handle(evi, message(body=b"same", branch=b"b2", cseq=b"2"))
    assert len(evi.transport.bodies) == 3


def test_a_copy_in_flight_elsewhere_is_absorbed(server, evi):
    data = message()
    server.table.begin(transaction_key(parse_request(data)))  # another front-end is on it
    assert server.handle(evi, data) is None
    assert evi.transport.bodies == [] and server.totals()["retrans_absorbed"] == 1


def test_an_old_message_is_shed_with_503_and_raises_nothing(server, evi):
    data = message()
    reply = server.handle(evi, data, age=server.shed_age + 0.01)
    assert status(reply) == 503 and b"\r\nRetry-After: 1\r\n" in reply
    assert evi.transport.bodies == []
    # Its retransmission, even on time, is the same transaction: 503 again, still no event.
    assert server.handle(evi, data, age=0) == reply
    assert evi.transport.bodies == []
    assert server.totals()["shed_age"] == 1


def test_a_full_job_queue_sheds_with_503(server, evi):
    evi.attach(Recorder(Status.QUEUE_FULL))
    reply = server.handle(evi, message())
    assert status(reply) == 503 and b"Retry-After" in reply
    assert server.totals()["shed_queue"] == 1
    evi.attach(Recorder())
    assert server.handle(evi, message()) == reply  # answered: the same 503, no event
    assert evi.transport.bodies == []


def test_a_full_table_neither_processes_nor_answers(evi):
    s = sip.SipServer(processes=1, table=TransactionTable(buckets=1))
    try:
        for i in range(TransactionTable.SLOTS):
            assert status(s.handle(evi, message(branch=b"b%d" % i))) == 200
        assert s.handle(evi, message(branch=b"one-too-many")) is None
        assert s.totals()["table_full"] == 1 and len(evi.transport.bodies) == TransactionTable.SLOTS
    finally:
        s.close()


@pytest.mark.parametrize("data,code", [
    (message(ruri=b"sip:127.0.0.1"), 484),
    (message(ruri=b"mailto:a@h"), 416),
    (message(method=b"OPTIONS"), 200),
    (message(method=b"INVITE"), 405),
    (message(method=b"REGISTER"), 405),
    (message(body=b"\xff\xfe not utf-8"), 400),
    (message(body=b"x" * (opsevent.MAX_BODY_SIZE + 1)), 513),
])
def test_other_answers_raise_nothing(server, evi, data, code):
    reply = server.handle(evi, data)
    assert status(reply) == code
    if code == 405 or (code == 200 and b"OPTIONS" in data[:8]):
        assert b"\r\nAllow: MESSAGE, OPTIONS\r\n" in reply
    assert evi.transport.bodies == []


def test_ack_is_never_answered(server, evi):
    assert server.handle(evi, message(method=b"ACK")) is None
    assert server.totals()["acks"] == 1


@pytest.mark.parametrize("data", [b"", b"\x00" * 40, GOOD[:50], b"SIP/2.0 200 OK\r\n\r\n"])
def test_junk_is_counted_and_ignored(server, evi, data):
    assert server.handle(evi, data) is None
    t = server.totals()
    assert t["received"] == 1 and t["malformed"] + t["responses"] == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_handle_never_raises_on_junk(data):
    e = opsevent.EventInterface()
    e.subscribe_event(sip.EVENT, "rabbitmq:127.0.0.1/sipmsg")
    e.attach(Recorder())
    s = _shared_server()
    reply = s.handle(e, GOOD[:len(GOOD) // 2] + data)
    assert reply is None or reply.startswith(b"SIP/2.0 ")


_SERVER = []


def _shared_server():
    if not _SERVER or _SERVER[0][0] != os.getpid():
        _SERVER[:] = [(os.getpid(), sip.SipServer(processes=1, table=TransactionTable(buckets=64)))]
    return _SERVER[0][1]


def test_the_server_binds_loopback_only():
    with pytest.raises(ValueError, match=r"^the example SIP server binds loopback only \(127\.0\.0\.1\)$"):
        sip.SipServer(host="0.0.0.0")
