"""Build small, valid RunResults by hand for policy and reporter tests."""

from __future__ import annotations

from typing import Any

from audit.results import (
    GroupValue,
    Measurement,
    MetricInfo,
    ModelIdentity,
    PointRecord,
    Provenance,
    RunResult,
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
