"""Reporters: golden files, escaping of hostile strings, view content, graceful degradation,
GitHub Actions outputs and the report-writing CLI options."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import pytest
from results_factory import HOSTILE, judged_rich_run, m, run, variant

from audit.errors import UsageError
from audit.results import load_results, results_schema
from reports import github
from reports.markdown import md_code, md_escape
from reports.views import build_card, build_view
from reports.writer import render_reports, write_reports

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("PRUNE_AUDIT_UPDATE_GOLDEN") == "1"
FILES = {"json": "results.json", "junit": "junit.xml", "markdown": "summary.md", "model-card": "model-card.md"}


@pytest.fixture(scope="module")
def judged():
    return judged_rich_run()


@pytest.fixture(scope="module")
def rendered(judged) -> dict[str, str]:
    return render_reports(judged, ["all"])


# -- golden files --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FILES))
def test_golden_files(name: str, rendered: dict[str, str]) -> None:
    path = GOLDEN / FILES[name]
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(rendered[name], encoding="utf-8")
    assert path.is_file(), f"missing {path}; regenerate with PRUNE_AUDIT_UPDATE_GOLDEN=1 (see tests/golden/README.md)"
    assert rendered[name] == path.read_text(encoding="utf-8"), (
        f"{name} output differs from {path}; if the change is intended, regenerate with "
        "PRUNE_AUDIT_UPDATE_GOLDEN=1 python -m pytest tests/test_report.py -k golden and review the diff"
    )


def test_renders_are_deterministic(judged) -> None:
    assert render_reports(judged, ["all"]) == render_reports(judged_rich_run(), ["all"])


# -- results.json ----------------------------------------------------------------------


def test_results_json_validates_against_the_published_schema_and_round_trips(rendered, tmp_path: Path) -> None:
    doc = json.loads(rendered["json"])
    jsonschema.Draft202012Validator(results_schema()).validate(doc)
    assert doc["schema_version"] == "1.0" and doc["verdict"]["status"] == "FAIL"
    p = tmp_path / "results.json"
    p.write_text(rendered["json"], encoding="utf-8")
    back = load_results(p)
    assert back.to_json() == rendered["json"]
    doc["verdict"]["status"] = "MAYBE"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(results_schema()).validate(doc)


# -- JUnit -----------------------------------------------------------------------------


def test_junit_has_one_case_per_rule_and_variant(judged, rendered) -> None:
    root = ET.fromstring(rendered["junit"].encode())
    cases = root.findall("./testsuite/testcase")
    rules = judged.verdict.rules
    assert len(cases) == len(rules) == int(root.get("tests"))
    names = {(c.get("classname"), c.get("name")) for c in cases}
    assert len(names) == len(cases), "test case names must be unique"
    counts = judged.verdict.counts
    assert int(root.get("failures")) == counts["FAIL"] == len(root.findall(".//failure"))
    assert int(root.get("errors")) == counts["ERROR"] == len(root.findall(".//error"))
    assert int(root.get("skipped")) == counts["SKIP"] == len(root.findall(".//skipped"))
    suites = {s.get("name") for s in root.findall("testsuite")}
    assert "prune-audit.magnitude-s0.70-seed0" in suites and "prune-audit.not-run" in suites
    failure = root.find(".//testcase[@name='accuracy-drop [performance/test/accuracy_delta]']/failure")
    assert failure is not None and "rationale: At most 3 points" in failure.text
    waived = [c for c in cases if "waived by: Jane" in (c.findtext("system-out") or "")]
    assert len(waived) == 1 and waived[0].find("failure") is None
    # the hostile crash message is carried as text, not markup
    error = root.find(".//error")
    assert error is not None and HOSTILE in error.get("message")


# -- Markdown ----------------------------------------------------------------------------


def _table_rows(md: str) -> list[list[str]]:
    return [re.split(r"(?<!\\)\|", line.strip())[1:-1] for line in md.splitlines() if line.startswith("|")]


def test_markdown_summary_escapes_and_keeps_tables_intact(judged, rendered) -> None:
    md = rendered["markdown"]
    assert md.startswith("## ❌ prune-audit: FAIL")
    assert "<script" not in md and "<img" not in md and "&lt;script&gt;" in md
    assert "](javascript:" not in md
    # every row of a table has as many cells as its header
    blocks = re.split(r"\n(?!\|)", md)
    for block in blocks:
        rows = _table_rows(block)
        if rows:
            assert len({len(r) for r in rows}) == 1, block
    assert "| `magnitude` | **0.30** |" in md
    assert md_escape("a|b <i> [x](y) *z*\nw") == "a\\|b &lt;i&gt; \\[x\\](y) \\*z\\* w"
    assert md_code("x`y|z") == "``x`y\\|z``"


# -- HTML: escaping, sections, charts ----------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_html_renders_hostile_strings_inert(rendered) -> None:
    html = rendered["html"]
    parser = _Tags()
    parser.feed(html)
    tags = {t for t, _ in parser.tags}
    assert not tags & {"script", "img", "iframe", "object", "embed", "link", "form", "base"}, tags
    for tag, attrs in parser.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        for key in ("src", "href", "action", "xlink:href"):
            value = attrs.get(key)
            assert value is None or value.startswith("#"), (tag, key, value)
    assert "<script" not in html.lower()
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
    assert "&lt;b&gt;asian&lt;/b&gt;" in html  # a hostile group name
    assert "Fixture audit &lt;i&gt;of&lt;/i&gt; MiniLM" in html
    assert "http://" not in html and "https://" not in html
    assert "default-src 'none'" in html


def test_html_has_every_section_and_precomputed_charts(judged, rendered) -> None:
    html = rendered["html"]
    for anchor in (
        "verdict",
        "identity",
        "pruning",
        "sweeps",
        "groups",
        "suite-performance",
        "suite-ood",
        "suite-bias",
        "suite-adversarial",
        "suite-deployment",
        "regressions",
        "protocol",
        "limitations",
    ):
        assert f'<section id="{anchor}">' in html, anchor
    n_metric_ids = len({x.id for v in judged.variants for x in v.measurements})  # deployment metrics included
    assert html.count('<figure class="chart">') == n_metric_ids
    assert html.count('<figure class="chart wide">') == 1  # per-layer heatmap
    # the policy bound is drawn on the chart of the metric it judges, in the metric's scale
    assert "accuracy-drop: min -0.03" in html
    assert "ood-drop: min -0.08" in html
    assert "Max compliant sparsity" in html and "Rules × variants" in html
    assert "waived by Jane &lt;jane@example.com&gt;" in html
    assert "Benjamini-Hochberg" in html  # run statistics
    assert "toxicity/*/toxic_rate" in html and "was not part of this run" in html


def test_view_flags_the_group_pruning_hurts_most(judged) -> None:
    view = build_view(judged)
    flagged = {(f["variant"], f["feature"], f["group"]) for f in view["disparate"]}
    assert ("heads-s0.70-seed0", "race", "black") in flagged
    assert all(g == "black" for _, _, g in flagged)
    assert not any(f["variant"].startswith("wanda-s0.30") for f in view["disparate"])
    rec = {r["method"]: r for r in view["verdict"]["max_compliant"]}
    assert rec["wanda"]["sparsity"] == "0.50" and rec["wanda"]["blocker"].startswith("at 0.70: FAIL")
    charts = {c["title"]: c for g in view["sweeps"] for c in g["charts"]}
    acc = charts["performance/test/accuracy_delta"]
    assert [t["label"] for t in acc["thresholds"]] == [
        "accuracy-drop: min -0.03",
        "accuracy-drop-ci: min -0.05, on ci lower",
    ]
    assert charts["performance/test/accuracy"]["not_drawn"] == "worst-group (worst group), group-gap (difference)"
    heat = view["layers"]["heatmap"]
    assert len(heat["cells"]) == 6 * len(judged.variants)
    assert view["layers"]["structured"]["variants"] == ["heads-s0.30-seed0", "heads-s0.50-seed0", "heads-s0.70-seed0"]


def test_reports_degrade_gracefully_without_suites_records_or_verdict(tmp_path: Path) -> None:
    bare = run([m("accuracy", 0.9)], [variant("v", "magnitude", 0.5, [m("accuracy", 0.88)])])
    files = write_reports(bare, tmp_path, ["all"])
    assert set(files) == {"json", "html", "junit", "markdown", "model-card", "sarif"}
    html = files["html"].read_text()
    assert "No policy was applied to this run" in html
    assert "No out-of-distribution suite ran" in html and "No adversarial suite ran" in html
    assert "No deployment record" in html and "No per-layer records" in html
    assert "No per-group values were measured" in html
    md = files["markdown"].read_text()
    assert md.startswith("## prune-audit: no verdict")
    assert ET.fromstring(files["junit"].read_bytes()).get("tests") == "0"
    assert "No pruned variant of" in files["model-card"].read_text()


# -- model card --------------------------------------------------------------------------


def test_model_card_describes_the_recommended_variant(judged, rendered) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard(rendered["model-card"])
    assert card.data.model_name.endswith("wanda-s0.50-seed0")  # highest max compliant sparsity
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("test", "accuracy")] == pytest.approx(0.8905)
    assert ("yelp", "accuracy") in results and all(not r.verified for r in card.data.eval_results)
    assert "pruned with **wanda** to **0.50**" in card.text
    chosen = build_card(judged, "magnitude-s0.70-seed0")
    assert chosen["variant_status"] == "FAIL" and chosen["variant_failures"]
    with pytest.raises(UsageError, match="no variant 'nope'"):
        build_card(judged, "nope")


def test_a_failing_reporter_writes_nothing(judged, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        write_reports(judged, tmp_path, ["json", "html", "model-card"], options={"model-card": {"variant": "nope"}})
    assert list(tmp_path.iterdir()) == []


# -- GitHub Actions ----------------------------------------------------------------------


def test_github_annotations_cannot_be_injected(judged, tmp_path: Path) -> None:
    lines = github.annotations(judged)
    n = sum(judged.verdict.counts[k] for k in ("FAIL", "ERROR", "WARN"))
    assert len(lines) == n
    assert lines[0].startswith("::error title=prune-audit FAIL ")
    assert sum(line.startswith("::warning ") for line in lines) == judged.verdict.counts["WARN"]
    for line in lines:
        assert "\n" not in line and "\r" not in line
        assert re.match(r"::(error|warning) title=[^:]*::", line), line
    # a message cannot start a second workflow command: commands are only read at line starts
    hostile = judged.model_copy(deep=True)
    fail = next(r for r in hostile.verdict.rules if r.status == "FAIL")
    fail.message = "boom\r\n::error::injected 100%"
    fail.rule = "rule,with:colons"
    line = next(x for x in github.annotations(hostile) if "boom" in x)
    assert "boom%0D%0A::error::injected 100%25" in line and "\n" not in line and "\r" not in line
    assert "title=prune-audit FAIL rule%2Cwith%3Acolons [" in line
    assert len(github.annotations(judged, limit=3)) == 4  # 3 + one notice
    summary = tmp_path / "summary.md"
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    github.append_step_summary(judged, env)
    github.append_step_summary(judged, env)
    assert summary.read_text().count("## ❌ prune-audit: FAIL") == 2


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """The real CLI entry point, in process (the subprocess path is covered in test_cli.py)."""
    from audit.cli import main

    def call(*args: str, env: dict[str, str] | None = None) -> Ran:
        monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
        monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
        for k, val in (env or {}).items():
            monkeypatch.setenv(k, val)
        capsys.readouterr()
        rc = main(list(args))
        out = capsys.readouterr()
        return Ran(rc, out.out, out.err)

    return call


def test_check_writes_ci_outputs_and_annotations(cli, rendered, tmp_path: Path) -> None:
    res = tmp_path / "results.json"
    res.write_text(rendered["json"], encoding="utf-8")
    summary = tmp_path / "step-summary.md"
    r = cli(
        "check", str(res), "--policy", "exploratory",
        "--junit", str(tmp_path / "ci" / "junit.xml"), "--markdown", str(tmp_path / "ci" / "summary.md"),
        "-o", str(tmp_path / "out"), "-f", "html", "-f", "model-card",
        env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)},
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "verdict: FAIL under policy exploratory" in r.stdout
    assert "::error title=prune-audit FAIL catastrophic-accuracy-drop [heads-s0.70-seed0]::" in r.stdout
    assert (tmp_path / "ci" / "junit.xml").is_file() and (tmp_path / "ci" / "summary.md").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model-card.md", "report.html"]
    assert "Policy `exploratory`" in summary.read_text()
    junit = ET.fromstring((tmp_path / "ci" / "junit.xml").read_bytes())
    assert junit.find("testsuite/properties/property[@name='policy']").get("value") == "exploratory"
    # without GitHub Actions there are no annotations
    quiet = cli("check", str(res), "--policy", "exploratory")
    assert quiet.returncode == 1 and "::error" not in quiet.stdout


def test_check_and_report_option_errors_exit_4_before_writing(cli, rendered, tmp_path: Path) -> None:
    res = tmp_path / "results.json"
    res.write_text(rendered["json"], encoding="utf-8")
    out = tmp_path / "out"
    r = cli("check", str(res), "-o", str(out), "-f", "pdf")
    assert r.returncode == 4 and "unknown reporter 'pdf'" in r.stderr
    r = cli("check", str(res), "-f", "html")
    assert r.returncode == 4 and "--format needs --output-dir" in r.stderr
    r = cli("check", str(res), "-o", str(out), "--card-variant", "nope")
    assert r.returncode == 4 and "--card-variant 'nope'" in r.stderr
    r = cli("report", str(res), "-o", str(out), "-f", "model-card", "--card-variant", "nope")
    assert r.returncode == 4
    assert not out.exists()
    r = cli("report", str(res), "-o", str(out), "-f", "all")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["results.json", "report.html", "junit.xml", "summary.md", "model-card.md", "results.sarif"]
    )
    # `report` keeps the stored verdict: the JSON it writes is the input, byte for byte
    assert (out / "results.json").read_text() == rendered["json"]


def test_check_under_each_shipped_policy(cli, rendered, tmp_path: Path) -> None:
    res = tmp_path / "results.json"
    res.write_text(rendered["json"], encoding="utf-8")
    codes = {p: cli("check", str(res), "--policy", p) for p in ("default", "strict", "exploratory")}
    assert {p: r.returncode for p, r in codes.items()} == {"default": 1, "strict": 1, "exploratory": 1}
    assert "max compliant sparsity for wanda: 0.50" in codes["default"].stdout
    assert "max compliant sparsity for wanda: none" in codes["strict"].stdout
    assert "max compliant sparsity for wanda: 0.70" in codes["exploratory"].stdout
    # a lenient policy passes, and a policy judging nothing exits 5
    ok = tmp_path / "ok.yaml"
    ok.write_text("name: ok\nrules:\n  - {id: r, metric: performance/*/accuracy, min: 0.5}\n")
    assert cli("check", str(res), "--policy", str(ok)).returncode == 0
    none = tmp_path / "none.yaml"
    none.write_text(
        "name: none\nrules:\n  - {id: r, metric: performance/*/accuracy, min: 0.5, applies_to: {methods: [nosuch]}}\n"
    )
    r = cli("check", str(res), "--policy", str(none))
    assert r.returncode == 5 and "NO_RESULTS" in r.stdout


def test_markdown_summary_stays_within_a_pr_comment_for_large_sweeps() -> None:
    from results_factory import rich_run, rich_variant

    from audit.policy import evaluate_policy, load_policy
    from reports.markdown import render

    big = rich_run()
    big.variants = [
        rich_variant(mth, s, seed)
        for mth in ("magnitude", "wanda", "heads")
        for s in (0.1, 0.3, 0.5, 0.7, 0.9)
        for seed in range(4)
    ]
    big.verdict = evaluate_policy(load_policy("strict")[0], big)
    md = render(big)
    assert len(md) < 65_536  # GitHub's limit for a comment
    assert "… and 30 more variants" in md and "more (see the HTML report or junit.xml)" in md
