"""Processes for opsevent: the supervisor, the front-ends and the RabbitMQ worker.

This package owns every process, pipe, signal handler and AMQP connection;
``opsevent`` stays pure.  Start methods: fork only (the job queue and the
EventInterface are inherited by the children).
"""

from workers.processes.frontend import stopping
from workers.rabbitmq.worker import RabbitMQWorker
from workers.processes.service import Service, serve
from workers.processes.supervisor import Supervisor

__all__ = ["RabbitMQWorker", "Service", "Supervisor", "serve", "stopping"]
