"""Live progress: rich's progress bars on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.text import Text
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


class Display:
    """``with Display(total) as d: d.begin(step); d.progress(done, total); d.end(step, line)``."""

    def __init__(self, total: int, console: Console | None = None):
        self.console = console or Console()
        self.live = self.console.is_terminal
        self.total = total
        self._index = 0
        self._t0 = time.monotonic()
        self._progress = None
        self._overall = self._current = None

    def __enter__(self) -> "Display":
        if self.live:
            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                MofNCompleteColumn(), TimeElapsedColumn(), console=self.console, transient=False)
            self._progress.start()
            self._overall = self._progress.add_task("[bold]bench", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(Text(text), highlight=False)
        else:
            print(text, flush=True)

    def begin(self, step) -> None:
        self._index += 1
        head = f"[{self._index}/{self.total}] {step.label}"
        if self._progress is not None:
            self._current = self._progress.add_task(head, total=None)
        else:
            print(f"{head} ...", flush=True)

    def progress(self, done: float, total: float) -> None:
        """Called from the conductor's thread: count so far out of the total."""
        if self._progress is not None and self._current is not None:
            self._progress.update(self._current, completed=int(done), total=int(total))

    def end(self, step, line: str, ok: bool = True) -> None:
        mark = "" if ok else "  [!]"
        if self._progress is not None:
            self._progress.remove_task(self._current)
            self._current = None
            self._progress.advance(self._overall)
            self._progress.console.print(Text(f"{step.id:<18} {line}{mark}",
                                              style="" if ok else "bold red"), highlight=False)
        else:
            print(f"    {step.id:<18} {line}{mark}  ({time.monotonic() - self._t0:.0f} s)", flush=True)


def plain_console() -> Console:
    """A console for the final tables when stdout is not a terminal: no colours, wide."""
    return Console(file=sys.stdout, force_terminal=False, no_color=True, width=160)
