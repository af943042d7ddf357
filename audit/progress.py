"""Progress reporting: a live bar with ETA on a terminal, plain periodic lines otherwise.

On a TTY (stderr) each stage gets a ``rich`` progress bar with elapsed time and ETA.
When stderr is not a terminal (CI logs, files), no carriage returns are written:
one plain line per finished step, rate-limited to one every ``interval`` seconds
except for the first step, the first step after the warm-up (the first with an ETA) and
the last step, each with the ETA of the stage.

The ETA is estimated from the rate of the steps after a stage's ``warmup`` steps: the
sweep's first step is the dense point, which does different work from a variant (it
computes the baseline every variant is compared with), so its time says little about
the variants' (:func:`estimate_remaining`). Until one step after the warm-up has
finished, no ETA is shown.
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


def estimate_remaining(done_at: list[float], started: float, total: int, *, warmup: int = 0) -> float | None:
    """Seconds left in a stage of ``total`` steps, from the rate of its steps after the first ``warmup``.

    ``done_at``: the (monotonic) time each finished step finished, in order; ``started``: when
    the stage started. The rate is the steps finished after the warm-up over the time since
    the warm-up ended (so parallel steps count as they finish), and the steps left take
    that long each. None before a step after the warm-up has finished, or when none is left.
    """
    done = len(done_at)
    measured = done - warmup
    if total <= 0 or measured <= 0 or done >= total:
        return None
    since = done_at[warmup - 1] if warmup > 0 else started
    return (done_at[-1] - since) / measured * (total - done)


class Stage:
    """One stage (e.g. the sweep) with a known number of steps; the first ``warmup`` steps do not count
    towards the ETA (the sweep's dense point).
    """

    def __init__(self, reporter: Progress, name: str, total: int, warmup: int = 0) -> None:
        self.reporter = reporter
        self.name = name
        self.total = max(total, 0)
        self.warmup = max(0, min(warmup, self.total))
        self.done = 0
        self.started = time.monotonic()
        self._done_at: list[float] = []
        self._last_line = 0.0
        self._eta_shown = False
        """Whether a plain line was written since the warm-up ended (the first that can carry an ETA)."""
        self._task: Any = None

    def eta(self) -> float | None:
        return estimate_remaining(self._done_at, self.started, self.total, warmup=self.warmup)

    def advance(self, detail: str = "", steps: int = 1) -> None:
        now = time.monotonic()
        n = max(0, min(self.total, self.done + steps) - self.done)
        self._done_at.extend([now] * n)
        self.done += n
        self.reporter._advance(self, detail, now)


class Progress:
    """Creates stages; chooses the live bar or plain lines from the output stream."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None, interval: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.live = isatty if live is None else live
        self.interval = interval
        self._rich: Any = None

    @contextmanager
    def stage(self, name: str, total: int, *, warmup: int = 0) -> Iterator[Stage]:
        """A stage of ``total`` steps; the first ``warmup`` ones are left out of its ETA."""
        st = Stage(self, name, total, warmup)
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"),  # this module's estimate, not rich's (warm-up excluded)
                TextColumn("{task.fields[detail]}"),
                console=Console(file=self.stream),
                transient=False,
            )
            self._rich.start()
            st._task = self._rich.add_task(name, total=total, detail="", eta="-")
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

    def _advance(self, st: Stage, detail: str, now: float) -> None:
        if self._rich is not None and st._task is not None:
            eta = st.eta()
            self._rich.update(
                st._task, completed=st.done, detail=detail, eta="-" if eta is None else _fmt_duration(eta)
            )
            return
        last = st.done >= st.total
        first_eta = st.warmup > 0 and not st._eta_shown and st.done > st.warmup
        if st.done == 1 or first_eta or last or now - st._last_line >= self.interval:
            st._last_line = now
            st._eta_shown = st._eta_shown or st.done > st.warmup
            eta = st.eta()
            eta_text = f", ETA {_fmt_duration(eta)}" if eta is not None and not last else ""
            elapsed = _fmt_duration(now - st.started)
            self._line(f"{st.name}: {st.done}/{st.total} ({elapsed} elapsed{eta_text}) {detail}".rstrip())

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
