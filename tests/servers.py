"""Real web servers for the embedding tests: gunicorn and uvicorn running tests/apps/webapp.py.

``Server`` starts one as a subprocess (its own process group, bounded
waits, stderr kept in a file), ``load()`` drives it with HTTP requests from
threads of the test, and ``assert_exact()`` checks what reached the broker
against what the server answered: every 200 has exactly one byte-exact
event, and there is no event without a 200.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from helpers import ROOT
from workers.demo.broker import consume, free_port, queue_count

APPS = ROOT / "tests" / "apps"

GUNICORN_CONF = """\
from workers.gunicorn import Hooks

opsevent = Hooks("webapp:evi", **{options!r})
on_starting, on_exit, worker_exit = opsevent.on_starting, opsevent.on_exit, opsevent.worker_exit

workers = {workers}  # gunicorn's own setting, beside the hooks: no name clash
bind = "127.0.0.1:{port}"
worker_class = {worker_class!r}
threads = {threads}
max_requests = {max_requests}
max_requests_jitter = {jitter}
graceful_timeout = 20
timeout = 30
loglevel = "info"
"""

PLAIN_GUNICORN_CONF = """\
workers = {workers}
bind = "127.0.0.1:{port}"
worker_class = {worker_class!r}
graceful_timeout = 20
loglevel = "info"
"""


class Server:
    """One server process; ``with Server(...) as s:`` waits for its port and stops it (SIGTERM) after."""

    def __init__(self, argv: list[str], env: dict, log_path: Path, port: int):
        self.argv, self.env, self.log_path, self.port = argv, env, log_path, port
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    @classmethod
    def gunicorn(cls, tmp_path: Path, socket_text: str, *, settings: dict, app: str = "webapp:app",
                 workers: int = 4, worker_class: str = "sync", threads: int = 1, max_requests: int = 0,
                 jitter: int = 0, options: dict | None = None, hooks: bool = True, serve: str = "",
                 logging: str = "", pad: int = 0) -> "Server":
        port = free_port()
        template = GUNICORN_CONF if hooks else PLAIN_GUNICORN_CONF
        conf = tmp_path / "gunicorn.conf.py"
        conf.write_text(template.format(options=options or {"quiet_pika": True}, workers=workers, port=port,
                                        worker_class=worker_class, threads=threads, max_requests=max_requests,
                                        jitter=jitter))
        argv = [sys.executable, "-m", "gunicorn", "-c", str(conf), app]
        return cls(argv, _env(socket_text, settings, serve, logging, pad), tmp_path / "server.log", port)

    @classmethod
    def uvicorn(cls, tmp_path: Path, socket_text: str, *, settings: dict, workers: int = 2) -> "Server":
        port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "webapp:asgi", "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(workers), "--lifespan", "on", "--no-access-log"]
        return cls(argv, _env(socket_text, settings, "lifespan", "", 0), tmp_path / "server.log", port)

    def __enter__(self) -> "Server":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv, cwd=APPS, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            self.wait_ready()
        except BaseException:
            self.kill_all()
            raise
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the server did not listen on port {self.port} within {timeout:g} s:\n"
                             f"{self.log()[-3000:]}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 40) -> int:
        """SIGTERM, then wait for the exit; the exit code."""
        if self.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
                raise AssertionError(f"the server did not exit within {timeout:g} s of SIGTERM:\n"
                                     f"{self.log()[-3000:]}")
        return self.returncode

    def kill_all(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def __exit__(self, *exc) -> None:
        try:
            if self.returncode is None and self.proc.poll() is None:
                self.stop()
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # nothing of it may outlive the test
            except ProcessLookupError:
                pass
            self._log.close()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stats(self) -> dict:
        status, body = self.get("/stats")
        assert status == 200, body
        return json.loads(body)


def _env(socket_text: str, settings: dict, serve: str, logging: str, pad: int) -> dict:
    env = dict(os.environ, WEBAPP_SOCKET=socket_text, WEBAPP_SETTINGS=json.dumps(settings),
               WEBAPP_SERVE=serve, WEBAPP_LOGGING=logging, WEBAPP_PAD=str(pad),
               PYTHONPATH=os.pathsep.join([str(APPS), str(ROOT)]))
    env.pop("PYTHONWARNINGS", None)
    return env


def load(server: Server, ids, concurrency: int = 8, during=None, timeout: float = 15) -> dict:
    """GET /raise/ID for every id, from ``concurrency`` threads; ``{id: (status, body)}``.

    ``during`` is ``[(fraction, action), ...]``: each action runs once that
    fraction of the requests has been answered, while the load goes on.
    A request that fails (refused, reset) gets status None.
    """
    ids = list(ids)
    results: dict = {}
    feed, lock = iter(ids), threading.Lock()

    def client():
        while True:
            with lock:
                i = next(feed, None)
            if i is None:
                return
            try:
                results[i] = server.get(f"/raise/{i}", timeout)
            except (OSError, http.client.HTTPException) as exc:
                results[i] = (None, repr(exc).encode())

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for fraction, action in sorted(during or [], key=lambda pair: pair[0]):
        while len(results) < fraction * len(ids) and any(t.is_alive() for t in threads):
            time.sleep(0.005)
        action()
    for t in threads:
        t.join(timeout * len(ids))
    assert len(results) == len(ids), f"{len(ids) - len(results)} requests never finished"
    return results


def expected_body(event_id: int, pid: int, pad: int = 0) -> bytes:
    """The guide's line format, written out here rather than by the code under test."""
    return b"E_HTTP\nid::%d\npid::%d\n" % (event_id, pid) + (b"pad::%s\n" % (b"x" * pad) if pad else b"")


def assert_exact(broker, queue: str, results: dict, timeout: float = 30, pad: int = 0) -> dict:
    """Every 200 has exactly one byte-exact event in ``queue``, and no event lacks a 200.

    Call it once the server has stopped (its RabbitMQ worker drained).
    Returns counts by outcome.
    """
    answered = {i: int(body) for i, (status, body) in results.items() if status == 200}
    expected = sorted(expected_body(i, pid, pad) for i, pid in answered.items())
    try:
        bodies = consume(broker, queue, len(expected), timeout=timeout)
    except TimeoutError as exc:
        missing = sorted(set(expected) - set(exc.bodies))
        raise AssertionError(f"{len(missing)} of {len(expected)} events that were answered 200 are missing, "
                             f"e.g. {missing[:3]}") from None
    left = queue_count(broker, queue)
    assert left == 0, f"{left} events in the queue had no 200"
    assert sorted(bodies) == expected, "the events are not the 200s, byte for byte"
    counts = {}
    for status, _body in results.values():
        counts[status] = counts.get(status, 0) + 1
    return counts
