"""What a forked child must not keep of its parent: one helper for every kind of object.

A fork copies one thread only.  A lock another thread of the parent held
at that moment stays held in the child for ever, and a buffer, a feeder
thread or a listening socket of the parent is not the child's to use.
Each module with such objects asks for a registry here::

    _QUEUES = forks.registry(JobQueue._after_fork_in_child)

adds each object to it when made (``_QUEUES.add(self)``), and in every
forked child, whoever forks it (multiprocessing, ``os.fork`` in a server's
arbiter), the registry calls that method on each live object, before the
child runs any code of its own.  The registry holds its objects weakly.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable


def registry(after_fork_in_child: Callable[[object], None], *, forget: bool = False) -> weakref.WeakSet:
    """A new registry whose objects each get ``after_fork_in_child(obj)`` in a forked child.

    ``forget``: the child then empties the registry, for objects that only
    their creator's process may use (a listening socket it serves).
    """
    objects: weakref.WeakSet = weakref.WeakSet()

    def in_child() -> None:
        for obj in list(objects):
            after_fork_in_child(obj)
        if forget:
            objects.clear()

    os.register_at_fork(after_in_child=in_child)
    return objects
