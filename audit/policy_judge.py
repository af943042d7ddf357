"""Judging one policy rule on one variant: select, aggregate, compare to the bound (torch-free).

:func:`audit.policy.evaluate_policy` calls :func:`judge` for every (rule, variant) pair
that :func:`applies`; waivers and the overall status are :mod:`audit.policy_waivers`.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from audit.registry import stage_names
from audit.results import GroupValue, Measurement, MetricInfo, RuleResult, RunResult, VariantResult

if TYPE_CHECKING:
    from audit.policy import Rule


def applies(rule: Rule, variant: VariantResult) -> bool:
    """Whether ``rule`` judges ``variant`` (its ``applies_to``: baseline, methods, variant ids, sparsity)."""
    a = rule.applies_to
    if variant.is_baseline:
        return a.baseline and rule.comparison == "absolute"
    point = variant.point
    if a.methods is not None and not any(
        fnmatch.fnmatchcase(point.method, m) or fnmatch.fnmatchcase(point.label or point.method, m) for m in a.methods
    ):
        return False
    if a.variants is not None and not any(fnmatch.fnmatchcase(variant.id, v) for v in a.variants):
        return False
    return a.sparsity.min - 1e-9 <= point.sparsity <= a.sparsity.max + 1e-9


def _pick(value: float | None, lo: float | None, hi: float | None, use: str) -> float | None:
    if use == "ci_lower":
        return lo
    if use == "ci_upper":
        return hi
    return value


def _usable_groups(rule: Rule, m: Measurement) -> tuple[dict[str, dict[str, GroupValue]], str | None, int]:
    """Per feature, the groups a group aggregate may use; (groups, problem, n ignored)."""
    feats = m.groups
    if rule.feature is not None:
        if rule.feature not in feats:
            return {}, f"no groups for feature {rule.feature!r} (have {sorted(feats)})", 0
        feats = {rule.feature: feats[rule.feature]}
    if not feats:
        return {}, "no per-group values", 0
    out: dict[str, dict[str, GroupValue]] = {}
    ignored = 0
    for feat, groups in feats.items():
        keep = {}
        for g, gv in groups.items():
            if gv.value is None or gv.n < rule.min_group_n:
                ignored += 1
                continue
            keep[g] = gv
        out[feat] = keep
    return out, None, ignored


def _spread(rule: Rule, vals: list[GroupValue]) -> float | None:
    """Difference (largest minus smallest) or ratio (smallest over largest) of group values.

    ``use: ci_upper`` gives the upper end of the plausible range of the aggregate and
    ``ci_lower`` its lower end: for a difference, the largest plausible gap is
    ``max(ci_high) - min(ci_low)``; for a ratio, the smallest plausible ratio is
    ``min(ci_low) / max(ci_high)``.
    """

    def lo(gv: GroupValue) -> float:
        return gv.ci_low if gv.ci_low is not None else gv.value  # type: ignore[return-value]

    def hi(gv: GroupValue) -> float:
        return gv.ci_high if gv.ci_high is not None else gv.value  # type: ignore[return-value]

    pts = [gv.value for gv in vals if gv.value is not None]
    # which ends of the group CIs give the widest (wide=True) or narrowest spread
    wide = (rule.use == "ci_upper") if rule.aggregate == "difference" else (rule.use == "ci_lower")
    if rule.use == "point":
        tops, bottoms = pts, pts
    elif wide:
        tops, bottoms = [hi(gv) for gv in vals], [lo(gv) for gv in vals]
    else:
        tops, bottoms = [lo(gv) for gv in vals], [hi(gv) for gv in vals]
    if rule.aggregate == "difference":
        return max(0.0, max(tops) - min(bottoms))
    top = max(tops)
    return min(1.0, min(bottoms) / top) if top > 0 else None


def _aggregate(rule: Rule, m: Measurement, higher_is_better: bool | None) -> tuple[float | None, str]:
    """The rule's aggregate of measurement ``m``; returns (value, note)."""
    if rule.aggregate == "overall":
        v = _pick(m.value, m.ci_low, m.ci_high, rule.use)
        if v is None and m.value is not None:
            return None, f"the measurement has no {rule.use.replace('_', ' ')}"
        return v, ""
    feats, problem, ignored = _usable_groups(rule, m)
    if problem is not None:
        return None, problem
    if rule.aggregate == "worst_group" and higher_is_better is None:
        return None, f"{m.metric} has no better direction, so its worst group is undefined"
    best: float | None = None
    where = ""
    for feat, groups in feats.items():
        vals = list(groups.items())
        if len(vals) < (1 if rule.aggregate == "worst_group" else 2):
            continue
        if rule.aggregate == "worst_group":
            scored = [(g, _pick(gv.value, gv.ci_low, gv.ci_high, rule.use)) for g, gv in vals]
            scored = [(g, v) for g, v in scored if v is not None]
            if not scored:
                continue
            g, v = (min if higher_is_better else max)(scored, key=lambda t: t[1])
            if best is None or (v < best if higher_is_better else v > best):
                best, where = v, f"{feat}={g}"
        else:
            v = _spread(rule, [gv for _, gv in vals])
            if v is None:
                continue
            if best is None or (v > best if rule.aggregate == "difference" else v < best):
                best, where = v, feat
    note = f"worst: {where}" if where else ""
    if ignored and rule.min_group_n:
        note += f"; {ignored} group(s) under n={rule.min_group_n} ignored"
    if best is None and not note:
        note = "too few groups with values"
    return best, note.strip("; ")


