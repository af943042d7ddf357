"""One paired-comparison record (issue 14 move 2): its builders, and the readers that use only it."""

from __future__ import annotations

import numpy as np
import pytest

from audit import paired
from audit.paired import RECORD_KEYS, PairedComparison


def _pair(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.random(n) < 0.85
    variant = base.copy()
    variant[np.flatnonzero(base)[:30]] = False  # 30 right on dense only
    variant[np.flatnonzero(~base)[:4]] = True  # 4 right on the variant only
    return base, variant


def test_every_builder_gives_the_same_record_keys() -> None:
    base, variant = _pair()
    scores = np.linspace(0, 1, len(base))
    records = [
        paired.paired_binary(base, variant, n_boot=50, level=0.95),
        paired.paired_binary(base, variant, n_boot=50, level=0.95, clusters=np.arange(len(base)) // 4),
        paired.paired_continuous(baseline=0.1, value=0.2, boot_deltas=np.full(50, 0.1), level=0.95, test="t", n=9),
        paired.paired_auc(scores, scores[::-1], base),
        paired.pruning_disparate_impact(base, variant, np.array(list("ab") * 100), n_boot=20)["groups"]["a"]["paired"],
    ]
    for rec in records:
        assert tuple(rec.to_dict()) == RECORD_KEYS


def test_paired_binary_counts_delta_ci_and_exact_mcnemar() -> None:
    from scipy.stats import binomtest

    base, variant = _pair()
    rec = paired.paired_binary(base, variant, n_boot=500, level=0.95, seed=1)
    assert (rec.lost, rec.gained, rec.discordant, rec.n) == (30, 4, 34, 200)
    assert rec.delta == pytest.approx(variant.mean() - base.mean())
    assert rec.baseline == pytest.approx(base.mean())
    assert rec.ci_low < rec.delta < rec.ci_high < 0
    assert rec.p_value == pytest.approx(binomtest(30, 34, 0.5).pvalue)
    assert rec.test == "exact McNemar" and rec.clusters is None
    assert rec.ci_method == "paired bootstrap, 500 resamples, 95%"


def test_paired_binary_with_clusters_uses_the_clustered_test() -> None:
    base, variant = _pair()
    clusters = np.arange(len(base)) // 5
    rec = paired.paired_binary(base, variant, n_boot=0, level=0.95, clusters=clusters)
    t = paired.clustered_mcnemar(base, variant, clusters)
    assert rec.test.startswith("clustered McNemar") and rec.clusters == 40
    assert rec.p_value == pytest.approx(t["p_value"])
    assert (rec.ci_low, rec.ci_high, rec.ci_method) == (None, None, None)  # no resamples, no interval


def test_record_round_trips_through_its_stored_form() -> None:
    base, variant = _pair()
    rec = paired.paired_binary(base, variant, n_boot=30, level=0.9, note="x")
    stored = rec.to_dict()
    assert stored["extra"] == {"note": "x"}
    assert PairedComparison.from_dict(stored) == rec
    old = PairedComparison.from_dict({"delta": -0.1, "p_value": 0.2, "test": "t", "n": 5, "se": 0.01})
    assert (old.delta, old.p_value, old.baseline, old.extra) == (-0.1, 0.2, None, {"se": 0.01})


def test_adversarial_delta_without_resamples_has_no_interval() -> None:
    from suites.adversarial.metrics import paired_delta_measurement

    base, variant = _pair()
    for n_boot in (0, 1):  # the bug: max(n_boot, 1) claimed "1 resamples" for a CI that was no interval
        kw = {"recipe": "r", "metric": "d", "level": 0.95, "seed": 0}
        m = paired_delta_measurement(base=base, variant=variant, n_boot=n_boot, **kw)
        assert (m.ci_low, m.ci_high, m.ci_method) == (None, None, None)
        rec = m.details["paired"]
        assert (rec["ci_low"], rec["ci_high"], rec["ci_method"]) == (None, None, None)
        assert rec["p_value"] == pytest.approx(paired.mcnemar_exact(base, variant)["p_value"])
    m = paired_delta_measurement(recipe="r", metric="d", base=base, variant=variant, n_boot=200, level=0.95, seed=0)
    assert m.ci_method == "paired bootstrap, 200 resamples, 95%" and m.ci_low < m.value < m.ci_high
    assert m.details["paired"]["ci_low"] == m.ci_low and m.details["paired"]["delta"] == m.value


def test_adversarial_delta_on_no_examples_has_no_value_and_no_p() -> None:
    from suites.adversarial.metrics import paired_delta_measurement

    empty = np.zeros(0, bool)
    m = paired_delta_measurement(recipe="r", metric="d", base=empty, variant=empty, n_boot=50, level=0.95, seed=0)
    assert m.value is None and m.n == 0
    assert m.details["paired"]["p_value"] is None and m.details["paired"]["delta"] is None


class _Predictor:
    """One-hot predictions: the variant's ``model`` is the array of predicted classes."""

    def proba(self, model: np.ndarray, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        return np.eye(2)[model]


def test_analysis_gives_performance_accuracy_delta_a_q_value_and_an_onset() -> None:
    from results_factory import run, variant

    from audit.analysis import analyze_sweep
    from audit.data import EvalSet
    from audit.plan import SweepPoint
    from audit.registry import SUITES
    from audit.suite import SuiteContext, Variant
    from reports.views.measurements import suite_sections

    labels = np.tile([0, 1], 60)
    es = EvalSet(name="test", texts=[f"t{i}" for i in range(120)], labels=labels)
    ctx = SuiteContext(config=None, eval_set=es, predictor=_Predictor(), id2label={0: "n", 1: "p"}, n_boot=200)  # type: ignore[arg-type]
    spec = SUITES.get("performance")
    suite = spec.load()(spec, spec.params.model_validate({}))
    pruned = labels.copy()
    pruned[:40] = 1 - pruned[:40]  # 40 of 120 now wrong: a clear regression
    dense_out = suite.run(Variant(SweepPoint("dense", 0.0, 0), labels), ctx)
    out = suite.run(Variant(SweepPoint("magnitude", 0.5, 0), pruned), ctx.for_suite(dense_out.artifacts))
    delta = next(m for m in out.measurements if m.metric == "accuracy_delta")
    assert "mcnemar" not in delta.details and tuple(delta.details["paired"]) == RECORD_KEYS
    res = run(dense_out.measurements, [variant("magnitude-s0.50-seed0", "magnitude", 0.5, out.measurements)])
    analyze_sweep(res)
    rec = res.variants[0].measurement("performance/test/accuracy_delta").details["paired"]
    assert rec["p_value"] < 1e-6 and rec["q_value"] == pytest.approx(rec["p_value"])  # the family has one test
    assert rec["significant"] is True and rec["regression"] is True
    assert res.statistics["regression_onset"]["magnitude"]["performance/test/accuracy_delta"] == 0.5
    (reg,) = res.statistics["regressions"]
    assert (reg["metric"], reg["test"], reg["delta"]) == ("performance/test/accuracy_delta", "paired", rec["delta"])
    # the HTML's p= reads the same record
    (section,) = [s for s in suite_sections(res, res.metrics) if s["name"] == "performance"]
    row = next(r for t in section["tables"] for r in t["rows"] if r["metric"] == "accuracy_delta")
    assert row["cells"][1]["p"] == f"p={rec['p_value']:.3g}"


def test_suspicious_gains_take_the_q_value_from_the_paired_record() -> None:
    from results_factory import m, run, variant

    from audit.analysis import analyze_sweep

    base, better = _pair()
    base, better = better, base  # the variant gains 26 examples
    rec = paired.paired_binary(base, better, n_boot=0, level=0.95).to_dict()
    gain = m("accuracy_delta", rec["delta"])
    gain.details.update(paired=rec, suspicious_gain="the dense model is below chance on this set")
    res = run([m("accuracy", 0.5)], [variant("magnitude-s0.50-seed0", "magnitude", 0.5, [gain])])
    analyze_sweep(res)
    (flagged,) = res.statistics["suspicious_gains"]
    assert flagged["q_value"] == pytest.approx(rec["p_value"]) and flagged["significant"] is True
