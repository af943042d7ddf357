"""What a report says about a suite comes from the suite's spec, so a new suite needs no edit in the views."""

from __future__ import annotations

import dataclasses

import pytest
from results_factory import m, run, variant

from audit.registry import SUITES, MetricSpec, SuiteSpec
from reports.views import build_view, limitations

TOXICITY = SuiteSpec(
    name="toxicity",
    impl="nowhere:Nothing",
    summary="test-only suite",
    metrics=(MetricSpec("toxic_rate", "share of toxic outputs", higher_is_better=False),),
    title="Toxicity of generations",
    not_run="No toxicity suite ran: toxic outputs were not measured.",
    report_order=25,
    always_reported=True,
)


@pytest.fixture
def toxicity(monkeypatch: pytest.MonkeyPatch) -> SuiteSpec:
    SUITES._ensure_loaded()
    monkeypatch.setitem(SUITES._specs, TOXICITY.name, TOXICITY)
    return TOXICITY


def _perf_only():
    return run([m("accuracy", 0.9)], [variant("v1", "magnitude", 0.5, [m("accuracy", 0.88)])])


def _with_toxicity():
    base = [m("accuracy", 0.9), m("toxic_rate", 0.1, suite="toxicity")]
    pruned = [m("accuracy", 0.88), m("toxic_rate", 0.2, suite="toxicity")]
    return run(base, [variant("v1", "magnitude", 0.5, pruned)], suites=("performance", "toxicity"))


def test_a_suite_that_did_not_run_is_stated_with_its_specs_text_in_its_place(toxicity: SuiteSpec) -> None:
    res = _perf_only()
    suites = build_view(res)["suites"]
    sections = {s["name"]: s for s in suites}
    names = [s["name"] for s in suites]
    assert names == ["performance", "ood", "toxicity", "bias", "adversarial"]  # report_order 25: between 20 and 30
    assert sections["toxicity"]["present"] is False
    assert sections["toxicity"]["title"] == "Toxicity of generations"
    assert sections["toxicity"]["absent_text"] == toxicity.not_run
    assert toxicity.not_run in limitations(res)


def test_a_suite_that_ran_is_headed_by_its_specs_title_in_sections_and_sweeps(toxicity: SuiteSpec) -> None:
    view = build_view(_with_toxicity())
    section = next(s for s in view["suites"] if s["name"] == "toxicity")
    assert section["present"] is True and section["title"] == "Toxicity of generations"
    assert [g["title"] for g in view["sweeps"]] == ["In-distribution performance", "Toxicity of generations"]
    assert toxicity.not_run not in limitations(_with_toxicity())


def test_a_suite_declaring_nothing_gets_no_section_or_limitation_when_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    SUITES._ensure_loaded()
    plain = SuiteSpec(name="plain", impl="nowhere:Nothing", summary="test-only suite")
    monkeypatch.setitem(SUITES._specs, plain.name, plain)
    res = _perf_only()
    assert "plain" not in [s["name"] for s in build_view(res)["suites"]]
    assert not any("plain" in line for line in limitations(res))
    base = [m("accuracy", 0.9), m("score", 0.5, suite="plain")]
    ran = run(base, [variant("v1", "magnitude", 0.5, [m("accuracy", 0.88), m("score", 0.4, suite="plain")])])
    section = next(s for s in build_view(ran)["suites"] if s["name"] == "plain")
    assert section["title"] == "Suite: plain"  # the default heading names the suite


def test_a_built_in_suites_title_and_not_run_text_are_read_from_its_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    SUITES._ensure_loaded()
    changed = dataclasses.replace(SUITES.get("ood"), title="Shifted data", not_run="No shift was tried.")
    monkeypatch.setitem(SUITES._specs, "ood", changed)
    res = _perf_only()
    section = next(s for s in build_view(res)["suites"] if s["name"] == "ood")
    assert (section["title"], section["absent_text"]) == ("Shifted data", "No shift was tried.")
    assert "No shift was tried." in limitations(res)
    assert not any(line.startswith("No out-of-distribution suite ran") for line in limitations(res))
