r"""An example SIP server for the guide's example 1.5: MESSAGE in, ``E_SIP_MESSAGE`` out.

Each time a front-end receives a SIP MESSAGE it raises ``E_SIP_MESSAGE`` with
``user`` (the R-URI user, ``$rU``) and ``msg`` (the body, ``$rb``) and answers
``200 OK``, as the guide's OpenSIPS script does.  A MESSAGE whose R-URI has no
user gets ``484 Address Incomplete``; OPTIONS gets ``200``; ACK is never
answered; every other method gets ``405``.  Malformed datagrams are counted
and ignored.

Processes (``workers.Supervisor``): the UDP socket is created pre-fork, bound
to 127.0.0.1, and inherited by N front-ends that each block in ``recvmsg`` on
it, as OpenSIPS's UDP receivers do; the kernel hands each datagram to one of
them.  ``SipServer.target`` is the front-end's ``target(rank, evi)``.

Retransmissions (a MESSAGE sent again with the same Call-ID, CSeq and top Via
branch) land on any front-end, so the transaction memory is shared: a
``TransactionTable`` in an anonymous shared mmap created pre-fork, guarded by
striped cross-process locks.  The first copy of a transaction claims its slot
and is processed; a copy that arrives while the first is being processed is
absorbed; a copy that arrives after the answer gets the same answer again
(rebuilt from its own headers and the recorded status code: the To tag is
derived from the transaction key, so it is byte-identical) and raises nothing.

Overload: a MESSAGE that waited in the socket's receive queue longer than
``shed_age`` (the kernel's receive timestamp, ``SO_TIMESTAMPNS``), or whose
event the RabbitMQ worker's job queue cannot take, is answered ``503 Service
Unavailable`` with ``Retry-After`` and raises no event; the 503 is recorded in
the table like any answer, so its retransmissions get the 503 again.

Parsing is pure (no I/O) and small: ``parse_request`` reads the request line,
the headers a reply needs (Via, From, To, Call-ID, CSeq; compact forms and
folded lines included), Content-Length and the body.  It accepts CRLF line
ends, or bare LF throughout, and nothing looser.  It remembers the header
names it has checked (512 at most), so a request of the usual headers costs
one look-up per line.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import mmap
import multiprocessing
import re
import socket
import struct
import sys
import time
from dataclasses import dataclass

import workers

log = logging.getLogger(__name__)

__all__ = [
    "SipParseError", "NotARequest", "Request", "parse_request", "ruri_user",
    "transaction_key", "to_tag", "build_reply", "TransactionTable", "SipServer",
    "COUNTERS",
]

EVENT = "E_SIP_MESSAGE"
MAX_DATAGRAM = 65535
SERVER_HEADER = b"Server: opsevent-sip\r\n"
ALLOW = b"Allow: MESSAGE, OPTIONS\r\n"

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    405: b"Method Not Allowed",
    416: b"Unsupported URI Scheme",
    484: b"Address Incomplete",
    500: b"Server Internal Error",
    503: b"Service Unavailable",
    513: b"Message Too Large",
}

# Linux values (asm-generic): not all are exported by Python's socket module.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_DOUBLE = struct.Struct("<d")  # a transaction's expiry time
_CODE = struct.Struct("<H")  # its answer's status code (0: being processed)


# ---- parsing (pure) -----------------------------------------------------------------

class SipParseError(ValueError):
    """The datagram is not a SIP request we can answer; it is counted and ignored."""


class NotARequest(SipParseError):
    """The datagram is a SIP response (a status line), not a request."""


_TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.!%*_+`'~-"
_TOKEN = re.compile(rb"[A-Za-z0-9.!%*_+`'~-]+\Z")
# The headers a reply needs, by full and RFC 3261 compact name (lower case) ->
# their place in parse_request's list; every other header is skipped.
_WANTED = {b"via": 0, b"v": 0, b"from": 1, b"f": 1, b"to": 2, b"t": 2, b"call-id": 3, b"i": 3,
           b"cseq": 4, b"content-length": 5, b"l": 5}
_NAMES = ("Via", "From", "To", "Call-ID", "CSeq", "Content-Length")
_SKIP: list = []
# Header names as written (before the colon) -> their slot in parse_request's list, or -1
# for one it skips: a name checked once is not lowered and checked again for each
# request.  Bounded, so a stream of made-up names cannot grow it.
_SEEN: dict = {}
_SEEN_MAX = 512
_DIGITS = re.compile(rb"[0-9]{1,10}\Z")
_blake2b = hashlib.blake2b


@dataclass(slots=True)
class Request:
    """What the server reads from a request; header values are raw bytes, trimmed."""

    method: bytes
    uri: bytes
    vias: list           # every Via header value, in order (one per header line)
    from_: bytes
    to: bytes
    call_id: bytes
    cseq: bytes
    body: bytes

    @property
    def branch(self) -> bytes:
        return via_branch(self.vias[0])


def parse_request(data: bytes) -> Request:
    """Parse one UDP datagram; raise SipParseError (NotARequest for a response)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        head, body_at = data[:end], end + 4
        lines = head.split(b"\r\n")
    else:
        end = data.find(b"\n\n")
        if end < 0 or b"\r" in data[:end]:
            raise SipParseError("no blank line after the headers (truncated?)")
        head, body_at = data[:end], end + 2
        lines = head.split(b"\n")

    parts = lines[0].split(b" ")
    if parts[0][:4].upper() == b"SIP/":
        raise NotARequest("a response, not a request")
    if len(parts) != 3:
        raise SipParseError("bad request line")
    method, uri, version = parts
    if version.upper() != b"SIP/2.0" or not _TOKEN.match(method) or not uri:
        raise SipParseError("bad request line")

    # One pass over the header lines; only the headers a reply needs are kept.
    found: list = [None] * 6  # via, from, to, call-id, cseq, content-length: lists of values
    current = None  # the value list a folded line continues (_SKIP: a header we ignore)
    for line in lines[1:]:
        first = line[:1]
        if first == b" " or first == b"\t":  # a folded line continues the previous header
            if current is None:
                raise SipParseError("continuation line before the first header")
            if current is not _SKIP:
                current[-1] = current[-1] + b" " + line.strip()
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            raise SipParseError("bad header line")
        slot = _SEEN.get(name)
        if slot is None:
            slot = _header_slot(name)
        if slot < 0:
            current = _SKIP
            continue
        current = found[slot]
        if current is None:
            current = found[slot] = []
        current.append(value.strip())

    vias, froms, tos, call_ids, cseqs, lengths = found
    for name, values in zip(_NAMES, found):
        if values is None:
            if name != "Content-Length":
                raise SipParseError(f"no {name} header")
        elif len(values) > 1 and name != "Via":
            raise SipParseError(f"more than one {name} header")
    from_, to, call_id, cseq = froms[0], tos[0], call_ids[0], cseqs[0]
    if not call_id or not from_ or not to or not all(vias):
        raise SipParseError("empty Via, From, To or Call-ID")

    number, _, cseq_method = cseq.partition(b" ")
    if not _DIGITS.match(number) or int(number) >= 1 << 31 or cseq_method.strip() != method:
        raise SipParseError("bad CSeq")

    length = lengths
    if length is None:
        body = data[body_at:]  # UDP: the body is the rest of the datagram (RFC 3261 18.3)
    else:
        if not _DIGITS.match(length[0]):
            raise SipParseError("bad Content-Length")
        n = int(length[0])
        if body_at + n > len(data):
            raise SipParseError("body shorter than Content-Length (truncated)")
        body = data[body_at:body_at + n]
    return Request(method, uri, vias, from_, to, call_id, cseq, body)


