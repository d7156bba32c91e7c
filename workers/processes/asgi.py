"""Running under an ASGI server (uvicorn): the RabbitMQ worker in the app's lifespan.

``uvicorn app:app --workers 4`` starts each worker process with the
``spawn`` start method: nothing is inherited from uvicorn's master, so each
worker process serves its own EventInterface, with a RabbitMQ worker of its
own, from the application's lifespan::

    evi = opsevent.EventInterface(sync_mode=True)
    evi.subscribe_event("E_ORDER", "rabbitmq:127.0.0.1/orders")

    @contextlib.asynccontextmanager
    async def lifespan(app):                    # Starlette / FastAPI
        async with workers.asgi.serving(evi):
            yield

    async def endpoint(request):
        result = await evi.araise_event("E_ORDER", {"id": 7})   # never blocks the loop

Under gunicorn with ``uvicorn_worker.UvicornWorker``, gunicorn's master
serves the EventInterface (``workers.gunicorn.Hooks``) and every worker
inherits it: ``serving()`` then sees that and starts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib

from workers.processes.service import serve


@contextlib.asynccontextmanager
async def serving(evi, **options):
    """Serve ``evi`` for as long as the block runs, unless it is served already
    (by a parent that forked this process); yields the Service, or None then.

    Stopping drains the worker (up to ``drain_timeout``) in a thread, so the
    event loop keeps running other shutdown work meanwhile.
    """
    inherited = getattr(evi.transport, "service", None)
    if inherited is not None and inherited.serving:
        yield None
        return
    service = serve(evi, **options)
    try:
        yield service
    finally:
        await asyncio.get_running_loop().run_in_executor(None, service.stop)
