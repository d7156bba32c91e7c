"""A front-end process: the stand-in for an OpenSIPS "SIP process".

It runs the user's ``target(rank, evi)``.  Stopping is cooperative first:
SIGTERM only sets the flag that ``workers.stopping()`` reports, so a target
that loops on it finishes its current raise and returns.  A target that does
not look gets SIGINT (``KeyboardInterrupt``) after the supervisor's grace
period, then SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from workers.base import logs
from workers.base.process import EXIT_ERROR, EXIT_OK, reset_signals, set_parent_death_signal

log = logging.getLogger(__name__)

_stopping = False


def stopping() -> bool:
    """True once this front-end has been asked to stop (SIGTERM)."""
    return _stopping


def _handle_term(_unused_signum, _unused_frame) -> None:
    global _stopping
    _stopping = True  # only record; the target's loop acts


def frontend_main(rank: int, evi, target) -> None:
    """The body of front-end process ``rank``."""
    global _stopping
    _stopping = False
    parent = os.getppid()
    reset_signals()
    # If the main process dies without stopping us, KeyboardInterrupt ends the target.
    set_parent_death_signal(signal.SIGINT)
    signal.signal(signal.SIGTERM, _handle_term)
    # Python's own SIGINT handler (KeyboardInterrupt), not SIG_DFL: the
    # process must unwind so the job queue's feeder thread flushes.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        target(rank, evi)
    except KeyboardInterrupt:
        log.info("front-end %d interrupted", rank)
        code = EXIT_OK
    except Exception:
        log.exception("front-end %d crashed", rank)
        code = EXIT_ERROR
    else:
        code = EXIT_OK
    # The target is done; what is left is handing over its accepted jobs
    # (a spool file, at once), which an interrupt would lose.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    transport = evi.transport
    if transport is not None:
        transport.at_exit()
    logs.before_child_exit(parent)
    sys.exit(code)
