"""Helpers shared by the test modules (child targets stay in their own modules)."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it is true; return its value, or fail saying what and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {value!r})")
        time.sleep(interval)


def opsevent_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m workers.cli ARGS`` in a subprocess, as a user runs ``opsevent``; bounded to 30 s."""
    environ = dict(os.environ, PYTHONPATH=str(ROOT))
    environ.pop("OPSEVENT_CONTROL", None)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=30)
