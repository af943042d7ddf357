"""Report features of the LM suites: a metric's reference ("neutral") line in its sweep chart, the per-group dot
chart against that reference, the task formats a run records for the model card and the HTML, and results files
written before these fields existed."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from results_factory import judged_rich_run, run, variant

from audit.config import AuditConfig
from audit.results import GroupValue, Measurement, MetricInfo, load_results
from audit.run.finish import _info, _task_formats
from reports.views import build_card, build_view
from reports.views.groups import group_views
from reports.views.sweeps import sweep_charts
from reports.writer import render_reports
from suites.lm import METRICS as LM_METRICS


def _at(ticks: list[dict], value: float, axis: str) -> float:
    """Where ``value`` lies on a chart's axis, interpolated between its first two labelled ticks (the chart's
    own scale, read back from what it draws, not from its internals)."""
    (a, b) = ticks[:2]
    va, vb = float(a["label"]), float(b["label"])
    pa, pb = float(a[axis]), float(b[axis])
    return pa + (value - va) * (pb - pa) / (vb - va)


def _svg(page: str, label: str) -> str:
    """The inline SVG whose aria-label is ``label``."""
    found = re.search(r'<svg[^>]*aria-label="' + re.escape(label) + r'".*?</svg>', page, re.S)
    assert found, f"no chart {label!r}"
    return found.group(0)


def _lm_catalog() -> dict[str, MetricInfo]:
    """The lm suite's metric catalog exactly as a run writes it (audit.run.finish)."""
    return {f"lm/{m.name}": _info("lm", m) for m in LM_METRICS}


def _ms(ratio: float, ppl: float, ci: float) -> list[Measurement]:
    return [
        Measurement(suite="lm", dataset="wiki", metric="perplexity", value=ppl, ci_low=ppl - 1, ci_high=ppl + 1, n=50),
        Measurement(
            suite="lm",
            dataset="wiki",
            metric="perplexity_ratio",
            value=ratio,
            ci_low=ratio - ci,
            ci_high=ratio + ci,
            n=50,
        ),
    ]


def test_reference_line_is_drawn_at_the_declared_value_and_only_for_a_metric_that_declares_one() -> None:
    dense = [Measurement(suite="lm", dataset="wiki", metric="perplexity", value=20.0, ci_low=19.0, ci_high=21.0)]
    res = run(
        dense,
        [variant("m30", "magnitude", 0.3, _ms(1.3, 26.0, 0.05)), variant("m50", "magnitude", 0.5, _ms(1.8, 36, 0.1))],
        suites=("lm",),
    )
    res.metrics = _lm_catalog()
    assert res.metrics["lm/perplexity_ratio"].reference == 1.0 and res.metrics["lm/perplexity"].reference is None
    charts = {c["title"]: c for g in sweep_charts(res, res.metrics) for c in g["charts"]}
    ratio, ppl = charts["lm/wiki/perplexity_ratio"], charts["lm/wiki/perplexity"]
    # the reference (1.0) lies below every value and CI (lowest 1.25): the axis is extended to show it
    assert ratio["reference"] is not None and ratio["reference"]["label"] == "1: neutral"
    assert float(ratio["reference"]["y"]) == pytest.approx(_at(ratio["yticks"], 1.0, "y"), abs=0.15)
    assert float(ratio["reference"]["y"]) > max(float(p["y"]) for s in ratio["series"] for p in s["points"])
    assert ppl["reference"] is None
    page = render_reports(res, ["html"])["html"]
    drawn = re.findall(r'<line class="reference"[^>]*y1="([\d.]+)"', _svg(page, "lm/wiki/perplexity_ratio"))
    assert drawn == [ratio["reference"]["y"]]
    assert 'class="reference"' not in _svg(page, "lm/wiki/perplexity")


GROUPS = ("race-color", "gender", "religion")
STEREO = MetricInfo(
    suite="stereotype",
    name="stereotype_score",
    meaning="Share of pairs where the more stereotyping sentence is the likelier one.",
    higher_is_better=None,
    reference=0.5,
)


def _stereo(values: tuple[float, ...], half: float) -> Measurement:
    return Measurement(
        suite="stereotype",
        dataset="crows",
        metric="stereotype_score",
        value=sum(values) / len(values),
        n=300,
        groups={
            "bias_type": {
                g: GroupValue(value=v, ci_low=round(v - half, 4), ci_high=round(v + half, 4), n=100)
                for g, v in zip(GROUPS, values, strict=True)
            }
        },
    )


def _acc(v: float) -> Measurement:
    return Measurement(
        suite="performance",
        dataset="test",
        metric="accuracy",
        value=v,
        groups={"gender": {"f": GroupValue(value=v - 0.01, n=60), "m": GroupValue(value=v + 0.01, n=60)}},
    )


