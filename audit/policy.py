"""Policies: YAML thresholds that turn measurements into a release verdict.

A rule selects metrics by id (glob over ``suite/dataset/metric``), aggregates over
groups, compares to an absolute bound or to the dense baseline, and yields PASS,
WARN, FAIL, ERROR or SKIP per variant. A metric that is missing, or a suite that
crashed, is ERROR, which fails the gate unless ``fail_on_error: false``.

This module never imports torch: ``prune-audit check`` re-gates a saved
``results.json`` in well under a second.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from audit.errors import ConfigError, ExitCode
from audit.results import RuleResult, RunResult, VariantResult, Verdict
from audit.yamlio import YamlDocument, load_yaml, parse_yaml, validation_to_config_error


def _policy_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("policies")))


Aggregate = Literal["overall", "worst_group", "difference", "ratio"]
Comparison = Literal["absolute", "delta_vs_baseline", "relative_to_baseline"]


def _err(kind: str, message: str, hint: str | None = None) -> PydanticCustomError:
    return PydanticCustomError(kind, message, {"hint": hint} if hint else {})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparsityRange(_Strict):
    """Inclusive sparsity range."""

    min: float = Field(0.0, ge=0.0, le=1.0)
    max: float = Field(1.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _order(self) -> SparsityRange:
        if self.min > self.max:
            raise _err("range_order", f"sparsity.min {self.min} is above sparsity.max {self.max}")
        return self


class AppliesTo(_Strict):
    """Which variants a rule judges."""

    methods: list[str] | None = Field(None, description="Method names or labels (globs); default all.")
    variants: list[str] | None = Field(None, description="Variant id globs; default all.")
    sparsity: SparsityRange = Field(default_factory=SparsityRange)
    baseline: bool = Field(False, description="Also judge the dense baseline (absolute rules only).")


class Rule(_Strict):
    """One threshold. See ``policies/default.yaml`` for annotated examples."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    metric: str = Field(description="Metric id glob: suite/dataset/metric, e.g. `performance/*/accuracy`.")
    aggregate: Aggregate = "overall"
    feature: str | None = Field(None, description="Sensitive feature for group aggregates (default: all).")
    comparison: Comparison = "absolute"
    min: float | None = None
    max: float | None = None
    use: Literal["point", "ci_lower", "ci_upper"] = "point"
    severity: Literal["fail", "warn"] = "fail"
    applies_to: AppliesTo = Field(default_factory=AppliesTo)
    required: bool = Field(True, description="Missing metric is ERROR (true) or SKIP (false).")
    min_group_n: int = Field(0, ge=0, description="Ignore smaller groups in group aggregates.")
    rationale: str = ""

    @field_validator("metric")
    @classmethod
    def _metric_shape(cls, value: str) -> str:
        if value.count("/") != 2:
            raise _err(
                "metric_id",
                f"metric must look like suite/dataset/metric (globs allowed), found {value!r}",
                "e.g. performance/*/accuracy",
            )
        return value

    @model_validator(mode="after")
    def _bounds(self) -> Rule:
        if self.min is None and self.max is None:
            raise _err("no_bound", f"rule {self.id!r} has neither min nor max")
        for b in (self.min, self.max):
            if b is not None and not math.isfinite(b):
                raise _err("bound", f"rule {self.id!r}: bounds must be finite numbers")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise _err("bound", f"rule {self.id!r}: min {self.min} is above max {self.max}")
        if self.comparison != "absolute" and self.applies_to.baseline:
            raise _err(
                "baseline_delta",
                f"rule {self.id!r} compares to the baseline, so it cannot judge the baseline itself",
                "set applies_to.baseline: false",
            )
        direction = effective_direction(self, _registry_direction(self.metric))
        if direction is True and self.max is not None and self.min is None:
            raise _err(
                "bound_direction",
                f"rule {self.id!r}: {self.metric} ({self.aggregate}) is higher-is-better, so a max "
                "bound points the wrong way",
                "use min: (the lowest acceptable value)",
            )
        if direction is False and self.min is not None and self.max is None:
            raise _err(
                "bound_direction",
                f"rule {self.id!r}: {self.metric} ({self.aggregate}) is lower-is-better, so a min "
                "bound points the wrong way",
                "use max: (the highest acceptable value)",
            )
        if direction is not None and self.min is not None and self.max is not None:
            raise _err(
                "bound_direction",
                f"rule {self.id!r}: {self.metric} has a direction; give only {'min' if direction else 'max'}",
            )
        return self

    def bound_text(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        return " and ".join(parts)


class Waiver(_Strict):
    """An approved exception to a rule for some variants, until it expires."""

    rule: str
    variants: list[str] = Field(default_factory=lambda: ["*"])
    metric: str = "*"
    approver: str = Field(min_length=1)
    reason: str = Field(min_length=1)
    expires: _dt.date


class Policy(_Strict):
    """A named set of rules and waivers."""

    name: str
    description: str = ""
    fail_on_error: bool = True
    rules: list[Rule] = Field(min_length=1)
    waivers: list[Waiver] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Policy:
        ids = [r.id for r in self.rules]
        dup = [i for i, c in Counter(ids).items() if c > 1]
        if dup:
            raise _err("rule_dup", f"rule ids must be unique; repeated: {dup}")
        for w in self.waivers:
            if w.rule not in ids:
                raise _err("waiver_rule", f"waiver names unknown rule {w.rule!r}; rules: {ids}")
        return self

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


# -- metric directions ---------------------------------------------------------------


def _registry_direction(metric_glob: str) -> bool | None:
    """Direction of a metric from the installed suites' declarations (None if unknown)."""
    from audit.registry import SUITES

    suite_pat, _, rest = metric_glob.partition("/")
    name_pat = rest.rsplit("/", 1)[-1]
    if any(ch in name_pat for ch in "*?["):
        return None
    found = set()
    for spec in SUITES:
        if fnmatch.fnmatchcase(spec.name, suite_pat):
            m = spec.metric(name_pat)
            if m is not None:
                found.add(m.higher_is_better)
    return found.pop() if len(found) == 1 else None


def effective_direction(rule: Rule, metric_higher_is_better: bool | None) -> bool | None:
    """Whether larger compared values are better for this rule."""
    if rule.aggregate == "difference":
        return False
    if rule.aggregate == "ratio":
        return True
    return metric_higher_is_better


# -- loading -------------------------------------------------------------------------


def builtin_policies() -> dict[str, Path]:
    return {p.stem: p for p in sorted(_policy_dir().glob("*.yaml"))}


def resolve_policy_path(name_or_path: str, base_dir: str | None = None) -> Path:
    builtins = builtin_policies()
    if name_or_path in builtins:
        return builtins[name_or_path]
    p = Path(name_or_path).expanduser()
    if not p.is_absolute() and base_dir:
        p = Path(base_dir) / p
    if not p.exists() and not name_or_path.endswith((".yaml", ".yml")):
        raise ConfigError(
            f"unknown policy {name_or_path!r}; built-in policies: {', '.join(builtins)}",
            hint="pass a built-in name or a path to a policy YAML",
        )
    return p


def _from_doc(doc: YamlDocument) -> Policy:
    try:
        return Policy.model_validate(doc.data)
    except ValidationError as exc:
        raise validation_to_config_error(exc, doc, Policy) from None


def load_policy(name_or_path: str, base_dir: str | None = None) -> tuple[Policy, str]:
    """Load a built-in (by name) or a policy file; returns the policy and its label (name or path)."""
    path = resolve_policy_path(name_or_path, base_dir)
    doc = load_yaml(path, what="policy")
    label = name_or_path if name_or_path in builtin_policies() else str(path)
    if "model" in doc.data and "rules" not in doc.data:
        raise ConfigError(
            "this looks like an audit config, not a policy",
            file=str(path),
            line=1,
            hint="pass a policy YAML (with `rules:`)",
        )
    return _from_doc(doc), label


def policy_from_text(text: str, name: str = "<policy>") -> Policy:
    return _from_doc(parse_yaml(text, name, what="policy"))


def policy_schema() -> dict[str, Any]:
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://prune-audit.dev/schemas/policy.schema.json"
    schema["title"] = "prune-audit policy"
    return schema


# -- evaluation ----------------------------------------------------------------------


def _suites_run(result: RunResult) -> set[str]:
    names = {s.get("name") for s in result.config.get("suites", []) if isinstance(s, dict)}
    for v in result.all_variants():
        names.update(m.suite for m in v.measurements)
        names.update(e.suite for e in v.errors)
    return {n for n in names if n}


def _applies(rule: Rule, variant: VariantResult) -> bool:
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


def _aggregate(rule: Rule, m: Any, higher_is_better: bool | None) -> tuple[float | None, str]:
    """The rule's aggregate of measurement ``m``; returns (value, note)."""
    if rule.aggregate == "overall":
        return _pick(m.value, m.ci_low, m.ci_high, rule.use), ""
    feats = m.groups
    if rule.feature is not None:
        if rule.feature not in feats:
            return None, f"no groups for feature {rule.feature!r} (have {sorted(feats)})"
        feats = {rule.feature: feats[rule.feature]}
    if not feats:
        return None, "no per-group values"
    best: float | None = None
    worst_where = ""
    skipped = 0
    for feat, groups in feats.items():
        vals = []
        for g, gv in groups.items():
            if gv.value is None or gv.n < rule.min_group_n:
                skipped += 1
                continue
            vals.append((g, gv))
        if len(vals) < (1 if rule.aggregate == "worst_group" else 2):
            continue
        if rule.aggregate == "worst_group":
            hib = True if higher_is_better is None else higher_is_better
            scored = [(g, _pick(gv.value, gv.ci_low, gv.ci_high, rule.use)) for g, gv in vals]
            scored = [(g, v) for g, v in scored if v is not None]
            if not scored:
                continue
            g, v = min(scored, key=lambda t: t[1]) if hib else max(scored, key=lambda t: t[1])
            # across features keep the worst as well
            if best is None or (v < best if hib else v > best):
                best, worst_where = v, f"{feat}={g}"
        else:
            # spread between groups; with CIs, ci_upper is the largest plausible disparity
            # and ci_lower the smallest
            pts = [gv.value for _, gv in vals]
            if rule.use == "point":
                tops, bottoms = pts, pts
            elif rule.use == "ci_upper":
                tops = [gv.ci_high if gv.ci_high is not None else gv.value for _, gv in vals]
                bottoms = [gv.ci_low if gv.ci_low is not None else gv.value for _, gv in vals]
            else:
                tops = [gv.ci_low if gv.ci_low is not None else gv.value for _, gv in vals]
                bottoms = [gv.ci_high if gv.ci_high is not None else gv.value for _, gv in vals]
            if rule.aggregate == "difference":
                v = max(0.0, max(tops) - min(bottoms))
                if best is None or v > best:
                    best, worst_where = v, feat
            else:  # ratio, 1 = parity
                top = max(tops)
                v = min(1.0, min(bottoms) / top) if top > 0 else None
                if v is not None and (best is None or v < best):
                    best, worst_where = v, feat
    note = f"worst: {worst_where}" if worst_where else ""
    if skipped and rule.min_group_n:
        note += f"; {skipped} group(s) under n={rule.min_group_n} ignored"
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


def _check(rule: Rule, value: float) -> bool:
    eps = 1e-12
    if rule.min is not None and value < rule.min - eps:
        return False
    return not (rule.max is not None and value > rule.max + eps)


def evaluate_policy(
    policy: Policy,
    result: RunResult,
    *,
    policy_label: str | None = None,
    today: _dt.date | None = None,
) -> Verdict:
    """Judge every variant of ``result`` under ``policy``."""
    today = today or _dt.date.today()
    results: list[RuleResult] = []
    base = result.baseline
    notes: list[str] = []
    suites_run = _suites_run(result)
    for rule in policy.rules:
        suite_pat = rule.metric.split("/", 1)[0]
        if not any(fnmatch.fnmatchcase(s, suite_pat) for s in suites_run):
            results.append(
                RuleResult(
                    rule=rule.id,
                    variant="*",
                    metric=rule.metric,
                    status="SKIP",
                    severity=rule.severity,
                    bound=rule.bound_text(),
                    rationale=rule.rationale,
                    message=f"suite {suite_pat!r} was not part of this run",
                )
            )
            continue
        for variant in result.all_variants():
            if not _applies(rule, variant):
                continue
            results.extend(_judge(rule, variant, base, result))
    # waivers
    for w in policy.waivers:
        if w.expires < today:
            notes.append(f"waiver for rule {w.rule!r} by {w.approver} expired on {w.expires}")
    active = [w for w in policy.waivers if w.expires >= today]
    for i, rr in enumerate(results):
        if rr.status not in ("FAIL", "ERROR"):
            continue
        for w in active:
            if (
                w.rule == rr.rule
                and fnmatch.fnmatchcase(rr.metric, w.metric)
                and any(fnmatch.fnmatchcase(rr.variant, v) for v in w.variants)
            ):
                results[i] = rr.model_copy(
                    update={
                        "status": "WARN",
                        "waived_by": w.approver,
                        "message": f"{rr.message} [waived by {w.approver} until {w.expires}: {w.reason}]",
                    }
                )
                break
    counts = Counter(r.status for r in results)
    evaluated = sum(counts[s] for s in ("PASS", "WARN", "FAIL", "ERROR"))
    if evaluated == 0:
        status, code = "NO_RESULTS", ExitCode.NO_RESULTS
    elif counts["FAIL"]:
        status, code = "FAIL", ExitCode.FAILED
    elif counts["ERROR"]:
        status = "ERROR"
        code = ExitCode.FAILED if policy.fail_on_error else ExitCode.OK
    elif counts["WARN"]:
        status, code = "WARN", ExitCode.OK
    else:
        status, code = "PASS", ExitCode.OK
    return Verdict(
        policy=policy_label or policy.name,
        policy_fingerprint=policy.fingerprint(),
        status=status,
        exit_code=int(code),
        counts={k: int(counts.get(k, 0)) for k in ("PASS", "WARN", "FAIL", "ERROR", "SKIP")},
        rules=results,
        max_compliant_sparsity=max_compliant_sparsity(result, results),
        evaluated_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        notes=notes,
    )


def _judge(rule: Rule, variant: VariantResult, base: VariantResult, result: RunResult) -> list[RuleResult]:
    common = dict(
        rule=rule.id, variant=variant.id, severity=rule.severity, bound=rule.bound_text(), rationale=rule.rationale
    )
    suite_pat = rule.metric.split("/", 1)[0]
    crashed = [e for e in variant.errors if fnmatch.fnmatchcase(e.suite, suite_pat) or e.suite == "*"]
    matches = [m for m in variant.measurements if fnmatch.fnmatchcase(m.id, rule.metric)]
    if not matches:
        if crashed:
            e = crashed[0]
            msg = f"suite {e.suite!r} crashed on this variant: {e.error_type}: {e.message}"
            return [RuleResult(metric=rule.metric, status="ERROR", message=msg, **common)]
        if rule.required:
            return [RuleResult(metric=rule.metric, status="ERROR", message="metric missing from results", **common)]
        return [RuleResult(metric=rule.metric, status="SKIP", message="metric not measured", **common)]
    out = []
    for m in matches:
        info = result.metric_info(m.id)
        hib = info.higher_is_better if info else None
        observed, note = _aggregate(rule, m, hib)
        base_value = None
        if rule.comparison != "absolute":
            bm = base.measurement(m.id)
            if bm is None:
                out.append(
                    RuleResult(
                        metric=m.id,
                        status="ERROR",
                        observed=observed,
                        message="baseline has no value for this metric",
                        **common,
                    )
                )
                continue
            base_rule = rule.model_copy(update={"use": "point"})
            base_value, _ = _aggregate(base_rule, bm, hib)
        if observed is None:
            # a group aggregate on data without group columns is a coverage gap, not a crash
            no_groups = note == "no per-group values" and rule.feature is None
            status = "ERROR" if rule.required and not no_groups else "SKIP"
            out.append(RuleResult(metric=m.id, status=status, message=f"no value ({note or 'undefined'})", **common))
            continue
        compared = _compare(rule, observed, base_value)
        if compared is None:
            status = "ERROR" if rule.required else "SKIP"
            out.append(
                RuleResult(
                    metric=m.id,
                    status=status,
                    observed=observed,
                    baseline=base_value,
                    message="cannot compare to the baseline (missing or zero)",
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
        agg = "" if rule.aggregate == "overall" else f"{rule.aggregate} "
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


def max_compliant_sparsity(result: RunResult, rules: list[RuleResult]) -> dict[str, float | None]:
    """Per method label: the highest sparsity such that it and every lower level pass every rule.

    A level passes when every seed's variant has no FAIL or ERROR (waived results count
    as passing). ``None`` means even the lowest level fails.
    """
    bad = {r.variant for r in rules if r.status in ("FAIL", "ERROR")}
    levels: dict[str, dict[float, bool]] = defaultdict(dict)
    for v in result.variants:
        label = v.point.label or v.point.method
        ok = v.id not in bad and not v.errors
        levels[label][v.point.sparsity] = levels[label].get(v.point.sparsity, True) and ok
    out: dict[str, float | None] = {}
    for label, by_s in levels.items():
        best = None
        for s in sorted(by_s):
            if not by_s[s]:
                break
            best = s
        out[label] = best
    return out


def skipped_rules(verdict: Verdict) -> list[str]:
    """One line per rule that was skipped, for the report's limitations."""
    seen: dict[str, str] = {}
    for r in verdict.rules:
        if r.status == "SKIP" and r.rule not in seen:
            seen[r.rule] = f"rule {r.rule} ({r.metric}) skipped: {r.message}"
    return list(seen.values())
