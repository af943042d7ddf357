from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
)
from sklearn.metrics import roc_auc_score
from suite_ctx import TinyAudit, tiny_audit

from audit import paired
from audit.errors import DataError, UsageError
from suites.bias import SPEC
from suites.bias.counterfactual import Lexicon
from suites.bias.run import generalized_mean


@pytest.fixture(scope="module")
def audit(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyAudit:
    return tiny_audit(tiny_model_dir, tiny_data_dir, tmp_path_factory.mktemp("bias"))


@pytest.fixture(scope="module")
def preds(audit: TinyAudit) -> tuple[np.ndarray, np.ndarray]:
    es = audit.ctx.eval_set
    dense = audit.ctx.predictor.proba(audit.variants[0].model, es.texts)
    pruned = audit.ctx.predictor.proba(audit.variants[1].model, es.texts)
    return dense, pruned


@pytest.fixture(scope="module")
def outputs(audit: TinyAudit) -> tuple:
    suite = audit.suite("bias", {"counterfactual": {"categories": ["gender", "race", "disability"]}, "n_examples": 5})
    return suite, audit.run(suite)


def test_every_metric_is_declared(outputs) -> None:
    _, (dense, pruned) = outputs
    declared = {m.name for m in SPEC.metrics}
    assert {m.metric for m in dense.measurements + pruned.measurements} <= declared
    assert {m.metric for m in dense.measurements} == {
        "fpr",
        "fnr",
        "selection_rate",
        "demographic_parity_difference",
        "equalized_odds_difference",
        "counterfactual_flip_rate",
        "counterfactual_prob_shift",
    }
    assert {"pruning_disparate_impact", "pie_rate"} <= {m.metric for m in pruned.measurements}


def test_group_rates_and_parity_match_fairlearn(audit: TinyAudit, outputs, preds) -> None:
    _, (dense, _) = outputs
    es = audit.ctx.eval_set
    pred = preds[0].argmax(axis=1)
    ms = {m.metric: m for m in dense.measurements}
    for feat in ("gender", "identity"):
        mf = MetricFrame(
            metrics={"fpr": false_positive_rate, "fnr": false_negative_rate, "selection_rate": selection_rate},
            y_true=es.labels,
            y_pred=pred,
            sensitive_features=es.groups[feat],
        )
        for metric in ("fpr", "fnr", "selection_rate"):
            for group, value in mf.by_group[metric].items():
                gv = ms[metric].groups[feat][group]
                assert gv.value == pytest.approx(value), (metric, feat, group)
                assert gv.small_n == (gv.n < 30)
    assert "gender&identity" in ms["fpr"].groups
    dp = ms["demographic_parity_difference"]
    per_feature = {
        f: demographic_parity_difference(es.labels, pred, sensitive_features=es.groups[f])
        for f in ("gender", "identity")
    }
    assert dp.value == pytest.approx(max(per_feature.values()))
    assert dp.details["feature"] == max(per_feature, key=per_feature.get)
    for f, v in per_feature.items():
        assert dp.details["by_feature"][f]["value"] == pytest.approx(v)
    assert dp.details["by_feature"]["gender&identity"]["intersection"] is True
    eo = ms["equalized_odds_difference"]
    assert eo.details["by_feature"]["gender"]["value"] == pytest.approx(
        equalized_odds_difference(es.labels, pred, sensitive_features=es.groups["gender"])
    )
    # tiny groups are reported and warned about with their size
    assert any("identity" in w and "disability (n=" in w for w in dense.warnings)


def test_the_counterfactual_flip_rate_is_defined_by_its_pairs_re_measured_as_consistency(
    audit: TinyAudit, outputs, preds
) -> None:
    """Attribution's view of the flip rate: each eval text with its counterfactual; consistency is 1 - flip."""
    suite, (dense, _) = outputs
    es, cf = audit.ctx.eval_set, suite.cf
    ex = suite.defining_examples("counterfactual_flip_rate", es.name, "paired", audit.ctx)
    assert ex is not None and ex.measure == "counterfactual_consistency"
    assert ex.texts == [es.texts[i] for i in cf.rows] and ex.counterparts == list(cf.texts)
    pred = audit.ctx.predictor.proba(audit.variants[0].model, ex.texts).argmax(axis=1)
    other = audit.ctx.predictor.proba(audit.variants[0].model, ex.counterparts).argmax(axis=1)
    flip = {m.metric: m for m in dense.measurements}["counterfactual_flip_rate"].value
    assert 1.0 - float((pred == other).mean()) == pytest.approx(flip)  # the measure is the flip rate's complement
    one = suite.defining_examples("counterfactual_flip_rate", es.name, "paired_groups.gender.female->male", audit.ctx)
    keep = (cf.categories == "gender") & (cf.pairs == "female->male")
    assert one is not None and one.counterparts == [t for t, k in zip(cf.texts, keep, strict=True) if k]
    assert set(one.groups["pair"]) == {"female->male"}
    nobody = "paired_groups.gender.nobody"
    assert suite.defining_examples("counterfactual_flip_rate", es.name, nobody, audit.ctx) is None
    assert suite.defining_examples("counterfactual_prob_shift", es.name, "paired", audit.ctx) is None


def test_counterfactual_flips_are_recomputed_exactly(audit: TinyAudit, outputs, preds) -> None:
    suite, (dense, pruned) = outputs
    es = audit.ctx.eval_set
    lex = Lexicon.default()
    cfs = [
        c
        for i, t in enumerate(es.texts)
        for c in lex.counterfactuals(t, row=i, categories=["gender", "race", "disability"])
    ]
    assert len(cfs) == len(suite.cf.texts)  # every text has at most 8 swaps with these categories
    proba_cf = audit.ctx.predictor.proba(audit.variants[0].model, [c.text for c in cfs])
    rows = np.array([c.row for c in cfs])
    flips = proba_cf.argmax(axis=1) != preds[0][rows].argmax(axis=1)
    ms = {m.metric: m for m in dense.measurements}
    fr = ms["counterfactual_flip_rate"]
    assert fr.value == pytest.approx(flips.mean()) and fr.n == len(cfs)
    assert set(fr.groups) == {"gender", "race", "disability"}
    pairs = np.array([c.pair for c in cfs])
    cats = np.array([c.category for c in cfs])
    for pair, gv in fr.groups["race"].items():
        m = (cats == "race") & (pairs == pair)
        assert gv.value == pytest.approx(flips[m].mean()) and gv.n == int(m.sum())
    shift = ms["counterfactual_prob_shift"]
    signed = proba_cf[:, 1] - preds[0][rows, 1]
    assert shift.value == pytest.approx(np.abs(signed).mean())
    m = (cats == "gender") & (pairs == "female->male")
    assert shift.details["signed_shift"]["gender"]["female->male"] == pytest.approx(signed[m].mean())
    p = {m.metric: m for m in pruned.measurements}["counterfactual_flip_rate"]
    assert p.details["paired"]["baseline"] == pytest.approx(flips.mean())
    assert 0 <= p.details["paired"]["p_value"] <= 1
    assert set(p.details["paired_groups"]) == set(fr.groups)


def test_disparate_impact_and_exemplars_on_the_pruned_variant(audit: TinyAudit, outputs, preds) -> None:
    _, (_, pruned) = outputs
    es = audit.ctx.eval_set
    base_pred, pred = preds[0].argmax(axis=1), preds[1].argmax(axis=1)
    base_ok, ok = base_pred == es.labels, pred == es.labels
    ms = {m.metric: m for m in pruned.measurements}
    di = ms["pruning_disparate_impact"]
    overall = base_ok.mean() - ok.mean()
    assert di.details["overall_accuracy_change"] == pytest.approx(-overall)
    for group, gv in di.groups["gender"].items():
        m = es.groups["gender"] == group
        assert gv.value == pytest.approx((base_ok[m].mean() - ok[m].mean()) - overall)
        test = di.details["paired_groups"]["gender"][group]
        t = paired.mcnemar_exact(base_ok[m], ok[m])
        assert (test["lost"], test["gained"], test["p_value"]) == (t["lost"], t["gained"], t["p_value"])
        assert test["n"] == int(m.sum()) and test["higher_is_better"] is True
        assert test["delta"] == pytest.approx(ok[m].mean() - base_ok[m].mean())
    big = [(f"{f}={g}", gv.value) for f, gs in di.groups.items() if "&" not in f for g, gv in gs.items() if gv.n >= 30]
    assert di.value == pytest.approx(max(v for _, v in big))
    pie = ms["pie_rate"]
    changed = pred != base_pred
    assert pie.value == pytest.approx(changed.mean())
    for group, gv in pie.groups["identity"].items():
        assert gv.value == pytest.approx(changed[es.groups["identity"] == group].mean())
    assert 0 <= pie.details["heterogeneity"]["gender"]["p_value"] <= 1
    assert 0 < len(pruned.examples) <= 5
    for row in pruned.examples:
        i = es.ids.index(row["id"])
        assert changed[i] and row["text"] == es.texts[i]
        assert row["dense_prediction"] != row["prediction"]


def test_identity_and_functional_sets(audit: TinyAudit, tiny_data_dir: Path, tmp_path: Path, preds) -> None:
    rows = [json.loads(line) for line in (tiny_data_dir / "test.jsonl").read_text().splitlines()]
    for r in rows:  # a Jigsaw-style boolean identity column too
        r["disability_flag"] = "1.0" if r["identity"] == "disability" else "0.0"
    path = tmp_path / "identity.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = audit.suite(
        "bias",
        {
            "counterfactual": {"enabled": False},
            "identity_sets": [
                {
                    "name": "idset",
                    "path": str(path),
                    "columns": {"text": "text", "label": "label", "groups": ["identity", "disability_flag"]},
                },
                {"name": "fromtext", "path": str(path), "identity_from_text": True, "identity_level": "group"},
            ],
            "functional_sets": [
                {"name": "func", "path": str(path), "columns": {"text": "text", "label": "label", "groups": ["domain"]}}
            ],
        },
    )
    dense, pruned = audit.run(suite)
    ms = {m.id: m for m in dense.measurements}
    es = audit.ctx.eval_set  # the same rows as identity.jsonl
    score = preds[0][:, 1]
    y = es.labels == 1
    sub = ms["bias/idset/subgroup_auc"]
    categories = ("religion", "nationality", "age", "disability", "sexual_orientation")
    assert set(sub.groups["identity"]) == {f"identity={c}" for c in categories} | {"disability_flag"}
    member = es.groups["identity"] == "religion"
    assert sub.groups["identity"]["identity=religion"].value == pytest.approx(roc_auc_score(y[member], score[member]))
    flag = es.groups["identity"] == "disability"
    assert sub.groups["identity"]["disability_flag"].value == pytest.approx(
        sub.groups["identity"]["identity=disability"].value
    )
    bpsn = (flag & ~y) | (~flag & y)
    bnsp = (flag & y) | (~flag & ~y)
    assert ms["bias/idset/bpsn_auc"].groups["identity"]["disability_flag"].value == pytest.approx(
        roc_auc_score(y[bpsn], score[bpsn])
    )
    assert ms["bias/idset/bnsp_auc"].groups["identity"]["disability_flag"].value == pytest.approx(
        roc_auc_score(y[bnsp], score[bnsp])
    )
    # every subgroup here is smaller than min_group_n (30), so all of them enter the mean
    assert sub.details["subgroups_in_mean"] == sorted(sub.groups["identity"])
    assert sub.value == pytest.approx(generalized_mean([gv.value for gv in sub.groups["identity"].values()]))
    assert ms["bias/idset/roc_auc"].value == pytest.approx(roc_auc_score(y, score))
    # identity_level "group": one subgroup per category:group found in the text; the demo texts that
    # say "I am Muslim" are exactly the religion:muslim subgroup
    muslim = np.array(["muslim" in t.lower() for t in es.texts])
    assert muslim.sum() >= 1
    assert ms["bias/fromtext/subgroup_auc"].groups["identity"]["religion:muslim"].n == int(muslim.sum())
    acc = ms["bias/func/accuracy"]
    pred = preds[0].argmax(axis=1)
    for dom, gv in acc.groups["domain"].items():
        m = np.array([r["domain"] == dom for r in rows])
        assert gv.value == pytest.approx((pred[m] == es.labels[m]).mean())
    p = {m.id: m for m in pruned.measurements}
    d = p["bias/idset/subgroup_auc"].details["paired_groups"]["identity"]["identity=religion"]
    assert d["test"].startswith("DeLong") and d["delta"] == pytest.approx(
        p["bias/idset/subgroup_auc"].groups["identity"]["identity=religion"].value
        - sub.groups["identity"]["identity=religion"].value
    )
    assert p["bias/func/accuracy_delta"].details["paired"]["test"] == "exact McNemar"
    assert set(p["bias/func/pruning_disparate_impact"].groups["domain"]) == {"restaurant", "electronics", "movie"}
    assert {d.id for d in dense.datasets} == {"idset", "fromtext", "func"}


