"""A suite's ``extra_metrics``: local ``evaluate`` modules computed on its per-example predictions.

A suite entry of the config may name local metric modules (:class:`audit.config.ExtraMetricConfig`).
Each is loaded once per run (:func:`load_extra_metrics`, before the model: a module that fails
to import is a usage error, exit 4, before anything is written) with :func:`evaluate.load` from its
file, offline. After the suite has run on a variant, :func:`extra_measurements` computes each module
on what the suite's :meth:`~audit.suite.Suite.prediction_sets` gives:

* ``<suite>/<dataset>/<name>``: the metric on the whole set, with a percentile bootstrap CI
  (``runtime.n_boot`` resamples, or the metric's own ``n_boot``; ``runtime.ci_level``), and per
  group of each sensitive column (fairlearn ``MetricFrame`` with ``module.compute`` as its metric; point values, no CI);
* ``<suite>/<dataset>/<name>_delta`` (pruned variants only): the variant's value minus dense's on
  the same examples; its CI is the percentile interval of the paired bootstrap deltas (the same
  resampled example indices for both models, seeded by the run's seed and the metric id) and its
  :class:`audit.paired.PairedComparison` sits at ``details["paired"]`` (bootstrap p-value), where the
  run's FDR control finds it; per group: the group's change (point values).

Every resample is one ``compute`` call (a few ms each for evaluate's input checks): a variant costs
``2 * n_boot`` calls per metric and dataset. A module that raises during ``compute`` does not crash
its suite: the suite's own metrics stand and the variant records a :class:`audit.results.SuiteError`
naming the module, so a policy rule on the extra metric is an ERROR.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.errors import PluginError
from audit.fingerprint import file_sha256
from audit.results import GroupValue, Measurement, MetricInfo
from audit.stats import SMALL_GROUP_N

if TYPE_CHECKING:
    from audit.config import AuditConfig, ExtraMetricConfig
    from audit.suite import PredictionSet, Suite, SuiteContext  # noqa: F401

_OFFLINE_VARS = ("HF_EVALUATE_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class ExtraMetricError(Exception):
    """An extra metric module failed while computing (recorded as the variant's suite error)."""


@dataclass
class LoadedMetric:
    """One configured extra metric with its loaded ``evaluate`` module."""

    suite: str
    config: ExtraMetricConfig
    path: Path
    sha256: str
    module: Any
    key: str | None = None
    """The result key reported: ``config.key``, else the first key of the first ``compute`` result."""

    @property
    def name(self) -> str:
        return self.config.metric_name

    @property
    def label(self) -> str:
        return f"extra metric {self.name!r} of suite {self.suite!r} ({self.config.path})"


# -- loading ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def offline_evaluate() -> Iterator[Any]:
    """``evaluate`` imported and used with every hub access switched off; the environment is restored after.

    evaluate and huggingface_hub read their offline switches when first imported, so the
    variables are set before the import and the modules' flags are set for the duration too.
    """
    saved = {v: os.environ.get(v) for v in _OFFLINE_VARS}
    os.environ.update({v: "1" for v in _OFFLINE_VARS})
    flags: list[tuple[Any, str, Any]] = []
    try:
        import evaluate
        import evaluate.config as ev_config
        import huggingface_hub.constants as hub_constants

        for mod, attr in ((ev_config, "HF_EVALUATE_OFFLINE"), (hub_constants, "HF_HUB_OFFLINE")):
            before = saved.get(attr)
            flags.append((mod, attr, (before or "").upper() in {"1", "ON", "YES", "TRUE"}))
            setattr(mod, attr, True)
        yield evaluate
    finally:
        for mod, attr, value in flags:
            setattr(mod, attr, value)
        for v, value in saved.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value


def load_extra_metrics(config: AuditConfig) -> dict[str, list[LoadedMetric]]:
    """Every suite's extra metric modules, loaded (suite name -> its metrics, in config order)."""
    out: dict[str, list[LoadedMetric]] = {}
    for s in config.suites:
        for j, em in enumerate(s.extra_metrics):
            path = config.resolve(em.path)
            assert path is not None
            out.setdefault(s.name, []).append(load_module(s.name, j, em, path))
    return out


def load_module(suite: str, index: int, em: ExtraMetricConfig, path: Path) -> LoadedMetric:
    """Load one module from its local file with :func:`evaluate.load` (offline); :class:`PluginError` if it fails."""
    where = f"suites.{suite}.extra_metrics[{index}]"
    if not path.is_file():
        raise PluginError(
            f"no metric module at {path}", where=where, hint="point path at an evaluate module's .py file"
        )
    sha = file_sha256(path)
    with offline_evaluate() as evaluate:
        try:
            module = evaluate.load(str(path.resolve()), keep_in_memory=True)
        except Exception as exc:  # noqa: BLE001 - any failure of a user's module is a usage error
            raise PluginError(
                f"metric module {path} could not be loaded: {type(exc).__name__}: {_one_line(exc)}",
                where=where,
                hint="the module must import cleanly and define one evaluate.Metric subclass",
            ) from None
        if not isinstance(module, evaluate.EvaluationModule):
            raise PluginError(f"{path} loaded as a {type(module).__name__}, not an evaluate module", where=where)
    return LoadedMetric(suite=suite, config=em, path=path, sha256=sha, module=module)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


# -- the catalog ----------------------------------------------------------------------------------------


def extra_catalog(config: AuditConfig) -> dict[str, MetricInfo]:
    """Catalog entries of every configured extra metric and its ``_delta``, with the module's path and sha256."""
    out: dict[str, MetricInfo] = {}
    for s in config.suites:
        for em in s.extra_metrics:
            path = config.resolve(em.path)
            module = {"path": em.path, "sha256": file_sha256(path) if path is not None and path.is_file() else ""}
            low, high = em.range if em.range is not None else (None, None)
            span = high - low if low is not None and high is not None else None
            what = em.meaning or f"computed by the evaluate module {em.path}"
            out[f"{s.name}/{em.metric_name}"] = MetricInfo(
                suite=s.name,
                name=em.metric_name,
                meaning=what,
                higher_is_better=em.higher_is_better,
                range=[low, high],
                module=module,
            )
            out[f"{s.name}/{em.delta_name}"] = MetricInfo(
                suite=s.name,
                name=em.delta_name,
                meaning=f"Variant minus dense {em.metric_name} on the same examples (paired bootstrap CI).",
                higher_is_better=em.higher_is_better,
                range=[-span, span] if span is not None else [None, None],
                module=module,
            )
    return out


# -- computing ------------------------------------------------------------------------------------------


def extra_measurements(
    suite: Suite, metrics: list[LoadedMetric], artifacts: dict[str, Any], ctx: SuiteContext
) -> list[Measurement]:
    """Each extra metric on each of the suite's prediction sets; paired deltas when ``ctx.baseline`` is set."""
    sets = suite.prediction_sets(artifacts, ctx)
    base_sets = {p.dataset: p for p in suite.prediction_sets(ctx.baseline, ctx)} if ctx.baseline is not None else {}
    out: list[Measurement] = []
    for lm in metrics:
        for ps in sets:
            out.extend(_one(lm, ps, base_sets.get(ps.dataset), ctx))
    return out


def _score(lm: LoadedMetric, predictions: np.ndarray, references: np.ndarray) -> float:
    try:
        result = lm.module.compute(predictions=predictions, references=references, **lm.config.kwargs)
    except Exception as exc:  # noqa: BLE001 - reported as the variant's error, naming the module
        raise ExtraMetricError(f"{lm.label} raised in compute: {type(exc).__name__}: {_one_line(exc)}") from exc
    if not isinstance(result, dict) or not result:
        raise ExtraMetricError(f"{lm.label}: compute returned {type(result).__name__}, not a dict of results")
    key = lm.key or lm.config.key or next(iter(result))
    lm.key = key
    if key not in result:
        raise ExtraMetricError(f"{lm.label}: compute returned keys {sorted(result)}, not {key!r} (key:)")
    value = result[key]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ExtraMetricError(f"{lm.label}: result {key!r} is a {type(value).__name__}, not a number") from None


def _by_group(lm: LoadedMetric, ps: PredictionSet) -> dict[str, dict[str, GroupValue]]:
    """The metric per group of each sensitive column, through fairlearn's MetricFrame."""
    from fairlearn.metrics import MetricFrame

    def metric(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return _score(lm, np.asarray(y_pred), np.asarray(y_true))

    out: dict[str, dict[str, GroupValue]] = {}
    for feat, col in ps.groups.items():
        col = np.asarray(col, dtype=object).astype(str)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mf = MetricFrame(
                metrics={lm.name: metric},
                y_true=ps.references,
                y_pred=ps.predictions,
                sensitive_features={feat: col},
            )
        for group in mf.by_group.index:
            n = int((col == group).sum())
            out.setdefault(feat, {})[str(group)] = GroupValue(
                value=float(mf.by_group.loc[group, lm.name]), n=n, small_n=n < SMALL_GROUP_N
            )
    return out


def _resample_index(ctx: SuiteContext, metric_id: str, n: int, n_boot: int) -> np.ndarray:
    """The run's resamples of ``n`` examples for one metric id: the same for dense and every variant."""
    from audit.stats import bootstrap_indices

    rng = np.random.default_rng([ctx.seed, zlib.crc32(metric_id.encode("utf-8"))])
    return bootstrap_indices(n, n_boot if n else 0, rng)


def _one(lm: LoadedMetric, ps: PredictionSet, base: PredictionSet | None, ctx: SuiteContext) -> list[Measurement]:
    from audit import paired, stats
    from audit.suite import PredictionSet

    preds, refs = np.asarray(ps.predictions), np.asarray(ps.references)
    n = len(refs)
    metric_id = f"{lm.suite}/{ps.dataset}/{lm.name}"
    value = _score(lm, preds, refs) if n else float("nan")
    details = {"extra_metric": {"module": lm.config.path, "sha256": lm.sha256, "key": lm.key}}
    n_boot = lm.config.n_boot if lm.config.n_boot is not None else ctx.n_boot
    index = _resample_index(ctx, metric_id, n, n_boot)
    boot = np.array([_score(lm, preds[i], refs[i]) for i in index])
    lo, hi = stats.percentile_ci(boot, ctx.ci_level) if len(boot) else (None, None)
    groups = _by_group(lm, ps) if n else {}
    m = Measurement(
        suite=lm.suite,
        dataset=ps.dataset,
        metric=lm.name,
        value=value,
        ci_low=lo,
        ci_high=hi,
        ci_method=stats.ci_method(f"percentile bootstrap, {n_boot} resamples, {ctx.ci_level:.0%}", n_boot)
        if lo is not None
        else None,
        n=n,
        groups=groups,
        details=details,
    )
    if base is None:
        return [m]
    base_preds = np.asarray(base.predictions)
    if len(base_preds) != n:
        raise ExtraMetricError(
            f"{lm.label}: dense has {len(base_preds)} predictions on {ps.dataset!r}, the variant {n}"
        )
    base_value = _score(lm, base_preds, refs) if n else float("nan")
    base_boot = np.array([_score(lm, base_preds[i], refs[i]) for i in index])
    rec = paired.paired_continuous(
        baseline=base_value,
        value=value,
        boot_deltas=boot - base_boot if len(boot) else None,
        level=ctx.ci_level,
        test="paired bootstrap (dense and variant on the same resamples)",
        n=n,
    )
    delta = paired.delta_measurement(rec, suite=lm.suite, dataset=ps.dataset, metric=lm.config.delta_name)
    delta.details["extra_metric"] = details["extra_metric"]
    if groups:
        base_groups = _by_group(lm, PredictionSet(ps.dataset, base_preds, refs, ps.groups))
        for feat, by in groups.items():
            for g, gv in by.items():
                b = base_groups.get(feat, {}).get(g)
                d = gv.value - b.value if b is not None and gv.value is not None and b.value is not None else None
                delta.groups.setdefault(feat, {})[g] = GroupValue(value=d, n=gv.n, small_n=gv.small_n)
    return [m, delta]


def store_fingerprint(config: AuditConfig, suite: str) -> list[dict[str, Any]]:
    """What a suite's stored units depend on through its extra metrics (config and module contents)."""
    out = []
    for s in config.suites:
        if s.name != suite:
            continue
        for em in s.extra_metrics:
            path = config.resolve(em.path)
            sha = file_sha256(path) if path is not None and path.is_file() else ""
            out.append({**em.model_dump(mode="json"), "sha256": sha})
    return out
