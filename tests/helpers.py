"""Builders for tiny, real models and data used across the tests.

The tiny classifier is a 2-layer BERT (hidden 32) with a word-level vocabulary built
from the demo generator's texts, trained for a few seconds so that it is clearly
better than chance: pruning it can then really hurt it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from audit.demo.data import generate_split

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def demo_rows(split: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    return generate_split(split, n, seed)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_tiny_model(
    out_dir: Path, *, hidden: int = 32, layers: int = 2, heads: int = 4, train_steps: int = 150
) -> Path:
    """Save a trained tiny BertForSequenceClassification + tokenizer to ``out_dir``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    train = demo_rows("train", 1200, seed=1) + demo_rows("ood", 200, seed=1)
    words = sorted({w for r in train for w in re.findall(r"[a-z]+|[^a-z\s]", r["text"].lower())})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.txt").write_text("\n".join(SPECIALS + words) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(out_dir / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(SPECIALS) + len(words),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    model = BertForSequenceClassification(cfg)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    texts = [r["text"] for r in train if r["domain"] != "hotel" and r["domain"] != "book"]
    labels = torch.tensor([r["label"] for r in train if r["domain"] not in ("hotel", "book")])
    gen = torch.Generator().manual_seed(0)
    for _ in range(train_steps):
        idx = torch.randint(0, len(texts), (32,), generator=gen)
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=64, return_tensors="pt")
        loss = model(**enc, labels=labels[idx]).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


# Deployment as in a real run, with timings cut to the bone (the tests assert behaviour, never speed).
FAST_DEPLOY = (
    "deploy:\n"
    "  choose_tokens: [16]\n"
    "  timing_min_s: 0.002\n"
    "  probe_size: 32\n"
    "  speed_min_time_s: 0.002\n"
    "  speed_rounds: 3\n"
    "  speed_batch_size: 2\n"
    "  speed_seq_len: 16\n"
)


def write_config(path: Path, model_dir: Path, data_dir: Path, **overrides: Any) -> Path:
    """A valid audit config for the tiny model; ``overrides`` replace top-level sections (YAML text)."""
    sections = {
        "model": f"model:\n  path: {model_dir}\n  max_length: 64\n",
        "data": (
            "data:\n"
            f"  files: {{train: {data_dir / 'train.jsonl'}, test: {data_dir / 'test.jsonl'}}}\n"
            "  columns: {text: text, label: label, id: id, groups: [gender, identity]}\n"
            "  splits: {eval: test, calibration: train}\n"
        ),
        "sweep": "sweep:\n  methods: [magnitude]\n  sparsities: [0.5, 0.9]\n  seeds: [0]\n",
        "suites": "suites:\n  performance: {}\n",
        "policy": "policy: default\n",
        "output_dir": f"output_dir: {path.parent / 'out'}\n",
        "runtime": "runtime:\n  n_boot: 50\n  batch_size: 64\n",
        "deploy": FAST_DEPLOY,
    }
    for key, text in overrides.items():
        sections[key] = text
    path.write_text("".join(v for v in sections.values() if v), encoding="utf-8")
    return path


def pass_policy(directory: Path) -> str:
    """A ``policy:`` section whose one rule always passes (accuracy >= 0), so a run that works
    exits 0 and any ERROR (a crashed suite, a missing metric) exits 1: a definite exit code for
    tests about something other than the verdict."""
    path = directory / "always-pass.yaml"
    path.write_text(
        "name: always-pass\nfail_on_error: true\nrules:\n"
        "  - {id: accuracy-defined, metric: performance/*/accuracy, aggregate: overall,\n"
        "     comparison: absolute, min: 0.0, severity: fail, rationale: any computed accuracy passes}\n",
        encoding="utf-8",
    )
    return f"policy: {path}\n"
