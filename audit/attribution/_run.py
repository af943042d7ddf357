"""Attribution in a run: which regressions, the variant pruned again, one search each (see :mod:`audit.attribution`)."""

from __future__ import annotations

import copy
import fnmatch
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from audit.attribution._search import attribute, refuse
from audit.errors import UsageError
from audit.results import BASELINE_ID, RegressionAttribution, RunResult

if TYPE_CHECKING:
    from audit.config_attribution import AttributionConfig
    from audit.run.session import Session

log = logging.getLogger(__name__)

BOOT_STREAM = 7919
"""Second entry of the bootstrap generator's seed (``[run seed, BOOT_STREAM, regression index]``)."""


def _rules_on(result: RunResult, reg: dict[str, Any], wanted: list[str] | None) -> list[str]:
    """Rules that failed or warned on the regression's variant, on a metric of its suite and dataset."""
    verdict = result.verdict
    if verdict is None:
        return []
    suite, dataset = reg["metric"].split("/")[:2]
    out = []
    for r in verdict.rules:
        if r.variant != reg["variant"] or r.status not in ("FAIL", "WARN"):
            continue
        if r.metric.split("/")[:2] != [suite, dataset]:
            continue
        if wanted is not None and r.rule not in wanted:
            continue
        if r.rule not in out:
            out.append(r.rule)
    return out


def select_regressions(
    result: RunResult, cfg: AttributionConfig, measurable: Callable[[dict[str, Any]], bool] | None = None
) -> tuple[list[dict[str, Any]], int]:
    """The regressions to attribute (smallest q first, at most ``max_regressions``) and how many qualified.

    A regression qualifies when its q is at most the run's FDR level, its metric id matches one of
    ``cfg.metrics`` and, with a list of ``cfg.rules``, one of them failed or warned on its variant
    on a metric of the same suite and dataset. With ``measurable``, the regressions it accepts (a
    suite can name their defining examples) take the places first, so a slot is not spent on a
    metric that cannot be re-measured while an attributable regression waits.
    """
    alpha = (result.statistics.get("multiple_testing") or {}).get("alpha")
    wanted = None if cfg.rules == "all" else list(cfg.rules)
    found = []
    for reg in result.statistics.get("regressions") or []:
        q = reg.get("q_value")
        if reg.get("variant") == BASELINE_ID or q is None or (alpha is not None and q > alpha):
            continue
        if not any(fnmatch.fnmatchcase(reg["metric"], g) for g in cfg.metrics):
            continue
        rules = _rules_on(result, reg, wanted)
        if wanted is not None and not rules:
            continue
        found.append({**reg, "rules": rules})
    found.sort(
        key=lambda r: (r["q_value"], -abs(r["delta"]) if r.get("delta") is not None else 0.0, r["variant"], r["metric"])
    )
    if measurable is not None:
        found.sort(key=lambda r: not measurable(r))  # stable: q order within each part
    return found[: cfg.max_regressions], len(found)


def _record(reg: dict[str, Any], granularity: str) -> RegressionAttribution:
    return RegressionAttribution(
        variant=reg["variant"],
        metric=reg["metric"],
        test=reg.get("test") or "paired",
        q_value=reg.get("q_value"),
        delta=reg.get("delta"),
        rules=list(reg.get("rules") or []),
        status="not_attributable",
        granularity=granularity,
    )


def _rebuild(session: Session, point: Any, pruning: Any) -> tuple[Any, str | None]:
    """The variant pruned again as the run pruned it (masked dense), or why it could not be."""
    import torch

    torch.manual_seed(point.seed)
    model = copy.deepcopy(session.dense)
    record = session.pruners[point.label].prune(model, session.prune_ctx(point))
    model.eval()
    recorded = getattr(pruning, "mask_fingerprint", None)
    if recorded is not None and record.mask_fingerprint != recorded:
        return None, (
            f"pruning again did not reproduce the variant's mask (fingerprint {record.mask_fingerprint} vs the "
            f"recorded {recorded})"
        )
    return model, None


