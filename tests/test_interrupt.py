"""audit.interrupt: SIGTERM/SIGINT raise Interrupted (a KeyboardInterrupt), held while reports are written."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from audit import interrupt
from audit.errors import ExitCode, Interrupted


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in interrupt.SIGNALS}
    try:
        assert interrupt.install()
        yield
    finally:
        for sig, h in saved.items():
            signal.signal(sig, h)
        interrupt._state.received = None
        interrupt._state.pending = None


def test_sigterm_raises_interrupted_which_no_except_exception_swallows(handlers: None) -> None:
    caught_as_crash = False
    with pytest.raises(Interrupted, match="SIGTERM") as exc:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0)  # give the handler a bytecode boundary
        except Exception:  # noqa: BLE001 - what a suite's crash handler does
            caught_as_crash = True
    assert not caught_as_crash
    assert exc.value.exit_code == ExitCode.INTERRUPTED
    assert interrupt.received() == "SIGTERM"
    # a second signal while unwinding gets the default action
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_signal_inside_deferred_is_raised_when_the_block_ends(handlers: None) -> None:
    steps = []
    with pytest.raises(Interrupted, match="SIGINT"):
        with interrupt.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0)
            steps.append("finished the block")
    assert steps == ["finished the block"]
    assert interrupt.received() == "SIGINT"