def _header_slot(name: bytes) -> int:
    """The slot of a header name as written, or -1; SipParseError if it is not a token."""
    clean = name.strip().lower()
    if not clean or clean.translate(None, _TOKEN_CHARS):
        raise SipParseError("bad header line")
    slot = _WANTED.get(clean, -1)
    if len(_SEEN) < _SEEN_MAX:
        _SEEN[name] = slot
    return slot


def ruri_user(uri: bytes) -> bytes | None:
    """The user part of a sip:, sips: or tel: Request-URI (``$rU``), or None.

    Raises SipParseError for any other scheme (answered 416).
    """
    scheme, colon, rest = uri.partition(b":")
    scheme = scheme.lower()
    if not colon:
        raise SipParseError("Request-URI without a scheme")
    if scheme == b"tel":
        number = rest.split(b";", 1)[0]
        return number or None
    if scheme not in (b"sip", b"sips"):
        raise SipParseError(f"unsupported URI scheme {scheme[:16]!r}")
    at = rest.find(b"@")
    if at < 0:
        return None
    userinfo = rest[:at]
    user = userinfo.split(b":", 1)[0]  # drop a password
    return user or None


def via_branch(via: bytes) -> bytes:
    """The branch parameter of the first Via in a Via header value (b'' if none)."""
    top = via.split(b",", 1)[0]
    for param in top.split(b";")[1:]:
        name, _, value = param.partition(b"=")
        if name.strip().lower() == b"branch":
            return value.strip()
    return b""


