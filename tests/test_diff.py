"""Release-to-release diff: rule changes, variant matching, metric changes, exit codes."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from results_factory import m, run, variant

from audit.cli import main
from audit.diff import diff_results
from audit.results import RuleResult, Verdict
from reports.diff import render_markdown


def _rr(vid: str, status: str) -> RuleResult:
    return RuleResult(rule="acc", variant=vid, metric="performance/t/accuracy", status=status, severity="fail")


def _run(order: list[tuple[str, float, int, float]], statuses: dict[str, str], mcs: float | None):
    vs = [
        variant(f"{me}-{s}-{sd}", me, s, [m("accuracy", acc, dataset="t", ci=(acc - 0.01, acc + 0.01))], seed=sd)
        for me, s, sd, acc in order
    ]
    verdict = Verdict(
        policy="p",
        policy_fingerprint="x",
        status="FAIL" if "FAIL" in statuses.values() else "PASS",
        exit_code=0,
        rules=[_rr(v, st) for v, st in statuses.items()],
        max_compliant_sparsity={"magnitude": mcs},
    )
    return run([m("accuracy", 0.9, dataset="t", ci=(0.89, 0.91))], vs, verdict=verdict)


def test_newly_failing_matched_across_order_and_metric_delta(tmp_path: Path) -> None:
    old = _run([("magnitude", 0.3, 0, 0.88), ("magnitude", 0.5, 0, 0.85)], {"magnitude-0.5-0": "PASS"}, 0.5)
    new = _run(
        [("magnitude", 0.5, 0, 0.80), ("magnitude", 0.3, 0, 0.88), ("wanda", 0.5, 0, 0.8)],
        {"magnitude-0.5-0": "FAIL"},
        0.3,
    )
    d = diff_results(old, new)
    assert [(c.variant, c.old, c.new) for c in d.newly_failing] == [("magnitude-0.5-0", "PASS", "FAIL")]
    assert d.added_variants == ["wanda-0.5-0"]
    ch = next(c for c in d.metric_changes if c.variant == "magnitude-0.5-0")
    assert abs(ch.delta - (0.80 - 0.85)) < 1e-12 and ch.cis_disjoint
    md = render_markdown(d)
    assert r"\[0.84, 0.86\]" in md and r"\[0.79, 0.81\]" in md and "| magnitude | 0.5 | 0.3 |" in md
    (tmp_path / "o.json").write_text(old.to_json())
    (tmp_path / "n.json").write_text(new.to_json())
    assert main(["diff", str(tmp_path / "o.json"), str(tmp_path / "n.json"), "--markdown", str(tmp_path / "d.md")]) == 1
    assert "magnitude-0.5-0" in (tmp_path / "d.md").read_text()


def test_recovered_exits_zero(tmp_path: Path) -> None:
    old = _run([("magnitude", 0.5, 0, 0.85)], {"magnitude-0.5-0": "FAIL"}, None)
    new = _run([("magnitude", 0.5, 0, 0.88)], {"magnitude-0.5-0": "PASS"}, 0.5)
    (tmp_path / "o.json").write_text(old.to_json())
    (tmp_path / "n.json").write_text(new.to_json())
    assert [c.new for c in diff_results(old, new).recovered] == ["PASS"]
    assert main(["diff", str(tmp_path / "o.json"), str(tmp_path / "n.json"), "--json", str(tmp_path / "d.json")]) == 0


# -- variants, model and data identity, policy label -------------------------------------


def _write(tmp_path: Path, old, new) -> tuple[str, str]:
    (tmp_path / "o.json").write_text(old.to_json())
    (tmp_path / "n.json").write_text(new.to_json())
    return str(tmp_path / "o.json"), str(tmp_path / "n.json")


def test_removed_and_added_variants_listed() -> None:
    old = _run([("magnitude", 0.3, 0, 0.88), ("magnitude", 0.5, 0, 0.85)], {}, None)
    new = _run([("magnitude", 0.5, 0, 0.85), ("wanda", 0.5, 0, 0.86)], {}, None)
    d = diff_results(old, new)
    assert (d.added_variants, d.removed_variants) == (["wanda-0.5-0"], ["magnitude-0.3-0"])
    md = render_markdown(d)
    assert "- added variants: wanda-0.5-0\n" in md and "- removed variants: magnitude-0.3-0\n" in md


def test_failure_of_an_added_variant_is_new_and_of_a_removed_one_no_recovery() -> None:
    old = _run([("magnitude", 0.3, 0, 0.88)], {"magnitude-0.3-0": "FAIL"}, None)
    new = _run([("wanda", 0.5, 0, 0.86)], {"wanda-0.5-0": "FAIL"}, None)
    d = diff_results(old, new)
    assert [(c.variant, c.old, c.new) for c in d.newly_failing] == [("wanda-0.5-0", None, "FAIL")]
    assert d.recovered == [] and [(c.variant, c.new) for c in d.other_rule_changes] == [("magnitude-0.3-0", None)]


def test_2_4_variant_matches_its_counterpart_not_the_unstructured_one() -> None:
    old = _run([("wanda", 0.5, 0, 0.86)], {}, None)
    old.variants[0].id = "wanda-2of4-seed0"
    old.variants[0].point.params = {"n": 2, "m": 4}
    new = _run([("wanda", 0.5, 0, 0.84), ("wanda", 0.5, 0, 0.80)], {}, None)
    new.variants[0].id = "wanda-nm-s0.50-seed0"  # renamed between releases; same method, pattern and seed
    new.variants[0].point.params = {"m": 4, "n": 2}
    new.variants[1].id = "wanda-s0.50-seed0"  # unstructured wanda at the same sparsity
    d = diff_results(old, new)
    assert (d.added_variants, d.removed_variants) == (["wanda-s0.50-seed0"], [])
    (ch,) = [c for c in d.metric_changes if c.changed]
    assert ch.variant == "wanda-nm-s0.50-seed0" and abs(ch.delta - (0.84 - 0.86)) < 1e-12


def test_model_and_dataset_changes_are_recorded_and_marked() -> None:
    from audit.results import DatasetIdentity

    old = _run([("magnitude", 0.5, 0, 0.85)], {}, None)
    new = _run([("magnitude", 0.5, 0, 0.80)], {}, None)
    old.datasets = [DatasetIdentity(id="t", source="a.csv", n=400, fingerprint="1" * 64)]
    new.datasets = [DatasetIdentity(id="t", source="moved/a.csv", n=380, fingerprint="2" * 64)]
    new.model.fingerprint = "e" * 64
    d = diff_results(old, new)
    assert (d.model_change.old_fingerprint, d.model_change.new_fingerprint) == ("f" * 64, "e" * 64)
    assert [(c.id, c.change, c.old_n, c.new_n) for c in d.dataset_changes] == [("t", "changed", 400, 380)]
    assert not d.same_data and all(c.data_changed for c in d.metric_changes if c.metric.startswith("performance/t/"))
    md = render_markdown(d)
    assert "- model fingerprint sha256 ffffffff… → eeeeeeee…\n" in md
    assert "- dataset t: fingerprint sha256 11111111… → 22222222…, rows 400 → 380\n" in md
    assert "| CIs do not overlap · data changed |" in md


def test_moved_dataset_file_with_same_content_is_no_change() -> None:
    from audit.results import DatasetIdentity

    old = _run([("magnitude", 0.5, 0, 0.85)], {}, None)
    new = _run([("magnitude", 0.5, 0, 0.85)], {}, None)
    old.datasets = [DatasetIdentity(id="t", source="a.csv", n=400, fingerprint="1" * 64)]
    new.datasets = [DatasetIdentity(id="t", source="/ci/checkout/a.csv", n=400, fingerprint="1" * 64)]
    d = diff_results(old, new)
    assert d.same_data and d.dataset_changes == [] and d.model_change is None


def test_policy_content_change_shows_digest_and_changed_threshold() -> None:
    rule = {"id": "acc", "metric": "performance/*/accuracy", "min": 0.8, "applies_to": {"sparsity": {"max": 1.0}}}
    old = _run([("magnitude", 0.5, 0, 0.85)], {}, None)
    new = _run([("magnitude", 0.5, 0, 0.85)], {}, None)
    old.verdict.policy, old.verdict.policy_name, old.verdict.policy_fingerprint = "p.yaml", "default", "ab12" * 16
    new.verdict.policy, new.verdict.policy_name, new.verdict.policy_fingerprint = "/x/p.yaml", "default", "cd34" * 16
    old.verdict.policy_rules = [rule, {"id": "gone", "metric": "m"}]
    new.verdict.policy_rules = [
        {**rule, "min": 0.85, "applies_to": {"sparsity": {"max": 0.7}}},
        {"id": "new", "metric": "m"},
    ]
    md = render_markdown(diff_results(old, new))
    assert "- policy default (sha256 ab12ab12… → cd34cd34…)\n" in md and "default → default" not in md
    assert "- rule acc: applies\\_to.sparsity.max 1.0 → 0.7; min 0.8 → 0.85\n" in md
    assert "- rule gone removed\n" in md and "- rule new added\n" in md


# -- caps, hostile text, bad input, HTML ---------------------------------------------------


def test_long_lists_capped_in_markdown_full_in_json(tmp_path: Path) -> None:
    order = [("magnitude", round(0.01 * i, 2), 0, 0.85) for i in range(1, 61)]
    old = _run(order, {f"magnitude-{s}-0": "PASS" for _, s, _, _ in order}, None)
    new = _run(order, {f"magnitude-{s}-0": "FAIL" for _, s, _, _ in order}, None)
    md = render_markdown(diff_results(old, new), max_rows=50)
    section = md.split("### Newly failing", 1)[1].split("###", 1)[0]
    assert section.count("| acc | magnitude-") == 50
    assert "_… 10 more rule changes (the full list is in `--json` and `--html`)_" in section
    o, n = _write(tmp_path, old, new)
    assert main(["diff", o, n, "--json", str(tmp_path / "d.json"), "--markdown", str(tmp_path / "d.md")]) == 1
    assert len(json.loads((tmp_path / "d.json").read_text())["newly_failing"]) == 60


HOSTILE_RULE = "<script>alert(1)</script>|x`y`"


class _Page(HTMLParser):
    """Tags, and the text inside the ``<section id="newly-failing">``."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.depth = 0
        self.failing: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag == "section" and ("id", "newly-failing") in attrs:
            self.depth = 1
        elif self.depth and tag == "section":
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag == "section":
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.failing.append(data)


