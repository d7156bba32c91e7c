"""What /proc says about CPU time and process starts: one reading each, for the demo, the bench and the tests.

* ``cpu_seconds(pid)``: user + system CPU seconds of a process
  (``/proc/PID/stat`` fields 14 and 15, ``utime`` and ``stime``, in clock
  ticks); None once it is gone.
* ``machine_busy_seconds()``: CPU seconds the whole machine has been busy,
  all cores together: ``/proc/stat``'s ``cpu`` line less idle and iowait.
  Only its first eight fields count: guest and guest_nice are already in
  user and nice.
* ``started_at(pid)``: when a process was forked (field 22, ``starttime``),
  in seconds of ``CLOCK_BOOTTIME``, to a clock tick (10 ms).

Fields are counted after the ``)`` that ends the command name, which may
itself hold spaces and parentheses.
"""

from __future__ import annotations

import os

__all__ = ["CLK_TCK", "cpu_seconds", "machine_busy_seconds", "started_at"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _fields(pid: int | str) -> list[str]:
    """``/proc/PID/stat`` from field 3 (state) on."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int | str = "self") -> float | None:
    """User + system CPU seconds process *pid* has used; None when it is gone."""
    try:
        fields = _fields(pid)
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK  # user .. steal; guest time is in user and nice already


def started_at(pid: int | str) -> float:
    """When process *pid* was forked, in ``CLOCK_BOOTTIME`` seconds (to 1/CLK_TCK)."""
    return int(_fields(pid)[19]) / CLK_TCK  # field 22, starttime
