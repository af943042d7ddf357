"""A stage (like deployment) is registered through the same spec API as suites: a third-party stage
gets its metrics into the catalog and the policy checks, and its title and "did not run" text into the
views, with no edit anywhere else."""

from __future__ import annotations

import pytest
from results_factory import m, run, variant

from audit.errors import ConfigError
from audit.policy import evaluate_policy, policy_from_text, stage_catalog
from audit.policy_metrics import check_rule_metrics, installed_metrics
from audit.registry import STAGES, SUITES, MetricSpec, StageSpec, measured, measured_spec, register, stage_names
from audit.results import SuiteError
from reports.views import build_card, build_view, limitations
from reports.views.common import catalog

ENERGY = StageSpec(
    name="energy",
    impl="nowhere:Nothing",
    summary="test-only stage: energy per sequence of each variant",
    metrics=(MetricSpec("joules_per_seq", "energy per sequence", higher_is_better=False, range=(0.0, None)),),
    title="Energy use of the shipped model",
    not_run="No energy stage ran: energy per sequence was not measured.",
    report_order=60,
)
RULE = "name: p\nrules:\n  - {id: energy, metric: energy/*/joules_per_seq, max: 2.0}\n"


@pytest.fixture
def energy(monkeypatch: pytest.MonkeyPatch) -> StageSpec:
    STAGES._ensure_loaded()
    monkeypatch.setitem(STAGES._specs, ENERGY.name, ENERGY)
    return ENERGY


def _with_energy(value: float) -> object:
    pruned = [m("accuracy", 0.88), m("joules_per_seq", value, suite="energy", dataset="seq128")]
    return run([m("accuracy", 0.9)], [variant("v1", "magnitude", 0.5, pruned)])


def _without_energy() -> object:
    return run([m("accuracy", 0.9)], [variant("v1", "magnitude", 0.5, [m("accuracy", 0.88)])])


def test_the_deployment_stage_is_registered_as_a_stage_and_is_not_a_configurable_suite() -> None:
    spec = measured_spec("deployment")
    assert spec is not None and spec.kind == "stage" and spec.title
    assert "deployment" in stage_names() and "deployment" not in SUITES
    assert [s.kind for s in measured() if s.name == "performance"] == ["suite"]


def test_register_puts_a_stage_spec_in_the_stage_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    STAGES._ensure_loaded()
    monkeypatch.setattr(STAGES, "_specs", dict(STAGES._specs))
    assert register(ENERGY) is ENERGY
    assert "energy" in STAGES and "energy" not in SUITES


def test_a_registered_stages_metrics_are_in_the_catalog_and_known_to_policy_checks(energy: StageSpec) -> None:
    assert stage_catalog()["energy/joules_per_seq"].higher_is_better is False
    assert catalog(_without_energy())["energy/joules_per_seq"].meaning == "energy per sequence"
    assert ("energy", "joules_per_seq") in installed_metrics()
    check_rule_metrics(policy_from_text(RULE))  # a rule on the stage's metric is not a typo
    with pytest.raises(ConfigError, match="lower-is-better, so a min bound"):
        policy_from_text("name: p\nrules:\n  - {id: r, metric: energy/*/joules_per_seq, min: 1.0}\n")


def test_an_unregistered_stages_metric_is_a_typo_to_the_policy_check() -> None:
    with pytest.raises(ConfigError, match="matches no metric"):
        check_rule_metrics(policy_from_text(RULE))


def test_a_rule_on_a_registered_stage_is_judged_and_skipped_when_the_stage_did_not_run(energy: StageSpec) -> None:
    judged = evaluate_policy(policy_from_text(RULE), _with_energy(3.0))
    assert [(r.variant, r.status) for r in judged.rules] == [("v1", "FAIL")]
    skipped = evaluate_policy(policy_from_text(RULE), _without_energy())
    assert [r.status for r in skipped.rules] == ["SKIP"] and "'energy' was not part" in skipped.rules[0].message


def test_a_failed_stage_makes_every_rule_on_the_variant_an_error(energy: StageSpec) -> None:
    broken = variant("v1", "magnitude", 0.5, [], errors=[SuiteError(suite="energy", error_type="Boom", message="x")])
    pol = policy_from_text("name: p\nrules:\n  - {id: acc, metric: performance/*/accuracy, min: 0.5}\n")
    got = evaluate_policy(pol, run([m("accuracy", 0.9)], [broken]))
    v1 = [r for r in got.rules if r.variant == "v1"]
    assert [(r.status, r.message) for r in v1] == [("ERROR", "energy failed on this variant: Boom: x")]


def test_a_registered_stage_gets_its_title_and_not_run_text_in_the_views(energy: StageSpec) -> None:
    assert energy.not_run in limitations(_without_energy())
    ran = _with_energy(1.0)
    assert energy.not_run not in limitations(ran)
    view = build_view(ran)
    section = next(s for s in view["suites"] if s["name"] == "energy")
    assert (section["present"], section["title"]) == (True, "Energy use of the shipped model")
    names = [s["name"] for s in view["suites"]]
    assert names.index("energy") > names.index("adversarial")  # report_order 60: after the suites (10-40)


def test_a_stages_numbers_are_not_listed_as_evaluation_results_in_the_model_card(energy: StageSpec) -> None:
    card = build_card(_with_energy(1.0), "v1")
    assert [(r["suite"], r["metric"]) for r in card["results_meta"]] == [("performance", "accuracy")]
