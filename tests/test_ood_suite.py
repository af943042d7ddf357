from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from suite_ctx import TinyAudit, tiny_audit

from audit import stats
from audit.config import DatasetRef
from audit.data import load_ref
from audit.errors import DataError
from suites.ood import SPEC

CORRUPTIONS = [{"kind": "typo", "rate": 0.3}, {"kind": "contraction"}]


@pytest.fixture(scope="module")
def audit(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyAudit:
    return tiny_audit(tiny_model_dir, tiny_data_dir, tmp_path_factory.mktemp("ood"))


def _shifted(data_dir: Path, **extra: object) -> dict[str, object]:
    return {
        "name": "ood",
        "path": str(data_dir / "ood.jsonl"),
        "columns": {"text": "text", "label": "label", "groups": ["gender"]},
        **extra,
    }


@pytest.fixture(scope="module")
def outputs(audit: TinyAudit, tiny_data_dir: Path) -> tuple:
    suite = audit.suite("ood", {"shifted": [_shifted(tiny_data_dir)], "corruptions": CORRUPTIONS})
    return suite, audit.run(suite)


def test_every_metric_is_declared_and_present(outputs) -> None:
    suite, (dense, pruned) = outputs
    declared = {m.name for m in SPEC.metrics}
    for out in (dense, pruned):
        assert {m.metric for m in out.measurements} <= declared
    ids = {m.id for m in dense.measurements}
    for ds in ("ood", "test-typo", "test-contraction"):
        for metric in ("accuracy", "macro_f1", "ece", "accuracy_drop", "detection_auroc"):
            assert f"ood/{ds}/{metric}" in ids
    assert "ood/test/ece" in ids and "ood/test/accuracy" not in ids  # ID accuracy is the performance suite's
    assert not any(m.metric == "accuracy_delta" for m in dense.measurements)
    assert {f"ood/{ds}/accuracy_delta" for ds in ("ood", "test-typo", "test-contraction")} <= {
        m.id for m in pruned.measurements
    }
    assert {d.id for d in dense.datasets} == {"ood", "test-typo", "test-contraction"}


def test_values_agree_with_sklearn_on_the_dense_model(audit: TinyAudit, outputs, tiny_data_dir: Path) -> None:
    _, (dense, _) = outputs
    ms = {m.id: m for m in dense.measurements}
    ctx = audit.ctx
    model = audit.variants[0].model
    es = ctx.eval_set
    id_proba = ctx.predictor.proba(model, es.texts)
    ood = load_ref(DatasetRef.model_validate(_shifted(tiny_data_dir)), ctx.config, ctx.id2label)
    proba = ctx.predictor.proba(model, ood.texts)
    pred = proba.argmax(axis=1)
    acc = ms["ood/ood/accuracy"]
    assert acc.value == pytest.approx(accuracy_score(ood.labels, pred))
    assert acc.ci_low <= acc.value <= acc.ci_high
    assert set(acc.groups["gender"]) == set(np.unique(ood.groups["gender"]))
    assert ms["ood/ood/macro_f1"].value == pytest.approx(f1_score(ood.labels, pred, average="macro"))
    # the predicted-class distribution sits next to accuracy on every shifted set
    shares = {ctx.id2label[k]: float((pred == k).mean()) for k in range(ctx.num_labels)}
    assert acc.details["predicted_classes"] == pytest.approx(shares)
    assert ms["ood/ood/ece"].value == pytest.approx(stats.expected_calibration_error(proba, ood.labels))
    assert ms["ood/test/ece"].value == pytest.approx(stats.expected_calibration_error(id_proba, es.labels))
    id_acc = float((id_proba.argmax(axis=1) == es.labels).mean())
    assert ms["ood/ood/accuracy_drop"].value == pytest.approx(id_acc - acc.value)
    msp = np.concatenate([id_proba.max(axis=1), proba.max(axis=1)])
    is_id = np.r_[np.ones(len(es)), np.zeros(len(ood))]
    auroc = ms["ood/ood/detection_auroc"]
    assert auroc.value == pytest.approx(roc_auc_score(is_id, msp))
    assert auroc.ci_low <= auroc.value <= auroc.ci_high and auroc.n == len(es) + len(ood)


def test_corruptions_use_changed_rows_paired_with_their_originals(audit: TinyAudit, outputs) -> None:
    from suites.ood.corruptions import corrupt

    suite, (dense, _) = outputs
    es = audit.ctx.eval_set
    typo = next(s for s in suite.sets if s.name == "test-typo")
    texts = corrupt(es.texts, "typo", rate=0.3, seed=0)
    changed = np.flatnonzero([a != b for a, b in zip(texts, es.texts, strict=True)])
    assert np.array_equal(typo.rows, changed) and typo.es.texts == [texts[i] for i in changed]
    assert np.array_equal(typo.es.labels, es.labels[changed])
    ms = {m.id: m for m in dense.measurements}
    drop = ms["ood/test-typo/accuracy_drop"]
    assert drop.n == len(changed) and drop.details["reference"] == "the same rows uncorrupted"
    model = audit.variants[0].model
    before = audit.ctx.predictor.proba(model, [es.texts[i] for i in changed]).argmax(axis=1)
    after = audit.ctx.predictor.proba(model, typo.es.texts).argmax(axis=1)
    labels = es.labels[changed]
    assert drop.value == pytest.approx((before == labels).mean() - (after == labels).mean())
    assert ms["ood/test-typo/accuracy"].details["changed_share"] == pytest.approx(len(changed) / len(es))
    ex = [e for e in dense.examples if e["set"] == "test-typo"]
    assert ex and all("original" in e and e["text"] != e["original"] for e in ex)


def test_pruned_variant_is_compared_paired_with_dense(outputs) -> None:
    _, (dense, pruned) = outputs
    d = {m.id: m for m in dense.measurements}
    p = {m.id: m for m in pruned.measurements}
    delta = p["ood/ood/accuracy_delta"]
    assert delta.value == pytest.approx(p["ood/ood/accuracy"].value - d["ood/ood/accuracy"].value)
    test = delta.details["paired"]
    assert test["test"] == "exact McNemar" and 0 <= test["p_value"] <= 1
    assert test["lost"] - test["gained"] == pytest.approx(-delta.value * delta.n)
    for mid in ("ood/ood/ece", "ood/ood/macro_f1", "ood/ood/accuracy_drop", "ood/ood/detection_auroc", "ood/test/ece"):
        paired = p[mid].details["paired"]
        assert paired["baseline"] == pytest.approx(d[mid].value), mid
        assert paired["delta"] == pytest.approx(p[mid].value - d[mid].value), mid
        assert paired["ci_low"] <= paired["delta"] <= paired["ci_high"], mid
        assert 0 <= paired["p_value"] <= 1
    assert all(e["dense_prediction"] == e["label"] != e["prediction"] for e in pruned.examples)


def test_bad_shifted_sets_fail_at_setup(audit: TinyAudit, tiny_data_dir: Path) -> None:
    missing = audit.suite("ood", {"shifted": [_shifted(tiny_data_dir, path=str(tiny_data_dir / "nope.jsonl"))]})
    with pytest.raises(DataError, match="data file not found"):
        missing.setup(audit.ctx)
    wrong_labels = audit.suite(
        "ood", {"shifted": [_shifted(tiny_data_dir, columns={"text": "text", "label": "domain"})]}
    )
    with pytest.raises(DataError, match="not labels of the model"):
        wrong_labels.setup(audit.ctx)
    same_name = audit.suite("ood", {"shifted": [_shifted(tiny_data_dir, name="test")], "corruptions": []})
    with pytest.raises(DataError, match="same name as the in-distribution"):
        same_name.setup(audit.ctx)


def test_a_corruption_that_changes_nothing_is_skipped_with_a_warning(audit: TinyAudit) -> None:
    suite = audit.suite("ood", {"corruptions": [{"kind": "casing", "rate": 1e-9}], "n_examples": 0})
    (dense, _) = audit.run(suite)
    assert [m.id for m in dense.measurements] == ["ood/test/ece"]
    assert any("changed none" in w for w in dense.warnings)


def test_params_are_validated() -> None:
    from pydantic import ValidationError

    from suites.ood import OodParams

    with pytest.raises(ValidationError, match="need a `name` each"):
        OodParams.model_validate({"corruptions": [{"kind": "typo"}, {"kind": "typo", "rate": 0.5}]})
    with pytest.raises(ValidationError, match="kind"):
        OodParams.model_validate({"corruptions": [{"kind": "emoji"}]})
    with pytest.raises(ValidationError):
        OodParams.model_validate({"corruptions": [{"kind": "typo", "rate": 1.5}]})
    assert [c.kind for c in OodParams().corruptions] == list(
        ("typo", "casing", "punctuation", "whitespace", "contraction", "synonym")
    )
