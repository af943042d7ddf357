"""Build small, valid RunResults by hand for policy and reporter tests."""

from __future__ import annotations

from typing import Any

from audit.deploy.spec import measurements_of
from audit.results import (
    CalibrationRecord,
    DatasetIdentity,
    DeploymentRecord,
    EquivalenceRecord,
    GroupValue,
    LayerRecord,
    Measurement,
    MetricInfo,
    ModelIdentity,
    PointRecord,
    Provenance,
    PruningRecord,
    RunResult,
    SpeedRecord,
    SuiteError,
    VariantResult,
)


def m(
    metric: str,
    value: float | None,
    *,
    suite: str = "performance",
    dataset: str = "test",
    ci: tuple[float, float] | None = None,
    groups: dict[str, dict[str, tuple[float, int]]] | None = None,
) -> Measurement:
    return Measurement(
        suite=suite,
        dataset=dataset,
        metric=metric,
        value=value,
        ci_low=ci[0] if ci else None,
        ci_high=ci[1] if ci else None,
        n=100,
        groups={
            f: {g: GroupValue(value=v, n=n, small_n=n < 30) for g, (v, n) in gs.items()}
            for f, gs in (groups or {}).items()
        },
    )


def variant(
    vid: str,
    method: str,
    sparsity: float,
    measurements: list[Measurement],
    seed: int = 0,
    errors: list[SuiteError] | None = None,
) -> VariantResult:
    return VariantResult(
        id=vid,
        point=PointRecord(id=vid, method=method, label=method, sparsity=sparsity, seed=seed, key=vid),
        measurements=measurements,
        errors=errors or [],
    )


def run(
    baseline: list[Measurement], variants: list[VariantResult], suites: tuple[str, ...] = ("performance",), **kw: Any
) -> RunResult:
    metrics = {
        "performance/accuracy": MetricInfo(suite="performance", name="accuracy", meaning="acc", higher_is_better=True),
        "performance/accuracy_delta": MetricInfo(
            suite="performance", name="accuracy_delta", meaning="d", higher_is_better=True, range=[-1, 1]
        ),
        "performance/agreement": MetricInfo(
            suite="performance", name="agreement", meaning="agree", higher_is_better=True
        ),
        "performance/macro_f1": MetricInfo(suite="performance", name="macro_f1", meaning="f1", higher_is_better=True),
    }
    return RunResult(
        run_id="test",
        provenance=Provenance(
            tool_version="0", python="3", platform="x", seed=0, started_at="2026-01-01T00:00:00+00:00"
        ),
        config={"suites": [{"name": s, "params": {}} for s in suites]},
        model=ModelIdentity(source="m", fingerprint="f" * 64),
        metrics=metrics,
        baseline=variant("dense", "dense", 0.0, baseline),
        variants=variants,
        **kw,
    )


# -- a realistic run: several methods × sparsities × seeds, every suite and record ---------------

HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'
"""A string that would execute if any renderer forgot to escape it."""
HOSTILE_MD = "| cell | [click](javascript:alert(1)) **bold** `tick`\n::error title=x::injected %0A"


def _info(suite: str, name: str, hib: bool | None, meaning: str, rng: tuple = (0.0, 1.0), unit: str = "") -> MetricInfo:
    return MetricInfo(suite=suite, name=name, meaning=meaning, higher_is_better=hib, range=list(rng), unit=unit)


RICH_METRICS = {
    "performance/accuracy": _info("performance", "accuracy", True, "Share of examples classified correctly."),
    "performance/macro_f1": _info("performance", "macro_f1", True, "Unweighted mean of per-class F1."),
    "performance/accuracy_delta": _info(
        "performance", "accuracy_delta", True, "Paired accuracy change vs dense.", (-1.0, 1.0)
    ),
    "performance/agreement": _info("performance", "agreement", True, "Share of predictions equal to dense."),
    "ood/accuracy": _info("ood", "accuracy", True, "Accuracy on the shifted set."),
    "ood/accuracy_delta": _info("ood", "accuracy_delta", True, "Paired accuracy change on the shifted set.", (-1, 1)),
    "ood/ece": _info("ood", "ece", False, "Expected calibration error."),
    "bias/demographic_parity_difference": _info(
        "bias", "demographic_parity_difference", False, "Largest gap in selection rate between groups."
    ),
    "bias/equalized_odds_difference": _info(
        "bias", "equalized_odds_difference", False, "Larger of the TPR and FPR gaps between groups."
    ),
    "bias/pruning_disparate_impact": _info(
        "bias", "pruning_disparate_impact", False, "Largest excess accuracy loss of a group.", (-1, 1)
    ),
    "bias/selection_rate": _info("bias", "selection_rate", None, "Share predicted positive."),
    "adversarial/success_rate": _info("adversarial", "success_rate", False, "Attack success rate."),
    "adversarial/accuracy_under_attack_delta": _info(
        "adversarial", "accuracy_under_attack_delta", True, "Accuracy under attack vs dense.", (-1, 1)
    ),
    "adversarial/perturbed_words_pct": _info(
        "adversarial", "perturbed_words_pct", True, "Words changed by successful attacks.", (0, 100), "%"
    ),
}

