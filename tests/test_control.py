"""The control socket: its file, its bounds, its commands, and runtime subscriptions seen by every front-end."""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import time

import pytest

import opsevent
import workers
from opsevent import decode_event
from workers.control import server as control
from workers.control import ControlError, request
from workers.control.commands import Commands
from workers.control.server import ControlServer
from workers.demo.broker import consume, queue_count

from helpers import as_another_user, assert_no_secret, opsevent_cli, secret_socket, wait_for

FORK = multiprocessing.get_context("fork")
FRONTENDS = 3


def quiet_server(path, evi=None) -> ControlServer:
    """A control server over a plain EventInterface (no worker), served by the test."""
    evi = evi or opsevent.EventInterface()
    return ControlServer(str(path), Commands(evi, lambda: {"jobs": 0})).open()


@contextlib.contextmanager
def serving(server: ControlServer):
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---- the socket file ---------------------------------------------------------------------

def test_the_control_socket_is_mode_0600_and_removed_at_stop(tmp_path):
    path = tmp_path / "ctl"
    with serving(quiet_server(path)):
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert request(str(path), {"cmd": "ping"})["pid"] == os.getpid()
        assert [p.name for p in tmp_path.iterdir()] == ["ctl"]  # no staging directory left
    assert not path.exists()


