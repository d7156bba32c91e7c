"""What every child process does right after the fork, and nothing else."""

from __future__ import annotations

import ctypes
import logging
import signal

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1

# Exit codes that mean something to the supervisor.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BOOT_ERROR = 3


def set_parent_death_signal(signum: int) -> None:
    """Ask Linux to send ``signum`` to this process when its parent dies.

    This is what keeps a child from outliving a main process that was
    killed with SIGKILL and so never ran its own shutdown.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())


def reset_signals() -> None:
    """Drop the handlers inherited from the parent; the child installs its own."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
