"""The client end of the control socket: one JSON request, one JSON reply.

``request(path, {"cmd": "subscribers"})`` is what the ``opsevent`` CLI
(``cli.py``) and any other program use to talk to a running service; the
protocol (one JSON object per line each way) is in ``commands.py``, the
server in ``server.py``.
"""

from __future__ import annotations

import errno
import json
import socket
import time

__all__ = ["CLIENT_TIMEOUT", "CommandFailed", "ControlError", "exchange", "request"]

MAX_REPLY = 16 << 20  # bytes a client reads in one reply
CLIENT_TIMEOUT = 10.0  # seconds the client waits for a reply by default


class ControlError(RuntimeError):
    """The control socket cannot be used: no service at that path, a bad path, a bad reply."""


def request(path: str, message: dict, timeout: float = CLIENT_TIMEOUT) -> dict:
    """Send one request to the service at *path*; return its ``result``.

    Raises ``ControlError`` when nobody answers there or the reply is not
    one; ``CommandFailed`` (a ControlError) with the service's own error
    when it refused the request.
    """
    reply = exchange(path, message, timeout)
    if reply.get("ok") is not True:
        raise CommandFailed(str(reply.get("error") or "the service gave no reason"))
    return reply.get("result")


class CommandFailed(ControlError):
    """The service answered ``{"ok": false, "error": ...}``."""


def exchange(path: str, message: dict, timeout: float = CLIENT_TIMEOUT) -> dict:
    """Send *message*, return the raw reply object (``ok`` true or false); bounded by *timeout*."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise ControlError(f"no running supervisor (or workers.serve) at control socket {path}: {_why(exc)}") from None
        sock.sendall(json.dumps(message).encode("utf-8") + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ControlError(f"control socket {path}: no reply within {timeout:g} s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as exc:
                raise ControlError(f"control socket {path}: {_why(exc)}") from None
            if not chunk:
                raise ControlError(f"control socket {path}: closed without a full reply")
            data += chunk
            if len(data) > MAX_REPLY:
                raise ControlError(f"control socket {path}: reply longer than {MAX_REPLY} bytes")
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"control socket {path}: the reply is not JSON") from None
    if not isinstance(reply, dict):
        raise ControlError(f"control socket {path}: the reply is not a JSON object")
    return reply


def _why(exc: OSError) -> str:
    reasons = {
        errno.ENOENT: "no such file",
        errno.ECONNREFUSED: "connection refused (a stale socket file, or not a socket)",
        errno.EACCES: "permission denied (the socket is mode 0600: run as the user that started the service)",
        errno.ENOTDIR: "a part of the path is not a directory",
    }
    return reasons.get(exc.errno, exc.strerror or str(exc))