def test_bad_input_is_caught_at_setup_or_warned(audit: TinyAudit, tiny_data_dir: Path) -> None:
    with pytest.raises(DataError, match="sensitive column 'ethnicity' is not in the eval set"):
        audit.suite("bias", {"sensitive_columns": ["ethnicity"]}).setup(audit.ctx)
    with pytest.raises(UsageError, match="positive_label 'toxic' is not a label of the model"):
        audit.suite("bias", {"positive_label": "toxic"}).setup(audit.ctx)
    bad_labels = {
        "name": "f",
        "path": str(tiny_data_dir / "ood.jsonl"),
        "columns": {"label": "gender", "groups": ["domain"]},
    }
    with pytest.raises(DataError, match="not labels of the model"):
        audit.suite("bias", {"functional_sets": [bad_labels]}).setup(audit.ctx)
    # a column with a single group and a sensitive column taken from the data's other columns
    es = audit.ctx.eval_set
    es1 = dataclasses.replace(es, columns={**es.columns, "country": ["us"] * len(es)})
    ctx = dataclasses.replace(audit.ctx, eval_set=es1)
    suite = audit.suite("bias", {"sensitive_columns": ["gender", "country"], "counterfactual": {"enabled": False}})
    suite.setup(ctx)
    out = suite.run(audit.variants[0], ctx)
    assert any("single group ('us', n=240)" in w for w in out.warnings)
    fpr = next(m for m in out.measurements if m.metric == "fpr")
    assert set(fpr.groups["country"]) == {"us"}  # still reported
    dp = next(m for m in out.measurements if m.metric == "demographic_parity_difference")
    assert "country" not in dp.details["by_feature"] and dp.details["feature"] == "gender"


def test_dense_disparities_are_computed_once_and_every_variant_pairs_with_them(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit import stats
    from suites.bias import disparities as mod

    two = tiny_audit(tiny_model_dir, tiny_data_dir, tmp_path, sparsities=(0.5, 0.9))
    calls: list[int] = []
    real = stats.disparity_differences

    def counted(*args, **kwargs):
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(mod.stats, "disparity_differences", counted)
    suite = two.suite("bias", {"counterfactual": {"enabled": False}})
    dense, first, second = two.run(suite)
    dp = [m for o in (dense, first, second) for m in o.measurements if m.metric == "demographic_parity_difference"]
    n_feat = len(dp[0].details["by_feature"])
    assert len(dp) == 3 and n_feat >= 2
    # per feature: dense for itself, each variant for itself, and dense as the pairing side once (not per variant)
    assert len(calls) == n_feat * 4 and len(suite.dense_disparities) == n_feat
    for m in dp[1:]:
        for feat, entry in m.details["by_feature"].items():
            assert entry["paired"]["baseline"] == pytest.approx(dp[0].details["by_feature"][feat]["value"])