def _hostile_pair():
    old = _run([("magnitude", 0.5, 0, 0.85)], {"magnitude-0.5-0": "PASS"}, 0.5)
    new = _run([("magnitude", 0.5, 0, 0.80)], {"magnitude-0.5-0": "FAIL"}, None)
    for r in (*old.verdict.rules, *new.verdict.rules):
        r.rule, r.message = HOSTILE_RULE, "a | b `c` <img src=x onerror=alert(2)>"
    return old, new


def test_hostile_rule_text_escaped_in_markdown() -> None:
    md = render_markdown(diff_results(*_hostile_pair()))
    (row,) = [x for x in md.splitlines() if "| PASS | FAIL |" in x]
    assert len(re.findall(r"(?<!\\)\|", row)) == 7  # 6 cells: no pipe from the data opens a cell
    assert row.startswith(r"| &lt;script&gt;alert(1)&lt;/script&gt;\|x\`y\` |")
    assert "<script" not in md and "<img" not in md


def test_html_parses_escapes_and_lists_the_newly_failing_rule(tmp_path: Path) -> None:
    o, n = _write(tmp_path, *_hostile_pair())
    assert main(["diff", o, n, "--html", str(tmp_path / "d.html")]) == 1
    page = (tmp_path / "d.html").read_text()
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert not {"script", "img"} & set(parser.tags) and "default-src 'none'" in page
    text = " ".join(parser.failing)
    assert HOSTILE_RULE in text and "magnitude-0.5-0" in text and "a | b `c` <img src=x onerror=alert(2)>" in text


@pytest.mark.parametrize("bad", ["old", "new"])
def test_schema_mismatch_exit_4_one_line_nothing_written(tmp_path: Path, capsys, bad: str) -> None:
    good = _run([("magnitude", 0.5, 0, 0.85)], {}, None)
    raw = json.loads(good.to_json())
    raw["schema_version"] = "999.0"
    files = {"old": tmp_path / "o.json", "new": tmp_path / "n.json"}
    for which, path in files.items():
        path.write_text(json.dumps(raw) if which == bad else good.to_json())
    outs = [tmp_path / "d.md", tmp_path / "d.json", tmp_path / "d.html"]
    argv = ["diff", str(files["old"]), str(files["new"])]
    argv += ["--markdown", str(outs[0]), "--json", str(outs[1]), "--html", str(outs[2])]
    assert main(argv) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "999.0" in err[0] and str(files[bad]) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.json", "o.json"]
