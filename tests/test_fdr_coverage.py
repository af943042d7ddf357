"""Every p-value any installed suite emits reaches the Benjamini-Hochberg family (issue 13 item 6d).

Runs every installed suite, with every extra set kind, on the tiny model, then walks every
measurement's details (dicts and lists, nested tests included) for ``p_value`` keys: each
non-null p-value must carry a q-value, and the family size must be their number.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helpers import write_config

from audit.config import load_config
from audit.registry import SUITES
from audit.results import load_results
from audit.runner import run_audit


def _p_values(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "p_value" in node:
            yield path, node
        for k, v in node.items():
            yield from _p_values(v, f"{path}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _p_values(v, f"{path}[{i}]")


def test_every_p_value_of_every_suite_gets_a_q_value(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (tiny_data_dir / "test.jsonl").read_text().splitlines()]
    extra = tmp_path / "x.jsonl"
    extra.write_text("".join(json.dumps(r) + "\n" for r in rows))
    suites = (
        "suites:\n"
        "  performance: {}\n"
        "  ood:\n"
        f"    shifted: [{{name: ood, path: {tiny_data_dir / 'ood.jsonl'}}}]\n"
        "    corruptions: [{kind: typo, rate: 0.2}]\n"
        "  bias:\n"
        "    counterfactual: {categories: [gender, race], max_texts: 60}\n"  # race: several targets per text
        f"    identity_sets: [{{name: ids, path: {extra}, columns: {{text: text, label: label, groups: [identity]}}}}]"
        "\n"
        f"    functional_sets: [{{name: fn, path: {extra}, columns: {{text: text, label: label, groups: [domain]}}}}]\n"
        "  adversarial:\n"
        "    recipes: [deepwordbug]\n"
        "    n_examples: 4\n"
        "    query_budget: 40\n"
        "    time_budget_s: null\n"
        "    sentence_encoder: false\n"
        "  compute: {}\n"
    )
    cfg = load_config(
        write_config(
            tmp_path / "audit.yaml",
            tiny_model_dir,
            tiny_data_dir,
            suites=suites,
            sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.9]\n",
            runtime="runtime:\n  n_boot: 20\n  batch_size: 64\n",
            deploy="deploy:\n  enabled: false\n",
        )
    )
    run_audit(cfg, command="test")
    res = load_results(cfg.output_path() / "results.json")
    classifier_suites = {s.name for s in SUITES if "classifier" in s.model_kinds}  # lm: tests/test_lm_suite.py
    assert classifier_suites == {s["name"] for s in res.config["suites"]}  # every installed classifier suite ran
    found, missing = [], []
    for v in res.all_variants():
        assert not v.errors, v.errors
        for m in v.measurements:
            for path, rec in _p_values(m.details, m.id):
                if rec["p_value"] is None:
                    continue
                found.append(path)
                if rec.get("q_value") is None:
                    missing.append(f"{v.id}:{path}")
    assert missing == []
    suites_with_tests = {p.split("/")[0] for p in found}
    assert suites_with_tests == classifier_suites  # each suite emitted at least one test
    assert res.statistics["multiple_testing"]["n_tests"] == len(found)
    # issue 14 move 2: every suite stores its dense-vs-variant comparisons as one record shape
    from audit.paired import RECORD_KEYS

    def records(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if "p_value" in node and "delta" in node:
                yield node
            for v in node.values():
                yield from records(v)

    with_record = set()
    for m in res.variants[0].measurements:
        assert "mcnemar" not in m.details, m.id
        if "paired" in m.details:
            with_record.add(m.suite)
        for rec in records(m.details):
            assert tuple(rec) == RECORD_KEYS, m.id
    assert with_record == classifier_suites  # each suite has a measurement with details["paired"]
    # the overall counterfactual flip test takes texts as clusters, not counterfactuals as independent
    flips = res.variants[0].measurement("bias/test/counterfactual_flip_rate")
    assert flips is not None and flips.n > flips.details["n_texts"]  # several counterfactuals per text
    assert flips.details["paired"]["test"].startswith("clustered McNemar")
    assert flips.details["paired"]["clusters"] == flips.details["n_texts"]


def test_p_values_in_lists_and_nested_tests_join_the_family() -> None:
    from results_factory import m, run, variant

    from audit.analysis import analyze_sweep

    meas = m("accuracy", 0.8)
    meas.details = {
        "per_slice": [{"p_value": 0.01, "delta": -0.1}, {"p_value": 0.5, "delta": 0.0}],
        "paired": {"p_value": 0.02, "delta": -0.1, "sub": {"p_value": 0.9, "delta": 0.0}},
    }
    res = run([m("accuracy", 0.9)], [variant("v", "magnitude", 0.5, [meas])])
    assert analyze_sweep(res)["n_tests"] == 4
    tests = [meas.details["per_slice"][0], meas.details["per_slice"][1], meas.details["paired"]]
    tests.append(meas.details["paired"]["sub"])
    assert all(t["q_value"] is not None for t in tests)
