"""One log stream from every process (multiprocessing-logging).

Every child's records are sent to the main process and emitted by the main
process's own handlers, each naming the process that logged it
(``%(processName)s``: ``rabbitmq-worker``, ``frontend-3``).
"""

from __future__ import annotations

import logging
import os

import multiprocessing_logging

FORMAT = "%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s"


def install() -> bool:
    """Route child records to the main process's handlers; True if installed here.

    Called pre-fork.  If the application configured no handler at all, a
    stderr handler with ``FORMAT`` is added first, so children's warnings are
    not lost.  Idempotent.
    """
    root = logging.getLogger()
    if any(isinstance(h, multiprocessing_logging.MultiProcessingHandler) for h in root.handlers):
        return False
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
        if root.level == logging.WARNING:
            root.setLevel(logging.INFO)
    multiprocessing_logging.install_mp_handler(root)
    return True


def uninstall() -> None:
    """Put the original handlers back and end the receiving threads.

    ``MultiProcessingHandler.close()`` would also close the application's own
    handler, so only its thread is stopped here: it exits once ``_is_closed``
    is set and its queue is empty (bounded wait).
    """
    root = logging.getLogger()
    wrappers = [h for h in root.handlers if isinstance(h, multiprocessing_logging.MultiProcessingHandler)]
    multiprocessing_logging.uninstall_mp_handler(root)
    for wrapper in wrappers:
        wrapper._is_closed = True
        wrapper._receive_thread.join(5.0)


def before_child_exit(parent_pid: int) -> None:
    """Called last in a child: never hang at exit on the log pipe of a dead parent.

    A child's log records go through a pipe to a thread of the main process.
    If the main process was killed, nobody reads it, and the child's queue
    feeder would wait for ever at exit to flush; drop those records instead.
    """
    if os.getppid() == parent_pid:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, multiprocessing_logging.MultiProcessingHandler):
            handler.queue.cancel_join_thread()
