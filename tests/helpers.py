"""Helpers shared by the test modules (child targets stay in their own modules)."""

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

from workers.demo import procstat

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05, show=None):
    """Poll ``predicate`` until it is true; return its value, or fail saying what and the last
    value (and what ``show()`` returns then: the state a bare False would hide)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            shown = f"; {show()!r}" if show is not None else ""
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {value!r}{shown})")
        time.sleep(interval)


def opsevent_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m workers.cli ARGS`` in a subprocess, as a user runs ``opsevent``; bounded to 30 s."""
    environ = dict(os.environ, PYTHONPATH=str(ROOT))
    environ.pop("OPSEVENT_CONTROL", None)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=30)


ANOTHER_UID = 65534  # nobody: the "other user" of the tests that need one


def as_another_user(action, uid: int = ANOTHER_UID):
    """Run ``action()`` in a forked child whose real and effective uid and gid are ``uid``; return its result.

    The result crosses back as the ``repr`` of a literal (str, int, tuple, list, dict, None).
    Fails the test, saying why, when this process cannot become that user (not root) or already
    is it: a test about another user must never pass without one.
    """
    if os.getuid() == uid:
        raise AssertionError(f"this test needs a user other than the one it runs as (uid {uid})")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            if (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) != (uid,) * 4:
                raise OSError(f"still uid {os.getuid()}/{os.geteuid()} gid {os.getgid()}/{os.getegid()}")
        except OSError as exc:
            os.write(w, b"E" + f"cannot become uid {uid}: {exc}".encode())
            os._exit(3)
        try:
            os.write(w, b"R" + repr(action()).encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            os.write(w, b"X" + f"{type(exc).__name__}: {exc}".encode())
            code = 4
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read()
    status = os.waitpid(pid, 0)[1]
    kind, text = report[:1], report[1:].decode()
    if kind == b"E":
        raise AssertionError(f"this test acts as another user and must run as root ({text}; "
                             f"running as uid {os.getuid()})")
    if kind != b"R" or os.waitstatus_to_exitcode(status) != 0:
        raise AssertionError(f"the process of uid {uid} failed: {text or 'no report'} "
                             f"(exit {os.waitstatus_to_exitcode(status)})")
    return ast.literal_eval(text)


def boottime() -> float:
    """Seconds since boot (CLOCK_BOOTTIME): the clock of ``started_at``."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def started_at(pid: int) -> float:
    """When process ``pid`` was forked, in ``boottime()`` seconds (to 1/CLK_TCK: 10 ms).

    How long a supervisor took to replace a dead process is the new one's
    start less the death: what the test's own polling and scheduling add
    afterwards is not in it.
    """
    return procstat.started_at(pid)


# A broker user with a real password, for every test that shows sockets, stats, logs or
# results: whatever they print must never hold SECRET (guest:guest would prove nothing).
SECRET_USER, SECRET = "opsuser", "pw-Q7x9-s3cr3t"


def add_secret_user(broker) -> None:
    """Give ``broker`` the user SECRET_USER, password SECRET, with every right on vhost ``/``."""
    broker.ctl("add_user", SECRET_USER, SECRET)
    broker.ctl("set_permissions", "-p", "/", SECRET_USER, ".*", ".*", ".*")


def secret_socket(broker, routing_key: str, **options) -> str:
    """``broker.socket(...)`` as SECRET_USER, password SECRET (``add_secret_user`` first)."""
    return broker.socket(routing_key, user=SECRET_USER, password=SECRET, **options)


def assert_no_secret(*texts: str) -> None:
    """SECRET is in none of ``texts``."""
    for text in texts:
        assert SECRET not in text, f"the password is shown: {text[max(0, text.find(SECRET) - 200):][:400]!r}"
