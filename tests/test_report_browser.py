"""The HTML report in a real headless browser (Debian's chromium, driven by Playwright).

The page must render its sections, make no request other than the file itself, log no
console error and run no injected script; a full-page screenshot and a print-to-PDF
are taken. ``make test`` installs chromium when it is missing (as root, with apt); if
it is still missing this test FAILS with instructions rather than skipping.

The first screen is the answer: at 1400x900 the verdict block and the top regressions
lie inside the first viewport, and with its long sections closed (as they open) the page
stays under :data:`MAX_PAGE_HEIGHT` px; printing opens every section. A screenshot of the
first screen is kept under pytest's tmp dir and its path printed (``-s`` shows it).

Set ``PRUNE_AUDIT_SCREENSHOT_DIR`` to keep the screenshots, and
``PRUNE_AUDIT_BROWSER_REPORT=/path/report.html`` (several joined with ``:``) to check
other reports, e.g. the demo's, the same way in the same test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from results_factory import judged_rich_run

from reports.views import build_view
from reports.writer import write_reports

CHROMIUM = os.environ.get("PRUNE_AUDIT_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
MAX_PAGE_HEIGHT = 12_000
"""px at 1400 wide with the long sections closed (the demo report: about 7,200; 95,600 before issue 15)."""
SECTIONS = ("verdict", "identity", "pruning", "sweeps", "groups", "regressions", "protocol", "limitations")


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory):
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"chromium not found at {CHROMIUM}: the browser test needs Debian's chromium "
            "(`apt-get install -y --no-install-recommends chromium`, which `make test` runs as root), "
            "or PRUNE_AUDIT_CHROMIUM=/path/to/chromium",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - a dev dependency
        pytest.fail("the playwright package is missing: install the dev extras (`make install`)", pytrace=False)
    profile = tmp_path_factory.mktemp("chromium-profile")  # a new, empty --user-data-dir
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport=VIEWPORT,
            offline=True,
        )
        try:
            yield context
        finally:
            context.close()


def open_report(context, path: Path, screenshot: Path) -> dict:
    """Load ``path``, wait until it settles; return what the page did."""
    page = context.new_page()
    requests: list[str] = []
    console: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on(
        "console", lambda msg: console.append(f"{msg.type}: {msg.text}") if msg.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(path.as_uri(), wait_until="load")
    page.wait_for_load_state("networkidle")
    first = screenshot.with_name(screenshot.stem + "-first-screen.png")
    page.screenshot(path=str(first))  # the viewport only: what a reader sees before scrolling
    print(f"first screen of {path.name}: {first}")
    out = {
        "first_screen": first,
        "height": page.evaluate("() => document.documentElement.scrollHeight"),
        "verdict_box": _box(page, "#verdict .verdict"),
        "top_box": _box(page, "#top-findings"),
        "closed": page.locator("section > details:not([open])").count(),
        "requests": requests,
        "console": console,
        "errors": errors,
        "title": page.title(),
        "sections": [s for s in SECTIONS if page.locator(f"section#{s} h2").first.is_visible()],
        "svgs": page.locator("svg").count(),
        "pwned": page.evaluate("() => window.__pwned === undefined ? null : window.__pwned"),
        "scripts": page.locator("script").count(),
        "verdict": page.locator("#verdict .verdict .big").first.inner_text()
        if page.locator("#verdict .big").count()
        else "",
    }
    page.screenshot(path=str(screenshot), full_page=True)
    page.emulate_media(media="print")
    # printing opens every closed section: the protocol section (always closed on screen) is visible
    out["printed_protocol"] = page.locator("#protocol table").first.is_visible()
    out["pdf"] = page.pdf(format="A4", print_background=True)
    page.close()
    keep = os.environ.get("PRUNE_AUDIT_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(keep) / screenshot.name)
        shutil.copy(first, Path(keep) / first.name)
    return out


def _box(page, selector: str) -> tuple[float, float] | None:
    """(top, bottom) of the first element matching ``selector``, in page pixels."""
    return page.evaluate(
        "(s) => { const e = document.querySelector(s); if (!e) return null;"
        " const r = e.getBoundingClientRect(); return [r.top + window.scrollY, r.bottom + window.scrollY]; }",
        selector,
    )


def assert_first_screen_is_the_answer(seen: dict, where: object) -> None:
    """Verdict and top regressions inside the first viewport; closed long sections; a bounded page."""
    assert seen["verdict_box"] is not None and 0 <= seen["verdict_box"][0], where
    assert seen["verdict_box"][1] <= VIEWPORT["height"], (where, seen["verdict_box"])
    if seen["top_box"] is not None:
        assert seen["top_box"][1] <= VIEWPORT["height"], (where, seen["top_box"])
    assert seen["closed"] >= 1, where
    assert seen["height"] <= MAX_PAGE_HEIGHT, (where, seen["height"])
    assert seen["printed_protocol"] is True, where
    png = seen["first_screen"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[16:24] == (1400).to_bytes(4, "big") + (900).to_bytes(4, "big")


def test_report_renders_offline_without_errors(browser_context, tmp_path: Path) -> None:
    result = judged_rich_run()
    files = write_reports(result, tmp_path, ["html"])
    charts = sum(len(group["charts"]) for group in build_view(result)["sweeps"])
    shot = tmp_path / "fixture-report.png"
    seen = open_report(browser_context, files["html"], shot)
    assert seen["requests"] == [files["html"].as_uri()], seen["requests"]
    assert seen["console"] == [] and seen["errors"] == []
    assert seen["sections"] == list(SECTIONS)
    assert seen["title"] == "Fixture audit <i>of</i> MiniLM"  # shown as text, not markup
    assert seen["verdict"] == "FAIL"
    assert charts >= 18 and seen["svgs"] == charts + 1  # every sweep chart and the per-layer heatmap
    assert seen["scripts"] == 0 and seen["pwned"] is None  # the hostile rows stayed text
    assert shot.stat().st_size > 50_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert seen["pdf"][:5] == b"%PDF-" and seen["pdf"].count(b"/Type /Page") > 2
    assert_first_screen_is_the_answer(seen, "fixture report")
    # reports given by path (e.g. the demo's) get the same checks and a screenshot each
    for i, extra in enumerate(p for p in os.environ.get("PRUNE_AUDIT_BROWSER_REPORT", "").split(os.pathsep) if p):
        path = Path(extra).resolve()
        seen = open_report(browser_context, path, tmp_path / f"report-{i}-{path.parent.name}.png")
        assert seen["requests"] == [path.as_uri()], (path, seen["requests"])
        assert seen["console"] == [] and seen["errors"] == [], path
        assert seen["sections"] == list(SECTIONS), path
        assert seen["scripts"] == 0 and seen["pdf"][:5] == b"%PDF-", path
        assert_first_screen_is_the_answer(seen, path)