GROUPS = {"gender": ["female", "male"], "race": ["black", "white", "<b>asian</b>"]}


def _groups(acc: float, s: float) -> dict[str, dict[str, GroupValue]]:
    """Per-group accuracy; group 'black' loses more under pruning (planted disparate impact)."""
    out: dict[str, dict[str, GroupValue]] = {}
    for feat, groups in GROUPS.items():
        out[feat] = {}
        for i, g in enumerate(groups):
            extra = 0.12 * s * s if g == "black" else 0.0
            v = round(acc + 0.01 * (i - 0.5) - extra, 4)
            n = 12 if g.startswith("<") else 120 + 10 * i
            out[feat][g] = GroupValue(
                value=v, ci_low=round(v - 0.04, 4), ci_high=round(v + 0.04, 4), n=n, small_n=n < 30
            )
    out["gender&race"] = {
        f"{a}&{b}": GroupValue(value=round(acc - 0.005 * j, 4), n=40 + j, small_n=False)
        for j, (a, b) in enumerate((a, b) for a in GROUPS["gender"] for b in GROUPS["race"][:2])
    }
    return out


def _meas(suite: str, dataset: str, metric: str, value: float, half: float | None = 0.02, **kw: Any) -> Measurement:
    return Measurement(
        suite=suite,
        dataset=dataset,
        metric=metric,
        value=round(value, 4),
        ci_low=None if half is None else round(value - half, 4),
        ci_high=None if half is None else round(value + half, 4),
        ci_method=None if half is None else "percentile bootstrap, 200 resamples",
        n=kw.pop("n", 400),
        **kw,
    )


def _paired(baseline: float, delta: float, half: float, *, p_value: float, n: int) -> dict:
    """A dense-vs-variant record as the suites store it (:class:`audit.paired.PairedComparison`)."""
    from audit.paired import PairedComparison

    return PairedComparison(
        baseline=baseline,
        delta=round(delta, 4),
        ci_low=round(delta - half, 4),
        ci_high=round(delta + half, 4),
        ci_method="paired bootstrap, 200 resamples, 95%",
        test="exact McNemar",
        p_value=p_value,
        n=n,
        lost=round(-delta * n) + 2 if delta < 0 else 2,
        gained=2,
        discordant=(round(-delta * n) + 2 if delta < 0 else 2) + 2,
    ).to_dict()


def _measurements(method: str, s: float, seed: int, dense: bool = False) -> list[Measurement]:
    harsh = {"magnitude": 1.0, "wanda": 0.6, "heads": 1.6}.get(method, 1.0)
    jitter = 0.003 * seed
    drop = 0.0 if dense else harsh * (0.02 * s + 0.18 * s**3) + jitter
    acc = 0.91 - drop
    ms = [
        _meas("performance", "test", "accuracy", acc, groups=_groups(acc, 0.0 if dense else s * harsh)),
        _meas("performance", "test", "macro_f1", acc - 0.01),
        _meas("ood", "yelp", "accuracy", 0.84 - 1.4 * drop),
        _meas("ood", "yelp", "ece", 0.05 + 0.5 * drop, half=0.01),
        _meas("bias", "test", "demographic_parity_difference", 0.04 + 0.3 * drop, half=0.015),
        _meas("bias", "test", "equalized_odds_difference", 0.06 + 0.4 * drop, half=0.02),
        _meas("adversarial", "pwws", "success_rate", 0.55 + drop, half=0.05, n=60),
        _meas("adversarial", "pwws", "perturbed_words_pct", 14.0 - 10 * drop, half=1.5, n=60),
    ]
    if not dense:
        ms += [
            _meas(
                "performance",
                "test",
                "accuracy_delta",
                -drop,
                half=0.012,
                details={"paired": _paired(0.91, -drop, 0.012, p_value=0.03, n=400)},
            ),
            _meas("performance", "test", "agreement", 1 - 1.3 * drop, half=0.01),
            _meas("ood", "yelp", "accuracy_delta", -1.4 * drop, half=0.02),
            _meas(
                "bias",
                "test",
                "pruning_disparate_impact",
                0.12 * (s * harsh) ** 2,
                half=None,
                groups={"race": {"black": GroupValue(value=round(0.12 * (s * harsh) ** 2, 4), n=120)}},
            ),
            _meas("adversarial", "pwws", "accuracy_under_attack_delta", -1.2 * drop, half=0.06, n=60),
        ]
    return ms