def _compare(rule: Rule, observed: float, base: float | None) -> float | None:
    if rule.comparison == "absolute":
        return observed
    if base is None:
        return None
    if rule.comparison == "delta_vs_baseline":
        return observed - base
    if base == 0:
        return None
    return observed / base - 1.0


def _worst_group_change(
    rule: Rule, m: Measurement, bm: Measurement, higher_is_better: bool | None
) -> tuple[float | None, float | None, float | None, str]:
    """Each group's change vs the same group on dense; the worst one.

    Returns (observed, baseline, compared, note) for the worst group. Comparing the
    worst group of the variant with the worst group of dense would hide a group that
    lost much while staying above another group: this compares like with like.
    """
    if higher_is_better is None:
        return None, None, None, f"{m.metric} has no better direction, so its worst group is undefined"
    feats, problem, ignored = _usable_groups(rule, m)
    if problem is not None:
        return None, None, None, problem
    worst: tuple[float, float, float, str] | None = None
    unmatched = 0
    for feat, groups in feats.items():
        base_groups = bm.groups.get(feat, {})
        for g, gv in groups.items():
            bg = base_groups.get(g)
            observed = _pick(gv.value, gv.ci_low, gv.ci_high, rule.use)
            if bg is None or bg.value is None or observed is None:
                unmatched += 1
                continue
            compared = _compare(rule, observed, bg.value)
            if compared is None:
                unmatched += 1
                continue
            if worst is None or (compared < worst[2] if higher_is_better else compared > worst[2]):
                worst = (observed, bg.value, compared, f"{feat}={g}")
    notes = []
    if worst is not None:
        notes.append(f"worst: {worst[3]}")
    if ignored and rule.min_group_n:
        notes.append(f"{ignored} group(s) under n={rule.min_group_n} ignored")
    if unmatched:
        notes.append(f"{unmatched} group(s) without a dense value ignored")
    if worst is None:
        return None, None, None, "; ".join(notes) or "no group has a value on both models"
    return worst[0], worst[1], worst[2], "; ".join(notes)


def _check(rule: Rule, value: float) -> bool:
    eps = 1e-12
    if rule.min is not None and value < rule.min - eps:
        return False
    return not (rule.max is not None and value > rule.max + eps)


def n_boot_of(result: RunResult) -> int | None:
    """``runtime.n_boot`` of the run (None when the results do not say)."""
    runtime = result.config.get("runtime") if isinstance(result.config, dict) else None
    value = runtime.get("n_boot") if isinstance(runtime, dict) else None
    return value if isinstance(value, int) else None


def _missing_ci(rule: Rule, m: Measurement, n_boot: int | None) -> str | None:
    """Why a rule judging a CI end cannot judge ``m`` (it carries no such end), else None.

    Overall aggregates need the measurement's own end; group aggregates need it on at
    least one group. Falling back to the point estimate would quietly judge a cautious
    rule on the less cautious number.
    """
    if rule.use == "point":
        return None
    end = "ci_low" if rule.use == "ci_lower" else "ci_high"
    if rule.aggregate == "overall":
        if m.value is None or getattr(m, end) is not None:
            return None
    else:
        groups = [gv for gs in m.groups.values() for gv in gs.values() if gv.value is not None]
        if not groups or any(getattr(gv, end) is not None for gv in groups):
            return None
    why = (
        f"runtime.n_boot is {n_boot}, so no bootstrap CI was computed"
        if n_boot is not None and n_boot < 2
        else "no CI was computed for it"
    )
    return (
        f"cannot judge the CI's {rule.use.split('_')[1]} end: the measurement has no confidence interval ({why}); "
        "set runtime.n_boot (e.g. 1000) or use: point"
    )


def _not_applicable(rule: Rule, variant: VariantResult) -> str | None:
    """The reasons the suites gave for not producing the metrics this rule selects, else None."""
    reasons = sorted({r for mid, r in variant.not_applicable.items() if fnmatch.fnmatchcase(mid, rule.metric)})
    return "; ".join(reasons) if reasons else None


