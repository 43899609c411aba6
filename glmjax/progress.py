"""Progress bars for long work: rich on a terminal, plain lines in logs, silent otherwise.

>>> with progress("scoring", total=n, unit="seq") as bar:
...     bar.advance(k, tokens=t)

On an interactive terminal a rich bar shows the count, the rate and the ETA. Elsewhere (a log
file, CI) a ``log`` function, when given, receives one line every ``every`` seconds and a last
line when the work is done, so that a long stage is never silent.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager


def _rate(x: float) -> str:
    return f"{x / 1e6:,.2f} M" if x >= 1e6 else f"{x:,.0f}"


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class _Bar:
    def __init__(self, prog, task, unit: str, description: str = "", total: int | None = None,
                 log: Callable[[str], None] | None = None, every: float = 10.0, extra_unit: str = "tok"):
        self.prog, self.task, self.unit, self.extra_unit = prog, task, unit, extra_unit
        self.description, self.total, self.log, self.every = description, total, log, every
        self.t0 = time.perf_counter()
        self.last_line = self.t0
        self.items = 0
        self.tokens = 0

    def _rates(self) -> str:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        text = f"{_rate(self.items / dt)} {self.unit}/s"
        if self.tokens:
            text += f" · {_rate(self.tokens / dt)} {self.extra_unit}/s"
        return text

    def advance(self, n: int = 1, tokens: int = 0) -> None:
        self.items += n
        self.tokens += tokens
        if self.prog is not None:
            self.prog.update(self.task, advance=n, rate=self._rates())
        elif self.log is not None and time.perf_counter() - self.last_line >= self.every:
            self.log(self.line())
            self.last_line = time.perf_counter()

    def describe(self, description: str) -> None:
        """Change the label (e.g. to show a second count such as items of another kind done)."""
        self.description = description
        if self.prog is not None:
            self.prog.update(self.task, description=description)

    def line(self) -> str:
        """The state as one line: label, count, rate, elapsed time and (with a total) the ETA."""
        count = f"{self.items:,}" + (f"/{self.total:,}" if self.total is not None else "")
        text = f"{self.description}: {count} {self.unit}, {self._rates()}, {_duration(self.elapsed)} elapsed"
        if self.total is not None and 0 < self.items < self.total:
            text += f", ETA {_duration(self.elapsed * (self.total - self.items) / self.items)}"
        return text

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def enabled() -> bool:
    """Bars are shown only on an interactive terminal and never under CI."""
    return sys.stderr.isatty() and not os.environ.get("CI") and not os.environ.get("GLMJAX_QUIET")


@contextmanager
def progress(description: str, total: int | None = None, unit: str = "seq",
             log: Callable[[str], None] | None = None, every: float = 10.0, extra_unit: str = "tok"):
    """Context manager yielding a bar with ``advance(n, tokens=0)`` and ``describe(text)``.

    Args:
      description: the label.
      total: the expected count (None: unknown, the count alone is shown).
      unit: what is counted (``seq``, ``step``, ``cand``...).
      log: where plain progress lines go when no terminal bar is shown (None: nowhere).
      every: seconds between plain lines.
      extra_unit: the unit of the second count passed as ``tokens``.
    """
    if not enabled():
        bar = _Bar(None, None, unit, description, total, log, every, extra_unit)
        yield bar
        if log is not None and bar.items:
            log(bar.line())
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    # An unknown total (streamed input) shows the count alone; formatting None with "," would fail.
    count = "{task.completed:,}/{task.total:,}" if total is not None else "{task.completed:,}"
    cols = [TextColumn("{task.description}"), BarColumn(), TextColumn(count),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, transient=False) as prog:
        task = prog.add_task(description, total=total, rate="")
        yield _Bar(prog, task, unit, description, total, extra_unit=extra_unit)
