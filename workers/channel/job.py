"""A job's bytes: what a front-end puts on the shared queue for one raise.

Only plain data crosses the process boundary, and the front-end builds it.
Layout (network byte order)::

    job     = head reply event id sockets body
    head    = raised_at:f64  seq:u64  reply-len:u16  event-len:u16  sockets-len:u32  id-len:u8
    reply   = reply-len octets     the caller's reply address; none for async jobs
    event   = event-len octets     the event name, UTF-8
    id      = id-len octets        the message id, UTF-8 (an AMQP shortstr: at most 255)
    sockets = sockets-len octets   the subscriber sockets, pickled field tuples
    body    = the rest             the payload bytes, exactly as published

``raised_at`` is ``time.monotonic()`` at the raise (system-wide on Linux, so
the worker can age jobs); ``seq`` numbers a sync caller's reply.  The
message id is made (or checked, when the caller gave it) by the front-end's
``EventInterface``, so that the raise's result can carry it; the worker
publishes every copy of the event with it.

Why not pickle the whole job: a raise would pay for pickling its sockets
every time, and the worker for unpickling them.  Subscribers change rarely,
so both ends keep the sockets' bytes cached (``SocketBytes``, and the
worker's cache keyed by those bytes) and a job costs one ``struct.pack``
and a join.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import astuple

from opsevent.messageid import new_message_id

HEAD = struct.Struct("!dQHHIB")
_CACHE_MAX = 4096  # distinct subscriber tuples (or job shapes) remembered; more means churn: start over
_LAYOUTS: dict[tuple, struct.Struct] = {}  # (reply, event, id, sockets lengths) -> the job's layout after its head


class SocketBytes:
    """The front-end's cache: a tuple of sockets -> its bytes in a job."""

    def __init__(self):
        self._cache: dict[int, tuple] = {}  # id(sockets) -> (sockets, bytes)

    def __call__(self, sockets: tuple) -> bytes:
        hit = self._cache.get(id(sockets))
        if hit is not None and hit[0] is sockets:
            return hit[1]
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        data = pickle.dumps(tuple(astuple(s) for s in sockets), pickle.HIGHEST_PROTOCOL)
        # Keeping the tuple alive keeps its id from being reused by another.
        self._cache[id(sockets)] = (sockets, data)
        return data


def encode(seq: int, reply: bytes | None, event: bytes, message_id: bytes, sockets: bytes, body: bytes,
           raised_at: float) -> tuple:
    """The job as byte strings to concatenate (``JobQueue.put`` joins them); *message_id* at most 255 bytes."""
    reply = reply or b""
    return (HEAD.pack(raised_at, seq, len(reply), len(event), len(sockets), len(message_id)),
            reply, event, message_id, sockets, body)


def decode(payload) -> tuple:
    """``(seq, reply, event, message_id, sockets_bytes, body, raised_at)`` from a job's bytes."""
    raised_at, seq, reply_len, event_len, sockets_len, id_len = HEAD.unpack_from(payload)
    lengths = (reply_len, event_len, id_len, sockets_len)
    layout = _LAYOUTS.get(lengths)
    if layout is None:
        # One unpack per job instead of four slices copied: the same few shapes come again and again.
        if len(_LAYOUTS) >= _CACHE_MAX:
            _LAYOUTS.clear()
        layout = _LAYOUTS[lengths] = struct.Struct(f"!{HEAD.size}x{reply_len}s{event_len}s{id_len}s{sockets_len}s")
    reply, event, message_id, sockets = layout.unpack_from(payload)
    return seq, reply if reply_len else None, event, message_id, sockets, bytes(payload[layout.size:]), raised_at


def load_sockets(data: bytes) -> tuple:
    """The socket field tuples a job's sockets bytes hold."""
    return pickle.loads(data)


def pack(sockets, body: bytes, *, event: str = "E_TEST", seq: int = 0, reply: bytes | None = None,
         raised_at: float, message_id: str | None = None) -> bytes:
    """One whole job from socket objects, as a front-end would build it (for tests and tools)."""
    message_id = new_message_id() if message_id is None else message_id
    return b"".join(encode(seq, reply, event.encode("utf-8"), message_id.encode("utf-8"),
                           SocketBytes()(tuple(sockets)), body, raised_at))
