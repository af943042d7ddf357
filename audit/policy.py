"""Policies: YAML thresholds that turn measurements into a release verdict.

A rule selects metrics by id (glob over ``suite/dataset/metric``), aggregates over
groups, compares to an absolute bound or to the dense baseline, and yields PASS,
WARN, FAIL, ERROR or SKIP per variant. A metric that is missing, or a suite that
crashed, is ERROR, which fails the gate unless ``fail_on_error: false``.

A stage (deployment) is measured like a suite: every variant it ran on carries
``<stage>/<dataset>/<metric>`` measurements (for deployment: speed-up, latency, size,
equivalence with the masked dense model), declared by the stage's spec in
:data:`audit.registry.STAGES`, so speed and size are gated like any other metric.

:func:`evaluate_policy` is a sequence of steps: check the rules against the results'
declared directions, judge each rule on each variant (:mod:`audit.policy_judge`), apply
the waivers and take the status (:mod:`audit.policy_waivers`).

This module never imports torch: ``prune-audit check`` re-gates a saved
``results.json`` in well under a second.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from audit.errors import ConfigError
from audit.policy_judge import applies, judge, n_boot_of
from audit.policy_waivers import apply_waivers, status_counts, verdict_status, waiver_info
from audit.results import (
    MetricInfo,
    PolicySource,
    RuleResult,
    RunResult,
    Verdict,
)
from audit.yamlio import YamlDocument, load_yaml, parse_yaml, validation_to_config_error

SCHEMA_ID = "https://prune-audit.dev/schemas/policy.schema.json"


def _policy_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("policies")))


def schema_path() -> Path:
    """Where the published policy JSON Schema lives (``policies/policy.schema.json``)."""
    return _policy_dir() / "policy.schema.json"


Aggregate = Literal["overall", "worst_group", "difference", "ratio"]
Comparison = Literal["absolute", "delta_vs_baseline", "relative_to_baseline"]


def _err(kind: str, message: str, hint: str | None = None) -> PydanticCustomError:
    return PydanticCustomError(kind, message, {"hint": hint} if hint else {})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparsityRange(_Strict):
    """Inclusive sparsity range."""

    min: float = Field(0.0, ge=0.0, le=1.0, description="Lowest sparsity judged (inclusive).")
    max: float = Field(1.0, ge=0.0, le=1.0, description="Highest sparsity judged (inclusive).")

    @model_validator(mode="after")
    def _order(self) -> SparsityRange:
        if self.min > self.max:
            raise _err("range_order", f"sparsity.min {self.min} is above sparsity.max {self.max}")
        return self


class AppliesTo(_Strict):
    """Which variants a rule judges."""

    methods: list[str] | None = Field(None, description="Method names or labels (globs); default all.")
    variants: list[str] | None = Field(None, description="Variant id globs; default all.")
    sparsity: SparsityRange = Field(default_factory=SparsityRange, description="Sparsity range judged.")
    baseline: bool = Field(False, description="Also judge the dense baseline (absolute rules only).")


class Rule(_Strict):
    """One threshold. See ``policies/default.yaml`` for annotated examples.

    ```yaml
    - id: worst-group-accuracy-drop
      metric: performance/*/accuracy
      aggregate: worst_group          # per group, the worst one
      comparison: delta_vs_baseline   # each group's change vs the same group on dense
      min: -0.05
      min_group_n: 30
      severity: fail
      rationale: No group of at least 30 examples may lose more than 5 points.
    ```
    """

    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="Unique rule id (letters, digits, . _ -).")
    metric: str = Field(description="Metric id glob: suite/dataset/metric, e.g. `performance/*/accuracy`.")
    aggregate: Aggregate = Field(
        "overall",
        description="overall: the metric's value; worst_group: the worst group's value; difference: largest "
        "minus smallest group value (0 = parity); ratio: smallest over largest group value (1 = parity).",
    )
    feature: str | None = Field(None, description="Sensitive feature for group aggregates (default: all).")
    comparison: Comparison = Field(
        "absolute",
        description="absolute: bound the aggregate itself; delta_vs_baseline: bound (variant - dense); "
        "relative_to_baseline: bound (variant / dense - 1). With worst_group, each group is compared with the "
        "same group on the dense model.",
    )
    min: float | None = Field(None, description="Lowest acceptable value (for higher-is-better quantities).")
    max: float | None = Field(None, description="Highest acceptable value (for lower-is-better quantities).")
    use: Literal["point", "ci_lower", "ci_upper"] = Field(
        "point",
        description="Judge the point estimate or an end of the variant's confidence interval (ci_lower of a "
        "higher-is-better metric is the cautious choice). The dense value is always the point estimate.",
    )
    severity: Literal["fail", "warn"] = Field("fail", description="A violation FAILs the gate or only WARNs.")
    applies_to: AppliesTo = Field(default_factory=AppliesTo, description="Which variants the rule judges.")
    required: bool = Field(True, description="Missing metric is ERROR (true) or SKIP (false).")
    min_group_n: int = Field(0, ge=0, description="Ignore smaller groups in group aggregates.")
    rationale: str = Field("", description="Why the rule exists; shown next to every violation.")

    @field_validator("metric")
    @classmethod
    def _metric_shape(cls, value: str) -> str:
        if value.count("/") != 2 or any(not part for part in value.split("/")):
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
        known, hib = _declared_direction(self.metric)
        if known and hib is None and self.aggregate == "worst_group":
            raise _err(
                "worst_group_direction",
                f"rule {self.id!r}: {self.metric} has no better direction, so its worst group is undefined",
                "use aggregate: difference or ratio",
            )
        problem = direction_problem(self, hib)
        if problem is not None:
            raise _err("bound_direction", *problem)
        return self

    def bound_text(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        return " and ".join(parts)


class Waiver(_Strict):
    """An approved exception to a rule for some variants, until it expires.

    A waived FAIL or ERROR becomes a WARN that names the approver; after ``expires``
    the waiver no longer applies and the verdict notes that it expired.
    """

    rule: str = Field(description="Id of the waived rule.")
    variants: list[str] = Field(default_factory=lambda: ["*"], description="Variant id globs it covers.")
    metric: str = Field("*", description="Metric id glob it covers.")
    approver: str = Field(min_length=1, description="Who approved the exception.")
    reason: str = Field(min_length=1, description="Why the exception is acceptable.")
    expires: _dt.date = Field(description="Last day the waiver applies (YYYY-MM-DD).")


class Policy(_Strict):
    """A named set of rules and waivers."""

    name: str = Field(description="Policy name, shown in verdicts and reports.")
    description: str = Field("", description="What the policy is for.")
    fail_on_error: bool = Field(True, description="Whether an ERROR (missing metric, crashed suite) fails the gate.")
    rules: list[Rule] = Field(min_length=1, description="The thresholds.")
    waivers: list[Waiver] = Field(default_factory=list, description="Approved, expiring exceptions.")
    _source: PolicySource | None = PrivateAttr(None)

    @property
    def source(self) -> PolicySource | None:
        """Where the policy was read from and each rule's line (set by the loader; not part of the fingerprint)."""
        return self._source

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


