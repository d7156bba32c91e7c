"""tests/apps/webapp.py with a ``/metrics`` route: opsevent's collector in the application's own registry.

Each gunicorn worker answers ``/metrics`` from the RabbitMQ worker's stats
file, which it inherited from the master (``workers.gunicorn.Hooks``), so
every worker gives the same numbers, as the master's ``metrics_address``
endpoint does.
"""

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

import workers.metrics
from webapp import app as webapp_app
from webapp import evi

registry = CollectorRegistry()
registry.register(workers.metrics.Collector(evi))


def app(environ, start_response):
    if environ["PATH_INFO"] != "/metrics":
        return webapp_app(environ, start_response)
    body = generate_latest(registry)
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
    return [body]
