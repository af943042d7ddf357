"""The JUnit XML reporter: one test case per rule × variant, for CI test views.

One ``<testsuite>`` per variant (the dense baseline included when a rule judges it,
and ``not-run`` for rules whose suite did not run). PASS is a passing case, WARN a
passing case with the finding in ``<system-out>``, FAIL a ``<failure>``, ERROR an
``<error>`` and SKIP ``<skipped>``. Written with :mod:`xml.etree.ElementTree`, which
escapes every value; control characters, bidi overrides and non-characters (most of
which XML 1.0 cannot carry) are shown as visible stand-ins (:func:`audit.textsafe.visible`). Deterministic: no
timestamps or durations, so the file can be compared with a golden copy.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict

from audit.results import RuleResult, RunResult
from audit.textsafe import visible
from reports.views.common import catalog
from reports.views.evidence import measurement_index, rule_evidence

_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
NOT_RUN = "not-run"


def _x(text: object) -> str:
    return _INVALID_XML.sub("", visible(text))


def _evidence_lines(ev: dict | None) -> list[str]:
    """The evidence of a finding: change with CI, BH q-value and n, and whether it is significant."""
    if not ev or ev["kind"] == "none":
        return []
    lines = [f"evidence: {ev['text']}"]
    if ev.get("strength"):
        lines.append(f"significance: {ev['strength']} (the policy decides; this is the strength of evidence)")
    return lines


def _detail(r: RuleResult, ev: dict | None = None) -> str:
    lines = [
        f"rule: {r.rule} (severity {r.severity})",
        f"variant: {r.variant}",
        f"metric: {r.metric}",
        f"bound: {r.bound}",
    ]
    for name, value in (("observed", r.observed), ("dense", r.baseline), ("compared", r.compared)):
        if value is not None:
            lines.append(f"{name}: {value:.6g}")
    lines += _evidence_lines(ev)
    if r.waived_by:
        lines.append(f"waived by: {r.waived_by}")
    lines.append(f"finding: {r.message}")
    if r.rationale:
        lines.append(f"rationale: {' '.join(r.rationale.split())}")
    return _x("\n".join(lines))


def render(result: RunResult) -> str:
    verdict = result.verdict
    cat = catalog(result)
    index = measurement_index(result)
    root = ET.Element("testsuites", name="prune-audit")
    by_variant: dict[str, list[RuleResult]] = defaultdict(list)
    if verdict is not None:
        for r in verdict.rules:
            by_variant[NOT_RUN if r.variant == "*" else r.variant].append(r)
    order = [v.id for v in result.all_variants()] + [NOT_RUN]
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for vid in order:
        rules = by_variant.get(vid)
        if not rules:
            continue
        counts = {
            "tests": len(rules),
            "failures": sum(r.status == "FAIL" for r in rules),
            "errors": sum(r.status == "ERROR" for r in rules),
            "skipped": sum(r.status == "SKIP" for r in rules),
        }
        for k, n in counts.items():
            totals[k] += n
        suite = ET.SubElement(
            root,
            "testsuite",
            name=_x(f"prune-audit.{vid}"),
            **{k: str(n) for k, n in counts.items()},
            time="0",
        )
        props = ET.SubElement(suite, "properties")
        for name, value in (
            ("policy", verdict.policy if verdict else ""),
            ("policy_fingerprint", verdict.policy_fingerprint if verdict else ""),
            ("verdict", verdict.status if verdict else ""),
            ("run_id", result.run_id),
            ("variant", vid),
        ):
            ET.SubElement(props, "property", name=name, value=_x(value))
        for r in rules:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=_x(f"prune-audit.{vid}"),
                name=_x(f"{r.rule} [{r.metric}]"),
                time="0",
            )
            message = _x(f"{r.status}: {r.message}")
            ev = rule_evidence(index, r, cat) if r.status in ("FAIL", "ERROR", "WARN") else None
            if r.status == "FAIL":
                ET.SubElement(case, "failure", message=message, type=_x(r.rule)).text = _detail(r, ev)
                if _evidence_lines(ev):
                    ET.SubElement(case, "system-out").text = _x("\n".join(_evidence_lines(ev)))
            elif r.status == "ERROR":
                ET.SubElement(case, "error", message=message, type=_x(r.rule)).text = _detail(r, ev)
            elif r.status == "SKIP":
                ET.SubElement(case, "skipped", message=_x(r.message))
            elif r.status == "WARN":
                ET.SubElement(case, "system-out").text = _x(f"WARN\n{_detail(r, ev)}")
    for k, n in totals.items():
        root.set(k, str(n))
    root.set("time", "0")
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