def has_tag(header: bytes) -> bool:
    """True if a From/To header value carries a tag parameter."""
    gt = header.rfind(b">")
    params = header[gt + 1:] if gt >= 0 else header
    for param in params.split(b";")[1:]:
        if param.partition(b"=")[0].strip().lower() == b"tag":
            return True
    return False


def transaction_key(req: Request) -> bytes:
    """16 bytes that name the transaction: a hash of Call-ID, CSeq and top Via branch."""
    return _blake2b(b"\0".join((req.call_id, req.cseq, via_branch(req.vias[0]))),
                    digest_size=16).digest()


def to_tag(key: bytes) -> bytes:
    """The To tag of our replies: derived from the key, so retransmitted replies match."""
    return key[:8].hex().encode()


def build_reply(req: Request, code: int, tag: bytes, extra: bytes = b"") -> bytes:
    """A final reply: Vias, From, To (tagged), Call-ID and CSeq copied; no body.

    *extra* is whole header lines (each ending in CRLF) to add.
    """
    to = req.to if has_tag(req.to) else req.to + b";tag=" + tag
    parts = [b"SIP/2.0 %d %s\r\n" % (code, REASONS.get(code, b"Unknown"))]
    for via in req.vias:
        parts.append(b"Via: " + via + b"\r\n")
    parts += (b"From: ", req.from_, b"\r\nTo: ", to, b"\r\nCall-ID: ", req.call_id,
              b"\r\nCSeq: ", req.cseq, b"\r\n", extra, SERVER_HEADER,
              b"Content-Length: 0\r\n\r\n")
    return b"".join(parts)


# ---- the shared transaction table -------------------------------------------------

NEW, PENDING, ANSWERED, FULL, BUSY = "new", "pending", "answered", "full", "busy"


