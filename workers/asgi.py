"""``workers.asgi.serving(evi)``, the documented ASGI lifespan helper, kept as a door.

It lives in ``workers/processes/asgi.py``; applications import it from
here, so this path stays.  A re-export only.
"""

from workers.processes.asgi import serving

__all__ = ["serving"]
