"""The causal-LM path end to end: the LM demo's data, and `prune-audit run` on a tiny Llama with the lm suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.demo import data as demo_data
from audit.demo import lm as demo_lm


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
    rows = {name: demo_lm.read_jsonl(path) for name, path in files.items()}
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
