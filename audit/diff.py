"""Release-to-release diff of two audits: a typed record computed from two RunResults.

Measuring and judging stay separate: this module only compares what the two verdicts and
measurements already say (it never re-judges); :mod:`reports.diff` renders the record.
The two runs are independent, so metric changes carry both CIs and a descriptive
"CIs do not overlap" mark, never a paired test.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from audit.results import RunResult, VariantResult

FAILING = ("FAIL", "ERROR")


class RuleChange(BaseModel):
    rule: str
    variant: str
    metric: str
    old: str | None
    new: str | None
    message: str = ""


class MetricChange(BaseModel):
    variant: str
    metric: str
    old: float | None
    new: float | None
    delta: float | None
    old_ci: list[float | None]
    new_ci: list[float | None]
    cis_disjoint: bool


class SparsityChange(BaseModel):
    method: str
    old: float | None
    new: float | None


class DiffResult(BaseModel):
    old_run: str
    new_run: str
    old_verdict: str | None
    new_verdict: str | None
    same_data: bool
    policy_change: list[str] = Field(default_factory=list)
    model_change: list[str] = Field(default_factory=list)
    added_variants: list[str] = Field(default_factory=list)
    removed_variants: list[str] = Field(default_factory=list)
    newly_failing: list[RuleChange] = Field(default_factory=list)
    recovered: list[RuleChange] = Field(default_factory=list)
    other_rule_changes: list[RuleChange] = Field(default_factory=list)
    sparsity_changes: list[SparsityChange] = Field(default_factory=list)
    metric_changes: list[MetricChange] = Field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.newly_failing else 0


def variant_key(v: VariantResult) -> str:
    """Match key: method with its params, sparsity, seed (the dense baseline is ``dense``)."""
    if v.is_baseline:
        return "dense"
    params = json.dumps(v.point.params, sort_keys=True) if v.point.params else ""
    return f"{v.point.method}{params}@{v.point.sparsity:g}#seed{v.point.seed}"


def _ci_disjoint(a: Any, b: Any) -> bool:
    if None in (a.ci_low, a.ci_high, b.ci_low, b.ci_high):
        return False
    return a.ci_high < b.ci_low or b.ci_high < a.ci_low


def diff_results(old: RunResult, new: RunResult) -> DiffResult:
    """Compare two audits of successive releases."""
    om = {variant_key(v): v for v in old.all_variants()}
    nm = {variant_key(v): v for v in new.all_variants()}
    o_id2key = {v.id: k for k, v in om.items()}
    n_id2key = {v.id: k for k, v in nm.items()}
    ov, nv = old.verdict, new.verdict
    out = DiffResult(
        old_run=old.run_id,
        new_run=new.run_id,
        old_verdict=ov.status if ov else None,
        new_verdict=nv.status if nv else None,
        same_data=[d.model_dump() for d in old.datasets] == [d.model_dump() for d in new.datasets],
        added_variants=sorted(nm[k].id for k in nm.keys() - om.keys()),
        removed_variants=sorted(om[k].id for k in om.keys() - nm.keys()),
    )
    if ov and nv:
        if ov.policy_name != nv.policy_name or ov.policy != nv.policy:
            out.policy_change.append(f"policy {ov.policy_name or ov.policy} → {nv.policy_name or nv.policy}")
        if ov.policy_fingerprint != nv.policy_fingerprint:
            out.policy_change.append(f"policy digest {ov.policy_fingerprint[:12]} → {nv.policy_fingerprint[:12]}")
        orules = {(r.rule, o_id2key.get(r.variant, r.variant), r.metric): r for r in ov.rules}
        nrules = {(r.rule, n_id2key.get(r.variant, r.variant), r.metric): r for r in nv.rules}
        for key in sorted(orules.keys() | nrules.keys()):
            o, n = orules.get(key), nrules.get(key)
            os_, ns = (o.status if o else None), (n.status if n else None)
            if os_ == ns:
                continue
            ch = RuleChange(
                rule=key[0], variant=(n or o).variant, metric=key[2], old=os_, new=ns, message=(n or o).message
            )
            if ns in FAILING and os_ not in FAILING:
                out.newly_failing.append(ch)
            elif os_ in FAILING and ns not in FAILING:
                out.recovered.append(ch)
            else:
                out.other_rule_changes.append(ch)
        for m in sorted(ov.max_compliant_sparsity.keys() | nv.max_compliant_sparsity.keys()):
            a, b = ov.max_compliant_sparsity.get(m), nv.max_compliant_sparsity.get(m)
            if a != b:
                out.sparsity_changes.append(SparsityChange(method=m, old=a, new=b))
    for k in sorted(om.keys() & nm.keys()):
        for a in om[k].measurements:
            b = nm[k].measurement(a.id)
            if b is None:
                continue
            delta = None if a.value is None or b.value is None else b.value - a.value
            out.metric_changes.append(
                MetricChange(
                    variant=nm[k].id,
                    metric=a.id,
                    old=a.value,
                    new=b.value,
                    delta=delta,
                    old_ci=[a.ci_low, a.ci_high],
                    new_ci=[b.ci_low, b.ci_high],
                    cis_disjoint=_ci_disjoint(a, b),
                )
            )
    out.metric_changes.sort(key=lambda c: -abs(c.delta or 0.0))
    return out
