"""SIGTERM and SIGINT (Ctrl-C) stop a run cleanly: exit code 2, finished work kept.

:func:`install` (called by the CLI, and again after ``ray.init``, which installs a
SIGTERM handler of its own) makes both signals raise :class:`~audit.errors.Interrupted`
in the main thread. ``Interrupted`` is a ``KeyboardInterrupt``, so no ``except Exception``
in a suite, a library or the runner takes it for a crash: it unwinds to the CLI, running
every ``finally`` (the Ray executor cancels its tasks and shuts Ray down; atomic writes
remove their temp files). Finished units are already in the store; ``--resume`` reuses them.

Inside :func:`deferred` (writing the set of reports) a signal is held until the block
ends, so that a run either writes all its reports or none. A second signal while the first
is being handled ends the process at once (the default action).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from audit.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _State:
    deferring = 0
    pending: int | None = None
    installed = False
    received: int | None = None


_state = _State()


def _raise(signum: int) -> None:
    _state.received = signum
    name = signal.Signals(signum).name
    for sig in SIGNALS:  # a second signal while unwinding: the default action, at once
        signal.signal(sig, signal.SIG_DFL)
    raise Interrupted(f"interrupted by {name}")


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.deferring > 0:
        _state.pending = signum
        return
    _raise(signum)


def install() -> bool:
    """Make SIGTERM and SIGINT raise :class:`Interrupted` (main thread only; returns whether it did)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in SIGNALS:
        signal.signal(sig, _handler)
    _state.installed = True
    return True


def installed() -> bool:
    """Whether :func:`install` has run in this process (the Ray executor re-installs only then)."""
    return _state.installed


def received() -> str | None:
    """The name of the signal that interrupted this process (None if none did)."""
    return None if _state.received is None else signal.Signals(_state.received).name


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT for the duration of the block; raise :class:`Interrupted` after it if one came."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
    if _state.pending is not None and _state.deferring == 0:
        signum, _state.pending = _state.pending, None
        _raise(signum)
