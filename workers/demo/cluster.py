"""A RabbitMQ cluster of private nodes on 127.0.0.1, for the tests (and for trying failover).

``PrivateCluster(size=3)`` starts ``size`` nodes as the calling user, each a
``ClusterNode`` (a ``workers.demo.broker.PrivateBroker`` with its own free ports,
data and log folder), joins them into one cluster, and stops them again.  A
node can be killed (SIGKILL of its ``beam.smp``, found by its AMQP port) and
started again with the same name, ports and data: it rejoins the cluster, as
a crashed node does.  ``stop_app``/``start_app`` and ``freeze``/``thaw``
(SIGSTOP/SIGCONT) come from ``RunningBroker``.

How (see also ``workers/demo/broker.py`` for one node):

* One ``HOME`` for every node and for ``rabbitmqctl``, holding one
  ``.erlang.cookie`` (mode 0400): nodes of a cluster must share the cookie.
* Node names ``opsevent-c<i>-<pid>-<random>@localhost``: unique per test
  session and per cluster, so concurrent sessions never meet.  Erlang
  distribution and the port mapper (epmd) listen on loopback only.
* Nodes start in parallel (a few seconds each); then nodes 2.. do
  ``stop_app; join_cluster <node 1>; start_app``.
* ``declare_quorum_queue(name, on=node)`` declares a quorum queue through
  ``on``: RabbitMQ places its leader on the node the declaring client is
  connected to (``client-local``), so a test chooses which node leads.

Every wait is bounded and says what it waited for.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from workers.demo.broker import (BrokerError, PrivateBroker, port_accepts, wait_exit, wait_gone)

__all__ = ["ClusterNode", "PrivateCluster"]


class ClusterNode(PrivateBroker):
    """One node of a ``PrivateCluster``: its name, ports and data survive ``kill()`` and ``restart()``."""

    def __init__(self, name: str, home: Path, **kwargs):
        super().__init__(**kwargs)
        self.name = name  # without @localhost
        self.home = home  # shared with the other nodes: the Erlang cookie

    def _configure(self) -> None:
        super()._configure()
        self.node = f"{self.name}@localhost"
        self.env.update({"RABBITMQ_NODENAME": self.node, "HOME": str(self.home)})

    def kill(self) -> None:
        """SIGKILL the node's VM, as a crash would (connections reset); its data stays for ``restart()``."""
        pid = self.beam_pid()
        os.kill(pid, signal.SIGKILL)
        wait_gone([pid], 10)
        wait_exit(self.proc, 10)
        self._beam_pid = None

    def restart(self) -> None:
        """Start a killed node again: same name, ports and data; it rejoins its cluster."""
        if port_accepts(self.host, self.port):
            raise BrokerError(f"{self.node} is running: kill() it first")
        self._beam_pid = None
        self._spawn()
        self._wait_ready()

    @property
    def running(self) -> bool:
        """The broker application takes connections (not killed, app not stopped, not frozen)."""
        return port_accepts(self.host, self.port)


class PrivateCluster:
    """``size`` RabbitMQ nodes on 127.0.0.1 in one cluster, for the lifetime of this object.

    Example::

        with PrivateCluster(3) as cluster:
            first = cluster.nodes[0]
            cluster.declare_quorum_queue("events", on=first)  # first leads it
            sock = cluster.socket("events")  # 'rabbitmq:127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/events'
    """

    def __init__(self, size: int = 3, start_timeout: float = 90):
        self.size = size
        self.start_timeout = start_timeout
        self.home: Path | None = None
        self.nodes: list[ClusterNode] = []

    def __enter__(self) -> "PrivateCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "PrivateCluster":
        self.home = Path(tempfile.mkdtemp(prefix="opsevent-cluster-"))
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.nodes = [ClusterNode(f"opsevent-c{i}-{tag}", self.home, start_timeout=self.start_timeout)
                      for i in range(1, self.size + 1)]
        try:
            _in_parallel([node.start for node in self.nodes], self.start_timeout + 30, "starting the nodes")
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", self.nodes[0].node)
                node.ctl("start_app")
            self.await_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def await_healthy(self, timeout: float = 60) -> None:
        """Wait (bounded) until every node runs the broker and sees every other node running."""
        deadline = time.monotonic() + timeout
        want = sorted(node.node for node in self.nodes)
        while True:
            running = []
            try:
                for node in self.nodes:
                    node.wait_port(max(0.1, deadline - time.monotonic()))
                    node.await_startup(max(1.0, deadline - time.monotonic()))
                running = sorted(json.loads(self.nodes[0].ctl("cluster_status", "--formatter", "json"))
                                 ["running_nodes"])
                if running == want:
                    return
            except (BrokerError, ValueError, KeyError):
                pass
            if time.monotonic() >= deadline:
                raise BrokerError(f"the cluster is not whole within {timeout:g} s: running {running}, want {want}")
            time.sleep(0.2)

    def heal(self, timeout: float = 90) -> None:
        """Every node running again, whatever was done to it (thawed, app started, restarted), and whole."""
        for node in self.nodes:
            if node.proc.poll() is not None:  # killed: the launcher is gone with its VM
                node.restart()
                continue
            node.thaw()  # SIGCONT: harmless when it runs
            if not node.running:
                node.start_app()
        self.await_healthy(timeout)

    def stop(self) -> None:
        """Stop every node (in parallel), kill what remains, remove the folders."""
        _in_parallel([node.stop for node in self.nodes], 60, "stopping the nodes", check=False)
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    def socket(self, routing_key: str, nodes: list[ClusterNode] | None = None) -> str:
        """A subscriber socket listing the nodes as failover hosts (all of them, in order, by default)."""
        hosts = ",".join(f"{node.host}:{node.port}" for node in (nodes or self.nodes))
        return f"rabbitmq:{hosts}/{routing_key}"

    def declare_quorum_queue(self, name: str, on: ClusterNode) -> None:
        """A durable quorum queue on every running node, led by ``on`` (the declaring client's node)."""
        conn = on.connect()
        try:
            conn.channel().queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
        finally:
            conn.close()

    def queue_leader(self, name: str) -> ClusterNode:
        """The node that leads quorum queue ``name`` now (asked of a running node)."""
        asked = next((node for node in self.nodes if node.running), self.nodes[0])
        for row in json.loads(asked.ctl("list_queues", "name", "leader", "--formatter", "json", "--quiet") or "[]"):
            if row["name"] == name:
                return next(node for node in self.nodes if node.node == row["leader"])
        raise BrokerError(f"no queue {name!r} on {asked.node}")

    def delete_queue(self, name: str) -> None:
        conn = next(node for node in self.nodes if node.running).connect()
        try:
            conn.channel().queue_delete(name)
        finally:
            conn.close()


def _in_parallel(calls, timeout: float, what: str, check: bool = True) -> None:
    """Run each call in a thread of its own; wait (bounded) for all; re-raise the first failure."""
    errors: list[BaseException] = []

    def run(call):
        try:
            call()
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,), daemon=True) for call in calls]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    if check and any(t.is_alive() for t in threads):
        raise BrokerError(f"{what}: not done within {timeout:g} s")
    if check and errors:
        raise errors[0]
