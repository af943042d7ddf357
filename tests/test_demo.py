from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from audit.demo import data as demo_data
from audit.demo import train as demo_train


def test_generator_is_deterministic_and_has_the_documented_shape() -> None:
    a = demo_data.generate_split("train", 3000, seed=0)
    assert a == demo_data.generate_split("train", 3000, seed=0)
    assert a != demo_data.generate_split("train", 3000, seed=1)
    assert {r["domain"] for r in a} == set(demo_data.TRAIN_DOMAINS)
    ood = demo_data.generate_split("ood", 500, seed=0)
    assert {r["domain"] for r in ood} == set(demo_data.OOD_DOMAINS)
    assert {r["gender"] for r in a} == {"female", "male", "none"}
    assert {r["race"] for r in a} == {"white", "black", "hispanic", "asian", "none"}
    assert set(Counter(r["identity"] for r in a)) == {*demo_data.IDENTITIES, "none"}
    # names and identity terms really appear in the text
    for r in a[:200]:
        if r["race"] != "none":
            assert any(n in r["text"] for n in demo_data.NAMES[(r["gender"], r["race"])])


def test_training_split_carries_the_planted_sampling_bias_and_test_does_not() -> None:
    def neg_rate(rows, pred):
        sel = [r for r in rows if pred(r)]
        return sum(r["label"] == 0 for r in sel) / len(sel)

    train = demo_data.generate_split("train", 6000, seed=0)
    test = demo_data.generate_split("test", 6000, seed=0)
    biased = lambda r: r["identity"] in demo_data.BIASED_TRAIN_IDENTITIES or r["race"] == "black"  # noqa: E731
    assert neg_rate(train, biased) > 0.6
    assert abs(neg_rate(train, lambda r: not biased(r)) - 0.5) < 0.04
    assert abs(neg_rate(test, biased) - 0.5) < 0.05


@pytest.mark.slow
def test_demo_builds_once_caches_and_audits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real demo path on a shrunken recipe: fine-tune MiniLM-L6 for a few steps, cache, audit."""
    from audit import demo

    monkeypatch.setenv("PRUNE_AUDIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(demo_data, "SPLITS", {"train": 96, "validation": 32, "test": 48, "ood": 32})
    monkeypatch.setattr(demo_train, "HYPERPARAMS", {**demo_train.HYPERPARAMS, "epochs": 1, "max_length": 48})
    assets = demo.ensure_demo_assets()
    card = assets["card"]
    assert card["steps"] == 3 and 0.0 <= card["test_accuracy"] <= 1.0
    assert (assets["model"] / "model.safetensors").is_file()
    assert set(assets["data"]) == {"train", "validation", "test", "ood"}
    assert assets["root"].name == demo.demo_fingerprint()[:16]

    def must_not_train(*a, **k):
        raise AssertionError("a second run must reuse the cached model")

    monkeypatch.setattr(demo_train, "finetune", must_not_train)
    again = demo.ensure_demo_assets()
    assert again["root"] == assets["root"] and again["card"] == card

    # the demo's own config and suites, on a shrunken sweep and budget (the full demo is `make demo`)
    monkeypatch.setattr(demo, "DEMO_SWEEP", {"methods": ["magnitude", "wanda"], "sparsities": [0.9]})
    small = {"eval": 48, "shifted": 32, "counterfactual": 24, "attacked": 2, "queries": 20}
    monkeypatch.setattr(demo, "DEMO_BUDGET", small)
    outcome = demo.run_demo(tmp_path / "demo-out")
    assert outcome.files["html"].is_file() and outcome.files["json"].is_file()
    assert (tmp_path / "demo-out" / "audit.yaml").is_file()
    assert [v.id for v in outcome.result.variants] == ["magnitude-s0.90-seed0", "wanda-s0.90-seed0"]
    suites = {m.suite for v in outcome.result.all_variants() for m in v.measurements}
    assert {"performance", "ood", "bias", "adversarial", "deployment"} <= suites
    assert not [e for v in outcome.result.all_variants() for e in v.errors]
    assert outcome.result.model.params_total > 20_000_000  # the real MiniLM-L6, not a toy
