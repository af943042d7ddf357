from __future__ import annotations

import io

import pytest

from audit.progress import Progress, estimate_remaining


def test_plain_lines_without_carriage_returns_when_not_a_tty() -> None:
    out = io.StringIO()
    prog = Progress(out, interval=3600)
    with prog.stage("sweep", 5) as st:
        for i in range(5):
            st.advance(f"point {i}")
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # start, first step, last step, finish: the rate limit drops the steps in between
    assert lines[0] == "sweep: 0/5 started"
    assert lines[1].startswith("sweep: 1/5 (") and "ETA" in lines[1] and lines[1].endswith("point 0")
    assert lines[2].startswith("sweep: 5/5 (") and "ETA" not in lines[2]
    assert lines[3].startswith("sweep: 5/5 finished in")
    assert len(lines) == 4


def test_every_step_is_reported_when_the_interval_allows() -> None:
    out = io.StringIO()
    with Progress(out, interval=0).stage("s", 3) as st:
        for _ in range(3):
            st.advance()
    assert [ln.split(" (")[0] for ln in out.getvalue().splitlines()[1:4]] == ["s: 1/3", "s: 2/3", "s: 3/3"]


def test_live_bar_on_a_terminal_shows_eta() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    prog = Progress(out)
    assert prog.live
    with prog.stage("sweep", 2) as st:
        st.advance("a")
        st.advance("b")
    text = out.getvalue()
    assert "sweep" in text and "2/2" in text and "ETA" in text


def test_the_eta_is_estimated_from_the_steps_after_the_warm_up() -> None:
    # a dense point of 100 s, then two variants of 10 s each, of 10 points: 7 variants left at 10 s each
    done_at = [100.0, 110.0, 120.0]
    assert estimate_remaining(done_at, 0.0, 10, warmup=1) == pytest.approx(70.0)
    # counting the dense point as a step (the old estimate) says 4x as long
    assert estimate_remaining(done_at, 0.0, 10) == pytest.approx(280.0)


def test_no_eta_before_a_step_after_the_warm_up_or_when_nothing_is_left() -> None:
    assert estimate_remaining([100.0], 0.0, 10, warmup=1) is None
    assert estimate_remaining([], 0.0, 10) is None
    assert estimate_remaining([1.0, 2.0], 0.0, 2, warmup=1) is None


def test_parallel_steps_count_as_they_finish() -> None:
    # four variants finishing together 20 s after the dense point: 5 s per point of throughput
    assert estimate_remaining([50.0, 70.0, 70.0, 70.0, 70.0], 0.0, 9, warmup=1) == pytest.approx(20.0)


def test_the_sweep_line_after_the_dense_point_has_no_eta_and_the_next_one_uses_the_variants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([0.0, 600.0, 660.0, 700.0])  # start, dense done, v1 done, stage closed
    monkeypatch.setattr("audit.progress.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    with Progress(out, interval=0).stage("sweep", 6, warmup=1) as st:
        st.advance("dense")  # 600 s
        st.advance("v1")  # 60 s later: 4 variants left at 60 s each
    lines = out.getvalue().splitlines()
    assert lines[1] == "sweep: 1/6 (10m00s elapsed) dense"
    assert lines[2] == "sweep: 2/6 (11m00s elapsed, ETA 4m00s) v1"


def test_the_first_line_that_can_carry_an_eta_is_written_despite_the_rate_limit() -> None:
    """With a warm-up, the first step has no ETA; the step after the warm-up is written anyway, with one."""
    out = io.StringIO()
    with Progress(out, interval=3600).stage("sweep", 5, warmup=1) as st:
        for i in range(5):
            st.advance(f"point {i}")
    lines = out.getvalue().splitlines()
    assert [ln.split(" (")[0] for ln in lines[1:4]] == ["sweep: 1/5", "sweep: 2/5", "sweep: 5/5"]
    assert "ETA" not in lines[1] and "ETA" in lines[2]