class TransactionTable:
    """Recent MESSAGE transactions, shared by every front-end (created pre-fork).

    An anonymous ``MAP_SHARED`` mmap holds ``buckets`` buckets of
    ``SLOTS`` slots; a key's bucket is fixed by its first bytes.  Each bucket
    stores its 16 digests, then 16 expiry times (``CLOCK_MONOTONIC``, the
    same in every process), then 16 status codes (0 while being processed).
    A slot is free once it has expired; entries live ``lifetime`` seconds
    (RFC 3261 Timer J, 64*T1 = 32 s) after the answer.  One lock per stripe
    of buckets (``multiprocessing.Lock``, a POSIX semaphore) makes each
    look-up-and-claim atomic; nothing else waits on it.  A bucket whose 16
    slots are all live is FULL: the caller must not process the request.

    ``finish`` right after the ``begin`` that claimed the key, in the same
    thread (how a front-end uses it), goes straight to the claimed slot: the
    process remembers its last claim, and checks under the lock that the
    slot still holds the key before writing (else it looks the key up).
    """

    SLOTS = 16
    _DIGESTS = 0
    _EXPIRES = 16 * SLOTS
    _CODES = _EXPIRES + 8 * SLOTS
    BUCKET = _CODES + 2 * SLOTS  # 416 bytes

    def __init__(self, buckets: int = 1 << 17, lifetime: float = 32.0, stripes: int = 64,
                 lock_timeout: float = 0.5, ctx=None):
        if buckets < 1 or buckets & (buckets - 1):
            raise ValueError(f"buckets must be a power of two, got {buckets}")
        ctx = ctx or multiprocessing.get_context("fork")
        self.buckets = buckets
        self.lifetime = lifetime
        self.lock_timeout = lock_timeout
        self.mm = mmap.mmap(-1, buckets * self.BUCKET)  # MAP_SHARED | MAP_ANONYMOUS, zeroed
        self.locks = [ctx.Lock() for _ in range(stripes)]
        self._expires = struct.Struct(f"<{self.SLOTS}d")
        self._claim = (None, 0, None, -1)  # this process's last claim: key, bucket offset, lock, slot

    @property
    def nbytes(self) -> int:
        return len(self.mm)

    def _where(self, key: bytes):
        # The key's low bits (little-endian: its first bytes) pick the bucket.
        bucket = int.from_bytes(key, "little") & (self.buckets - 1)
        return bucket * self.BUCKET, self.locks[bucket % len(self.locks)]

    def _find(self, off: int, key: bytes) -> int:
        # In the mapping itself (no copy of the bucket), at a digest's boundary only.
        mm, end = self.mm, off + self._EXPIRES
        i = mm.find(key, off, end)
        while i >= 0 and (i - off) % 16:
            i = mm.find(key, i + 1, end)
        return -1 if i < 0 else (i - off) // 16

    def begin(self, key: bytes, code: int = 0, now: float | None = None):
        """Look *key* up and claim it if new; return ``(state, code)``.

        NEW: claimed, recorded with *code* (0 = being processed; the caller
        then calls ``finish``). PENDING: another process is processing it.
        ANSWERED: answered before with ``code``. FULL: no free slot. BUSY: the
        stripe's lock could not be had in time (a stuck process).
        """
        now = time.monotonic() if now is None else now
        off, lock = self._where(key)
        if not lock.acquire(timeout=self.lock_timeout):
            return BUSY, 0
        try:
            mm = self.mm
            slot = self._find(off, key)
            if slot >= 0:
                if _DOUBLE.unpack_from(mm, off + self._EXPIRES + 8 * slot)[0] > now:
                    old = _CODE.unpack_from(mm, off + self._CODES + 2 * slot)[0]
                    return (ANSWERED, old) if old else (PENDING, 0)
            else:  # the slot that expires first, if it has
                expires = self._expires.unpack_from(mm, off + self._EXPIRES)
                first = min(expires)
                if first > now:
                    return FULL, 0
                slot = expires.index(first)
            self._record(off, slot, now, code, key)
            self._claim = (key, off, lock, slot)
            return NEW, code
        finally:
            lock.release()

    def finish(self, key: bytes, code: int, now: float | None = None) -> bool:
        """Record the answer to a claimed key; its lifetime starts again now."""
        now = time.monotonic() if now is None else now
        claimed, off, lock, slot = self._claim
        if claimed is not key:
            (off, lock), slot = self._where(key), -1
        if not lock.acquire(timeout=self.lock_timeout):
            return False
        try:
            # A claimed slot keeps its key while it lives (32 s); the check costs one compare.
            if slot < 0 or self.mm[off + 16 * slot:off + 16 * slot + 16] != key:
                slot = self._find(off, key)
            if slot < 0:
                return False
            self._record(off, slot, now, code)
            return True
        finally:
            lock.release()

    def _record(self, off: int, slot: int, now: float, code: int, key: bytes | None = None) -> None:
        mm = self.mm
        if key is not None:
            mm[off + 16 * slot:off + 16 * slot + 16] = key
        _DOUBLE.pack_into(mm, off + self._EXPIRES + 8 * slot, now + self.lifetime)
        _CODE.pack_into(mm, off + self._CODES + 2 * slot, code)

    def live(self, now: float | None = None) -> int:
        """Entries not yet expired (a full scan: for reports and tests)."""
        now = time.monotonic() if now is None else now
        n = 0
        for b in range(self.buckets):
            n += sum(e > now for e in self._expires.unpack_from(self.mm, b * self.BUCKET + self._EXPIRES))
        return n


