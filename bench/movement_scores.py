"""Why movement pruning collapses the demo classifier at 90 % (issue 21, item 3). By hand::

    nice -n 19 .venv/bin/python -m bench.movement_scores

``bench.extreme_sparsity`` found ``movement`` (Sanh et al. 2020) at 90 % a constant classifier on the
demo and on SST-2, at 80 and at 480 optimizer steps. The pruner's first cycle fine-tunes with every
weight kept while the movement scores ``S = −Σ (∂L/∂W')·W`` accumulate, then keeps the top scores up
to the cubic schedule's first level (52 % of 90 % in 4 cycles). This bench asks whether those
scores carry any signal after the budget the pruner gets, using the project's own score hook
(``audit.pruning.movement.MovementMask``) and fine-tuning loop (``seeded_tuner``, the method's
default learning rate 3e-5):

* the demo classifier is fine-tuned for ``T`` steps (16: one cycle at the defaults; 48: one cycle of
  the long schedule) on each of two disjoint halves of the same 1,024-example labelled calibration
  sample (batches of 32), from the same start; each gives a score tensor per layer;
* **stability**: the rank (Spearman) correlation of the two halves' scores, per layer, next to the
  correlation of each half's scores with ``|W|``;
* **what a mask keeps**: accuracy on the first 600 test examples, with no recovery training, of the
  fine-tuned weights under a per-layer top-k mask by movement score, by ``|W|`` and at random, at
  52 % (the first cycle's level) and 90 %.

If movement's masks score like random ones while magnitude's keep accuracy, the scores are noise at
this budget, and later cycles start from a model they cannot recover. Writes
``bench/results/movement_scores.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils import parametrize

from bench.common import ROOT, cpu_model

LEVELS = (0.52, 0.90)


def _rank(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x.flatten())).double()


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = _rank(a), _rank(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def _scores(model: torch.nn.Module, layers: list[str], calib: Any, steps: int, params: Any) -> dict[str, torch.Tensor]:
    """Fine-tune ``model`` in place for ``steps`` with every weight kept; the movement score of each layer."""
    from audit.pruning.movement import MovementMask
    from audit.pruning.training import seeded_tuner

    masks = {}
    with seeded_tuner(model, calib, 0, params) as tuner:
        for name in layers:
            m = model.get_submodule(name)
            masks[name] = MovementMask(m.weight)
            parametrize.register_parametrization(m, "weight", masks[name])
        tuner.opt = tuner.new_optimizer()
        tuner.steps(steps)
        for name in layers:
            parametrize.remove_parametrizations(model.get_submodule(name), "weight", leave_parametrized=True)
    return {n: mk.scores.clone() for n, mk in masks.items()}


def _masked_accuracy(
    model: torch.nn.Module, order: dict[str, torch.Tensor], level: float, predictor: Any, texts: list[str], y: Any
) -> float:
    """Accuracy with each layer keeping its top ``1 - level`` weights by ``order`` (no recovery training)."""
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for name, score in order.items():
            w = pruned.get_submodule(name).weight
            k = int(round(level * w.numel()))
            drop = torch.topk(score.flatten(), k, largest=False).indices
            w.view(-1)[drop] = 0.0
    return float((predictor.logits(pruned, texts).argmax(1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="16,48", help="comma list of fine-tuning budgets T")
    args = ap.parse_args()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from audit.config import LayerSelection
    from audit.data import EvalSet
    from audit.demo import ensure_demo_assets
    from audit.env import configure_offline
    from audit.inference import Predictor
    from audit.pruning.base import select_layers
    from audit.pruning.calibration import draw_calibration
    from audit.registry import PRUNERS

    configure_offline(True)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    assets = ensure_demo_assets()
    read = lambda p: [json.loads(x) for x in Path(p).read_text(encoding="utf-8").splitlines() if x]  # noqa: E731
    train, test = read(assets["data"]["train"]), read(assets["data"]["test"])[:600]
    tok = AutoTokenizer.from_pretrained(assets["model"])
    predictor = Predictor(tok, max_length=64, batch_size=32)
    texts, y = [r["text"] for r in test], np.array([int(r["label"]) for r in test])
    pool = EvalSet(name="train", texts=[r["text"] for r in train], labels=np.array([int(r["label"]) for r in train]))
    calib = draw_calibration(pool, predictor, n=1024, seed=0, point_seed=0, dataset="demo", split="train")
    half = len(calib.batches) // 2
    halves = [
        dataclasses.replace(calib, batches=calib.batches[s], batch_labels=calib.batch_labels[s])
        for s in (slice(0, half), slice(half, None))
    ]
    dense = AutoModelForSequenceClassification.from_pretrained(assets["model"]).eval()
    layers = [n for n, _ in select_layers(dense, LayerSelection())]
    params = PRUNERS.get("movement").params.model_validate({})
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "layers": len(layers),
        "dense_accuracy": float((predictor.logits(dense, texts).argmax(1) == y).mean()),
        "budgets": {},
    }
    gen = torch.Generator().manual_seed(0)
    for steps in (int(s) for s in args.steps.split(",")):
        tuned = [copy.deepcopy(dense) for _ in halves]
        scores = [_scores(m, layers, h, steps, params) for m, h in zip(tuned, halves, strict=True)]
        mag = {n: tuned[0].get_submodule(n).weight.detach().abs() for n in layers}
        rnd = {n: torch.rand(mag[n].shape, generator=gen) for n in layers}
        row: dict[str, Any] = {
            "halves_spearman_median": statistics.median(_spearman(scores[0][n], scores[1][n]) for n in layers),
            "score_vs_magnitude_spearman_median": statistics.median(_spearman(scores[0][n], mag[n]) for n in layers),
            "tuned_accuracy": float((predictor.logits(tuned[0], texts).argmax(1) == y).mean()),
            "masks": {},
        }
        for level in LEVELS:
            row["masks"][f"{level:.2f}"] = {
                kind: _masked_accuracy(tuned[0], order, level, predictor, texts, y)
                for kind, order in (("movement", scores[0]), ("magnitude", mag), ("random", rnd))
            }
        out["budgets"][str(steps)] = row
        print(steps, row, flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    stem = ROOT / "bench" / "results" / "movement_scores"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"CPU: {out['cpu']}; torch {out['torch']}; `python -m bench.movement_scores --steps {args.steps}`; "
        f"demo classifier, {out['layers']} layers, dense accuracy {out['dense_accuracy']:.3f} (first 600 test); "
        f"{out['seconds']} s",
        "",
        "| T steps | Spearman half A vs B (median layer) | Spearman score vs abs(W) | accuracy after T | "
        + " | ".join(f"{k} {lv:.0%}" for lv in LEVELS for k in ("movement", "magnitude", "random"))
        + " |",
        "|---" * (4 + 3 * len(LEVELS)) + "|",
    ]
    for steps, r in out["budgets"].items():
        cells = [r["masks"][f"{lv:.2f}"][k] for lv in LEVELS for k in ("movement", "magnitude", "random")]
        lines.append(
            f"| {steps} | {r['halves_spearman_median']:.3f} | {r['score_vs_magnitude_spearman_median']:.3f} | "
            f"{r['tuned_accuracy']:.3f} | " + " | ".join(f"{c:.3f}" for c in cells) + " |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
