"""opsevent's benchmark: ``python -m bench`` (``./run bench``).

It measures what users of the library care about (events/s into the broker,
how long ``raise_event`` blocks its caller, sync-mode latency, body sizes,
fan-out, memory) and, in the same run on the same broker with the same body,
three baselines:

B1  one process, pika ``BlockingConnection.basic_publish`` in a loop;
B2  P processes, each publishing in the caller with its own connection;
B3  one process, ``BlockingConnection`` + ``confirm_delivery()``, each
    publish waiting for its ack.

Every target of the issue is reported as a ratio from this run with a
PASS/MISS verdict.  Modules: ``measure`` (histograms, RSS, queue counts,
bodies), ``harness`` (forked runs with a start barrier and an in-broker
clock), ``scenarios`` (ours), ``baselines``, ``plan`` (what a full or smoke
run does), ``report`` (table, verdicts, JSON, charts), ``ui`` (progress).
"""