# -- stage metrics -------------------------------------------------------------------


def stage_catalog() -> dict[str, MetricInfo]:
    """Declarations of the measurements every registered stage records on the variants it
    runs on (:data:`audit.registry.STAGES`, torch-free), keyed ``<stage>/<name>``.

    Results files carry these in their own catalog; this is the fallback for files that do not.
    """
    from audit.registry import STAGES

    return {
        f"{st.name}/{m.name}": MetricInfo(
            suite=st.name,
            name=m.name,
            meaning=m.meaning,
            higher_is_better=m.higher_is_better,
            range=list(m.range),
            unit=m.unit,
            reference=m.reference,
        )
        for st in STAGES
        for m in st.metrics
    }


# -- metric directions ---------------------------------------------------------------


def _declared_direction(metric_glob: str) -> tuple[bool, bool | None]:
    """(known, higher_is_better) of a metric from the installed suites' and stages' declarations.

    ``known`` is False when no installed suite or stage declares the metric, or when the glob
    matches declarations that disagree; the direction is then None.
    """
    from audit.registry import measured

    suite_pat, _, rest = metric_glob.partition("/")
    name_pat = rest.rsplit("/", 1)[-1]
    if any(ch in name_pat for ch in "*?["):
        return False, None
    found = set()
    for spec in measured():
        if fnmatch.fnmatchcase(spec.name, suite_pat):
            m = spec.find_metric(name_pat)  # a stage's names may follow its config (speedup_b<N>)
            if m is not None:
                found.add(m.higher_is_better)
    if len(found) == 1:
        return True, found.pop()
    return False, None


