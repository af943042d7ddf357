"""Suspicious accuracy gains (issue 13 item 14): dense below chance, or the variant's
predictions collapsed to one class. Constructed predictions, so each case holds by design."""

from __future__ import annotations

import numpy as np
import pytest
from results_factory import run, variant

from audit import stats
from audit.analysis import analyze_sweep
from audit.data import EvalSet
from audit.plan import SweepPoint
from audit.registry import SUITES
from audit.suite import SuiteContext, Variant
from reports import html, markdown

ID2LABEL = {0: "negative", 1: "positive"}


def _preds(labels: np.ndarray, n_right: int, *, wrong_as: int | None = None) -> np.ndarray:
    """Predictions right on the first ``n_right`` rows, wrong (flipped, or ``wrong_as``) on the rest."""
    pred = labels.copy()
    pred[n_right:] = 1 - labels[n_right:] if wrong_as is None else wrong_as
    return pred


# 100 balanced labels, interleaved so that "the first k rows" hold both classes
LABELS = np.tile([0, 1], 50)


def test_collapse_on_a_below_chance_set_is_flagged_with_both_reasons() -> None:
    dense = _preds(LABELS, 40)  # 40 % correct: below the 50 % of always saying one class
    collapsed = np.ones(100, dtype=np.int64)  # every prediction positive: 50 % correct, a +10 point "gain"
    reason = stats.suspicious_gain(LABELS, collapsed, dense, 2, class_names=ID2LABEL)
    assert reason is not None
    assert "below chance" in reason and "0.400 < 0.500" in reason
    assert "collapse to 'positive' (100.0% of predictions, 50.0% of labels)" in reason


def test_genuine_gain_and_losses_are_not_flagged() -> None:
    dense, better = _preds(LABELS, 70), _preds(LABELS, 80)
    assert stats.class_shares(better, 2).max() <= 0.6  # balanced predictions
    assert stats.suspicious_gain(LABELS, better, dense, 2) is None
    assert stats.suspicious_gain(LABELS, dense, better, 2) is None  # a loss is not a gain


def test_collapse_alone_is_flagged_when_dense_is_above_chance() -> None:
    labels = np.array([1] * 60 + [0] * 40)  # chance (majority share) is 0.6
    dense = labels.copy()
    dense[:38] = 0  # 62 % correct, above chance
    collapsed = labels.copy()
    collapsed[:] = 1
    collapsed[60:65] = 0  # 95 % positive predictions (65 % correct); labels are 60 % positive
    reason = stats.suspicious_gain(labels, collapsed, dense, 2)
    assert reason is not None and "below chance" not in reason and "collapse to '1' (95.0%" in reason


