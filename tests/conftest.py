"""Shared fixtures: one private RabbitMQ broker for the whole test session.

The broker is pytest-rabbitmq's ``rabbitmq_proc`` (the project's choice of
test broker), configured here so that it
  - listens on 127.0.0.1 only, AMQP and Erlang distribution alike (the
    environment below, set at import, before any broker starts: the fixture
    passes os.environ on to rabbitmq-server);
  - has a node name of its own, ``opsevent-test-<pid>@localhost``, so that
    concurrent sessions never collide, and rabbitmqctl reaches it over loopback;
  - uses ports away from 5672/25672 (the system broker's) and from
    35672-35682 (where rabbitmqctl itself listens);
  - ignores /etc/rabbitmq and loads no plugins.

Tests use the ``broker`` fixture: the same control interface as
workers.demo.broker.PrivateBroker (``socket()``, ``ctl()``, ``beam_pid()``,
``freeze()``/``thaw()``, ``stop_app()``/``start_app()``,
``connection_count()``, ``set_memory_alarm()``), wrapped around the
pytest-rabbitmq node by workers.demo.broker.RunningBroker.  pytest-rabbitmq
starts and stops the node (mirakuru: SIGTERM to the node's process group,
then SIGKILL), so no beam.smp outlives the session.  Tests that need a broker
of their own (to kill it, say) start a PrivateBroker.

A broker that does not start is an error, never a skip.  Every test is
bounded by pytest-timeout (setup.cfg: timeout = 300).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from pytest_rabbitmq import factories

from workers.demo.broker import (
    LOOPBACK,
    LOOPBACK_DIST_ARGS,
    RABBITMQ_SERVER,
    RABBITMQCTL,
    RunningBroker,
    declare_queue,
    delete_queue,
)

from helpers import SECRET_USER, add_secret_user

# -- environment for the broker pytest-rabbitmq starts (read when it starts) ---
os.environ["RABBITMQ_NODE_IP_ADDRESS"] = LOOPBACK
os.environ["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = LOOPBACK_DIST_ARGS
os.environ.setdefault("ERL_EPMD_ADDRESS", LOOPBACK)  # if this node starts epmd

_BROKER_DIR = Path(tempfile.mkdtemp(prefix="opsevent-test-broker-"))
(_BROKER_DIR / "plugins").write_text("[].\n")  # RABBITMQ_ENABLED_PLUGINS_FILE: none
# Nonexistent (the first without extension, as RabbitMQ wants it): defaults
# only, whatever /etc/rabbitmq holds.
os.environ["RABBITMQ_CONFIG_FILE"] = str(_BROKER_DIR / "rabbitmq")
os.environ["RABBITMQ_ADVANCED_CONFIG_FILE"] = str(_BROKER_DIR / "advanced.config")
os.environ["RABBITMQ_CONF_ENV_FILE"] = str(_BROKER_DIR / "rabbitmq-env.conf")

# Random free ports, away from the system broker's (5672, 25672) and from
# rabbitmqctl's own 35672-35682.
_PORTS = [(10000, 25000), (26000, 32000)]

rabbitmq_proc = factories.rabbitmq_proc(
    server=str(RABBITMQ_SERVER),
    ctl=str(RABBITMQCTL),
    host=LOOPBACK,
    port=_PORTS,
    distribution_port=_PORTS,
    node=f"opsevent-test-{os.getpid()}@localhost",
    plugindir=_BROKER_DIR,
)


def pytest_unconfigure(config):
    shutil.rmtree(_BROKER_DIR, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses the session broker with ``broker``."""
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def broker(rabbitmq_proc) -> RunningBroker:
    """The session's private broker (127.0.0.1, a free port), ready to use."""
    env = dict(rabbitmq_proc.envvars)
    b = RunningBroker(host=rabbitmq_proc.host, port=rabbitmq_proc.port,
                      node=env["RABBITMQ_NODENAME"], env=env, ctl_path=rabbitmq_proc.rabbit_ctl)
    # pytest-rabbitmq only waits for the port; wait for the full boot too.
    b.await_startup(timeout=60)
    yield b
    # Leave the node stoppable: a test that failed half-way may have left it
    # frozen (SIGTERM would wait for ever) or its app stopped.
    try:
        b.thaw()
    except Exception:
        pass


@pytest.fixture(scope="session")
def secret_user(broker) -> str:
    """The session broker's user with a real password (helpers.SECRET_USER / SECRET)."""
    add_secret_user(broker)
    return SECRET_USER


@pytest.fixture
def queue_name() -> str:
    """A queue name of this test's own."""
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
def clean_queue(broker, queue_name) -> str:
    """``queue_name``, declared on the session broker, deleted afterwards."""
    declare_queue(broker, queue_name)
    yield queue_name
    try:
        delete_queue(broker, queue_name)
    except Exception:
        # The test may have left the broker unreachable on purpose; the
        # broker and its queues go away with the session anyway.
        pass