def effective_direction(rule: Rule, metric_higher_is_better: bool | None) -> bool | None:
    """Whether larger compared values are better for this rule."""
    if rule.aggregate == "difference":
        return False
    if rule.aggregate == "ratio":
        return True
    return metric_higher_is_better


def direction_problem(rule: Rule, metric_higher_is_better: bool | None) -> tuple[str, str] | None:
    """(message, hint) when the rule's bound points against the metric's direction, else None."""
    direction = effective_direction(rule, metric_higher_is_better)
    what = f"{rule.metric} ({rule.aggregate})"
    if direction is True and rule.max is not None and rule.min is None:
        return (
            f"rule {rule.id!r}: {what} is higher-is-better, so a max bound points the wrong way",
            "use min: (the lowest acceptable value)",
        )
    if direction is False and rule.min is not None and rule.max is None:
        return (
            f"rule {rule.id!r}: {what} is lower-is-better, so a min bound points the wrong way",
            "use max: (the highest acceptable value)",
        )
    if direction is not None and rule.min is not None and rule.max is not None:
        return (
            f"rule {rule.id!r}: {what} has a direction; give only {'min' if direction else 'max'}",
            "a two-sided bound only makes sense for a metric without a better direction",
        )
    return None


def check_against_results(policy: Policy, result: RunResult, *, where: str | None = None) -> None:
    """Check every rule's bound against the directions the *results* declare.

    Loading a policy checks directions against the installed suites; results written
    by suites that are not installed here carry their own metric catalog, which this
    checks too. Raises :class:`ConfigError` on the first bound that points the wrong way.
    """
    check_against_catalog(policy, {**stage_catalog(), **result.metrics}, where=where)


def check_against_catalog(
    policy: Policy,
    catalog: dict[str, MetricInfo],
    *,
    where: str | None = None,
    source: str = "the results' metric catalog",
    locate: Callable[[int], tuple[str | None, int | None, int | None]] | None = None,
) -> None:
    """Raise :class:`ConfigError` on the first rule whose bound points against a direction ``catalog`` declares.

    ``locate(i)``: (file, line, column) of ``rules[i]`` in the policy file, for the error.
    """
    for i, rule in enumerate(policy.rules):
        suite_pat, _, rest = rule.metric.partition("/")
        name_pat = rest.rsplit("/", 1)[-1]
        directions = {
            info.higher_is_better
            for info in catalog.values()
            if fnmatch.fnmatchcase(info.suite, suite_pat) and fnmatch.fnmatchcase(info.name, name_pat)
        }
        if len(directions) != 1:
            continue
        problem = direction_problem(rule, directions.pop())
        if problem is not None:
            file, line, column = locate(i) if locate is not None else (None, None, None)
            raise ConfigError(
                f"{problem[0]} (as declared in {source})",
                file=file or where or policy.name,
                line=line,
                column=column,
                hint=problem[1],
            )


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
        policy = Policy.model_validate(doc.data)
    except ValidationError as exc:
        raise validation_to_config_error(exc, doc, Policy) from None
    lines = {rule.id: doc.locate(["rules", i])[0] for i, rule in enumerate(policy.rules)}
    policy._source = PolicySource(lines={k: v for k, v in lines.items() if v is not None})
    return policy


def _source_file(path: Path) -> tuple[str, str | None]:
    """(file, built-in name) as :class:`~audit.results.PolicySource` records them.

    A built-in is ``policies/<name>.yaml`` (inside the package); another file is written
    relative to the working directory when it lies under it (in CI: the checkout, which
    code-scanning locations are relative to), else as an absolute path.
    """
    absolute = Path(os.path.abspath(path))
    if absolute.parent == Path(os.path.abspath(_policy_dir())):
        return f"policies/{absolute.name}", absolute.stem
    try:
        return absolute.relative_to(os.path.abspath(os.getcwd())).as_posix(), None
    except ValueError:
        return absolute.as_posix(), None


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
    policy = _from_doc(doc)
    file, builtin = _source_file(path)
    policy._source = PolicySource(file=file, builtin=builtin, lines=policy.source.lines if policy.source else {})
    return policy, label


