"""Progress reporting: a live bar with ETA on a terminal, plain periodic lines otherwise.

On a TTY (stderr) each stage gets a ``rich`` progress bar with elapsed time and ETA.
When stderr is not a terminal (CI logs, files), no carriage returns are written:
one plain line per finished step, rate-limited to one every ``interval`` seconds
except for the first and last step, each with the ETA of the stage.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

log = logging.getLogger("audit.progress")


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


class Stage:
    """One stage (e.g. the sweep) with a known number of steps."""

    def __init__(self, reporter: Progress, name: str, total: int) -> None:
        self.reporter = reporter
        self.name = name
        self.total = max(total, 0)
        self.done = 0
        self.started = time.monotonic()
        self._last_line = 0.0
        self._task: Any = None

    def eta(self) -> float | None:
        if self.done == 0 or self.total == 0:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / self.done * (self.total - self.done)

    def advance(self, detail: str = "", steps: int = 1) -> None:
        self.done = min(self.total, self.done + steps)
        self.reporter._advance(self, detail)


class Progress:
    """Creates stages; chooses the live bar or plain lines from the output stream."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None, interval: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.live = isatty if live is None else live
        self.interval = interval
        self._rich: Any = None

    @contextmanager
    def stage(self, name: str, total: int) -> Iterator[Stage]:
        st = Stage(self, name, total)
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[detail]}"),
                console=Console(file=self.stream),
                transient=False,
            )
            self._rich.start()
            st._task = self._rich.add_task(name, total=total, detail="")
        else:
            self._line(f"{name}: 0/{total} started")
        try:
            yield st
        finally:
            if self._rich is not None:
                self._rich.stop()
                self._rich = None
            else:
                took = _fmt_duration(time.monotonic() - st.started)
                self._line(f"{name}: {st.done}/{st.total} finished in {took}")

    def _advance(self, st: Stage, detail: str) -> None:
        if self._rich is not None and st._task is not None:
            self._rich.update(st._task, completed=st.done, detail=detail)
            return
        now = time.monotonic()
        last = st.done >= st.total
        if st.done == 1 or last or now - st._last_line >= self.interval:
            st._last_line = now
            eta = st.eta()
            eta_text = f", ETA {_fmt_duration(eta)}" if eta is not None and not last else ""
            elapsed = _fmt_duration(now - st.started)
            self._line(f"{st.name}: {st.done}/{st.total} ({elapsed} elapsed{eta_text}) {detail}".rstrip())

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
