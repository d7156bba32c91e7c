"""``from workers.gunicorn import Hooks``, the documented way to write ``gunicorn.conf.py``, kept as a door.

The hooks live in ``workers/processes/gunicorn.py``; users' configuration
files import them from here, so this path stays.  A re-export only.
"""

from workers.processes.gunicorn import Hooks

__all__ = ["Hooks"]
