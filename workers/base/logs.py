"""Logging across processes: left to the application unless it asks.

By default opsevent changes nothing in the application's logging: every
process (the RabbitMQ worker, front-ends, a server's forked workers) logs
through the handlers it inherited at the fork, to the same stderr or files,
each record naming its process with ``%(processName)s`` (``rabbitmq-worker``,
``frontend-3``) if the application's format shows it.

``install()`` (``Service(install_logging=True)`` / ``Supervisor(...)``) is
the opt-in to one log stream: it wraps the root logger's handlers with
multiprocessing-logging, so records from every forked process are emitted
by the main process's handlers, in one place.  Children forked by anyone
(``os.fork`` in gunicorn's arbiter too, not only multiprocessing) get a
working sender: the queue's feeder thread, which a fork does not copy, is
made anew in the child.  Without that, a forked server worker's records
piled up in memory and never appeared.
"""

from __future__ import annotations

import logging
import multiprocessing
import os

import multiprocessing_logging

FORMAT = "%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s"


class LoggingSetupError(RuntimeError):
    """install_logging was asked for where it cannot work."""


def install() -> bool:
    """Route every forked process's records to this process's root handlers; True if installed here.

    Called pre-fork, only when asked.  Needs the ``fork`` start method
    (multiprocessing-logging's queue is inherited, never pickled) and at
    least one root handler to route to.  Idempotent.
    """
    root = logging.getLogger()
    if any(isinstance(h, multiprocessing_logging.MultiProcessingHandler) for h in root.handlers):
        return False
    if multiprocessing.get_start_method(allow_none=True) not in (None, "fork"):
        raise LoggingSetupError(
            f"install_logging=True needs the 'fork' start method, and this process uses "
            f"{multiprocessing.get_start_method()!r}: call multiprocessing.set_start_method('fork') "
            f"first, or leave install_logging off (each process then logs through its own handlers)")
    if not root.handlers:
        raise LoggingSetupError(
            "install_logging=True routes every process's records to the root logger's handlers, and it "
            "has none: configure logging first (e.g. logging.basicConfig()), or leave install_logging off")
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


def _wrappers():
    return [h for h in logging.getLogger().handlers
            if isinstance(h, multiprocessing_logging.MultiProcessingHandler)]


def _after_fork_in_child() -> None:
    # multiprocessing re-creates a Queue's feeder thread in the children it
    # starts itself; a plain os.fork() (gunicorn's arbiter) copies a queue
    # whose feeder thread does not exist in the child, so its puts would
    # pile up in memory.  Reset it as multiprocessing would.
    for wrapper in _wrappers():
        wrapper.queue._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def before_child_exit(parent_pid: int) -> None:
    """Called last in a child: send its last records, but never hang on a dead parent's pipe.

    A child's records go through a pipe to a thread of the main process.
    If the main process was killed, nobody reads it, and the child's queue
    feeder would wait for ever at exit to flush; drop those records instead.
    """
    for handler in _wrappers():
        if os.getppid() == parent_pid:
            handler.queue.close()
            handler.queue.join_thread()  # ends once the feeder has written what is buffered
        else:
            handler.queue.cancel_join_thread()