def run_attribution(session: Session, result: RunResult) -> list[RegressionAttribution]:
    """Attribute the run's selected regressions (``config.attribution``); also adds a limitation line."""
    cfg = session.config.attribution
    if not select_regressions(result, cfg)[0]:
        return []
    session.setup()  # the suites' datasets (a resumed run may have skipped it)
    suites = {s.name: s for s in session.suites}
    found: dict[str, Any] = {}

    def examples_of(reg: dict[str, Any]) -> Any:
        """The regression's defining examples (None: no suite can name them), asked once per metric and test."""
        test = reg.get("test") or "paired"
        suite_name, rest = reg["metric"].split("/", 1)
        dataset, _, metric = rest.rpartition("/")
        suite = suites.get(suite_name)
        own = suite is not None and suite.keeps_variant_artifacts  # defined by what it produced on the variant
        key = f"{reg['variant']}:" * own + f"{reg['metric']}@{test}"
        if key not in found:
            ctx = session.base_ctx.for_suite(session.baseline_artifacts.get(suite_name))
            if suite is None:
                found[key] = None
            elif own:
                artifacts = session.variant_artifacts.get(reg["variant"], {}).get(suite_name)
                found[key] = suite.defining_examples(metric, dataset, test, ctx, artifacts=artifacts)
            else:
                found[key] = suite.defining_examples(metric, dataset, test, ctx)
        return found[key]

    def measurable(reg: dict[str, Any]) -> bool:
        return examples_of(reg) is not None

    selected, qualified = select_regressions(result, cfg, measurable)
    n_measurable = sum(1 for reg in selected if measurable(reg))
    if qualified > len(selected):
        result.limitations.append(
            f"attribution: {len(selected)} of {qualified} significant regressions were attributed "
            f"(attribution.max_regressions: {cfg.max_regressions}); those whose metric can be re-measured "
            "on defining examples went first"
        )
    if n_measurable < len(selected):
        log.info(
            "attribution: %d of the %d selected regressions are of metrics no suite can re-measure",
            len(selected) - n_measurable,
            len(selected),
        )
    points = {p.id: p for p in session.points}
    variants = {v.id: v for v in result.variants}
    n_boot = cfg.n_boot if cfg.n_boot is not None else session.config.runtime.n_boot
    out = [_record(reg, cfg.granularity) for reg in selected]
    built: tuple[str, Any, str | None] | None = None
    # variant by variant (each pruned again once), recorded in q order; seeds follow the q order
    for i in sorted(range(len(selected)), key=lambda k: selected[k]["variant"]):
        reg, rec = selected[i], out[i]
        examples = examples_of(reg)
        if examples is None:
            suite_name, rest = reg["metric"].split("/", 1)
            refuse(rec, f"suite {suite_name} gives no defining examples for {rest.rpartition('/')[2]} at {rec.test}")
            continue
        rec.dataset, rec.scope, rec.measure = examples.dataset, examples.scope, examples.measure
        point, vr = points.get(reg["variant"]), variants.get(reg["variant"])
        if point is None or vr is None or point.is_baseline:
            refuse(rec, f"variant {reg['variant']} is not part of this run's plan")
            continue
        t0 = time.perf_counter()
        try:
            if built is None or built[0] != point.id:
                built = None  # one variant model at a time
                model, why = _rebuild(session, point, vr.pruning)
                built = (point.id, model, why)
            _, model, why = built
            if why is not None:
                refuse(rec, why)
                continue
            log.info("attribution: %s %s at %s (%s)", rec.variant, rec.metric, rec.test, examples.scope)
            attribute(
                rec,
                dense=session.dense,
                variant=model,
                adapter=session.adapter,
                predictor=session.predictor,
                examples=examples,
                budget=cfg.budget_forward_passes,
                granularity=cfg.granularity,
                n_boot=n_boot,
                level=session.config.runtime.ci_level,
                seed=[session.config.seed, BOOT_STREAM, i],
                with_diagnostics=cfg.diagnostics,
                holdout=cfg.holdout,
            )
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed attribution is recorded, the audit's results stand
            log.error("attribution of %s %s failed: %s", rec.variant, rec.metric, exc)
            refuse(rec, f"attribution failed: {type(exc).__name__}: {exc}")
        rec.wall_time_s = round(time.perf_counter() - t0, 3)
        if rec.status == "not_attributable":
            log.info("attribution: %s not attributable: %s", rec.variant, rec.reason)
    return out
