"""What every child process does right after the fork, and ``Child``: a forked
process watched through a pidfd.

Why not ``multiprocessing.Process`` for the RabbitMQ worker: it learns of a
child's death only through ``waitpid(pid)``.  Inside someone else's server
(gunicorn's arbiter reaps every child with ``waitpid(-1)``) that call fails
with ECHILD, which multiprocessing takes for "still running": a dead worker
went unnoticed, and ``join()`` from a forked server worker raised "can only
join a child process" at exit.  A pidfd becomes readable when the process
exits, whoever reaps it, and never points at another process that reused
the pid.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import logging
import multiprocessing
import multiprocessing.util
import os
import select
import signal
import socket
import sys

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1

# Exit codes that mean something to the supervisor.
EXIT_OK = 0
EXIT_ERROR = 1

# Why a served EventInterface cannot be pickled (its queue and table are inherited, never sent).
FORK_ONLY = ("an EventInterface served by workers.serve() or a Supervisor reaches other processes only by "
             "fork: this one is being pickled, e.g. for a process started with the 'spawn' or 'forkserver' "
             "start method. Use multiprocessing.get_context('fork'), or build the EventInterface and call "
             "workers.serve(evi) in the new process itself.")

# Signals a child must not receive before it has installed its own handlers.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def set_parent_death_signal(signum: int) -> None:
    """Ask Linux to send ``signum`` to this process when its parent dies.

    This is what keeps a child from outliving a main process that was
    killed with SIGKILL and so never ran its own shutdown.  Linux sends it
    when the *thread* that forked us ends, so the thread that forks must
    live as long as the child should (``Service`` forks from its watcher).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())


def reset_signals() -> None:
    """Drop the handlers inherited from the parent; the child installs its own."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)


def accept_stop_signals() -> None:
    """Unblock SIGTERM/SIGINT, which ``Child.start`` blocked across the fork.

    Called by the child once its own handlers are in place: a stop sent
    between the fork and this point waits, instead of killing a process
    that has not yet set up its drain.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class Child:
    """A process forked to run ``target(*args)``, with the parts of
    ``multiprocessing.Process`` the service uses (``pid``, ``sentinel``,
    ``is_alive``, ``join``, ``exitcode``, ``terminate``, ``kill``).

    The child starts with SIGTERM and SIGINT blocked (the target calls
    ``accept_stop_signals()`` when ready) and ends with ``os._exit``: it
    never returns into the parent's code, and never runs the atexit
    handlers it inherited (a server's, or multiprocessing's join).
    """

    def __init__(self, target, args=(), name: str = "child"):
        self.target = target
        self.args = args
        self.name = name
        self.pid: int | None = None
        self.sentinel: int | None = None  # the pidfd: readable once the process has exited
        self._exitcode: int | None = None

    def start(self) -> None:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._run_child()  # never returns
            self.pid = pid
            self.sentinel = os.pidfd_open(pid)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _run_child(self) -> None:
        code = EXIT_ERROR
        try:
            multiprocessing.current_process().name = self.name  # %(processName)s in log records
            self.target(*self.args)
            code = EXIT_OK
        except SystemExit as exc:
            code = EXIT_OK if exc.code is None else exc.code if isinstance(exc.code, int) else EXIT_ERROR
        except BaseException:
            log.exception("%s crashed", self.name)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(code)

    def is_alive(self) -> bool:
        if self.sentinel is None:
            return False
        poller = select.poll()
        poller.register(self.sentinel, select.POLLIN)
        return not poller.poll(0)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the process exits, at most ``timeout`` seconds."""
        if self.sentinel is None:
            return
        poller = select.poll()
        poller.register(self.sentinel, select.POLLIN)
        poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        self._reap()

    @property
    def exitcode(self) -> int | None:
        """Its exit code (negative: killed by that signal); None while it runs,
        or when another part of this process reaped it first (the code is gone)."""
        if self._exitcode is None and not self.is_alive():
            self._reap()
        return self._exitcode

    def _reap(self) -> None:
        if self._exitcode is not None or self.sentinel is None:
            return
        try:
            result = os.waitid(os.P_PIDFD, self.sentinel, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return  # reaped by someone else (a server's waitpid(-1))
        if result is not None:
            self._exitcode = (result.si_status if result.si_code == os.CLD_EXITED
                              else -result.si_status)

    def send_signal(self, signum: int) -> bool:
        """Signal the process; False when it has already exited."""
        if self.sentinel is None:
            return False
        try:
            signal.pidfd_send_signal(self.sentinel, signum)
            return True
        except ProcessLookupError:
            return False

    def terminate(self) -> bool:
        return self.send_signal(signal.SIGTERM)

    def kill(self) -> bool:
        return self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Reap it if we can and release the pidfd; the process must have exited."""
        if self.sentinel is not None:
            self._reap()
            os.close(self.sentinel)
            self.sentinel = None

    def describe_exit(self) -> str:
        code = self.exitcode
        if code is None:
            return "exit status unknown (reaped by another part of this process)"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"


_exit_hooks: dict = {}  # function -> the pid it is registered in


def run_at_exit(function) -> None:
    """Run ``function()`` when this process exits normally, once; cheap to call again.

    Registered in the calling process only when first asked there, with
    both ``atexit`` (a main process, or a child of ``os.fork``: a gunicorn
    worker) and multiprocessing's exit hooks (its children end with
    ``os._exit`` and skip atexit).  A process that was forked inherits the
    registrations but not the pid, so it registers again when it asks.
    """
    pid = os.getpid()
    if _exit_hooks.get(function) == pid:
        return
    _exit_hooks[function] = pid
    done = []

    def once():
        if not done and os.getpid() == pid:
            done.append(True)
            function()

    atexit.register(once)
    multiprocessing.util.Finalize(None, once, exitpriority=100)


# A worker's young-generation threshold (CPython's default is 700).
GC_YOUNG = 20_000


def set_worker_gc(young: int = GC_YOUNG) -> None:
    """Post-fork, in a process of ours that turns over many short-lived objects (the RabbitMQ worker).

    What it inherited from the process it was forked from (in a server, the
    application's whole heap) is never garbage to it: ``gc.freeze()`` takes
    it out of every collection, so a full collection no longer walks it, nor
    writes to the pages the fork shares.  Each event then makes a few objects
    that live until the broker's confirm and form no cycles; with CPython's
    threshold of 700 they set off a young collection every couple of hundred
    events and get promoted into the older generations, and collections took
    about a sixth of the worker's CPU in the bench.  Reference counting frees
    them; collections still come, for what does form cycles, every *young*
    allocations.  The application's own processes are left as they are.
    """
    gc.freeze()
    _young, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)


def close_inherited_listeners() -> None:
    """Close the listening sockets this child inherited (a server's port, a control socket).

    A process forked from a server's master holds its listening sockets
    open: the port would stay bound, with connections queueing where
    nobody accepts them, for as long as the child lives.  A child that
    accepts nothing (the RabbitMQ worker) closes them first thing.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            probe = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # not a socket (or already gone)
        try:
            listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError:
            listening = False
        finally:
            probe.close()
        if listening:
            os.close(fd)


def wait_readable(fds, timeout: float) -> list[int]:
    """The descriptors among ``fds`` that are readable within ``timeout`` seconds."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _unused in poller.poll(max(0, int(timeout * 1000)))]
