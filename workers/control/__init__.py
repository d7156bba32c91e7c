"""Control: the management plane of a running service, as OpenSIPS's MI.

``server.py`` answers JSON-line requests on a unix socket (a thread of the
serving process), ``commands.py`` says what each request does,
``client.py`` is the other end (``request``), and ``cli.py`` is the
``opsevent`` command on top of it (``listen.py``: its ``listen``, a
consumer that needs no service).  ``health.py`` judges the worker's stats
for probes, ``metrics.py`` serves them to Prometheus.

``workers.control.request(path, message)`` is documented for programs that
talk to a service, so it is importable from here.
"""

from workers.control.client import CommandFailed, ControlError, request

__all__ = ["CommandFailed", "ControlError", "request"]
