"""The control socket: runtime management of a running service, as OpenSIPS's MI.

Theory of operation:

* A unix stream socket at a path the user picks, mode 0600: it is bound
  inside a fresh 0700 directory next to the path, made 0600, then renamed
  onto the path, so it is never reachable with wider permissions. A stale
  socket file (nobody accepting) is replaced; a path where a live service
  answers is refused, and so is a path that is not a socket.
* The protocol is JSON lines: one request object per line, one reply per
  line, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
  What the requests mean is ``commands.py``; this module only moves
  lines, and ``client.py`` is the other end.
* ``ControlServer.serve_once()`` is one turn: wait (bounded) for the
  listening socket and the open connections, accept, read, answer, write.
  Everything is non-blocking; a request line is at most ``MAX_REQUEST``
  bytes, a connection lives at most ``CONNECTION_TIME`` seconds, and at most
  ``MAX_CONNECTIONS`` are open, so a stuck or hostile client costs a slot,
  never the service. A thread of the process that started the service (the
  Supervisor's main process, or a pre-fork server's master) runs the turns:
  ``workers.serve()`` has no loop of ours to put them in, and one design
  serves both.
* Forked children close their inherited copies of these sockets at once
  (``os.register_at_fork``): only the process that bound the path answers
  on it, and the path is removed only by that process, at stop.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import stat
import tempfile
import threading
import time

from workers.base import forks
from workers.control.client import ControlError, exchange

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024  # bytes in one request line
MAX_CONNECTIONS = 16
CONNECTION_TIME = 10.0  # seconds a connection may stay open
_SUN_PATH_MAX = 107  # bytes of a unix socket path (sun_path less its NUL)


def bind_control_socket(path: str) -> socket.socket:
    """A listening unix socket at *path*, mode 0600 from the start; see the module docstring."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ControlError(f"control socket {path}: directory {directory} does not exist")
    if len(os.fsencode(path)) > _SUN_PATH_MAX or len(os.fsencode(directory)) + 14 > _SUN_PATH_MAX:
        raise ControlError(f"control socket path {path} is too long for a unix socket "
                           f"(the path at most {_SUN_PATH_MAX} bytes, its directory at most "
                           f"{_SUN_PATH_MAX - 14})")
    _check_free(path)
    private = tempfile.mkdtemp(prefix=".oe", dir=directory)  # mode 0700: nobody else reaches in
    staged = os.path.join(private, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(staged)
        os.chmod(staged, 0o600)
        sock.listen(MAX_CONNECTIONS)
        os.rename(staged, path)  # atomic; replaces a stale socket file
    except BaseException:
        sock.close()
        raise
    finally:
        _remove(staged)
        os.rmdir(private)
    sock.setblocking(False)
    return sock


def _check_free(path: str) -> None:
    """Refuse *path* if it is not a socket, or if something answers on it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"control socket path {path} exists and is not a socket; not replacing it")
    try:
        reply = exchange(path, {"cmd": "ping"}, timeout=2.0)
    except ControlError:
        return  # stale: nobody answers there
    pid = (reply.get("result") or {}).get("pid", "?") if reply.get("ok") else "?"
    raise ControlError(f"control socket {path} is in use by a running service (pid "
                       f"{pid}); stop it or choose another path")


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _Connection:
    __slots__ = ("sock", "inbox", "outbox", "deadline", "closing")

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.deadline = deadline
        self.closing = False  # close once the outbox is written


class ControlServer:
    """Answers JSON-line requests at *path* with ``handle(request) -> reply``."""

    def __init__(self, path: str, handle):
        # Configuration only; open() binds.
        self.path = os.path.abspath(path)
        self.handle = handle
        self._listener: socket.socket | None = None
        self._inode = None
        self._selector = None
        self._connections: dict[int, _Connection] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._owner_pid = None

    def open(self) -> "ControlServer":
        self._listener = bind_control_socket(self.path)
        self._inode = os.stat(self.path).st_ino
        self._owner_pid = os.getpid()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        _OPEN.add(self)
        return self

    def start(self) -> None:
        """Serve in a thread of this process until stop()."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="opsevent-control", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, remove the path (if it is still ours) and close every socket.

        The serving thread closes its sockets itself on its way out, so
        none is closed under a request it is still handling. Bounded by
        *timeout*: a thread still inside a handler by then is logged and
        left to finish (it is a daemon), closing the sockets when it does.
        """
        self._stop.set()
        thread, self._thread = self._thread, None
        if self._owner_pid != os.getpid():
            return  # never opened, or a forked child's copy: neither the path nor the sockets are ours
        # The path first, so no new client connects while the thread finishes.
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        if thread is None:
            self._close_sockets()
            return
        thread.join(timeout)
        if thread.is_alive():
            log.error("control socket %s: a request was still being handled %g s after stop; "
                      "its connection and the listener close when it returns", self.path, timeout)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.serve_once(0.2)
                except Exception:
                    log.exception("control socket %s: unexpected error; going on", self.path)
                    time.sleep(0.2)
        finally:
            if os.getpid() == self._owner_pid:
                self._close_sockets()

    def serve_once(self, timeout: float) -> None:
        """One bounded turn: accept, read, answer and write what is ready."""
        now = time.monotonic()
        for conn in list(self._connections.values()):
            if now >= conn.deadline:
                self._drop(conn)
        for key, events in self._selector.select(timeout):
            if key.fileobj is self._listener:
                self._accept()
                continue
            conn = self._connections.get(key.fd)
            if conn is None:
                continue
            if events & selectors.EVENT_READ:
                self._read(conn)
            if events & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                self._write(conn)

    def _accept(self) -> None:
        try:
            sock, _unused_address = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(self._connections) >= MAX_CONNECTIONS:
            sock.close()
            return
        sock.setblocking(False)
        conn = _Connection(sock, time.monotonic() + CONNECTION_TIME)
        self._connections[sock.fileno()] = conn
        self._selector.register(sock, selectors.EVENT_READ)

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.inbox += data
        while b"\n" in conn.inbox and not conn.closing:
            line, conn.inbox = conn.inbox.split(b"\n", 1)
            self._answer(conn, line)
        if len(conn.inbox) > MAX_REQUEST and not conn.closing:
            conn.inbox = b""
            conn.closing = True
            self._queue(conn, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})

    def _answer(self, conn: _Connection, line: bytes) -> None:
        if len(line) > MAX_REQUEST:
            conn.closing = True
            reply = {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}
        else:
            try:
                reply = self.handle(line)
            except Exception as exc:  # a bug in a command must not end the server
                log.exception("control socket %s: a request failed", self.path)
                reply = {"ok": False, "error": f"internal error: {type(exc).__name__}"}
        self._queue(conn, reply)

    def _queue(self, conn: _Connection, reply: dict) -> None:
        conn.outbox += json.dumps(reply, ensure_ascii=False).encode("utf-8") + b"\n"
        self._write(conn)

    def _write(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return
        conn.outbox = conn.outbox[sent:]
        if not conn.outbox and conn.closing:
            self._drop(conn)
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbox else 0)
        self._selector.modify(conn.sock, want)

    def _drop(self, conn: _Connection) -> None:
        self._connections.pop(conn.sock.fileno(), None)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _close_sockets(self) -> None:
        for conn in list(self._connections.values()):
            self._drop(conn)
        if self._selector is not None:
            self._selector.close()
        if self._listener is not None:
            self._listener.close()
        self._listener = self._selector = None
        _OPEN.discard(self)

    def _forget_after_fork(self) -> None:
        # In a forked child: close the copies, touch neither the path nor the thread.
        for conn in self._connections.values():
            conn.sock.close()
        self._connections = {}
        if self._selector is not None:
            self._selector.close()
        if self._listener is not None:
            self._listener.close()
        self._listener = self._selector = self._thread = None


# A forked child closes its copies: only the process that opened a server serves it.
_OPEN = forks.registry(ControlServer._forget_after_fork, forget=True)
