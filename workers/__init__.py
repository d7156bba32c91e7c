"""Processes for opsevent: the supervisor, the front-ends and the RabbitMQ worker.

This package owns every process, pipe, signal handler and AMQP connection;
``opsevent`` stays pure.  Start methods: fork only (the job queue and the
EventInterface are inherited by the children).

Its rooms, in the order a job travels, each importing only the rooms
below it (``tests/test_boundaries.py`` checks)::

    demo/        the SIP demo, the demo loop, private brokers and clusters (tooling; never imported above)
    processes/   who forks whom, and who restarts whom: Supervisor, Service, front-ends, server hooks
    control/     the management plane: control socket, commands, the opsevent CLI, health, metrics
    rabbitmq/    the RabbitMQ worker and its broker links; the only runtime room that imports pika
    channel/     how a job and its reply travel between processes: queue, job bytes, sender, replies
    base/        what every process does for itself: Child, signals, at-exit, after-fork, logs, tally

The names below are the package's API; ``workers.gunicorn``,
``workers.asgi``, ``workers.metrics`` and ``workers.cli`` are kept as doors
to the rooms, at the paths users already import.
"""

from workers.processes.frontend import stopping
from workers.processes.service import Service, serve
from workers.processes.supervisor import Supervisor
from workers.rabbitmq.worker import RabbitMQWorker

__all__ = ["RabbitMQWorker", "Service", "Supervisor", "serve", "stopping"]