def test_group_chart_has_a_dot_per_group_per_model_with_the_group_ci_and_the_reference() -> None:
    dense = _stereo((0.62, 0.55, 0.70), 0.05)
    pruned = {"m50": _stereo((0.66, 0.48, 0.74), 0.06), "w50": _stereo((0.60, 0.57, 0.71), 0.07)}
    res = run(
        [dense, _acc(0.9)],
        [variant(k, k[0], 0.5, [m, _acc(0.85)]) for k, m in pruned.items()],
        suites=("stereotype", "performance"),
    )
    res.metrics["stereotype/stereotype_score"] = STEREO
    tables, _ = group_views(res, res.metrics)
    by_id = {t["id"]: t for t in tables}
    assert by_id["performance/test/accuracy"]["features"][0]["charts"] == []  # groups, but no reference
    charts = by_id["stereotype/crows/stereotype_score"]["features"][0]["charts"]
    assert [c["title"] for c in charts] == [
        f"stereotype/crows/stereotype_score by bias_type: dense vs {k}" for k in pruned
    ]
    for chart, (vid, meas) in zip(charts, pruned.items(), strict=True):
        assert [s["name"] for s in chart["series"]] == ["dense", vid]
        assert float(chart["reference"]["x"]) == pytest.approx(_at(chart["xticks"], 0.5, "x"), abs=0.15)
        for s, m in zip(chart["series"], (dense, meas), strict=True):
            assert [d["group"] for d in s["dots"]] == list(GROUPS)
            for r, d in enumerate(s["dots"]):
                gv = m.groups["bias_type"][GROUPS[r]]
                assert float(d["cx"]) == pytest.approx(_at(chart["xticks"], gv.value, "x"), abs=0.15)
                assert float(d["whisker"]["x1"]) == pytest.approx(_at(chart["xticks"], gv.ci_low, "x"), abs=0.15)
                assert float(d["whisker"]["x2"]) == pytest.approx(_at(chart["xticks"], gv.ci_high, "x"), abs=0.15)
                row = chart["rows"][r]
                assert row["y0"] < float(d["cy"]) < row["y0"] + chart["row_h"]  # in its group's row
    page = render_reports(res, ["html"])["html"]
    block = re.search(
        r'<details class="sub"><summary>Chart per variant: dense and the variant per bias_type.*?</details>', page, re.S
    )
    assert block, "the group charts are not in a closed <details>"
    svgs = re.findall(r'<svg class="group-chart".*?</svg>', block.group(0), re.S)
    assert len(svgs) == 2 and all(svg.count("<circle") == 2 * len(GROUPS) for svg in svgs)
    assert all(svg.count('<line class="ci"') == 2 * len(GROUPS) and 'class="reference"' in svg for svg in svgs)


def test_task_formats_recorded_at_run_time_are_named_by_the_model_card_and_the_html() -> None:
    template = "Review: {text}\nSentiment:"
    cfg = AuditConfig.model_validate(
        {
            "model": {"path": "m", "kind": "causal-lm"},
            "data": {"files": {"test": "d.csv"}},
            "suites": {
                "performance": {},
                "lm": {
                    "perplexity": [{"name": "wiki", "path": "w.txt", "max_length": 64}],
                    "choice_tasks": [
                        {
                            "name": "sentiment",
                            "path": "r.csv",
                            "template": template,
                            "choices": [" negative", " positive"],
                            "columns": {"text": "text", "label": "label"},
                        }
                    ],
                },
            },
        }
    )
    formats = _task_formats(cfg)
    assert list(formats) == ["lm"]  # performance declares no task formats
    choice, ppl = formats["lm"]
    assert json.dumps(template) in choice and '" negative" / " positive"' in choice
    assert ppl.startswith("perplexity set wiki:") and "64 tokens" in ppl

    dense = [Measurement(suite="lm", dataset="sentiment", metric="acc", value=0.8)]
    res = run(dense, [variant("m50", "magnitude", 0.5, dense)], suites=("lm",), task_formats=formats)
    card = build_card(res, "m50")
    assert card["task_formats"] == [{"suite": "lm", "formats": [choice, ppl]}]
    text = render_reports(res, ["model-card"])["model-card"]
    section = text.split("## Task formats", 1)[1].split("\n## ", 1)[0]
    bullets = [line for line in section.splitlines() if line.startswith("- ")]
    assert len(bullets) == 2 and all(b.startswith("- `lm`: ") for b in bullets)
    assert "choice task sentiment" in bullets[0] and "Review: {text}" in bullets[0].replace("\\", "")
    page = html.unescape(render_reports(res, ["html"])["html"])
    suite_part = page.split('<section id="suite-lm">', 1)[1].split("</section>", 1)[0]
    protocol_part = page.split('<section id="protocol">', 1)[1].split("</section>", 1)[0]
    for line in (choice, ppl):
        assert f"<li>{line}</li>" in suite_part and f"<td>{line}</td>" in protocol_part


def test_results_without_task_formats_or_reference_still_load_and_render_the_same(tmp_path: Path) -> None:
    fresh = judged_rich_run()
    doc = json.loads(fresh.to_json())
    assert "task_formats" in doc and all("reference" in m for m in doc["metrics"].values())
    del doc["task_formats"]  # a results.json written before either field existed
    for m in doc["metrics"].values():
        del m["reference"]
    p = tmp_path / "results.json"
    p.write_text(json.dumps(doc), encoding="utf-8")
    old = load_results(p)
    assert old.task_formats == {} and all(m.reference is None for m in old.metrics.values())
    kinds = ["html", "markdown", "model-card", "junit"]
    assert render_reports(old, kinds) == render_reports(fresh, kinds)
    assert "Task formats" not in render_reports(old, ["model-card"])["model-card"]
    assert build_view(old)["protocol"]["task_formats"] == []


@pytest.mark.parametrize(("kind", "tag"), [(None, "text-classification"), ("causal-lm", "text-generation")])
def test_model_card_pipeline_tag_follows_the_audited_model_kind(kind: str | None, tag: str) -> None:
    from audit.results import ModelIdentity

    dense = [Measurement(suite="performance", dataset="eval", metric="accuracy", value=0.8)]
    res = run(dense, [variant("m50", "magnitude", 0.5, dense)])
    res = res.model_copy(update={"model": ModelIdentity(source="m", fingerprint="f" * 64, kind=kind)})
    card = render_reports(res, ["model-card"])["model-card"]
    front = card.split("---", 2)[1]
    assert f"pipeline_tag: {tag}" in front
