"""Statistics that need every variant at once: false-discovery control over the sweep.

Suites put each dense-vs-variant comparison in their measurements' ``details`` as one
:class:`audit.paired.PairedComparison` record: the measurement's own at ``details["paired"]``,
per-group ones at e.g. ``details["paired_groups"][feature][group]`` or
``details["by_feature"][feature]["paired"]``; a few other tests (the bias suite's
``details["heterogeneity"][feature]``) are dicts with a ``p_value`` too. With many groups ×
metrics × sparsities, some of those tests come out "significant" by chance. :func:`analyze_sweep` treats all of them
as one family, adjusts with Benjamini–Hochberg (through
:func:`scipy.stats.false_discovery_control`), writes ``q_value`` and ``significant``
into every test dict, and states the procedure in ``RunResult.statistics``:

* ``statistics["multiple_testing"]``: method, FDR level, family, counts and a sentence
  for the report;
* ``statistics["regressions"]``: each significant change in the worse direction;
* ``statistics["regression_onset"]``: per pruning method and metric id, the lowest
  sparsity at which the metric's overall paired test shows a significant regression;
* ``statistics["suspicious_gains"]``: accuracy gains flagged as likely drift (dense below
  chance on the set, or the variant's predictions collapsed to one class), with the reason;
* ``statistics["bootstrap"]``: how many resamples the run's CIs rest on.

Torch-free; runs on a saved ``results.json`` as well (``analyze_sweep(load_results(p))``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.results import Measurement, RunResult, VariantResult

log = logging.getLogger(__name__)

FAMILY = "every dense-vs-variant test of the run (all variants, metrics, datasets and groups together)"
OVERALL = ("paired",)
"""The path of a measurement's own overall test: its :class:`audit.paired.PairedComparison`."""


@dataclass
class FoundTest:
    """A test dict found in a measurement's details."""

    variant: VariantResult
    measurement: Measurement
    path: tuple[str, ...]
    record: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.measurement.id}:{'.'.join(self.path)}"


