"""A small TCP proxy for network-fault tests, on 127.0.0.1 only.

``TcpProxy(upstream_port)`` listens on a free port of 127.0.0.1 and relays
every connection to ``127.0.0.1:upstream_port``.  One selector loop serves
every socket (bounded: one thread, or one forked process with
``process=True``, whatever the connection count).  Its mode can change at
any time:

``pass``
    relay bytes both ways (the default);
``blackhole``
    the network silently loses every byte: whatever arrives from either side
    is read and thrown away, nothing is sent, no connection is closed (new
    connections are accepted and blackholed too, as a dead route would look
    after the TCP handshake);
``close``
    reset every open connection (RST, via SO_LINGER 0) and reset new ones as
    soon as they are accepted.

Example::

    with TcpProxy(broker.port) as proxy:
        socket = f"rabbitmq:127.0.0.1:{proxy.port}/queue"
        ...
        proxy.set_mode("blackhole")

``process=True`` runs the loop in a forked process, so a proxy that reads and
throws away megabytes does not compete for the GIL with a test that measures
latencies.  Mode and counters live in shared memory either way.

``stop()`` (or leaving the ``with``) closes every socket and ends the loop,
bounded.
"""

from __future__ import annotations

import multiprocessing
import selectors
import socket
import struct
import threading

PASS, BLACKHOLE, CLOSE = "pass", "blackhole", "close"
MODES = (PASS, BLACKHOLE, CLOSE)
LOOPBACK = "127.0.0.1"
CHUNK = 65536
HIGH_WATER = 1 << 20  # bytes buffered towards one side before we stop reading the other

# Slots of the shared counters.
_MODE, _ACCEPTED, _DISCARDED, _OPEN, _STOP = range(5)


class _Pipe:
    """One proxied connection: the client's socket and ours to the upstream."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client = client
        self.upstream = upstream
        self.out = {client: bytearray(), upstream: bytearray()}  # bytes waiting to be written to each
        self.closed = False

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = LOOPBACK, *, process: bool = False):
        if upstream_host not in (LOOPBACK, "localhost"):
            raise ValueError("the test proxy relays to loopback only")
        self.upstream = (upstream_host, int(upstream_port))
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        ctx = multiprocessing.get_context("fork")
        self._shared = ctx.RawArray("q", 5)  # mode, accepted, discarded, open connections, stop
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._pipes: dict[socket.socket, _Pipe] = {}
        if process:
            self._runner = ctx.Process(target=self._run, name=f"tcpproxy-{self.port}", daemon=True)
        else:
            self._runner = threading.Thread(target=self._run, name=f"tcpproxy-{self.port}", daemon=True)
        self._process = process
        self._started = False

    # ---- control (the test's side) -------------------------------------------------

    def start(self) -> "TcpProxy":
        self._runner.start()
        self._started = True
        if self._process:
            self._listener.close()  # the child's now
            self._wake_r.close()
        return self

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self._shared[_MODE] = MODES.index(mode)
        self._wake()

    @property
    def mode(self) -> str:
        return MODES[self._shared[_MODE]]

    @property
    def accepted(self) -> int:
        """Connections accepted so far."""
        return self._shared[_ACCEPTED]

    @property
    def discarded(self) -> int:
        """Bytes thrown away in blackhole mode so far."""
        return self._shared[_DISCARDED]

    @property
    def connections(self) -> int:
        """Connections open through the proxy right now."""
        return self._shared[_OPEN]

    def stop(self, timeout: float = 5.0) -> None:
        if not self._started:
            for s in (self._listener, self._wake_r, self._wake_w):
                s.close()
            return
        self._shared[_STOP] = 1
        self._wake()
        self._runner.join(timeout)
        if self._runner.is_alive():
            if self._process:
                self._runner.kill()
                self._runner.join(5.0)
            raise RuntimeError(f"tcpproxy on port {self.port} did not stop within {timeout:g} s")
        self._wake_w.close()

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *_unused_exc) -> None:
        self.stop()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # ---- the loop (proxy thread or process only) ---------------------------------------

    def _run(self) -> None:
        selector = self._selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, "accept")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        if self._process:
            self._wake_w.close()  # the parent's end
        try:
            while not self._shared[_STOP]:
                ready = selector.select(timeout=0.2)
                mode = MODES[self._shared[_MODE]]  # the mode now, not before the wait
                if mode == CLOSE:
                    for pipe in self._open_pipes():
                        self._close(pipe, reset=True)
                for key, events in ready:
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        try:
                            while self._wake_r.recv(512):
                                pass
                        except (BlockingIOError, InterruptedError):
                            pass
                    else:
                        pipe = key.data
                        if pipe.closed:
                            continue
                        if events & selectors.EVENT_READ:
                            self._read(pipe, key.fileobj, mode)
                        if not pipe.closed and events & selectors.EVENT_WRITE:
                            self._write(pipe, key.fileobj, mode)
        finally:
            for pipe in self._open_pipes():
                self._close(pipe, reset=False)
            selector.close()
            self._listener.close()
            self._wake_r.close()

    def _open_pipes(self) -> list[_Pipe]:
        return list({id(p): p for p in self._pipes.values() if not p.closed}.values())

    def _accept(self) -> None:
        while True:
            try:
                client, _unused_addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            self._shared[_ACCEPTED] += 1
            mode = MODES[self._shared[_MODE]]  # the mode at this accept
            if mode == CLOSE:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=2.0)
            except OSError:
                _reset(client)
                continue
            for s in (client, upstream):
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(client, upstream)
            self._pipes[client] = self._pipes[upstream] = pipe
            self._shared[_OPEN] += 1
            self._update(pipe)

    def _read(self, pipe: _Pipe, sock: socket.socket, mode: str) -> None:
        try:
            data = sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(pipe, reset=True)
            return
        if not data:
            # One side closed: close both (good enough for AMQP, which never half-closes).
            self._close(pipe, reset=False)
            return
        if mode == BLACKHOLE:
            self._shared[_DISCARDED] += len(data)
            return
        peer = pipe.peer(sock)
        pipe.out[peer] += data
        self._write(pipe, peer, mode)

    def _write(self, pipe: _Pipe, sock: socket.socket, mode: str) -> None:
        buf = pipe.out[sock]
        if mode == BLACKHOLE:
            self._shared[_DISCARDED] += len(buf)
            buf.clear()
        if buf:
            try:
                sent = sock.send(buf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(pipe, reset=True)
                return
            del buf[:sent]
        self._update(pipe)

    def _update(self, pipe: _Pipe) -> None:
        """Read a side unless its peer's buffer is full; write a side while it has bytes."""
        if pipe.closed:
            return
        for sock in (pipe.client, pipe.upstream):
            events = 0
            if len(pipe.out[pipe.peer(sock)]) <= HIGH_WATER:
                events |= selectors.EVENT_READ
            if pipe.out[sock]:
                events |= selectors.EVENT_WRITE
            try:
                key = self._selector.get_key(sock)
            except KeyError:
                key = None
            if key is None and events:
                self._selector.register(sock, events, pipe)
            elif key is not None and not events:
                self._selector.unregister(sock)
            elif key is not None and key.events != events:
                self._selector.modify(sock, events, pipe)

    def _close(self, pipe: _Pipe, reset: bool) -> None:
        if pipe.closed:
            return
        pipe.closed = True
        self._shared[_OPEN] -= 1
        for s in (pipe.client, pipe.upstream):
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            self._pipes.pop(s, None)
            if reset:
                _reset(s)
            else:
                s.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
