"""``workers.metrics.Collector``, the documented Prometheus collector, kept as a door.

The collector and the endpoint live in ``workers/control/metrics.py``;
applications register ``workers.metrics.Collector(evi)`` in their own
registry, so this path stays.  A re-export only; like the module it names,
it needs the ``metrics`` extra (prometheus-client).
"""

from workers.control.metrics import Collector, MetricsServer

__all__ = ["Collector", "MetricsServer"]
