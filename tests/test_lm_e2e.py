"""The causal-LM path end to end: the LM demo's data, and `prune-audit run` on a tiny Llama with the lm suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from audit.demo import data as demo_data
from audit.demo import lm as demo_lm

ROOT = Path(__file__).resolve().parent.parent


def test_lm_demo_data_is_the_generator_as_a_sentiment_task_a_corpus_and_a_shifted_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRUNE_AUDIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(
        demo_lm,
        "LM_SPLITS",
        {"sentiment": ("test", 40), "corpus": ("validation", 20), "shifted": ("ood", 30), "calibration": ("train", 8)},
    )
    files = demo_lm.ensure_lm_demo_data()
    assert files["sentiment"].parent.name == demo_lm.lm_data_fingerprint()[:16]
    rows = {name: demo_lm.read_jsonl(files[name]) for name in demo_lm.LM_SPLITS}
    assert [len(rows[n]) for n in ("sentiment", "corpus", "shifted", "calibration")] == [40, 20, 30, 8]
    # the rows are the generator's own, group columns included
    assert rows["sentiment"] == demo_data.generate_split("test", 40, demo_lm.LM_DEMO_SEED)
    assert {r["domain"] for r in rows["sentiment"]} == set(demo_data.TRAIN_DOMAINS)
    assert {r["domain"] for r in rows["shifted"]} == set(demo_data.OOD_DOMAINS)
    assert all(set(demo_lm.GROUP_COLUMNS) <= set(r) for r in rows["shifted"])
    # choice i is label i's word
    assert [c.strip() for c in demo_lm.SENTIMENT_CHOICES] == ["negative", "positive"]
    assert demo_lm.SENTIMENT_TEMPLATE.format(text="Great.") == "Review: Great.\nSentiment:"

    # a second call reuses the cache (a file rewritten behind its back stays as it is)
    files["corpus"].write_text('{"id": "x", "text": "kept"}\n', encoding="utf-8")
    assert demo_lm.ensure_lm_demo_data() == files
    assert demo_lm.read_jsonl(files["corpus"]) == [{"id": "x", "text": "kept"}]
    # a different recipe is a different cache entry
    monkeypatch.setattr(demo_lm, "LM_DEMO_SEED", 1)
    reseeded = demo_lm.ensure_lm_demo_data()
    assert reseeded["corpus"].parent != files["corpus"].parent
    assert demo_lm.read_jsonl(reseeded["sentiment"]) == demo_data.generate_split("test", 40, 1)
    assert json.loads((files["corpus"].parent / "card.json").read_text())["seed"] == 0


def test_lm_demo_bias_sets_are_the_generators_rows_under_the_same_cache_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.demo import bbq as demo_bbq
    from audit.demo import stereotypes as demo_stereotypes

    monkeypatch.setenv("PRUNE_AUDIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(demo_lm, "LM_SPLITS", {k: (split, 12) for k, (split, _) in demo_lm.LM_SPLITS.items()})
    monkeypatch.setattr(demo_lm, "LM_EXTRA_SETS", {"stereotypes.csv": 10, "bbq.jsonl": 8})
    files = demo_lm.ensure_lm_demo_data()
    # the bias sets are the generators' own rows, under the same cache key
    assert files["stereotypes"].parent == files["sentiment"].parent
    expected = tmp_path / "expected"
    expected.mkdir()
    for name, write in (
        ("stereotypes.csv", demo_stereotypes.write_stereotype_pairs),
        ("bbq.jsonl", demo_bbq.write_bbq_items),
    ):
        write(expected / name, demo_lm.LM_EXTRA_SETS[name], demo_lm.LM_DEMO_SEED)
        assert (files["sentiment"].parent / name).read_bytes() == (expected / name).read_bytes()


# -- `prune-audit run` on a tiny causal LM --------------------------------------------------------

LM_SUITE = """suites:
  lm:
    perplexity:
      - {{name: reviews, path: {d}/corpus.jsonl, columns: {{text: text, groups: [domain]}}}}
    choice_tasks:
      - name: sentiment
        path: {d}/sentiment.jsonl
        template: "Review: {{text}}\\nSentiment:"
        choices: [" negative", " positive"]
        columns: {{text: text, label: label, id: id, groups: [gender]}}
    generation:
      - {{name: continuations, path: {d}/corpus.jsonl, max_new_tokens: 4, max_examples: 4}}
