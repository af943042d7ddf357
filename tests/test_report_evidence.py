"""Report usability (issue 15): evidence beside every finding, the first screen, scannable
sections, labels in the user's words. Views only select and format; these tests give them
records with known numbers and check what each output shows."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from results_factory import judged_rich_run, m, run, variant

from audit.results import PointRecord, RuleResult
from reports import junit, markdown, model_card
from reports.html import render as render_html
from reports.views import build_card, build_view
from reports.views.common import method_display
from reports.views.evidence import evidence, fmt_q, measurement_index, rule_evidence, strength
from reports.views.identity import default_title, model_name
from reports.views.regressions import grouped_by_variant, top_findings
from reports.views.variants import reason_rows, variant_row

PAIRED = {"delta": -0.041, "ci_low": -0.06, "ci_high": -0.02, "p_value": 0.01, "q_value": 0.0234, "n": 412}


def _with_paired(result, rule_id: str, *, significant: bool, q: float) -> RuleResult:
    """Give the measurement the first FAIL of ``rule_id`` judged a paired record; return that rule result."""
    rule = next(r for r in result.verdict.rules if r.rule == rule_id and r.status == "FAIL")
    meas = measurement_index(result)[(rule.variant, rule.metric)]
    meas.details["paired"] = {**PAIRED, "q_value": q, "significant": significant}
    return rule


# -- the evidence helper -------------------------------------------------------------------


def test_evidence_reads_the_paired_record() -> None:
    meas = m("accuracy_delta", -0.03, ci=(-0.05, -0.01))
    meas.details["paired"] = {**PAIRED, "significant": True}
    ev = evidence(meas)
    assert (ev["kind"], ev["delta"], ev["ci"], ev["q"], ev["n"]) == (
        "paired",
        "-0.041",
        "[-0.060, -0.020]",
        "q=0.023",
        "n=412",
    )
    assert ev["significant"] is True
    assert ev["text"] == "Δ -0.041 [-0.060, -0.020] · q=0.023 · n=412"


def test_evidence_falls_back_to_the_measurements_own_value_ci_and_n() -> None:
    ev = evidence(m("accuracy_delta", -0.03, ci=(-0.05, -0.01)))
    assert (ev["kind"], ev["delta"], ev["ci"], ev["q"], ev["n"], ev["significant"]) == (
        "value",
        "-0.030",
        "[-0.050, -0.010]",
        "q —",
        "n=100",
        None,
    )
    assert ev["text"].startswith("Δ -0.030")  # a *_delta metric is itself a change
    assert evidence(m("accuracy", 0.9))["text"].startswith("value 0.900")


def test_a_group_rule_gets_its_groups_paired_record() -> None:
    meas = m("accuracy", 0.8, groups={"race": {"black": (0.7, 12)}})
    meas.details["paired_groups"] = {"race": {"black": {**PAIRED, "n": 12, "significant": False}}}
    meas.details["paired"] = {**PAIRED, "n": 999}
    rule = RuleResult(
        rule="wg", variant="v", metric=meas.id, status="FAIL", severity="fail",
        message="worst group change vs dense -0.1 violates >= -0.05 (worst: race=black; 1 group(s) under n=30 ignored)",
    )  # fmt: skip
    ev = rule_evidence({("v", meas.id): meas}, rule, {})
    assert (ev["n"], ev["scope"], ev["strength"]) == ("n=12", "race=black", "not significant")


def test_strength_marks_a_fail_that_is_not_significant() -> None:
    weak = {"kind": "paired", "significant": False}
    assert strength("FAIL", weak) == "not significant"
    assert strength("FAIL", {"kind": "paired", "significant": True}) == "significant"
    assert strength("FAIL", {"kind": "value", "significant": None}) == "no paired test"
    assert strength("PASS", weak) == ""
    assert fmt_q(2.1e-5) == "q=2.1e-05" and fmt_q(0.4) == "q=0.400"


# -- every output carries it -------------------------------------------------------------------


def test_markdown_regressions_carry_ci_q_and_n_and_mark_weak_fails() -> None:
    result = judged_rich_run()
    rule = _with_paired(result, "accuracy-drop", significant=False, q=0.41)
    text = markdown.render(result)
    row = next(line for line in text.splitlines() if f"`{rule.variant}`" in line and "`accuracy-drop`" in line)
    assert "Δ -0.041 \\[-0.060, -0.020\\] · q=0.410 · n=412" in row
    assert "**not significant**" in row
    assert "| Evidence: change [CI] · BH q · n |" in text


def test_junit_failure_and_system_out_carry_the_evidence() -> None:
    result = judged_rich_run()
    rule = _with_paired(result, "accuracy-drop", significant=False, q=0.41)
    root = ET.fromstring(junit.render(result))
    case = next(
        c for c in root.iter("testcase")
        if c.get("classname") == f"prune-audit.{rule.variant}" and c.get("name", "").startswith("accuracy-drop [")
    )  # fmt: skip
    assert "evidence: Δ -0.041 [-0.060, -0.020] · q=0.410 · n=412" in case.find("failure").text
    out = case.find("system-out").text
    assert "q=0.410" in out and "significance: not significant" in out


def test_model_card_rows_carry_the_paired_change() -> None:
    result = judged_rich_run()
    card = build_card(result)
    chosen = card["variant"]["id"]
    target = next(v for v in result.variants if v.id == chosen).measurements[0]
    target.details["paired"] = {**PAIRED, "significant": True}
    row = next(r for r in build_card(result)["rows"] if r["id"] == target.id)
    assert row["evidence"] == "Δ -0.041 [-0.060, -0.020] · q=0.023 · n=412"
    assert "Δ -0.041 \\[-0.060, -0.020\\] · q=0.023 · n=412" in model_card.render(result)  # Markdown-escaped


def test_html_regression_rows_and_first_screen_carry_the_evidence() -> None:
    result = judged_rich_run()
    _with_paired(result, "accuracy-drop", significant=False, q=0.41)
    page = render_html(result)
    top = page[page.index('id="top-findings"') : page.index("</table>", page.index('id="top-findings"'))]
    assert "BH q" in top and "n=" in top
    assert page.count("not significant") >= 2  # the finding's row and its variant's count


# -- grouping and ordering -----------------------------------------------------------------


def _row(status: str, variant_id: str, q: float | None, sig: bool | None) -> dict:
    return {"status": status, "variant": variant_id, "evidence": {"q_value": q, "significant": sig}}


def test_top_findings_and_groups_are_worst_first() -> None:
    rows = [
        _row("WARN", "a", 0.001, True),
        _row("FAIL", "b", 0.3, False),
        _row("FAIL", "b", 0.02, True),
        _row("FAIL", "c", 0.01, True),
        _row("FAIL", "c", None, None),
        _row("FAIL", "c", 0.04, True),
    ]
    top = top_findings(rows, k=3)
    assert [(r["variant"], r["evidence"]["q_value"]) for r in top] == [("c", 0.01), ("b", 0.02), ("c", 0.04)]
    groups = grouped_by_variant(rows)
    assert [g["variant"] for g in groups] == ["c", "b", "a"]
    assert groups[1]["not_significant"] == 1
    assert groups[1]["rows"][0]["evidence"]["q_value"] == 0.02


def test_long_sections_start_closed_and_every_section_is_a_details_block() -> None:
    result = judged_rich_run()
    view = build_view(result)
    page = render_html(result)
    assert view["open"]["sweeps"] is False and view["open"]["protocol"] is False
    for anchor in ("identity", "pruning", "sweeps", "groups", "regressions", "protocol", "limitations"):
        assert re.search(rf'<section id="{anchor}"><details( open)?><summary><h2>', page), anchor
    assert '<section id="sweeps"><details><summary>' in page  # long: closed
    assert '<section id="regressions"><details open><summary>' in page
    assert "details::details-content { content-visibility: visible !important" in page  # printing opens them
    toc = page[page.index('<nav class="toc"') : page.index("</nav>")]
    assert toc.count("<li>") == len(view["toc"]) and '<a href="#regressions">' in toc


def test_sweep_curves_are_small_multiples_with_one_shared_legend() -> None:
    view = build_view(judged_rich_run())
    charts = [c for g in view["sweeps"] for c in g["charts"]]
    assert charts and all(c["width"] == 300 and c["legend"] is False for c in charts)
    legend = {entry["name"]: entry["colour"] for entry in view["sweep_legend"]}
    assert set(legend) == {"magnitude", "wanda", "heads"}
    for c in charts:  # a method keeps its legend colour in every chart
        assert all(s["colour"] == legend[s["name"]] for s in c["series"])


def test_kernel_reasons_are_one_row_per_distinct_reason_with_its_layers() -> None:
    formats = build_view(judged_rich_run())["layers"]["formats"]
    reasons = formats["reasons"]
    assert len({(r["format"], r["reason"]) for r in reasons}) == len(reasons)
    assert {r["reason"] for r in reasons} == {"sparsity >= 0.70", "below CSR break-even"}
    covered = {r["reason"]: r["n_layers"] for r in reasons}
    cells = [c for row in formats["rows"] for c in row["cells"]]
    for reason, n_layers in covered.items():
        layers = {row["layer"] for row in formats["rows"] if any(c["reason"] == reason for c in row["cells"])}
        assert n_layers == len(layers)
    assert any(c["reason"] for c in cells)


def test_groups_under_the_policys_min_group_n_are_labelled_with_their_n() -> None:
    base = m("accuracy", 0.9, groups={"g": {"big": (0.9, 80), "tiny": (0.8, 7)}})
    var = m("accuracy", 0.85, groups={"g": {"big": (0.88, 80), "tiny": (0.5, 7)}})
    result = run([base], [variant("v", "magnitude", 0.5, [var])])
    from audit.policy import evaluate_policy, policy_from_text

    result.verdict = evaluate_policy(
        policy_from_text(
            "name: p\nrules:\n  - id: wg\n    metric: performance/*/accuracy\n    aggregate: worst_group\n"
            "    comparison: delta_vs_baseline\n    min: -0.05\n    min_group_n: 30\n"
        ),
        result,
    )
    rows = {r["group"]: r for t in build_view(result)["groups"] for f in t["features"] for r in f["rows"]}
    assert rows["tiny"]["under_min"] == "n=7 < policy min_group_n 30"
    assert rows["big"]["under_min"] == ""


# -- labels in the user's words --------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "shown"),
    [
        ("wanda[m=4,n=2]", "wanda 2:4"),
        ("sparsegpt[blocksize=64,m=8,n=4]", "sparsegpt 4:8 [blocksize=64]"),
        ("magnitude[scope=global]", "magnitude[scope=global]"),
        ("wanda", "wanda"),
    ],
)
def test_method_display(label: str, shown: str) -> None:
    assert method_display(label) == shown


def test_unset_params_are_not_printed_and_the_pattern_reads_n_colon_m() -> None:
    v = variant("wanda-s0.50-seed0", "wanda", 0.5, [])
    v.point = PointRecord(
        id=v.id, method="wanda", label="wanda", params={"n": None, "m": None}, sparsity=0.5, seed=0, key="k"
    )
    assert variant_row(v)["params"] == ""
    v.point = PointRecord(
        id="x", method="wanda", label="wanda[m=4,n=2]", params={"n": 2, "m": 4}, sparsity=0.5, seed=0, key="k"
    )
    row = variant_row(v)
    assert (row["method"], row["method_key"], row["params"]) == ("wanda 2:4", "wanda[m=4,n=2]", "m=4, n=2")


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("/data/models/minilm-sst2", "minilm-sst2"),
        ("/cache/prune-audit/demo/3180cdc7a832a562/model", "demo/model"),
        ("/hf/models--textattack--bert-sst2/snapshots/0123456789abcdef", "textattack/bert-sst2"),
    ],
)  # fmt: skip
def test_the_default_title_names_the_model(source: str, name: str) -> None:
    assert model_name(source) == name
    assert default_title(source) == f"Pruning audit of {name}"


def test_kernel_reasons_that_differ_only_in_their_figures_are_one_row() -> None:
    reasons = {
        ("kernel", "fastest measured: kernel 1.35x (205 µs vs dense 277 µs); other candidates: csr 0.36x"): (
            {"l0": None, "l1": None},
            {"a": None},
        ),
        ("kernel", "fastest measured: kernel 2.10x (130 µs vs dense 277 µs); other candidates: csr 0.50x"): (
            {"l2": None},
            {"b": None},
        ),
        ("dense", "kept dense: density 0.70 is above deploy.max_density 0.5"): ({"l3": None}, {"a": None}),
    }
    rows = reason_rows(reasons, n_variants=2)
    assert [(r["format"], r["n_layers"], r["similar"], r["variants"]) for r in rows] == [
        ("kernel", 3, 1, "all"),
        ("dense", 1, 0, "a"),
    ]
    assert rows[0]["reason"] == "fastest measured: kernel 1.35x (205 µs vs dense 277 µs)"
    assert rows[0]["layers"] == "l0, l1, l2"


def test_suite_table_cells_carry_the_paired_q_and_n() -> None:
    result = judged_rich_run()
    target = result.variants[0]
    meas = next(x for x in target.measurements if x.id == "ood/yelp/accuracy")
    meas.details["paired"] = {**PAIRED, "significant": True}
    suite = next(s for s in build_view(result)["suites"] if s["name"] == "ood")
    row = next(r for t in suite["tables"] for r in t["rows"] if r["id"] == "ood/yelp/accuracy")
    cell = row["cells"][1]  # the first pruned variant (column 0 is dense)
    assert (cell["delta_ci"], cell["q"], cell["paired_n"]) == ("[-0.060, -0.020]", "q=0.023", "n=412")
    assert row["cells"][0]["q"] == ""  # dense has no change to test