def judge(
    rule: Rule,
    variant: VariantResult,
    base: VariantResult,
    catalog: dict[str, MetricInfo],
    *,
    n_boot: int | None = None,
) -> list[RuleResult]:
    """The results of one rule on one variant: one per matching measurement, or one saying why none."""
    common = dict(
        rule=rule.id, variant=variant.id, severity=rule.severity, bound=rule.bound_text(), rationale=rule.rationale
    )
    suite_pat = rule.metric.split("/", 1)[0]
    # a variant whose pruning or a stage (deployment) failed was never audited: every rule is an ERROR naming why
    stages = stage_names()
    pruning_failed = [e for e in variant.errors if e.suite == "pruning" or e.suite in stages]
    crashed = [e for e in variant.errors if fnmatch.fnmatchcase(e.suite, suite_pat) or e.suite == "*"]
    matches = [m for m in variant.measurements if fnmatch.fnmatchcase(m.id, rule.metric)]
    if not matches:
        if pruning_failed or crashed:
            e = (pruning_failed or crashed)[0]
            what = f"{e.suite} failed" if pruning_failed else f"suite {e.suite!r} crashed"
            msg = f"{what} on this variant: {e.error_type}: {e.message}"
            return [RuleResult(metric=rule.metric, status="ERROR", message=msg, **common)]
        # the suite ran and said why it could not produce the metric (e.g. no group columns): nothing to judge
        not_applicable = _not_applicable(rule, variant)
        if not_applicable is not None:
            return [
                RuleResult(metric=rule.metric, status="SKIP", message=f"not applicable: {not_applicable}", **common)
            ]
        if rule.required:
            return [RuleResult(metric=rule.metric, status="ERROR", message="metric missing from results", **common)]
        return [RuleResult(metric=rule.metric, status="SKIP", message="metric not measured", **common)]
    base_measurements = {m.id: m for m in base.measurements}
    out = []
    for m in matches:
        suite, _, rest = m.id.partition("/")
        info = catalog.get(f"{suite}/{rest.rsplit('/', 1)[-1]}")
        hib = info.higher_is_better if info else None
        base_value = None
        bm = None
        if rule.comparison != "absolute":
            bm = base_measurements.get(m.id)
            if bm is None:
                out.append(
                    RuleResult(
                        metric=m.id,
                        status="ERROR" if rule.required else "SKIP",
                        message="the dense baseline has no value for this metric",
                        **common,
                    )
                )
                continue
        # a suite marks a measurement that rests on too few examples to judge (details["insufficient"]: why)
        too_few = m.details.get("insufficient") or (bm.details.get("insufficient") if bm is not None else None)
        if too_few:
            out.append(RuleResult(metric=m.id, status="SKIP", message=f"could not judge: {too_few}", **common))
            continue
        no_ci = _missing_ci(rule, m, n_boot)
        if no_ci is not None:
            # a cautious rule that cannot see its CI end must not pass unjudged: ERROR (SKIP if not required)
            out.append(RuleResult(metric=m.id, status="ERROR" if rule.required else "SKIP", message=no_ci, **common))
            continue
        if rule.aggregate == "worst_group" and bm is not None:
            observed, base_value, compared, note = _worst_group_change(rule, m, bm, hib)
        else:
            observed, note = _aggregate(rule, m, hib)
            compared = None
            if bm is not None:
                base_rule = rule.model_copy(update={"use": "point"})
                base_value, _ = _aggregate(base_rule, bm, hib)
            if observed is not None:
                compared = _compare(rule, observed, base_value)
        if observed is None:
            # a group aggregate on data without group columns is a coverage gap, not a crash
            no_groups = note == "no per-group values" and rule.feature is None
            status = "ERROR" if rule.required and not no_groups else "SKIP"
            out.append(RuleResult(metric=m.id, status=status, message=f"no value ({note or 'undefined'})", **common))
            continue
        if compared is None:
            status = "ERROR" if rule.required else "SKIP"
            out.append(
                RuleResult(
                    metric=m.id,
                    status=status,
                    observed=observed,
                    baseline=base_value,
                    message="cannot compare to the dense baseline (missing or zero)",
                    **common,
                )
            )
            continue
        ok = _check(rule, compared)
        status = "PASS" if ok else ("FAIL" if rule.severity == "fail" else "WARN")
        what = {
            "absolute": "value",
            "delta_vs_baseline": "change vs dense",
            "relative_to_baseline": "relative change vs dense",
        }[rule.comparison]
        agg = "" if rule.aggregate == "overall" else f"{rule.aggregate.replace('_', ' ')} "
        use = "" if rule.use == "point" else f" ({rule.use.replace('_', ' ')})"
        msg = f"{agg}{what}{use} {compared:+.4g} {'meets' if ok else 'violates'} {rule.bound_text()}"
        if note:
            msg += f" ({note})"
        out.append(
            RuleResult(
                metric=m.id,
                status=status,
                observed=observed,
                baseline=base_value,
                compared=compared,
                message=msg,
                **common,
            )
        )
    return out
