"""A small web application embedding opsevent, for the tests with real servers.

One module, two faces: ``app`` (WSGI, for gunicorn's sync and gthread
workers) and ``asgi`` (ASGI, for uvicorn and gunicorn's uvicorn worker).
Configured by the environment, read at import:

``WEBAPP_SOCKET``     the subscriber socket of ``E_HTTP``
``WEBAPP_SETTINGS``   JSON: EventInterface settings (sync_mode, queue_size, ...)
``WEBAPP_SERVE``      ``import``: ``workers.serve(evi)`` at import (each process
                      that imports the module serves its own);
                      ``lifespan``: the ASGI lifespan serves it (uvicorn --workers);
                      anything else: the server's hooks do (workers.gunicorn.Hooks)
``WEBAPP_LOGGING``    ``basic``: ``logging.basicConfig()`` at import
``WEBAPP_PAD``        N: every event also carries ``pad`` = N times ``x`` (big jobs fill the pipe)

Routes: ``/raise/ID`` raises ``E_HTTP {"id": ID, "pid": PID}`` and answers
200 with ``PID`` when the raise succeeded (queued or confirmed), else 503
with the statuses; ``/log/N`` logs N ERROR lines; ``/stats`` answers the
RabbitMQ worker's counters as JSON.
"""

import json
import logging
import os

import opsevent
import workers.asgi
from workers.processes.service import serve

if os.environ.get("WEBAPP_LOGGING") == "basic":
    logging.basicConfig(format="%(process)d %(levelname)s %(name)s: %(message)s")

log = logging.getLogger("webapp")

evi = opsevent.EventInterface(**json.loads(os.environ.get("WEBAPP_SETTINGS", "{}")))
evi.subscribe_event("E_HTTP", os.environ["WEBAPP_SOCKET"])
SERVE = os.environ.get("WEBAPP_SERVE", "")
if SERVE == "import":
    service = serve(evi, quiet_pika=True)


def _answer(path: str, result):
    """(status, body) for ``path``; ``result`` is the raise's RaiseResult when the path raised."""
    if path.startswith("/raise/"):
        if result:
            return 200, str(os.getpid()).encode()
        return 503, "; ".join(f"{d.status}: {d.reason}" for d in result.deliveries).encode()
    if path.startswith("/log/"):
        for n in range(int(path[len("/log/"):])):
            log.error("app error line %d from pid %d", n, os.getpid())
        return 200, b"logged"
    if path == "/stats":
        service = getattr(evi.transport, "service", None)
        return 200, json.dumps(service.stats() if service is not None else {}).encode()
    return 404, b"no such route"


PAD = "x" * int(os.environ.get("WEBAPP_PAD", "0"))


def _params(path: str) -> dict:
    params = {"id": int(path[len("/raise/"):]), "pid": os.getpid()}
    if PAD:
        params["pad"] = PAD
    return params


def app(environ, start_response):
    path = environ["PATH_INFO"]
    result = evi.raise_event("E_HTTP", _params(path)) if path.startswith("/raise/") else None
    status, body = _answer(path, result)
    start_response(f"{status} {'OK' if status == 200 else 'Error'}",
                   [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    path = scope["path"]
    result = await evi.araise_event("E_HTTP", _params(path)) if path.startswith("/raise/") else None
    status, body = _answer(path, result)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive, send):
    message = await receive()  # lifespan.startup
    if SERVE != "lifespan":
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    async with workers.asgi.serving(evi, quiet_pika=True):
        await send({"type": "lifespan.startup.complete"})
        message = await receive()  # lifespan.shutdown
    assert message["type"] == "lifespan.shutdown"
    await send({"type": "lifespan.shutdown.complete"})
