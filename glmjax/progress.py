"""Progress bars for long work: rich on a terminal, silent in logs and CI.

>>> with progress("scoring", total=n, unit="seq") as bar:
...     bar.advance(k, tokens=t)
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager


class _Bar:
    def __init__(self, prog, task, unit: str):
        self.prog, self.task, self.unit = prog, task, unit
        self.t0 = time.perf_counter()
        self.items = 0
        self.tokens = 0

    def advance(self, n: int = 1, tokens: int = 0) -> None:
        self.items += n
        self.tokens += tokens
        if self.prog is not None:
            dt = max(time.perf_counter() - self.t0, 1e-9)
            extra = f"{self.items / dt:,.0f} {self.unit}/s"
            if self.tokens:
                extra += f" · {self.tokens / dt:,.0f} tok/s"
            self.prog.update(self.task, advance=n, rate=extra)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def enabled() -> bool:
    """Bars are shown only on an interactive terminal and never under CI."""
    return sys.stderr.isatty() and not os.environ.get("CI") and not os.environ.get("GLMJAX_QUIET")


@contextmanager
def progress(description: str, total: int | None = None, unit: str = "seq"):
    """Context manager yielding a bar with ``advance(n, tokens=0)``; rate and ETA on a terminal."""
    if not enabled():
        yield _Bar(None, None, unit)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    # An unknown total (streamed input) shows the count alone; formatting None with "," would fail.
    count = "{task.completed:,}/{task.total:,}" if total is not None else "{task.completed:,}"
    cols = [TextColumn("{task.description}"), BarColumn(), TextColumn(count),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, transient=False) as prog:
        task = prog.add_task(description, total=total, rate="")
        yield _Bar(prog, task, unit)