def iter_tests(result: RunResult) -> Iterator[FoundTest]:
    """Every dict with a ``p_value`` key inside any measurement's details, in a stable order.

    Walks dicts and lists, and into a test dict too (a test may carry sub-tests), so no
    p-value a suite emits escapes the family.
    """

    def walk(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
        if isinstance(node, dict):
            if "p_value" in node:
                yield path, node
            for k in node:
                yield from walk(node[k], (*path, str(k)))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                yield from walk(item, (*path, str(i)))

    for v in result.all_variants():
        for m in v.measurements:
            for path, rec in walk(m.details, ()):
                yield FoundTest(v, m, path, rec)


def _direction(result: RunResult, t: FoundTest) -> bool | None:
    if t.record.get("higher_is_better") is not None:  # the record's direction is not its metric's
        return bool(t.record["higher_is_better"])
    info = result.metric_info(t.measurement.id)
    return info.higher_is_better if info is not None else None


def _delta(t: FoundTest) -> float | None:
    d = t.record.get("delta")
    return None if d is None else float(d)


def suspicious_gains(result: RunResult) -> list[dict[str, Any]]:
    """``statistics["suspicious_gains"]``: accuracy gains the suites flagged (``details["suspicious_gain"]``).

    A gain on a set where the dense model is below chance, or from a variant whose
    predictions collapsed to one class, is more likely drift than improvement; each entry
    gives the reason, the change and its q-value (after :func:`analyze_sweep` adjusted it).
    """
    out = []
    for v in result.variants:
        for m in v.measurements:
            reason = m.details.get("suspicious_gain")
            if not reason:
                continue
            test = m.details.get("paired")
            test = test if isinstance(test, dict) else {}
            out.append(
                {
                    "variant": v.id,
                    "method": v.point.method,
                    "sparsity": v.point.sparsity,
                    "seed": v.point.seed,
                    "metric": m.id,
                    "delta": m.value,
                    "q_value": test.get("q_value"),
                    "significant": bool(test.get("significant", False)),
                    "predicted_classes": m.details.get("predicted_classes", {}),
                    "reason": reason,
                }
            )
    out.sort(key=lambda r: (r["metric"], r["method"], r["sparsity"], r["seed"]))
    return out


def bootstrap_summary(result: RunResult) -> dict[str, Any]:
    """``statistics["bootstrap"]``: how many resamples every CI of the run rests on, with a sentence."""
    runtime = result.config.get("runtime") if isinstance(result.config, dict) else None
    runtime = runtime if isinstance(runtime, dict) else {}
    n_boot, level = runtime.get("n_boot"), runtime.get("ci_level", 0.95)
    if not isinstance(n_boot, int):
        statement = "The number of bootstrap resamples was not recorded."
    elif n_boot < 2:
        statement = (
            f"No confidence intervals: runtime.n_boot is {n_boot}, so nothing was resampled; rules that judge a "
            "CI end could not judge."
        )
    else:
        tail = int(n_boot * (1 - level) / 2)
        statement = (
            f"Every confidence interval is a {level:.0%} bootstrap interval from {n_boot} resamples "
            f"(each end rests on about {tail} resamples beyond it)."
        )
    return {"n_boot": n_boot, "ci_level": level, "statement": statement}


def analyze_sweep(result: RunResult, *, alpha: float = 0.05, method: str = "bh") -> dict[str, Any]:
    """Adjust every test's p-value for the false discovery rate and summarise regressions.

    Args:
        result: a finished run; its measurements' details are updated in place.
        alpha: the false discovery rate to control (the runner uses ``1 - ci_level``).
        method: ``"bh"`` (Benjamini–Hochberg) or ``"by"`` (Benjamini–Yekutieli, any dependence).

    Returns:
        The ``statistics["multiple_testing"]`` entry (also stored in ``result``).
    """
    from audit.stats import benjamini_hochberg

    tests = list(iter_tests(result))
    p = np.array([t.record["p_value"] if t.record["p_value"] is not None else np.nan for t in tests], dtype=float)
    q = benjamini_hochberg(p, method=method) if len(p) else p
    name = {"bh": "Benjamini-Hochberg", "by": "Benjamini-Yekutieli"}[method]
    regressions: list[dict[str, Any]] = []
    onset: dict[str, dict[str, float | None]] = {}
    n_sig = 0
    for t, qv in zip(tests, q, strict=True):
        sig = bool(np.isfinite(qv) and qv <= alpha)
        t.record["q_value"] = float(qv) if np.isfinite(qv) else None
        t.record["significant"] = sig
        n_sig += sig
        hib = _direction(result, t)
        delta = _delta(t)
        worse = sig and hib is not None and delta is not None and (delta < 0 if hib else delta > 0)
        t.record["regression"] = bool(worse)
        point = t.variant.point
        if point.method == "dense":
            continue
        if t.path == OVERALL:
            series = onset.setdefault(f"{point.label or point.method}", {})
            mid = t.measurement.id
            series.setdefault(mid, None)
            if worse and (series[mid] is None or point.sparsity < series[mid]):
                series[mid] = point.sparsity
        if worse:
            regressions.append(
                {
                    "variant": t.variant.id,
                    "method": point.method,
                    "sparsity": point.sparsity,
                    "seed": point.seed,
                    "metric": t.measurement.id,
                    "test": ".".join(t.path),
                    "delta": delta,
                    "p_value": t.record["p_value"],
                    "q_value": t.record["q_value"],
                    "test_name": t.record.get("test"),
                }
            )
    n_tests = int(np.isfinite(p).sum())
    statement = (
        f"{n_tests} dense-vs-variant tests (every variant, metric, dataset and group) were corrected "
        f"together for multiple comparisons with the {name} procedure at a false discovery rate of "
        f"{alpha:g}: {n_sig} are significant (q <= {alpha:g}), {len(regressions)} of them changes for the "
        "worse. Each test's q-value is in its measurement's details (q_value)."
        if n_tests
        else "No dense-vs-variant tests were run, so no multiple-comparison correction was needed."
    )
    summary = {
        "method": name,
        "alpha": alpha,
        "family": FAMILY,
        "n_tests": n_tests,
        "n_significant": n_sig,
        "n_regressions": len(regressions),
        "statement": statement,
    }
    regressions.sort(key=lambda r: (r["metric"], r["test"], r["method"], r["sparsity"], r["seed"]))
    result.statistics["multiple_testing"] = summary
    result.statistics["bootstrap"] = bootstrap_summary(result)
    result.statistics["suspicious_gains"] = suspicious_gains(result)
    result.statistics["regressions"] = regressions
    result.statistics["regression_onset"] = onset
    log.info("multiple testing: %s", statement)
    return summary