def policy_from_text(text: str, name: str = "<policy>") -> Policy:
    return _from_doc(parse_yaml(text, name, what="policy"))


def policy_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file, generated from the pydantic models."""
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "prune-audit policy"
    return schema


def policy_schema_text() -> str:
    """The published ``policies/policy.schema.json``, byte for byte."""
    return json.dumps(policy_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# -- evaluation ----------------------------------------------------------------------


def _suites_run(result: RunResult) -> set[str]:
    """The suites and stages that ran: configured, measured, crashed or holding their record."""
    from audit.registry import STAGES

    names = {s.get("name") for s in result.config.get("suites", []) if isinstance(s, dict)}
    for v in result.all_variants():
        names.update(m.suite for m in v.measurements)
        names.update(e.suite for e in v.errors if e.suite != "pruning")
        names.update(st.name for st in STAGES if st.ran_on(v))
    return {n for n in names if n}


def evaluate_policy(
    policy: Policy,
    result: RunResult,
    *,
    policy_label: str | None = None,
    today: _dt.date | None = None,
    now: _dt.datetime | None = None,
) -> Verdict:
    """Judge every variant of ``result`` under ``policy``.

    Args:
        policy: The policy.
        result: The measured run (its own ``verdict`` is ignored).
        policy_label: Name or path recorded in the verdict (default: the policy's name).
        today: Date that decides which waivers are active (default: today).
        now: Time recorded as ``evaluated_at`` (default: now, UTC).

    Raises:
        ConfigError: a rule's bound points against a direction the results declare.
    """
    today = today or _dt.date.today()
    now = now or _dt.datetime.now(_dt.timezone.utc)
    check_against_results(policy, result, where=policy_label)
    waived = apply_waivers(_rule_results(policy, result), policy.waivers, today)
    counts = status_counts(waived.results)
    status, code = verdict_status(counts, fail_on_error=policy.fail_on_error)
    return Verdict(
        policy=policy_label or policy.name,
        policy_fingerprint=policy.fingerprint(),
        status=status,
        exit_code=int(code),
        counts=counts,
        rules=waived.results,
        max_compliant_sparsity=max_compliant_sparsity(result, waived.results),
        evaluated_at=now.isoformat(timespec="seconds"),
        notes=waived.notes,
        policy_name=policy.name,
        policy_description=" ".join(policy.description.split()),
        fail_on_error=policy.fail_on_error,
        waivers=[waiver_info(w, today, id(w) in waived.used) for w in policy.waivers],
        policy_rules=[r.model_dump(mode="json") for r in policy.rules],
        policy_source=policy.source,
    )


def _rule_results(policy: Policy, result: RunResult) -> list[RuleResult]:
    """Every rule judged on every variant it applies to; one SKIP for a rule whose suite did not run."""
    results: list[RuleResult] = []
    suites_run = _suites_run(result)
    catalog = {**stage_catalog(), **result.metrics}
    n_boot = n_boot_of(result)
    base = result.baseline
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
            if applies(rule, variant):
                results.extend(judge(rule, variant, base, catalog, n_boot=n_boot))
    return results


def max_compliant_sparsity(result: RunResult, rules: list[RuleResult]) -> dict[str, float | None]:
    """Per method label: the highest sparsity such that it and every lower level pass every rule.

    A level passes when every seed's variant was judged by at least one rule and has
    no FAIL or ERROR (waived results count as passing). A level no rule judged is not
    evidence of compliance, so it ends the envelope too. ``None`` means even the
    lowest level does not pass.
    """
    bad = {r.variant for r in rules if r.status in ("FAIL", "ERROR")}
    judged = {r.variant for r in rules if r.status in ("PASS", "WARN", "FAIL", "ERROR")}
    levels: dict[str, dict[float, bool]] = defaultdict(dict)
    for v in result.variants:
        label = v.point.label or v.point.method
        ok = v.id not in bad and v.id in judged and not v.errors
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