def _layers(method: str, s: float) -> list[LayerRecord]:
    out = []
    for i in range(3):
        for kind, shape in (("attention.self.query", [384, 384]), ("intermediate.dense", [1536, 384])):
            name = f"encoder.layer.{i}.{kind}"
            achieved = min(0.99, s * (0.8 + 0.2 * i))
            structured = method == "heads" and kind.startswith("attention")
            total = shape[0] * shape[1]
            out.append(
                LayerRecord(
                    name=name,
                    shape=shape,
                    shape_after=[shape[0] - 64 * (i + 1), shape[1]] if structured else None,
                    total=total,
                    nonzero=int(total * (1 - achieved)),
                    target_sparsity=s,
                    achieved_sparsity=round(achieved, 4),
                    heads_removed=list(range(i + 1)) if structured else [],
                    neurons_removed=0 if structured or method != "heads" else 96 * (i + 1),
                    format="csr" if achieved >= 0.7 else "dense",
                    format_reason="sparsity >= 0.70" if achieved >= 0.7 else "below CSR break-even",
                )
            )
    return out


def _pruning(method: str, s: float, seed: int) -> PruningRecord:
    layers = _layers(method, s)
    total = sum(layer.total for layer in layers)
    nz = sum(layer.nonzero for layer in layers)
    return PruningRecord(
        method=method,
        params={"scope": "layer"} if method == "magnitude" else {},
        criterion={"magnitude": "|W|", "wanda": "|W|·‖X‖", "heads": "head importance"}[method],
        structured=method == "heads",
        seed=seed,
        target_sparsity=s,
        achieved_sparsity=round(1 - nz / total, 4),
        model_sparsity=round((1 - nz / total) * 0.8, 4),
        params_total=22_700_000,
        params_nonzero=int(22_700_000 * (1 - (1 - nz / total) * 0.8)),
        prunable_total=total,
        prunable_nonzero=nz,
        layers=layers,
        calibration=(
            CalibrationRecord(dataset="demo-reviews", split="train", n=128, seed=0, fingerprint="c" * 64)
            if method == "wanda"
            else None
        ),
        mask_fingerprint="m" * 64,
        wall_time_s=1.5,
    )


def _deployment(s: float) -> DeploymentRecord:
    csr = sum(1 for i in range(3) if s * (0.8 + 0.2 * i) >= 0.7) * 2
    return DeploymentRecord(
        formats={"csr": csr, "dense": 6 - csr},
        weight_bytes_dense=90_000_000,
        weight_bytes_deployed=int(90_000_000 * (1.0 - 0.6 * s)),
        equivalence=EquivalenceRecord(
            n=64, max_abs_logit_diff=2e-6 if s < 0.9 else 3e-3, agreement=1.0, tolerance=1e-4, passed=s < 0.9
        ),
        speed=SpeedRecord(
            seq_len=64,
            threads=2,
            latency_b1_ms_dense=10.0,
            latency_b1_ms_deployed=round(10.0 / (0.8 + s), 3),
            speedup_b1=round(0.8 + s, 3),
            speedup_b32=round(0.7 + s, 3),
        ),
    )


def rich_variant(method: str, s: float, seed: int) -> VariantResult:
    vid = f"{method}-s{s:.2f}-seed{seed}"
    v = VariantResult(
        id=vid,
        point=PointRecord(id=vid, method=method, label=method, sparsity=s, seed=seed, key=vid),
        pruning=_pruning(method, s, seed),
        deployment=_deployment(s),
        measurements=[*_measurements(method, s, seed), *measurements_of(_deployment(s))],
        wall_time_s=12.5,
        examples={
            "performance": [
                {
                    "id": f"ex{k}",
                    "text": HOSTILE if k == 0 else HOSTILE_MD,
                    "label": "positive",
                    "dense": "positive",
                    "pruned": "negative",
                    "group": {"race": "black"},
                }
                for k in range(2)
            ],
            "adversarial": [
                {
                    "original": "a truly wonderful film",
                    "perturbed": f"a truly w0nderful film {HOSTILE}",
                    "result": "successful",
                    "queries": 37,
                }
            ],
        },
    )
    if method == "heads" and s >= 0.7:
        v.errors.append(
            SuiteError(suite="adversarial", error_type="RuntimeError", message=f"attack crashed: {HOSTILE}")
        )
        v.measurements = [m for m in v.measurements if m.suite != "adversarial"]
    return v