@pytest.fixture
def open_dir():
    """A directory any user may enter and list (0755): there only the socket's own mode keeps others out."""
    path = tempfile.mkdtemp(prefix="opsevent-ctl-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def connect_errno(path: str) -> str:
    """What connecting to *path* gives this process: "connected", or the errno's name."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError as exc:
            return errno.errorcode[exc.errno]
    return "connected"


def test_another_user_is_refused_by_the_control_socket_and_told_why(open_dir):
    path = os.path.join(open_dir, "ctl")

    def ping():  # as uid 65534, which can see the socket's directory
        try:
            answer = request(path, {"cmd": "ping"}, timeout=2)
        except ControlError as exc:
            answer = str(exc)
        return os.listdir(open_dir), connect_errno(path), answer

    with serving(quiet_server(path)):
        listing, raw, answer = as_another_user(ping)
        assert request(path, {"cmd": "ping"})["pid"] == os.getpid()  # its own user gets in
    assert listing == ["ctl"] and raw == "EACCES"
    assert answer == (f"no running supervisor (or workers.serve) at control socket {path}: permission denied "
                      f"(the socket is mode 0600: run as the user that started the service)")


def test_the_control_socket_is_never_reachable_by_another_user_while_it_is_being_made(open_dir, monkeypatch):
    path = os.path.join(open_dir, "ctl")
    probes = []  # (step, socket file relative to open_dir, what uid 65534's connect got)

    def probe(step):
        for folder, _dirs, files in os.walk(open_dir):
            for name in files:
                where = os.path.join(folder, name)
                if stat.S_ISSOCK(os.lstat(where).st_mode):
                    probes.append((step, os.path.relpath(where, open_dir),
                                   as_another_user(lambda: connect_errno(where))))

    def after(step, call):
        def wrapped(*args, **kwargs):
            result = call(*args, **kwargs)
            probe(step)
            return result
        return wrapped

    # After each step that makes, opens or moves the socket file, another user tries every socket file there.
    monkeypatch.setattr(socket.socket, "bind", after("bind", socket.socket.bind))
    monkeypatch.setattr(socket.socket, "listen", after("listen", socket.socket.listen))
    monkeypatch.setattr(os, "chmod", after("chmod", os.chmod))
    monkeypatch.setattr(os, "rename", after("rename", os.rename))
    umask = os.umask(0)  # the worst case: bind() alone would make the socket file 0777
    try:
        server = quiet_server(path)
    finally:
        os.umask(umask)
        monkeypatch.undo()
    with serving(server):
        assert request(path, {"cmd": "ping"})["pid"] == os.getpid()
    assert {got for _step, _where, got in probes} == {"EACCES"}, probes
    assert [step for step, _where, _got in probes] == ["bind", "chmod", "listen", "rename"], probes
    assert probes[-1][1] == "ctl"


def test_a_service_that_fails_to_start_leaves_no_control_socket_nor_shared_table(tmp_path, monkeypatch):
    path = tmp_path / "ctl"
    evi = opsevent.EventInterface()
    evi.subscribe_event("E_X", "rabbitmq:127.0.0.1/q")
    original = evi.subscriptions
    made = []

    def spawn_fails(service):
        made.append(service.shared)
        raise OSError("no more processes")

    monkeypatch.setattr(workers.Service, "spawn_worker", spawn_fails)
    with pytest.raises(OSError, match="no more processes"):
        workers.Service(evi, install_logging=False, control_path=str(path)).start()
    assert not path.exists()
    assert made[0]._region.closed
    assert evi.subscriptions is original and evi.subscriptions.events() == ("E_X",)
    ControlServer(str(path), lambda line: {"ok": True}).open()._close_sockets()  # the path is free


def test_stop_never_closes_the_sockets_under_a_request_still_being_handled(tmp_path, caplog):
    path = tmp_path / "ctl"
    entered, release = threading.Event(), threading.Event()

    def slow_handle(line):
        entered.set()
        release.wait(10)
        return {"ok": True, "result": "late"}

    server = ControlServer(str(path), slow_handle).open()
    server.start()
    replies = []
    client = threading.Thread(target=lambda: replies.append(request(str(path), {"cmd": "ping"}, timeout=10)))
    client.start()
    try:
        assert entered.wait(10)
        started = time.monotonic()
        server.stop(timeout=0.2)
        assert time.monotonic() - started < 2
        assert "still being handled 0.2 s after stop" in caplog.text
        assert not path.exists() and server._listener is not None
    finally:
        release.set()
        client.join(10)
    assert replies == ["late"]  # its connection stayed open until the reply was written
    wait_for(lambda: server._listener is None, 10, "the serving thread closing its sockets")


def test_a_stale_socket_file_is_replaced(tmp_path):
    path = tmp_path / "ctl"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays; nobody accepts
    with serving(quiet_server(path)):
        assert request(str(path), {"cmd": "events"}) == []


def test_a_path_where_a_live_service_answers_is_refused(tmp_path):
    path = tmp_path / "ctl"
    with serving(quiet_server(path)):
        with pytest.raises(ControlError, match=rf"in use by a running service \(pid {os.getpid()}\)"):
            quiet_server(path)
        assert request(str(path), {"cmd": "ping"})  # the first one still answers


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("x"), "exists and is not a socket"),
    (lambda p: p.mkdir(), "exists and is not a socket"),
])
def test_a_path_that_is_not_a_socket_is_never_replaced(tmp_path, make, message):
    path = tmp_path / "ctl"
    make(path)
    with pytest.raises(ControlError, match=message):
        quiet_server(path)
    assert path.exists()


def test_a_socket_in_a_missing_directory_or_too_long_a_path_is_refused(tmp_path):
    with pytest.raises(ControlError, match="directory .* does not exist"):
        quiet_server(tmp_path / "nowhere" / "ctl")
    with pytest.raises(ControlError, match="too long for a unix socket"):
        quiet_server(tmp_path / ("x" * 120))


@pytest.mark.parametrize("path, message", [
    ("{tmp}/absent", "no running supervisor .* no such file"),
    ("{tmp}/file", "connection refused"),
])
def test_the_client_says_when_no_service_answers(tmp_path, path, message):
    (tmp_path / "file").write_text("")
    with pytest.raises(ControlError, match=message):
        request(path.format(tmp=tmp_path), {"cmd": "events"}, timeout=2)


# ---- bounds ------------------------------------------------------------------------------------

def test_a_request_over_the_size_limit_gets_an_error_and_the_connection_closes(tmp_path):
    path = tmp_path / "ctl"
    with serving(quiet_server(path)), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        with contextlib.suppress(OSError):  # the server may close before it has read it all
            sock.sendall(b"x" * (control.MAX_REQUEST + 10))
        reply = sock.makefile("rb").readline()
    assert json.loads(reply) == {"ok": False, "error": f"request longer than {control.MAX_REQUEST} bytes"}


def test_a_stuck_client_neither_blocks_others_nor_stays_connected(tmp_path, monkeypatch):
    monkeypatch.setattr(control, "CONNECTION_TIME", 2.0)
    path = tmp_path / "ctl"
    with serving(quiet_server(path)), socket.socket(socket.AF_UNIX) as stuck:
        stuck.connect(str(path))
        stuck.sendall(b'{"cmd": "ev')  # and never the rest
        started = time.monotonic()
        assert request(str(path), {"cmd": "events"}, timeout=2) == []
        assert time.monotonic() - started < 1.5  # answered before the stuck one's time ran out
        stuck.settimeout(5)
        assert stuck.recv(100) == b""  # closed by the server after CONNECTION_TIME


def test_several_requests_on_one_connection_get_one_reply_each_in_order(tmp_path):
    path = tmp_path / "ctl"
    with serving(quiet_server(path)), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b'{"cmd": "events"}\n{"cmd": "stats"}\n{"cmd": "nope"}\n')
        lines = sock.makefile("rb")
        replies = [json.loads(lines.readline()) for _ in range(3)]
    assert replies[0] == {"ok": True, "result": []}
    assert replies[1] == {"ok": True, "result": {"jobs": 0}}
    assert replies[2]["ok"] is False


# ---- what the commands refuse ------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    (b"{not json", "the request is not JSON"),
    (b"[1, 2]", 'a request is a JSON object with a "cmd"'),
    (b'{"cmd": "frob"}', "unknown command 'frob'; the commands are subscribe, unsubscribe, events"),
    (b'{"cmd": "subscribe", "event": "E_X"}', "subscribe needs 'socket'"),
    (b'{"cmd": "events", "event": "E_X"}', "events takes no fields; not 'event'"),
    (b'{"cmd": "subscribe", "event": "E,X", "socket": "rabbitmq:h/k"}', "event name 'E,X' has ','"),
    (b'{"cmd": "subscribe", "event": 7, "socket": "rabbitmq:h/k"}', "event name must be a str"),
    (b'{"cmd": "subscribe", "event": "E_X", "socket": "amqp://h/k"}', "does not start with 'rabbitmq:'"),
    (b'{"cmd": "subscribe", "event": "E_X", "socket": "rabbitmq:u:s3cr3t@h:99999/k"}', "port"),
    (b'{"cmd": "subscribe", "event": "E_X", "socket": "rabbitmq:h/k", "expire": 0}', "expire must be"),
    (b'{"cmd": "subscribe", "event": "E_X", "socket": "rabbitmq:h/k", "expire": "1"}', "expire must be"),
    (b'{"cmd": "unsubscribe", "event": "E_X", "socket": "rabbitmq:u:s3cr3t@h/k"}',
     r"rabbitmq:u:\*\*\*@h:5672/k is not subscribed to E_X"),
    (b'{"cmd": "subscribers", "event": ""}', "event name is empty"),
    (b'{"cmd": "raise", "event": "E_X"}', "E_X has no subscribers; nothing was raised"),
    (b'{"cmd": "raise", "event": "E_Y", "params": "a=b"}', "params is a list of"),
])
def test_a_bad_request_gets_a_clear_error_that_never_shows_a_password(line, message):
    evi = opsevent.EventInterface()
    evi.subscribe_event("E_Y", "rabbitmq:h/k")
    reply = Commands(evi, dict)(line)
    assert reply["ok"] is False
    assert re.search(message, reply["error"]), reply["error"]
    assert "s3cr3t" not in reply["error"]


def test_a_raise_with_a_bad_parameter_says_which_one():
    evi = opsevent.EventInterface()
    evi.subscribe_event("E_X", "rabbitmq:h/k")
    reply = Commands(evi, dict)(b'{"cmd": "raise", "event": "E_X", "params": [["n", 1.5]]}')
    assert reply["ok"] is False and "float" in reply["error"]


# ---- a real Supervisor: runtime subscriptions reach every front-end ----------------------------

def round_target(rounds, results):
    """Each front-end raises E_ROUND once per round the test starts, and reports its statuses."""
    def target(rank, evi):
        seen = 0
        while not workers.stopping():
            current = rounds.value
            if current == seen:
                time.sleep(0.005)
                continue
            seen = current
            result = evi.raise_event("E_ROUND", {"rank": rank, "round": seen})
            results.put((rank, seen, [d.status.value for d in result.deliveries]))
    return target


class Rounds:
    def __init__(self):
        self.counter = FORK.Value("i", 0)
        self.results = FORK.Queue()

    def target(self):
        return round_target(self.counter, self.results)

    def next(self) -> dict[int, list[str]]:
        """Start a round; every front-end's statuses for it, by rank."""
        with self.counter.get_lock():
            self.counter.value += 1
        statuses = {}
        while len(statuses) < FRONTENDS:
            rank, number, got = self.results.get(timeout=10)
            assert number == self.counter.value
            statuses[rank] = got
        return statuses


@contextlib.contextmanager
def running(supervisor):
    """A started Supervisor whose loop turns in a thread while the test drives it."""
    supervisor.start()
    done = threading.Event()

    def loop():
        while not done.is_set() and supervisor.loop_once(0.1):
            pass

    thread = threading.Thread(target=loop, name="supervisor-loop")
    thread.start()
    try:
        yield supervisor
    finally:
        done.set()
        thread.join(10)
        supervisor.stop()


def ranks_in(bodies) -> list[int]:
    ranks = []
    for body in bodies:
        name, params = decode_event(body)
        assert name == "E_ROUND"
        ranks.append(int(dict(params)["rank"]))
    return sorted(ranks)


@pytest.mark.broker
def test_an_expiring_runtime_subscription_reaches_every_front_end_then_really_expires(
        broker, secret_user, clean_queue, tmp_path):
    path = str(tmp_path / "ctl")
    expire = 4.0  # room for a round of the front-ends on a busy machine before it expires
    rounds = Rounds()
    sup = workers.Supervisor(opsevent.EventInterface(), rounds.target(), processes=FRONTENDS,
                             control_path=path)
    with running(sup):
        assert rounds.next() == {rank: [] for rank in range(1, FRONTENDS + 1)}
        reply = request(path, {"cmd": "subscribe", "event": "E_ROUND",
                               "socket": secret_socket(broker, clean_queue), "expire": expire})
        subscribed = time.monotonic()  # its time began before this
        assert reply["expire"] == expire and reply["new"] is True
        assert rounds.next() == {rank: ["queued"] for rank in range(1, FRONTENDS + 1)}
        assert ranks_in(consume(broker, clean_queue, FRONTENDS)) == [1, 2, 3]
        listed = request(path, {"cmd": "subscribers", "event": "E_ROUND"})
        assert listed[0]["socket"] == f"rabbitmq:{secret_user}:***@127.0.0.1:{broker.port}/{clean_queue}"
        assert 0 < listed[0]["ttl"] <= expire and len(listed) == 1
        # Gone everywhere as soon as its time is up.
        time.sleep(max(0.0, subscribed + expire + 0.05 - time.monotonic()))
        assert request(path, {"cmd": "subscribers"}) == []
        assert request(path, {"cmd": "events"}) == []
        assert rounds.next() == {rank: [] for rank in range(1, FRONTENDS + 1)}
        time.sleep(0.3)
        assert queue_count(broker, clean_queue) == 0
    assert_no_secret(json.dumps([reply, listed]))


@pytest.mark.broker
def test_supervisor_stats_are_the_workers_counters(broker, secret_user, clean_queue, tmp_path):
    path = str(tmp_path / "ctl")
    rounds = Rounds()
    evi = opsevent.EventInterface()
    evi.subscribe_event("E_ROUND", secret_socket(broker, clean_queue))
    sup = workers.Supervisor(evi, rounds.target(), processes=FRONTENDS, control_path=path)
    with running(sup):
        rounds.next()
        consume(broker, clean_queue, FRONTENDS)
        stats = wait_for(lambda: (s := sup.stats()).get("confirmed", 0) >= FRONTENDS and s,
                         5, "the worker's stats to count the round")
        over_socket = request(path, {"cmd": "stats"})
        assert over_socket["pid"] == stats["pid"] == sup.service.process.pid
        assert over_socket["confirmed"] >= FRONTENDS
        (label,) = over_socket["brokers"]
        assert label == f"{secret_user}@127.0.0.1:{broker.port}/%2F"
        assert over_socket["brokers"][label]["published"] >= FRONTENDS
        raised = request(path, {"cmd": "raise", "event": "E_ROUND", "params": [["rank", 0], ["round", 0]]})
        listed = request(path, {"cmd": "subscribers"})
        assert consume(broker, clean_queue, 1) == [b"E_ROUND\nrank::0\nround::0\n"]
    assert_no_secret(json.dumps([stats, over_socket, raised, listed]))
    assert not os.path.exists(path)
    assert sup.evi.subscribers("E_ROUND")  # kept, in a table of its own, after the stop


@pytest.mark.broker
def test_a_subscription_made_with_the_cli_reaches_every_front_ends_next_raise_until_unsubscribed(
        broker, secret_user, clean_queue, tmp_path):
    path = str(tmp_path / "ctl")
    env = {"OPSEVENT_CONTROL": path}
    sock = secret_socket(broker, clean_queue)
    rounds = Rounds()
    sup = workers.Supervisor(opsevent.EventInterface(), rounds.target(), processes=FRONTENDS,
                             control_path=path)
    everyone = range(1, FRONTENDS + 1)
    with running(sup):
        assert rounds.next() == {rank: [] for rank in everyone}  # forked with no subscriber
        subscribed = opsevent_cli("subscribe", "E_ROUND", sock, env=env)
        assert subscribed.returncode == 0, subscribed.stderr
        assert rounds.next() == {rank: ["queued"] for rank in everyone}
        assert ranks_in(consume(broker, clean_queue, FRONTENDS)) == list(everyone)
        unsubscribed = opsevent_cli("unsubscribe", "E_ROUND", sock, env=env)
        assert unsubscribed.returncode == 0, unsubscribed.stderr
        assert rounds.next() == {rank: [] for rank in everyone}
        time.sleep(0.3)
        assert queue_count(broker, clean_queue) == 0
    assert_no_secret(*(out.stdout + out.stderr for out in (subscribed, unsubscribed)))
