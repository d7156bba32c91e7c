"""The RabbitMQ side: the worker process and everything that speaks AMQP.  The only runtime
room that imports pika.

``worker.py`` is the RabbitMQ worker (OpenSIPS's "RabbitMQ sender"): one pika
I/O loop reading the job queue and driving one ``BrokerLink`` per broker
(``link.py``: connection, channel, confirms, failover, nacks), whose
primary is probed for fail-back by ``failback.py``.  ``amqp.py`` marshals
the publish frames and properties, ``tls.py`` the client context,
``substats.py`` and ``histogram.py`` keep the counters the stats file
carries.  ``consumer.py`` is the consuming side (``opsevent listen``).
Every use of pika's private API is in ``pika_private.py``.
"""
