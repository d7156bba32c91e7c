"""The processes: who forks whom, and who restarts whom.

``supervisor.py`` is OpenSIPS's main process, much smaller: N front-ends
(``frontend.py``) and, through a ``Service`` (``service.py``), the RabbitMQ
worker.  A ``Service`` alone is what a pre-fork server embeds: ``serve()``
in its master, with ``gunicorn.py``'s hooks or, under an ASGI server that
spawns, ``asgi.py``'s lifespan helper.  Both restart what dies by the one
rule in ``crashes.py``.
"""
