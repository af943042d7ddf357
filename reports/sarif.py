"""The SARIF 2.1.0 reporter: policy findings for code-scanning UIs (GitHub code scanning and others).

One run, whose ``tool.driver.rules`` are the policy's rules (``help.text`` is the rule's
rationale), and one result per rule × variant that did not pass:

| status | level | note |
|---|---|---|
| FAIL | ``error`` | the finding, with observed value, bound, dense value and evidence |
| WARN | ``warning`` | a ``severity: warn`` violation, or a FAIL an active waiver turned into a WARN |
| ERROR | ``error`` (``warning`` under ``fail_on_error: false``) | not evaluated (missing metric, crashed suite) |
| PASS, SKIP | — | not reported |

An ERROR's message starts "could not be evaluated" and its ``properties.status`` is ERROR.

Every result is located at the rule's line in the policy file, as the policy loader
recorded it (:class:`audit.results.PolicySource`; nothing is read here): a file under the
working directory of the run is a relative URI against ``%SRCROOT%`` (in CI, the
checkout); a file outside it an absolute ``file://`` URI (``upload-sarif`` relativises it
against its ``checkout_path``); a built-in policy ``policies/<name>.yaml`` against
``PRUNE_AUDIT``, the installed package, which code-scanning UIs cannot open (copy the policy
into the repository for clickable locations).

``partialFingerprints["pruneAuditFinding/v1"]`` hashes the rule id, the variant's method
label, method, sparsity and seed, and the metric id, never measured values, so a finding
keeps its identity across runs and each variant is a finding of its own. The output is
deterministic (no timestamps), so it can be compared with a golden copy.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import quote

from audit.results import PolicySource, RuleResult, RunResult, VariantResult
from audit.textsafe import visible
from reports.junit import _evidence_lines
from reports.views.common import catalog
from reports.views.evidence import measurement_index, rule_evidence

SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SRCROOT = "%SRCROOT%"
PACKAGE_ROOT = "PRUNE_AUDIT"
FINGERPRINT_KEY = "pruneAuditFinding/v1"
REPORTED = ("FAIL", "WARN", "ERROR")
_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[/\\]")


def _text(value: object) -> str:
    return visible(value)


def level_of(r: RuleResult, *, fail_on_error: bool = True) -> str:
    """The SARIF level of a reported rule result (see the table in the module docstring)."""
    if r.status == "FAIL":
        return "error"
    if r.status == "ERROR":
        return "error" if fail_on_error else "warning"
    return "warning"


def fingerprint(rule: str, metric: str, variant: VariantResult | None, variant_id: str) -> str:
    """A finding's identity: rule, variant (method label, method, sparsity, seed) and metric; no values."""
    if variant is not None:
        p = variant.point
        who = [p.label or p.method, p.method, f"{p.sparsity:.4f}", p.seed]
    else:
        who = [variant_id]
    payload = json.dumps([rule, *who, metric], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def artifact_location(source: PolicySource | None, label: str) -> dict[str, Any]:
    """The policy file as a SARIF ``artifactLocation`` (a URI, percent-encoded)."""
    if source is not None and source.builtin is not None and source.file is not None:
        return {"uri": quote(source.file), "uriBaseId": PACKAGE_ROOT}
    path = (source.file if source is not None and source.file is not None else label).replace("\\", "/")
    if path.startswith("/"):
        return {"uri": "file://" + quote(path)}
    if _WINDOWS_ABS.match(path):
        return {"uri": "file:///" + quote(path, safe="/:")}
    return {"uri": quote(path), "uriBaseId": SRCROOT}


def _bound_text(rule: dict[str, Any]) -> str:
    parts = []
    if rule.get("min") is not None:
        parts.append(f">= {rule['min']:g}")
    if rule.get("max") is not None:
        parts.append(f"<= {rule['max']:g}")
    return " and ".join(parts)


def _descriptor(rule: dict[str, Any], default_level: str) -> dict[str, Any]:
    rid = str(rule.get("id", ""))
    metric = str(rule.get("metric", ""))
    defaults = {"aggregate": "overall", "comparison": "absolute", "use": "point"}
    how = ", ".join(str(rule[k]) for k, d in defaults.items() if rule.get(k) not in (None, d))
    short = " ".join(x for x in (metric, f"({how})" if how else "", _bound_text(rule)) if x)
    rationale = " ".join(str(rule.get("rationale") or "").split())
    full = f"{short}. {rationale}" if rationale else short
    return {
        "id": _text(rid),
        "shortDescription": {"text": _text(short)},
        "fullDescription": {"text": _text(full)},
        "help": {"text": _text(rationale or f"Policy rule {rid}: {short}.")},
        "defaultConfiguration": {"level": default_level},
        "properties": {
            "tags": ["prune-audit", metric.split("/", 1)[0]],
            "metric": metric,
            "severity": rule.get("severity", "fail"),
        },
    }


def _message(r: RuleResult, ev: dict[str, Any] | None) -> str:
    if r.status == "ERROR":
        head = f"{r.rule} could not be evaluated on {r.variant} (ERROR): {r.message}"
    elif r.status == "FAIL":
        head = f"{r.rule} fails on {r.variant}: {r.message}"
    else:
        head = f"{r.rule} warns on {r.variant}: {r.message}"
    lines = [head, f"metric: {r.metric}", f"bound: {r.bound}"]
    for name, value in (("observed", r.observed), ("dense", r.baseline), ("compared", r.compared)):
        if value is not None:
            lines.append(f"{name}: {value:.6g}")
    lines += _evidence_lines(ev)
    if r.waived_by:
        lines.append(f"waived by: {r.waived_by}")
    return _text("\n".join(lines))


def _properties(r: RuleResult, v: VariantResult | None, ev: dict[str, Any] | None) -> dict[str, Any]:
    props: dict[str, Any] = {
        "status": r.status,
        "variant": r.variant,
        "metric": r.metric,
        "bound": r.bound,
        "observed": r.observed,
        "baseline": r.baseline,
        "compared": r.compared,
    }
    if v is not None:
        props.update(method=v.point.label or v.point.method, sparsity=v.point.sparsity, seed=v.point.seed)
    if r.waived_by:
        props["waived_by"] = r.waived_by
    if ev and ev["kind"] != "none":
        props["evidence"] = ev["text"]
    return {k: (_text(x) if isinstance(x, str) else x) for k, x in props.items()}


def sarif_log(result: RunResult) -> dict[str, Any]:
    """The SARIF log of a judged run, as a JSON-ready dict."""
    verdict = result.verdict
    rules: list[dict[str, Any]] = []
    index_of: dict[str, int] = {}
    results: list[dict[str, Any]] = []
    run_props: dict[str, Any] = {"runId": result.run_id}
    base_ids: dict[str, Any] = {
        SRCROOT: {"description": {"text": "The working directory of the run (in CI, the checkout)."}}
    }
    if verdict is not None:
        source = verdict.policy_source
        location = artifact_location(source, verdict.policy)
        if location.get("uriBaseId") == PACKAGE_ROOT:
            base_ids[PACKAGE_ROOT] = {"description": {"text": "The installed prune-audit package (built-in policies)."}}
        for rule in verdict.policy_rules:
            level = "warning" if rule.get("severity") == "warn" else "error"
            index_of[str(rule.get("id"))] = len(rules)
            rules.append(_descriptor(rule, level))
        by_id = {v.id: v for v in result.all_variants()}
        index, cat = measurement_index(result), catalog(result)
        for r in verdict.rules:
            if r.status not in REPORTED:
                continue
            if r.rule not in index_of:  # a result of a rule the stored policy does not list (hand-made results)
                index_of[r.rule] = len(rules)
                rules.append(_descriptor({"id": r.rule, "metric": r.metric, "severity": r.severity}, "error"))
            variant = by_id.get(r.variant)
            ev = rule_evidence(index, r, cat)
            region_line = source.lines.get(r.rule) if source is not None else None
            physical: dict[str, Any] = {"artifactLocation": dict(location)}
            if region_line is not None:
                physical["region"] = {"startLine": region_line}
            results.append(
                {
                    "ruleId": _text(r.rule),
                    "ruleIndex": index_of[r.rule],
                    "level": level_of(r, fail_on_error=verdict.fail_on_error),
                    "message": {"text": _message(r, ev)},
                    "locations": [{"physicalLocation": physical, "logicalLocations": [{"name": _text(r.variant)}]}],
                    "partialFingerprints": {FINGERPRINT_KEY: fingerprint(r.rule, r.metric, variant, r.variant)},
                    "properties": _properties(r, variant, ev),
                }
            )
        run_props.update(
            policy=_text(verdict.policy),
            policyName=_text(verdict.policy_name),
            policyFingerprint=verdict.policy_fingerprint,
            verdict=verdict.status,
            exitCode=verdict.exit_code,
        )
    version = result.provenance.tool_version
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "prune-audit", "version": version, "rules": rules}},
                "originalUriBaseIds": base_ids,
                "results": results,
                "properties": run_props,
            }
        ],
    }


def render(result: RunResult) -> str:
    return json.dumps(sarif_log(result), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