# ---- the server ---------------------------------------------------------------------

COUNTERS = (
    "received",          # datagrams read
    "malformed",         # not parseable as a request we can answer: ignored
    "responses",         # SIP responses sent to us: ignored
    "messages",          # MESSAGE transactions processed for the first time (claimed)
    "events",            # E_SIP_MESSAGE raised and accepted by the worker's queue
    "replied_200",
    "replied_484",
    "replied_405",
    "replied_other",     # 400 (body not UTF-8), 416, 513, 500
    "options",
    "acks",              # ACKs: never answered
    "retrans_answered",  # a retransmission of an answered MESSAGE: same reply again, no event
    "retrans_absorbed",  # a copy that arrived while the first was being processed: dropped
    "shed_age",          # 503: waited longer than shed_age in the receive queue
    "shed_queue",        # 503: the worker's job queue was full (the raise failed)
    "table_full",        # no free slot in the transaction table: dropped unanswered
    "send_errors",
    "errors",            # a bug: handling raised; logged, counted, and the front-end goes on
)
(_RECEIVED, _MALFORMED, _RESPONSES, _MESSAGES, _EVENTS, _REPLIED_200, _REPLIED_484, _REPLIED_405,
 _REPLIED_OTHER, _OPTIONS, _ACKS, _RETRANS_ANSWERED, _RETRANS_ABSORBED, _SHED_AGE, _SHED_QUEUE,
 _TABLE_FULL, _SEND_ERRORS, _ERRORS) = range(len(COUNTERS))
# Sojourn time of answered datagrams, from the kernel's receive timestamp to
# the reply's sendto: bucket i holds times below 0.25 ms * 2**i (the last, the rest).
SOJOURN_BUCKETS = 14
SOJOURN_LIMITS_MS = tuple(0.25 * 2 ** i for i in range(SOJOURN_BUCKETS - 1))