class _Predictor:
    """Predicts what the variant's ``model`` (an array of classes) says, one-hot."""

    def proba(self, model: np.ndarray, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        assert len(model) == len(texts)
        return np.eye(2)[model]


def test_performance_suite_flags_the_collapsed_variant_in_details_statistics_and_reports() -> None:
    es = EvalSet(name="test", texts=[f"t{i}" for i in range(100)], labels=LABELS)
    ctx = SuiteContext(config=None, eval_set=es, predictor=_Predictor(), id2label=ID2LABEL, n_boot=50)  # type: ignore[arg-type]
    spec = SUITES.get("performance")
    suite = spec.load()(spec, spec.params.model_validate({}))
    points = {
        "dense": SweepPoint("dense", 0.0, 0),
        "collapsed": SweepPoint("magnitude", 0.9, 0),
        "better": SweepPoint("magnitude", 0.5, 0),
    }
    models = {"dense": _preds(LABELS, 40), "collapsed": np.ones(100, dtype=np.int64), "better": _preds(LABELS, 55)}
    dense_out = suite.run(Variant(points["dense"], models["dense"]), ctx)
    outs = {}
    for name in ("collapsed", "better"):
        outs[name] = suite.run(Variant(points[name], models[name]), ctx.for_suite(dense_out.artifacts))
    by = {k: {m.metric: m for m in o.measurements} for k, o in outs.items()}
    # the predicted-class distribution sits next to accuracy, on every variant
    assert by["collapsed"]["accuracy"].details["predicted_classes"] == {"negative": 0.0, "positive": 1.0}
    assert by["collapsed"]["accuracy"].details["label_classes"] == {"negative": 0.5, "positive": 0.5}
    assert {m.metric: m for m in dense_out.measurements}["accuracy"].details["predicted_classes"] == {
        "negative": 0.5,
        "positive": 0.5,
    }  # dense is wrong on 60 rows of both classes alike
    gain = by["collapsed"]["accuracy_delta"]
    assert gain.value == pytest.approx(0.1) and "collapse to 'positive'" in gain.details["suspicious_gain"]
    # a gain on the same below-chance set without collapse is still flagged (dense below chance) ...
    assert "below chance" in by["better"]["accuracy_delta"].details["suspicious_gain"]

    res = run(
        dense_out.measurements,
        [
            variant("magnitude-s0.90-seed0", "magnitude", 0.9, outs["collapsed"].measurements),
            variant("magnitude-s0.50-seed0", "magnitude", 0.5, outs["better"].measurements),
        ],
    )
    analyze_sweep(res)
    flagged = {r["variant"]: r for r in res.statistics["suspicious_gains"]}
    assert set(flagged) == {"magnitude-s0.90-seed0", "magnitude-s0.50-seed0"}
    r = flagged["magnitude-s0.90-seed0"]
    assert r["metric"] == "performance/test/accuracy_delta" and r["delta"] == pytest.approx(0.1)
    assert r["q_value"] is not None and r["predicted_classes"] == {"negative": 0.0, "positive": 1.0}
    md = markdown.render(res)
    assert "### Suspicious gains" in md and "collapse to 'positive'" in md.replace("\\", "")
    page = html.render(res)
    assert "Suspicious gains" in page and "⚠ suspicious gain" in page
    assert "predicted: negative 0% · positive 100%" in page


def test_genuine_gain_on_an_above_chance_set_is_not_flagged_anywhere() -> None:
    es = EvalSet(name="test", texts=[f"t{i}" for i in range(100)], labels=LABELS)
    ctx = SuiteContext(config=None, eval_set=es, predictor=_Predictor(), id2label=ID2LABEL, n_boot=50)  # type: ignore[arg-type]
    spec = SUITES.get("performance")
    suite = spec.load()(spec, spec.params.model_validate({}))
    dense_out = suite.run(Variant(SweepPoint("dense", 0.0, 0), _preds(LABELS, 70)), ctx)
    out = suite.run(Variant(SweepPoint("magnitude", 0.5, 0), _preds(LABELS, 85)), ctx.for_suite(dense_out.artifacts))
    delta = {m.metric: m for m in out.measurements}["accuracy_delta"]
    assert delta.value == pytest.approx(0.15) and "suspicious_gain" not in delta.details
    res = run(dense_out.measurements, [variant("magnitude-s0.50-seed0", "magnitude", 0.5, out.measurements)])
    analyze_sweep(res)
    assert res.statistics["suspicious_gains"] == []
    assert "Suspicious gains" not in markdown.render(res) and "Suspicious gains" not in html.render(res)


def test_shared_accuracy_delta_of_ood_and_bias_sets_is_flagged_too() -> None:
    """The OOD suite's shifted sets (and the bias suite's functional sets) build their
    accuracy_delta with :func:`audit.suite.accuracy_delta_measurement`: the same check applies."""
    from audit.suite import accuracy_delta_measurement, add_prediction_details

    es = EvalSet(name="shifted", texts=[f"t{i}" for i in range(100)], labels=LABELS)
    ctx = SuiteContext(config=None, eval_set=es, predictor=_Predictor(), id2label=ID2LABEL, n_boot=50)  # type: ignore[arg-type]
    dense, collapsed = _preds(LABELS, 40), np.zeros(100, dtype=np.int64)
    m = accuracy_delta_measurement("ood", "shifted", LABELS, collapsed, dense, ctx, seed=0)
    assert m.value == pytest.approx(0.1) and "collapse to 'negative'" in m.details["suspicious_gain"]
    assert m.details["predicted_classes"] == {"negative": 1.0, "positive": 0.0}
    genuine = accuracy_delta_measurement("ood", "shifted", LABELS, _preds(LABELS, 90), _preds(LABELS, 70), ctx, seed=0)
    assert "suspicious_gain" not in genuine.details
    acc = stats.group_measurements(
        suite="ood", dataset="shifted", metrics=[stats.accuracy_metric(2)], y_true=LABELS, y_pred=collapsed, groups={}
    )
    add_prediction_details(acc, LABELS, collapsed, ctx)
    assert acc[0].details["predicted_classes"] == {"negative": 1.0, "positive": 0.0}