"""


def lm_pass_policy(directory: Path) -> str:
    """Like helpers.pass_policy, for the lm suite: one rule that any computed accuracy passes."""
    path = directory / "always-pass-lm.yaml"
    path.write_text(
        "name: always-pass-lm\nfail_on_error: true\nrules:\n"
        "  - {id: acc-defined, metric: lm/*/acc, aggregate: overall,\n"
        "     comparison: absolute, min: 0.0, severity: fail, rationale: any computed accuracy passes}\n",
        encoding="utf-8",
    )
    return f"policy: {path}\n"


@pytest.fixture(scope="module")
def tiny_lm_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random Llama + tokenizer saved to disk, and demo-like data files (the LM demo's own rows)."""
    from helpers import write_config, write_jsonl
    from lm_helpers import tiny_llama, tiny_tokenizer

    root = tmp_path_factory.mktemp("lm-e2e")
    tok = tiny_tokenizer()
    model = tiny_llama(tok, max_positions=256)
    model.save_pretrained(root / "model", safe_serialization=True)
    tok.save_pretrained(root / "model")
    d = root / "data"
    write_jsonl(d / "sentiment.jsonl", demo_data.generate_split("test", 24, 0))
    write_jsonl(d / "corpus.jsonl", demo_data.generate_split("validation", 12, 0))
    write_jsonl(d / "calibration.jsonl", demo_data.generate_split("train", 8, 0))
    cfg = write_config(
        root / "audit.yaml",
        root / "model",
        d,
        model=f"model:\n  path: {root / 'model'}\n  kind: causal-lm\n  max_length: 160\n",
        data=(
            "data:\n"
            f"  files: {{test: {d / 'sentiment.jsonl'}, train: {d / 'calibration.jsonl'}}}\n"
            "  columns: {text: text, label: label, id: id}\n"
            "  splits: {eval: test, calibration: train}\n"
        ),
        sweep="sweep:\n  methods: [magnitude, wanda]\n  sparsities: [0.5]\n  seeds: [0]\n  calibration: {n: 8}\n",
        suites=LM_SUITE.format(d=d),
        policy=lm_pass_policy(root),
        # deployed and proven equivalent, but not timed (speed is tests/test_causal_lm_deploy.py's, and bench/'s)
        deploy="deploy:\n  choose_tokens: [16]\n  timing_min_s: 0.002\n  probe_size: 16\n  measure_speed: false\n",
    )
    return {"root": root, "config": cfg, "data": d}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "audit", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_run_audits_a_tiny_causal_lm_end_to_end(tiny_lm_run: dict[str, Path]) -> None:
    out = tiny_lm_run["root"] / "out"
    proc = _cli("run", "-c", str(tiny_lm_run["config"]), "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["kind"] == "causal-lm"
    dense = {(m["dataset"], m["metric"]) for m in results["baseline"]["measurements"] if m["suite"] == "lm"}
    assert {("reviews", "perplexity"), ("sentiment", "acc"), ("sentiment", "acc_norm")} <= dense
    dense_acc = next(
        m["value"] for m in results["baseline"]["measurements"] if (m["dataset"], m["metric"]) == ("sentiment", "acc")
    )
    by_method = {v["point"]["method"]: v for v in results["variants"]}
    assert set(by_method) == {"magnitude", "wanda"}
    for method, variant in by_method.items():
        assert variant["pruning"]["achieved_sparsity"] == pytest.approx(0.5, abs=0.01), method
        lm = {(m["dataset"], m["metric"]): m for m in variant["measurements"] if m["suite"] == "lm"}
        # every variant is paired with dense on the same examples
        acc_delta = lm[("sentiment", "acc_delta")]["details"]["paired"]
        assert "mcnemar" in acc_delta["test"].lower()
        assert acc_delta["baseline"] == pytest.approx(dense_acc)
        nll = lm[("reviews", "nll_delta")]["details"]["paired"]
        assert nll["p_value"] is not None and 0.0 <= nll["p_value"] <= 1.0
        assert lm[("reviews", "nll_delta")]["n"] == 12
        assert ("continuations", "greedy_agreement") in lm
        assert variant["deployment"]["equivalence"]["passed"] is True
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_run_refuses_a_choice_task_whose_template_has_no_text_slot(tiny_lm_run: dict[str, Path]) -> None:
    """Bad config: one line naming the file and the problem, exit 4, nothing written."""
    text = tiny_lm_run["config"].read_text()
    assert 'template: "Review: {text}' in text
    bad = tiny_lm_run["root"] / "bad.yaml"
    bad.write_text(text.replace('template: "Review: {text}', 'template: "Review: {review}'), encoding="utf-8")
    out = tiny_lm_run["root"] / "bad-out"
    proc = _cli("run", "-c", str(bad), "-o", str(out))
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "bad.yaml" in proc.stderr and "{text}" in proc.stderr
    assert not out.exists()


def test_lm_demo_config_is_a_valid_audit_config_of_the_embedded_smollm2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config `prune-audit demo lm` writes loads (keys of the model, sweep, lm suite and policy are real)."""
    from audit.config import load_config
    from audit.models.gguf import embedded_smollm2_path

    monkeypatch.setenv("PRUNE_AUDIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(demo_lm, "LM_SPLITS", {k: (s, 8) for k, (s, _) in demo_lm.LM_SPLITS.items()})
    monkeypatch.setattr(demo_lm, "LM_EXTRA_SETS", {"stereotypes.csv": 8, "bbq.jsonl": 8})
    files = demo_lm.ensure_lm_demo_data()
    path = tmp_path / "audit.yaml"
    path.write_text(demo_lm.lm_demo_config_text(embedded_smollm2_path(), files), encoding="utf-8")
    cfg = load_config(path)
    assert cfg.model.declared_kind == "causal-lm" and cfg.model.gguf_file == str(embedded_smollm2_path())
    assert [(m.name, m.params.get("n")) for m in cfg.sweep.methods] == [
        ("magnitude", None),
        ("wanda", None),
        ("wanda", 2),
    ]
    assert [s.name for s in cfg.suites] == ["lm", "ood", "bias", "adversarial", "stereotype", "bbq"]
    assert cfg.model.zero_shot.template == demo_lm.SENTIMENT_TEMPLATE  # the classifier suites' zero-shot task
    assert cfg.model.zero_shot.choices == demo_lm.SENTIMENT_CHOICES
    params = cfg.suites[0].params
    assert [t["name"] for t in params["choice_tasks"]] == ["sentiment"]  # ood scores the other domains
    assert params["choice_tasks"][0]["choices"] == demo_lm.SENTIMENT_CHOICES
    assert params["choice_tasks"][0]["template"] == demo_lm.SENTIMENT_TEMPLATE
    assert [p["name"] for p in params["perplexity"]] == ["reviews", "other-domains"]
    assert cfg.policy == "lm-default"


@pytest.mark.slow
def test_demo_refuses_an_unknown_target() -> None:
    proc = _cli("demo", "gpt")
    assert proc.returncode == 4
    assert "classifier, lm" in proc.stderr and "'gpt'" in proc.stderr