class SipServer:
    """The front-ends' shared state, created pre-fork; ``target`` runs in each front-end.

    ``SipServer(port=0)`` binds 127.0.0.1 and a free port (``self.port``).
    ``shed_age`` is the longest a MESSAGE may wait in the receive queue and
    still be processed (seconds); older ones get 503.  ``events`` is the
    EventInterface's event name; ``processes`` sizes the shared counters.
    ``raise_events=False`` answers each new MESSAGE 200 as if its event had
    been queued, and raises nothing: what the server and its client can do
    without publishing (the bench's ceiling, ``bench.sip_scenario``).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, processes: int = 4,
                 shed_age: float = 0.1, retry_after: int = 1, rcvbuf: int = 8 << 20,
                 table: TransactionTable | None = None, poll: float = 0.2,
                 raise_events: bool = True):
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("the example SIP server binds loopback only (127.0.0.1)")
        self.raise_events = raise_events
        self.shed_age = shed_age
        self.retry_after = b"Retry-After: %d\r\n" % retry_after
        self.poll = poll
        self.processes = processes
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):  # FORCE needs CAP_NET_ADMIN
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, option, rcvbuf)
                break
            except OSError:
                continue
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        # A kernel-side receive timeout: the socket stays blocking (one recvmsg
        # syscall per datagram, and the kernel wakes one waiting front-end per
        # datagram) yet returns every `poll` seconds so workers.stopping() is seen.
        usec = int(poll * 1e6)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", usec // 1_000_000,
                                                                                usec % 1_000_000))
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.table = table if table is not None else TransactionTable()
        # Per-rank counters (rank 0: the process that calls handle() directly, e.g. tests).
        self._width = len(COUNTERS) + SOJOURN_BUCKETS
        self._counters_mm = mmap.mmap(-1, (processes + 1) * self._width * 8)
        self._row = struct.Struct(f"<{self._width}q")
        self.counts = [0] * self._width
        self.rank = 0

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    # -- one datagram ---------------------------------------------------------

    def handle(self, evi, data: bytes, age: float = 0.0) -> bytes | None:
        """Process one datagram that waited *age* seconds; return the reply, if any."""
        c = self.counts
        c[_RECEIVED] += 1
        try:
            req = parse_request(data)
        except NotARequest:
            c[_RESPONSES] += 1
            return None
        except SipParseError:
            c[_MALFORMED] += 1
            return None
        method = req.method
        if method == b"MESSAGE":
            return self._message(evi, req, age)
        key = transaction_key(req)
        if method == b"OPTIONS":
            c[_OPTIONS] += 1
            return build_reply(req, 200, to_tag(key), ALLOW)
        if method == b"ACK":
            c[_ACKS] += 1
            return None
        c[_REPLIED_405] += 1
        return build_reply(req, 405, to_tag(key), ALLOW)

    def _message(self, evi, req: Request, age: float) -> bytes | None:
        c = self.counts
        key = transaction_key(req)
        tag = to_tag(key)
        try:
            user = ruri_user(req.uri)
        except SipParseError:
            c[_REPLIED_OTHER] += 1
            return build_reply(req, 416, tag)
        if user is None:
            c[_REPLIED_484] += 1
            return build_reply(req, 484, tag)
        shed = age > self.shed_age
        state, code = self.table.begin(key, 503 if shed else 0)
        if state is not NEW:
            if state is ANSWERED:
                c[_RETRANS_ANSWERED] += 1
                return self._reply(req, code, tag)
            if state is PENDING:
                c[_RETRANS_ABSORBED] += 1
            else:  # FULL or BUSY: cannot promise exactly-once, so neither process nor answer
                c[_TABLE_FULL] += 1
            return None
        if shed:
            c[_SHED_AGE] += 1
            return self._reply(req, 503, tag)
        c[_MESSAGES] += 1
        try:
            code = self._raise(evi, user, req.body) if self.raise_events else 200
        except Exception:
            self.table.finish(key, 500)
            raise
        self.table.finish(key, code)
        return self._reply(req, code, tag)

    def _raise(self, evi, user: bytes, body: bytes) -> int:
        try:
            params = [("user", user.decode()), ("msg", body.decode())]
        except UnicodeDecodeError:
            return 400
        result = evi.raise_event(EVENT, params)
        if result:
            self.counts[_EVENTS] += 1
            return 200
        if any(d.status.value == "too large" for d in result.failures):
            return 513
        self.counts[_SHED_QUEUE] += 1
        return 503

    def _reply(self, req: Request, code: int, tag: bytes) -> bytes:
        c = self.counts
        if code == 200:
            c[_REPLIED_200] += 1
            return build_reply(req, 200, tag)
        if code == 503:
            return build_reply(req, 503, tag, self.retry_after)
        c[_REPLIED_OTHER] += 1
        return build_reply(req, code, tag)

    # -- the front-end --------------------------------------------------------

    def target(self, rank: int, evi) -> None:
        """A front-end: receive, handle, reply, until workers.stopping()."""
        self.rank = rank
        self.counts = counts = [0] * self._width
        first_bucket, last_bucket = len(COUNTERS), self._width - 1
        sock = self.sock
        recvmsg, sendto = sock.recvmsg, sock.sendto
        handle, unpack = self.handle, _TIMESPEC.unpack
        clock = time.time
        last_flush = time.monotonic()
        try:
            while not workers.stopping():
                try:
                    data, anc, _flags, addr = recvmsg(MAX_DATAGRAM, 64)
                except (BlockingIOError, TimeoutError, InterruptedError):
                    self.flush_counters()
                    last_flush = time.monotonic()
                    continue
                age, arrived = 0.0, None
                if anc:
                    sec, nsec = unpack(anc[0][2][:16])
                    arrived = sec + nsec * 1e-9
                    age = clock() - arrived
                try:
                    reply = handle(evi, data, age)
                except Exception:
                    self.counts[_ERRORS] += 1
                    if self.counts[_ERRORS] <= 3:
                        log.exception("front-end %d: handling a datagram failed", rank)
                    continue
                if reply is not None:
                    try:
                        sendto(reply, addr)
                    except OSError:
                        counts[_SEND_ERRORS] += 1
                    if arrived is not None:
                        bucket = first_bucket + int((clock() - arrived) * 4000).bit_length()
                        counts[bucket if bucket < last_bucket else last_bucket] += 1
                if counts[_RECEIVED] & 1023 == 0:
                    now = time.monotonic()
                    if now - last_flush > 0.25:
                        self.flush_counters()
                        last_flush = now
        finally:
            self.flush_counters()

    # -- counters ---------------------------------------------------------------

    def flush_counters(self) -> None:
        """Publish this process's counters to the shared table (its rank's row)."""
        self._row.pack_into(self._counters_mm, self.rank * self._row.size, *self.counts)

    def totals(self) -> dict:
        """Counters summed over every front-end (as last flushed) and this process.

        ``sojourn`` is the histogram of answered datagrams' time in the server
        (see ``SOJOURN_LIMITS_MS``); ``sojourn_percentile(totals, p)`` reads it.
        """
        sums = [0] * self._width
        for rank in range(self.processes + 1):
            row = self.counts if rank == self.rank else self._row.unpack_from(
                self._counters_mm, rank * self._row.size)
            for i, value in enumerate(row):
                sums[i] += value
        totals = dict(zip(COUNTERS, sums))
        totals["sojourn"] = sums[len(COUNTERS):]
        return totals

    def close(self) -> None:
        self.sock.close()


def sojourn_percentile(totals: dict, p: float) -> float | None:
    """The upper bound (ms) of the histogram bucket holding the p-th percentile; inf past the last."""
    hist = totals.get("sojourn") or []
    n = sum(hist)
    if not n:
        return None
    rank, seen = p / 100 * n, 0
    for i, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return SOJOURN_LIMITS_MS[i] if i < len(SOJOURN_LIMITS_MS) else float("inf")
    return float("inf")


# ---- python -m workers.demo.sip: run the server on its own -------------------------------

def main(argv=None) -> int:
    import opsevent

    parser = argparse.ArgumentParser(prog="python -m workers.demo.sip", description=__doc__.splitlines()[0])
    parser.add_argument("subscriber", help="rabbitmq socket for E_SIP_MESSAGE, "
                        "e.g. rabbitmq:127.0.0.1:5672/sipmsg (the queue must exist)")
    parser.add_argument("--port", type=int, default=5060, help="UDP port on 127.0.0.1 (default 5060)")
    parser.add_argument("--processes", type=int, default=4, help="front-end processes (default 4)")
    parser.add_argument("--shed-age", type=float, default=0.1,
                        help="answer 503 to a MESSAGE that waited longer than this (s; default 0.1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=workers.base.logs.FORMAT)
    evi = opsevent.EventInterface(queue_size=QUEUE_SIZE)
    evi.subscribe_event(EVENT, args.subscriber)
    server = SipServer(port=args.port, processes=args.processes, shed_age=args.shed_age)
    log.info("SIP server on udp:127.0.0.1:%d, %d front-ends; Ctrl-C stops it", server.port, args.processes)
    workers.Supervisor(evi, server.target, processes=args.processes).run()
    log.info("counters: %s", server.totals())
    return 0


# Jobs the RabbitMQ worker may have waiting before a raise fails (and the MESSAGE
# gets 503): about half a second of events at the demo's rates.
QUEUE_SIZE = 4096


if __name__ == "__main__":
    sys.exit(main())
