from __future__ import annotations

import io

from audit.progress import Progress


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
