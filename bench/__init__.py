"""opsevent's benchmark: ``python -m bench`` (``./run bench``).

It measures what users of the library care about (events/s into the broker,
how long ``raise_event`` blocks its caller, sync-mode latency from processes,
threads and asyncio tasks, body sizes, fan-out, memory) and, in the same run
on the same broker with the same body, four baselines:

B4  the C client OpenSIPS uses (rabbitmq-c) with our guarantees: streamed
    publisher confirms (a window of 10,000, and of 8), the mandatory flag,
    our message properties; the yardstick of the targets;
B1  one process, pika ``BlockingConnection.basic_publish`` in a loop;
B2  P processes, each publishing in the caller with its own connection;
B3  one process, ``BlockingConnection`` + ``confirm_delivery()``, each
    publish waiting for its ack.

Every target of the issue is reported as a ratio from this run with a
PASS/MISS verdict, and every figure with what limited it.  Modules:
``measure`` (histograms, RSS, CPU, queue counts, bodies), ``harness``
(forked runs with a start barrier and an in-broker clock), ``scenarios``
(ours), ``baselines`` (B1-B3), ``b4`` (B4: builds and runs ``b4/publisher.c``),
``target`` (the broker: private, or the user's, named by a socket), ``plan``
(what a full or smoke run does), ``report`` (tables, JSON), ``limits`` (what
limited each figure), ``verdicts`` (the targets), ``charts``, ``readme`` (the
benchmark page's generated section, docs/benchmark.md), ``ui`` (progress).
"""
