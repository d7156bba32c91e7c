"""The gunicorn server hooks that run opsevent's RabbitMQ worker beside gunicorn's workers.

In ``gunicorn.conf.py``::

    from workers.gunicorn import Hooks

    opsevent = Hooks("myapp:evi")          # or the EventInterface itself
    on_starting, on_exit, worker_exit = opsevent.on_starting, opsevent.on_exit, opsevent.worker_exit
    workers = 4

Never ``import workers`` in that file: gunicorn reads its settings from the
file's names, and its ``workers`` setting (the number of processes) would
replace the package, or the package the setting.  ``from workers.gunicorn
import Hooks`` binds only ``Hooks``.

What each hook does:

``on_starting`` (the master, before any worker is forked)
    ``workers.serve(evi, **options)``: the RabbitMQ worker and the shared job
    queue, inherited by every gunicorn worker forked after it.  A string
    ``"module:attribute"`` is imported here, so the application module is
    loaded in the master whatever ``preload_app`` says (its EventInterface
    must exist before the fork to be inherited).  With ``metrics_address``
    the master serves the Prometheus endpoint too; the workers gunicorn
    forks afterwards close their copy of its socket.
``on_exit`` (the master, after every worker is gone)
    ``service.stop()``: what is still queued is published (bounded by
    ``drain_timeout``).
``worker_exit`` (each gunicorn worker, as it exits: recycled by
    ``max_requests``, SIGTERM, SIGHUP, worker timeout)
    hands the jobs still in its overflow buffer to the RabbitMQ worker, and
    counts and logs those it cannot (``dropped_at_exit``); the same runs at
    interpreter exit anyway, this only does it earlier.

Any gunicorn worker class that forks from the master works the same:
``sync``, ``gthread`` (threads of one worker may raise at once; sync
raises each get their own reply) and ``uvicorn_worker.UvicornWorker``
(asyncio: ``await evi.araise_event(...)``).
"""

from __future__ import annotations

import importlib
import logging

from workers.processes.service import serve

log = logging.getLogger(__name__)


class Hooks:
    def __init__(self, evi, **options):
        """``evi``: the EventInterface, or ``"module:attribute"`` naming it;
        ``options``: ``workers.serve()``'s (``control_path``, ``metrics_address``, ``install_logging``, ...).
        Nothing starts until gunicorn calls ``on_starting``."""
        self._evi = evi
        self.options = options
        self.service = None

    @property
    def evi(self):
        if isinstance(self._evi, str):
            module, _, attribute = self._evi.partition(":")
            if not module or not attribute:
                raise ValueError(f"Hooks wants an EventInterface or 'module:attribute', not {self._evi!r}")
            self._evi = getattr(importlib.import_module(module), attribute)
        return self._evi

    def on_starting(self, _unused_server) -> None:
        self.service = serve(self.evi, **self.options)

    def on_exit(self, _unused_server) -> None:
        if self.service is not None:
            self.service.stop()

    def worker_exit(self, _unused_server, _unused_worker) -> None:
        transport = self.evi.transport
        if transport is not None:
            transport.at_exit()
