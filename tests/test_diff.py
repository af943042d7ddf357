"""Release-to-release diff: rule changes, variant matching, metric changes, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_other_schema_version_exit_4_nothing_written(tmp_path: Path, capsys) -> None:
    old = _run([("magnitude", 0.5, 0, 0.85)], {}, None)
    raw = json.loads(old.to_json())
    raw["schema_version"] = "999"
    (tmp_path / "o.json").write_text(json.dumps(raw))
    (tmp_path / "n.json").write_text(old.to_json())
    out = tmp_path / "d.md"
    assert main(["diff", str(tmp_path / "o.json"), str(tmp_path / "n.json"), "--markdown", str(out)]) == 4
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not out.exists()
