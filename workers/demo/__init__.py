"""The demo and its tooling: the guide's example, and private brokers for the demo, bench and tests.

``sip.py`` is an example SIP server built on the ``Supervisor`` (the guide's
example 1.5: MESSAGE in, ``E_SIP_MESSAGE`` out), ``sipdemo.py`` drives it
with sipp and checks every event (``./run demo``, ``python -m
workers.demo``), ``loop.py`` is the same without SIP (front-ends raising in
a loop).  ``broker.py`` starts and stops private RabbitMQ brokers on
127.0.0.1, ``cluster.py`` a private cluster of them, and ``procstat.py``
reads CPU time from /proc.

This room stands on the others and nothing in them imports it
(``tests/test_boundaries.py`` checks): it is not what a server embeds.
"""
