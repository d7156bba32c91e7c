"""A private RabbitMQ broker for the demo, the bench and the tests.

``PrivateBroker`` starts its own RabbitMQ node as the calling user, on a free
port of 127.0.0.1, with its own node name, data and log folder, and stops it
again (never leaving ``beam.smp`` behind).  ``RunningBroker`` is the same
control interface for a node that something else started (the test suite's
pytest-rabbitmq node).  The module-level helpers (``declare_queue``,
``queue_count``, ``consume``, ``delete_queue``) talk AMQP to either.

Why ``/usr/lib/rabbitmq/bin``
    Debian's ``/usr/sbin/rabbitmq-server`` and ``/usr/sbin/rabbitmqctl`` are
    wrappers that, run as root, switch to the ``rabbitmq`` user with ``su``.
    That user cannot write into a folder root made with ``tempfile.mkdtemp()``
    (mode 0700), and it reads another Erlang cookie, so the node never comes
    up or cannot be controlled.  The scripts in ``/usr/lib/rabbitmq/bin`` run
    as the caller.  We never use the package's system service (port 5672).

Why 127.0.0.1
    A test or demo broker must not be reachable from the network: by default
    RabbitMQ listens on every interface for AMQP and for Erlang distribution.
    The only traffic our tests make goes to loopback.

Environment given to ``rabbitmq-server`` (and to ``rabbitmqctl``):

``RABBITMQ_NODENAME``
    ``opsevent-<port>@localhost``: unique per broker, so several brokers (other
    test sessions, the system one) never cluster or collide; ``@localhost``
    so the CLI reaches it over loopback whatever the host name resolves to.
``RABBITMQ_NODE_IP_ADDRESS`` / ``RABBITMQ_NODE_PORT``
    the AMQP listener: 127.0.0.1 and a free port (never 5672).
``RABBITMQ_DIST_PORT``
    the Erlang distribution port ``rabbitmqctl`` talks to (default would be
    AMQP port + 20000, which may be taken or out of range).
``RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS``
    ``-kernel inet_dist_use_interface {127,0,0,1}``: the distribution listener
    binds loopback only.
``ERL_EPMD_ADDRESS``
    if this broker is the one that starts the Erlang port mapper (epmd, port
    4369, shared by all nodes of the machine and left running afterwards),
    it listens on loopback only.
``RABBITMQ_MNESIA_BASE`` / ``RABBITMQ_LOG_BASE``
    data and logs in the broker's own temporary folder, removed on stop.
``RABBITMQ_ENABLED_PLUGINS_FILE``
    a file holding ``[].``: no plugins (no management listener on 15672, and
    a faster start).
``RABBITMQ_CONFIG_FILE`` / ``RABBITMQ_ADVANCED_CONFIG_FILE`` /
``RABBITMQ_CONF_ENV_FILE``
    paths in the temporary folder that do not exist (the first one without
    extension, as RabbitMQ wants it): the broker runs on defaults and ignores
    whatever ``/etc/rabbitmq`` holds on this machine.
``RABBITMQ_CONFIG_FILE`` with ``tls``
    a ``rabbitmq.conf`` of our own, written only for a broker given
    ``tls=BrokerTLS(...)``: a TLS listener (``listeners.ssl.default``) on
    127.0.0.1 and a second free port (``tls_port``), with the PEM files the
    caller made (the tests make them with trustme) and, when asked, client
    certificates required (``verify_peer`` + ``fail_if_no_peer_cert``).
``HOME``
    Erlang refuses to start without it (it keeps ``.erlang.cookie`` there);
    set to the temporary folder only when missing.

Every wait here is bounded and fails with a message that says what it waited
for (and, for a broker that does not start, the tail of its logs).
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import random
import shutil
import signal
import socket as _socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pika
import pika.exceptions

from workers.rabbitmq import pika_private

__all__ = [
    "BrokerError",
    "BrokerTLS",
    "CONNECT_ERRORS",
    "RABBITMQ_BIN",
    "RABBITMQ_SERVER",
    "RABBITMQCTL",
    "RunningBroker",
    "PrivateBroker",
    "declare_queue",
    "delete_queue",
    "queue_count",
    "consume",
    "free_port",
    "port_accepts",
    "wait_exit",
    "wait_gone",
]

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
RABBITMQ_SERVER = RABBITMQ_BIN / "rabbitmq-server"
RABBITMQCTL = RABBITMQ_BIN / "rabbitmqctl"

LOOPBACK = "127.0.0.1"
LOOPBACK_DIST_ARGS = "-kernel inet_dist_use_interface {127,0,0,1}"

# Ports we never take: epmd, the system broker's AMQP/management/dist ports,
# and the range rabbitmqctl itself listens on while it runs (35672-35682).
_RESERVED_PORTS = {4369, 5671, 5672, 15672, 25672} | set(range(35672, 35683))
# Below Linux's ephemeral range (32768-60999), so an outgoing connection does
# not grab the port between our check and the broker's bind.
_PORT_RANGE = (10000, 32000)


# What pika.BlockingConnection() raises when it cannot connect.  Beware: a
# timeout during the AMQP handshake (a frozen broker) surfaces as
# pika's AMQPConnectorStackTimeout, which is *not* an AMQPConnectionError.
CONNECT_ERRORS = pika_private.CONNECT_ERRORS + (OSError,)


class BrokerError(RuntimeError):
    """The private broker could not be started, controlled or stopped."""


def free_port(exclude: set[int] | frozenset[int] = frozenset()) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*_PORT_RANGE)
        if port in _RESERVED_PORTS or port in exclude:
            continue
        with _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    raise BrokerError(f"no free TCP port found in {_PORT_RANGE} on {LOOPBACK}")


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with _socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class BrokerTLS:
    """The TLS listener of a PrivateBroker: PEM file paths, and whether clients need a certificate."""

    cacertfile: str  # the CA that signed certfile, and that client certificates must chain to
    certfile: str
    keyfile: str
    require_client_cert: bool = False


class RunningBroker:
    """Control interface for a RabbitMQ node that is running on loopback.

    ``env`` is the environment the node was started with (``rabbitmqctl``
    needs the same ``HOME`` for the Erlang cookie).  ``PrivateBroker`` adds
    starting and stopping; the test suite wraps its pytest-rabbitmq node in
    this class directly.
    """

    user = "guest"
    password = "guest"
    tls_port: int | None = None  # the TLS listener's port, when the broker has one

    def __init__(self, host: str, port: int, node: str, env: dict[str, str] | None = None,
                 ctl_path: str | os.PathLike = RABBITMQCTL):
        self.host = host
        self.port = int(port)
        self.node = node
        self.env = dict(os.environ if env is None else env)
        self.ctl_path = str(ctl_path)
        self._beam_pid: int | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.node} amqp://{self.host}:{self.port}>"

    # -- addresses -------------------------------------------------------

    def socket(self, routing_key: str, exchange: str | None = None,
               user: str | None = None, password: str | None = None, tls: bool = False) -> str:
        """An opsevent subscriber socket for this broker (with ``tls``, for its TLS listener).

        Grammar: ``rabbitmq:[user[:password]@]host[:port]/[exchange?]routing_key``,
        or ``.../tls;[exchange=E]?routing_key`` with ``tls``.
        Characters that would break the split (``% @ : / ? , ; =``, space) are
        %-encoded, other characters written as they are; opsevent's parser
        decodes every field.
        """
        if password is not None and user is None:
            raise ValueError("a password needs a user")
        if tls and self.tls_port is None:
            raise ValueError(f"{self!r} has no TLS listener (start it with tls=BrokerTLS(...))")
        auth = ""
        if user is not None:
            auth = _enc(user) + (f":{_enc(password)}" if password is not None else "") + "@"
        if tls:
            target = f"tls;exchange={_enc(exchange)}" if exchange else "tls;"
            return f"rabbitmq:{auth}{self.host}:{self.tls_port}/{target}?{_enc(routing_key)}"
        target = f"{_enc(exchange)}?{_enc(routing_key)}" if exchange else _enc(routing_key)
        if exchange in ("tls", "persistent"):  # else it would read as OpenSIPS 3.2's flag
            target = f"%{ord(exchange[0]):02X}{target[1:]}"
        return f"rabbitmq:{auth}{self.host}:{self.port}/{target}"

    def parameters(self, **overrides) -> pika.ConnectionParameters:
        """pika connection parameters for this broker (guest/guest, vhost /).

        Defaults keep every wait short; pass pika keyword arguments to change
        them.
        """
        kw = dict(
            host=self.host,
            port=self.port,
            credentials=pika.PlainCredentials(self.user, self.password),
            connection_attempts=1,
            socket_timeout=5,
            stack_timeout=10,
            blocked_connection_timeout=30,
        )
        kw.update(overrides)
        return pika.ConnectionParameters(**kw)

    def connect(self, **overrides) -> pika.BlockingConnection:
        """A new pika BlockingConnection (the caller closes it)."""
        return pika.BlockingConnection(self.parameters(**overrides))

    # -- rabbitmqctl -----------------------------------------------------

    def ctl(self, *args: str, timeout: float = 30) -> str:
        """Run ``rabbitmqctl -n NODE ARGS...``; return its stdout.

        Raises BrokerError (with stderr) on a non-zero exit or after
        ``timeout`` seconds.
        """
        cmd = [self.ctl_path, "-n", self.node, *map(str, args)]
        try:
            proc = subprocess.run(cmd, env=self.env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"{' '.join(cmd)}: no answer within {timeout:g} s") from exc
        if proc.returncode != 0:
            raise BrokerError(
                f"{' '.join(cmd)} exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()}")
        return proc.stdout

    def await_startup(self, timeout: float = 60) -> None:
        """Wait (bounded) until the node reports the broker app fully booted."""
        self.ctl("await_startup", "--timeout", str(max(1, int(timeout))), timeout=timeout + 15)

    def wait_port(self, timeout: float = 60) -> None:
        """Wait (bounded) until the AMQP port (and the TLS one, if any) accepts TCP connections."""
        deadline = time.monotonic() + timeout
        for port in (self.port, self.tls_port):
            if port is not None:
                self.wait_port_of(port, max(0.1, deadline - time.monotonic()))

    def wait_port_of(self, port: int, timeout: float) -> None:
        """Wait (bounded) until ``port`` on the broker's host accepts TCP connections."""
        deadline = time.monotonic() + timeout
        while not port_accepts(self.host, port):
            if time.monotonic() >= deadline:
                raise BrokerError(f"{self.host}:{port} did not accept a connection within {timeout:g} s")
            time.sleep(0.1)

    def connection_count(self) -> int:
        """Number of client connections the broker has right now."""
        out = self.ctl("list_connections", "pid", "--formatter", "json", "--quiet")
        return len(json.loads(out or "[]"))

    def stop_app(self, timeout: float = 60) -> None:
        """Stop the RabbitMQ application but keep the Erlang node (and beam) up.

        All client connections drop; transient messages are lost, durable
        queues survive.
        """
        self.ctl("stop_app", timeout=timeout)

    def start_app(self, timeout: float = 60) -> None:
        """Start the application again; return once the AMQP port accepts."""
        deadline = time.monotonic() + timeout
        self.ctl("start_app", timeout=timeout)
        self.wait_port(max(1.0, deadline - time.monotonic()))

    def set_memory_alarm(self, on: bool) -> None:
        """Raise (on=True) or clear the memory alarm: publishers get blocked."""
        self.ctl("set_vm_memory_high_watermark", "0" if on else "0.4")

    # -- the beam.smp process --------------------------------------------

    def _beam_candidates(self) -> list[int]:
        """beam.smp processes started for this node.

        The 3.10 launcher passes the node name to the VM through the
        environment (RABBITMQ_NODENAME), not the command line, so we read
        /proc/PID/environ (readable for our own processes).
        """
        want = f"RABBITMQ_NODENAME={self.node}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0", 1)[0]
                if not argv0.endswith(b"beam.smp"):
                    continue
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
            except OSError:
                continue
            if want in environ and _alive(int(entry)):
                found.append(int(entry))
        return found

    def _beam_by_port(self) -> int | None:
        try:
            out = subprocess.run(["ss", "-ltnpH", f"sport = :{self.port}"],
                                 capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        for line in out.splitlines():
            if '"beam.smp"' in line and "pid=" in line:
                return int(line.split("pid=", 1)[1].split(",", 1)[0])
        return None

    def beam_pid(self) -> int:
        """pid of the node's beam.smp (the Erlang VM running the broker)."""
        if self._beam_pid is not None and _alive(self._beam_pid):
            return self._beam_pid
        # The VM listening on our AMQP port; after stop_app() nothing listens
        # there, so fall back to the VM whose environment names our node.
        pid = self._beam_by_port()
        if pid is None:
            pids = self._beam_candidates()
            pid = pids[0] if len(pids) == 1 else None
        if pid is None:
            raise BrokerError(f"no beam.smp found for node {self.node} (port {self.port})")
        self._beam_pid = pid
        return pid

    def freeze(self, timeout: float = 5) -> None:
        """SIGSTOP the broker: it stops answering (a dead-peer simulation).

        Returns once the VM is stopped (signals reach a many-threaded process
        with a delay), bounded by ``timeout``.
        """
        pid = self.beam_pid()
        os.kill(pid, signal.SIGSTOP)
        _wait_state(pid, lambda st: st in ("T", "t"), timeout, "stopped (SIGSTOP)")

    def thaw(self, timeout: float = 5) -> None:
        """SIGCONT the broker after ``freeze()``; returns once it runs again."""
        pid = self.beam_pid()
        os.kill(pid, signal.SIGCONT)
        _wait_state(pid, lambda st: st not in ("T", "t"), timeout, "running again (SIGCONT)")


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _wait_state(pid: int, ok, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        st = _proc_state(pid)
        if st is None or ok(st):
            return
        if time.monotonic() >= deadline:
            raise BrokerError(f"beam.smp {pid} not {what} within {timeout:g} s (state {st})")
        time.sleep(0.01)


def _tls_config(tls: BrokerTLS, port: int) -> str:
    """rabbitmq.conf for a TLS listener on loopback (RabbitMQ's TLS guide, "Enabling TLS")."""
    verify = "verify_peer" if tls.require_client_cert else "verify_none"
    return (f"listeners.ssl.default = {LOOPBACK}:{port}\n"
            f"ssl_options.cacertfile = {tls.cacertfile}\n"
            f"ssl_options.certfile = {tls.certfile}\n"
            f"ssl_options.keyfile = {tls.keyfile}\n"
            f"ssl_options.verify = {verify}\n"
            f"ssl_options.fail_if_no_peer_cert = {str(tls.require_client_cert).lower()}\n")


def _enc(text: str) -> str:
    # ',' separates failover hosts and ';' '=' mark socket parameters: encode
    # them. Only ASCII: the parser decodes nothing else (escapes outside
    # printable ASCII are refused, as OpenSIPS refuses them).
    return "".join(c if ord(c) > 127 else quote(c, safe="-._~!$&'()*+#") for c in text)


def _alive(pid: int) -> bool:
    st = _proc_state(pid)
    return st is not None and st not in ("Z", "X")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class PrivateBroker(RunningBroker):
    """A RabbitMQ node of our own, on loopback, for the lifetime of this object.

    Example::

        with PrivateBroker() as broker:
            declare_queue(broker, "events")
            subscriber = broker.socket("events")  # 'rabbitmq:127.0.0.1:PORT/events'

    ``start()`` (or entering the ``with``) starts it and waits until it is
    ready; ``stop()`` (or leaving the ``with``, or interpreter exit) stops it,
    removes its folder, and kills whatever of it remains.

    With ``tls=BrokerTLS(ca, cert, key)`` it also listens for AMQP over TLS
    on ``tls_port`` (``socket(..., tls=True)`` names it); the plain listener
    stays, for the helpers below.
    """

    def __init__(self, start_timeout: float = 60, stop_timeout: float = 30,
                 server_path: str | os.PathLike = RABBITMQ_SERVER,
                 ctl_path: str | os.PathLike = RABBITMQCTL, tls: BrokerTLS | None = None):
        super().__init__(LOOPBACK, 0, "", env=None, ctl_path=ctl_path)
        self.tls = tls
        self.server_path = str(server_path)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.dist_port = 0
        self.tmpdir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._lock = threading.Lock()
        self._stopped = False

    # -- lifecycle -------------------------------------------------------

    def __enter__(self) -> "PrivateBroker":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "PrivateBroker":
        if self.proc is not None:
            raise BrokerError(f"{self!r} was already started")
        if not os.access(self.server_path, os.X_OK):
            raise BrokerError(f"{self.server_path} not found: install Debian's rabbitmq-server "
                              "(./run does it: apt-get install rabbitmq-server)")
        t0 = time.monotonic()
        for attempt in range(3):
            self._launch()
            try:
                self._wait_ready()
                self.startup_seconds = time.monotonic() - t0
                return self
            except BrokerError as exc:
                logs = self.log_tail()
                self._shutdown(graceful=False)
                if "eaddrinuse" in logs.lower() and attempt < 2:
                    continue  # lost a race for one of the ports: new ports, try again
                raise BrokerError(f"{exc}\n--- tail of the broker's logs ---\n"
                                  f"{logs or '(nothing logged yet)'}") from None
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        self._stopped = False
        self._beam_pid = None
        self._configure()
        self._spawn()

    def _configure(self) -> None:
        """New ports, node name, folder and environment."""
        self.port = free_port()
        self.dist_port = free_port({self.port})
        self.node = f"opsevent-{self.port}@localhost"
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"opsevent-rabbitmq-{self.port}-"))
        plugins = self.tmpdir / "enabled_plugins"
        plugins.write_text("[].\n")
        (self.tmpdir / "log").mkdir()
        config = self.tmpdir / "rabbitmq"  # does not exist: defaults only
        if self.tls is not None:
            self.tls_port = free_port({self.port, self.dist_port})
            config = self.tmpdir / "rabbitmq.conf"
            config.write_text(_tls_config(self.tls, self.tls_port))
        env = dict(os.environ)
        env.update({
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": LOOPBACK_DIST_ARGS,
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "RABBITMQ_MNESIA_BASE": str(self.tmpdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.tmpdir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.tmpdir / "advanced.config"),  # neither
            "RABBITMQ_CONF_ENV_FILE": str(self.tmpdir / "rabbitmq-env.conf"),  # neither
        })
        env.pop("RABBITMQ_PID_FILE", None)
        if not env.get("HOME"):
            env["HOME"] = str(self.tmpdir)
        self.env = env

    def _spawn(self) -> None:
        """Start rabbitmq-server with the configured environment (the console log grows across restarts)."""
        self._console = open(self.tmpdir / "console.log", "ab")
        self.proc = subprocess.Popen(
            [self.server_path], env=self.env, cwd=self.tmpdir, stdin=subprocess.DEVNULL,
            stdout=self._console, stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.stop)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not port_accepts(self.host, self.port, timeout=0.5):
            if self.proc.poll() is not None:
                raise BrokerError(f"rabbitmq-server for {self.node} exited with "
                                  f"{self.proc.returncode} before accepting connections")
            if time.monotonic() >= deadline:
                raise BrokerError(f"rabbitmq-server for {self.node} did not accept connections "
                                  f"on {self.host}:{self.port} within {self.start_timeout:g} s")
            time.sleep(0.1)
        remaining = deadline - time.monotonic()
        if remaining < 1:
            raise BrokerError(f"{self.node}: no time left for await_startup "
                              f"within {self.start_timeout:g} s")
        self.await_startup(timeout=remaining)
        if self.tls_port is not None:
            self.wait_port_of(self.tls_port, max(1.0, deadline - time.monotonic()))

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's log and of its console output."""
        if self.tmpdir is None:
            return ""
        parts = []
        for path in sorted((self.tmpdir / "log").glob("*.log")) + [self.tmpdir / "console.log"]:
            text = _tail(path, lines)
            if text:
                parts.append(f"[{path.name}]\n{text}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop the node (rabbitmqctl stop, bounded), kill what remains, remove the folder.

        Idempotent; also runs from ``__exit__`` and at interpreter exit.
        """
        with self._lock:
            if self._stopped or self.proc is None:
                return
            self._stopped = True
            self._shutdown(graceful=True)

    def _shutdown(self, graceful: bool) -> None:
        proc = self.proc
        atexit.unregister(self.stop)
        try:
            pgid = proc.pid  # start_new_session: the launcher leads its own group
            beam = self._beam_candidates()
            # A frozen node would never answer rabbitmqctl nor act on signals.
            for pid in beam:
                _signal(pid, signal.SIGCONT)
            _killpg(pgid, signal.SIGCONT)
            if graceful and proc.poll() is None and beam:
                try:
                    self.ctl("stop", timeout=self.stop_timeout)
                except BrokerError:
                    pass
                wait_exit(proc, 10)
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                if proc.poll() is None or _group_alive(pgid) or any(map(_alive, beam)):
                    _killpg(pgid, sig)
                    for pid in beam:
                        _signal(pid, sig)
                    wait_exit(proc, wait)
                    wait_gone(beam, wait)
        finally:
            try:
                self._console.close()
            except Exception:
                pass
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
            self._beam_pid = None


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # killpg(0) also succeeds for zombies; look for a live member.
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def wait_exit(proc: subprocess.Popen, timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)


# -- AMQP helpers (tests, demo, bench) ----------------------------------------

def declare_queue(broker: RunningBroker, name: str, exchange: str | None = None,
                  durable: bool = True) -> None:
    """Declare queue ``name``; with ``exchange``, also a direct exchange of that
    name, bound to the queue with routing key ``name``.

    Durable by default, so the queue survives ``stop_app()``/``start_app()``.
    """
    conn = broker.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(queue=name, durable=durable)
        if exchange:
            ch.exchange_declare(exchange=exchange, exchange_type="direct", durable=durable)
            ch.queue_bind(queue=name, exchange=exchange, routing_key=name)
    finally:
        _close(conn)


def delete_queue(broker: RunningBroker, name: str) -> None:
    """Delete queue ``name`` (no error if it does not exist)."""
    conn = broker.connect()
    try:
        conn.channel().queue_delete(queue=name)
    finally:
        _close(conn)


def queue_count(broker: RunningBroker, name: str) -> int:
    """Messages ready in queue ``name`` (passive declare; error if it is missing)."""
    conn = broker.connect()
    try:
        return conn.channel().queue_declare(queue=name, passive=True).method.message_count
    finally:
        _close(conn)


def consume(broker: RunningBroker, queue: str, count: int, timeout: float = 10,
            prefetch: int = 1000, properties: bool = False) -> list:
    """Take exactly ``count`` messages from ``queue``; return their bodies in order
    (with ``properties``, ``(body, pika BasicProperties)`` pairs).

    Returns as soon as ``count`` have arrived.  Raises ``TimeoutError`` (with
    ``.bodies`` holding what did arrive) after ``timeout`` seconds.  Messages
    are acknowledged in batches; any delivered beyond ``count`` go back to
    the queue.
    """
    if count <= 0:
        return []
    t0 = time.monotonic()
    deadline = t0 + timeout
    bodies: list[bytes] = []
    state = {"last_tag": None, "acked": None}
    ack_every = max(1, min(prefetch, count) // 2)

    conn = broker.connect(socket_timeout=max(1.0, min(5.0, timeout)),
                          stack_timeout=max(1.0, min(10.0, timeout)))
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=max(1, min(prefetch, count)))

        def on_message(channel, method, props, body):
            if len(bodies) >= count:
                return  # beyond what we want: left unacked, requeued on close
            bodies.append((body, props) if properties else body)
            state["last_tag"] = method.delivery_tag
            if len(bodies) == count or len(bodies) % ack_every == 0:
                channel.basic_ack(delivery_tag=method.delivery_tag, multiple=True)
                state["acked"] = method.delivery_tag

        tag = ch.basic_consume(queue=queue, on_message_callback=on_message, auto_ack=False)
        while len(bodies) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if state["last_tag"] is not None and state["last_tag"] != state["acked"]:
                    ch.basic_ack(delivery_tag=state["last_tag"], multiple=True)
                err = TimeoutError(
                    f"consume({queue!r}): {len(bodies)} of {count} messages arrived "
                    f"after {time.monotonic() - t0:.1f} s (timeout {timeout:g} s)")
                err.bodies = list(bodies)
                raise err
            conn.process_data_events(time_limit=min(remaining, 0.2))
        try:
            ch.basic_cancel(tag)
        except pika.exceptions.AMQPError:
            pass
        return bodies
    finally:
        _close(conn)


def _close(conn: pika.BlockingConnection) -> None:
    try:
        if conn.is_open:
            conn.close()
    except pika.exceptions.AMQPError:
        pass
    except OSError as exc:  # pragma: no cover - socket already gone
        if exc.errno not in (errno.EBADF, errno.ENOTCONN, errno.EPIPE):
            raise
