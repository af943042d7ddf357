"""Release-to-release diff of two audits: a typed record computed from two RunResults.

Measuring and judging stay separate: this module only compares what the two verdicts and
measurements already say (it never re-judges); :mod:`reports.diff` renders the record.
The two runs are independent, so metric changes carry both CIs and a descriptive
"CIs do not overlap" mark, never a paired test.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from audit.results import DatasetIdentity, RunResult, VariantResult, Verdict

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
    changed: bool = False
    """The value or its CI differs (a value that appeared or disappeared counts)."""
    data_changed: bool = False
    """The metric's dataset changed between the runs (fingerprint or rows): the change may come from the data."""


class SparsityChange(BaseModel):
    method: str
    old: float | None
    new: float | None


class PolicyRuleChange(BaseModel):
    """A rule of the policy added, removed or with changed settings (``fields``: name -> [old, new])."""

    rule: str
    change: Literal["added", "removed", "changed"]
    fields: dict[str, list[Any]] = Field(default_factory=dict)


class PolicyChange(BaseModel):
    """The judging policy changed: its name or its content (sha256 digest), with the rules that differ."""

    old_name: str
    new_name: str
    old_digest: str
    new_digest: str
    rules: list[PolicyRuleChange] = Field(default_factory=list)
    rules_recorded: bool = True
    """Both results files record the policy's rules (older ones may not: then only the digest is known)."""


class ModelChange(BaseModel):
    """The dense model changed: its fingerprint (sha256 of its files), source or revision."""

    old_source: str
    new_source: str
    old_revision: str | None
    new_revision: str | None
    old_fingerprint: str
    new_fingerprint: str


class DatasetChange(BaseModel):
    """A dataset evaluated in only one run, or whose content fingerprint or row count changed."""

    id: str
    change: Literal["added", "removed", "changed"]
    old_fingerprint: str | None = None
    new_fingerprint: str | None = None
    old_n: int | None = None
    new_n: int | None = None


class DiffResult(BaseModel):
    old_run: str
    new_run: str
    old_verdict: str | None
    new_verdict: str | None
    same_data: bool
    """No dataset was added, removed or changed (fingerprint, rows); source paths may differ."""
    policy_change: PolicyChange | None = None
    model_change: ModelChange | None = None
    dataset_changes: list[DatasetChange] = Field(default_factory=list)
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


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def policy_change(ov: Verdict, nv: Verdict) -> PolicyChange | None:
    """What changed in the policy: name, digest and (where both runs record them) the rules' settings."""
    old_name, new_name = ov.policy_name or ov.policy, nv.policy_name or nv.policy
    if old_name == new_name and ov.policy_fingerprint == nv.policy_fingerprint:
        return None
    orules = {r["id"]: _flat(r) for r in ov.policy_rules if "id" in r}
    nrules = {r["id"]: _flat(r) for r in nv.policy_rules if "id" in r}
    rules: list[PolicyRuleChange] = []
    for rid in sorted(orules.keys() | nrules.keys()):
        o, n = orules.get(rid), nrules.get(rid)
        if o is None or n is None:
            rules.append(PolicyRuleChange(rule=rid, change="added" if o is None else "removed"))
            continue
        fields = {k: [o.get(k), n.get(k)] for k in sorted(o.keys() | n.keys()) if o.get(k) != n.get(k)}
        if fields:
            rules.append(PolicyRuleChange(rule=rid, change="changed", fields=fields))
    return PolicyChange(
        old_name=old_name,
        new_name=new_name,
        old_digest=ov.policy_fingerprint,
        new_digest=nv.policy_fingerprint,
        rules=rules,
        rules_recorded=bool(ov.policy_rules) and bool(nv.policy_rules),
    )


def model_change(old: RunResult, new: RunResult) -> ModelChange | None:
    a, b = old.model, new.model
    if (a.fingerprint, a.source, a.revision) == (b.fingerprint, b.source, b.revision):
        return None
    return ModelChange(
        old_source=a.source,
        new_source=b.source,
        old_revision=a.revision,
        new_revision=b.revision,
        old_fingerprint=a.fingerprint,
        new_fingerprint=b.fingerprint,
    )


def dataset_changes(old: list[DatasetIdentity], new: list[DatasetIdentity]) -> list[DatasetChange]:
    """Datasets matched by id; a change of content fingerprint or row count is a change, a moved file is not."""
    om, nm = {d.id: d for d in old}, {d.id: d for d in new}
    out: list[DatasetChange] = []
    for did in sorted(om.keys() | nm.keys()):
        a, b = om.get(did), nm.get(did)
        if a is not None and b is not None and (a.fingerprint, a.n) == (b.fingerprint, b.n):
            continue
        change = "added" if a is None else "removed" if b is None else "changed"
        out.append(
            DatasetChange(
                id=did,
                change=change,
                old_fingerprint=a.fingerprint if a else None,
                new_fingerprint=b.fingerprint if b else None,
                old_n=a.n if a else None,
                new_n=b.n if b else None,
            )
        )
    return out


def diff_results(old: RunResult, new: RunResult) -> DiffResult:
    """Compare two audits of successive releases."""
    om = {variant_key(v): v for v in old.all_variants()}
    nm = {variant_key(v): v for v in new.all_variants()}
    o_id2key = {v.id: k for k, v in om.items()}
    n_id2key = {v.id: k for k, v in nm.items()}
    ov, nv = old.verdict, new.verdict
    data = dataset_changes(old.datasets, new.datasets)
    changed_data = {c.id for c in data}
    out = DiffResult(
        old_run=old.run_id,
        new_run=new.run_id,
        old_verdict=ov.status if ov else None,
        new_verdict=nv.status if nv else None,
        same_data=not data,
        model_change=model_change(old, new),
        dataset_changes=data,
        added_variants=sorted(nm[k].id for k in nm.keys() - om.keys()),
        removed_variants=sorted(om[k].id for k in om.keys() - nm.keys()),
    )
    if ov and nv:
        out.policy_change = policy_change(ov, nv)
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
            if ns in FAILING and os_ not in FAILING:  # a failing rule on an added variant fails newly too
                out.newly_failing.append(ch)
            elif os_ in FAILING and ns is not None and ns not in FAILING:  # not a removed variant or rule
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
                    changed=(a.value, a.ci_low, a.ci_high) != (b.value, b.ci_low, b.ci_high),
                    data_changed=a.dataset in changed_data or b.dataset in changed_data,
                )
            )
    out.metric_changes.sort(key=lambda c: -abs(c.delta or 0.0))
    return out