def rich_run(**kw: Any) -> RunResult:
    """A deterministic, realistic RunResult (no verdict): 3 methods × 3 sparsities, 2 seeds for magnitude."""
    variants = [
        rich_variant(method, s, seed)
        for method, seeds in (("magnitude", (0, 1)), ("wanda", (0,)), ("heads", (0,)))
        for s in (0.3, 0.5, 0.7)
        for seed in seeds
    ]
    base = VariantResult(
        id="dense",
        point=PointRecord(id="dense", method="dense", label="dense", sparsity=0.0, seed=0, key="dense"),
        measurements=_measurements("dense", 0.0, 0, dense=True),
        examples={"performance": [{"id": "ex0", "text": HOSTILE, "label": "positive"}]},
    )
    return RunResult(
        run_id="fixture0001",
        title="Fixture audit <i>of</i> MiniLM",
        provenance=Provenance(
            tool_version="0.1.0",
            git_sha="0123456789abcdef",
            python="3.11.2",
            platform="Linux-x86_64",
            packages={"torch": "2.13.0", "transformers": "4.57.6"},
            seed=0,
            started_at="2026-01-01T00:00:00+00:00",
            finished_at="2026-01-01T00:10:00+00:00",
            command="prune-audit run -c audit.yaml",
            config_fingerprint="a" * 64,
            threads=2,
        ),
        config={
            "suites": [{"name": s, "params": {}} for s in ("performance", "ood", "bias", "adversarial")],
            "sweep": {"methods": ["magnitude", "wanda", "heads"], "sparsities": [0.3, 0.5, 0.7], "seeds": [0, 1]},
            "runtime": {"n_boot": 200, "ci_level": 0.95, "batch_size": 32, "device": "cpu"},
            "model": {"path": "/models/minilm", "hub_id": None},
        },
        model=ModelIdentity(
            source="/models/minilm-<script>x</script>",
            fingerprint="f" * 64,
            architecture="BertForSequenceClassification",
            num_labels=2,
            labels={"0": "negative", "1": "positive"},
            params_total=22_700_000,
        ),
        datasets=[
            DatasetIdentity(
                id="test",
                source="data/test.jsonl",
                split="test",
                n=400,
                fingerprint="d" * 64,
                columns={"text": "text", "groups": ["gender", "race"]},
                max_length=128,
                truncated=0,
            ),
            DatasetIdentity(
                id="yelp",
                source="../shared/data/yelp",
                split="test",
                n=400,
                fingerprint="e" * 64,
                max_length=128,
                truncated=12,
            ),
            DatasetIdentity(id="pwws", source="test", split="test", n=60, fingerprint="b" * 64),
        ],
        metrics=dict(RICH_METRICS),
        baseline=base,
        variants=variants,
        statistics={"multiple_testing": {"method": "Benjamini-Hochberg", "q": 0.05, "tests": 120, "rejected": 7}},
        limitations=["group column 'race': small groups with wide CIs: <b>asian</b> (n=12)"],
        **kw,
    )


GOLDEN_POLICY = """\
name: golden
description: Fixture policy of the golden files (one rule of every kind).
rules:
  - id: accuracy-drop
    metric: performance/*/accuracy_delta
    min: -0.03
    rationale: At most 3 points lost in distribution.
  - id: accuracy-drop-ci
    metric: performance/*/accuracy_delta
    use: ci_lower
    min: -0.05
    severity: warn
    rationale: Even the pessimistic end of the paired interval stays above -5 points.
  - id: worst-group
    metric: performance/*/accuracy
    aggregate: worst_group
    comparison: delta_vs_baseline
    min: -0.05
    min_group_n: 30
    rationale: No group of 30+ loses more than 5 points.
  - id: group-gap
    metric: performance/*/accuracy
    aggregate: difference
    max: 0.2
    min_group_n: 30
    severity: warn
    rationale: Best and worst group stay within 20 points.
  - id: ood-drop
    metric: ood/*/accuracy_delta
    min: -0.08
    rationale: At most 8 points lost on shifted data.
  - id: attack
    metric: adversarial/*/accuracy_under_attack_delta
    min: -0.1
    rationale: Robustness to attacks may not collapse.
  - id: equivalence
    metric: deployment/*/prediction_agreement
    min: 0.999
    rationale: The deployed kernel predicts like the masked model.
  - id: toxicity
    metric: toxicity/*/toxic_rate
    max: 0.1
    rationale: Not run in the fixture, so skipped.
waivers:
  - rule: ood-drop
    variants: ["heads-s0.70-*"]
    approver: "Jane <jane@example.com>"
    reason: "known OOD gap | tracked in #12"
    expires: 2030-01-01
"""


def judged_rich_run() -> RunResult:
    """:func:`rich_run` judged by :data:`GOLDEN_POLICY` at a fixed date and time (deterministic)."""
    import datetime as dt

    from audit.policy import evaluate_policy, policy_from_text

    res = rich_run()
    res.verdict = evaluate_policy(
        policy_from_text(GOLDEN_POLICY),
        res,
        policy_label="golden.yaml",
        today=dt.date(2026, 1, 2),
        now=dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.timezone.utc),
    )
    return res
