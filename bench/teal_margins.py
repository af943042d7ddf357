"""Why TEAL leaves the demo classifier's accuracy exactly unchanged at 25/40/50 % (issue 21). By hand::

    nice -n 19 .venv/bin/python -m bench.teal_margins                    # the demo classifier
    PRUNE_AUDIT_SHARED_DATA=../shared/data nice -n 19 .venv/bin/python -m bench.teal_margins --family sst2

``bench.activation_sparsity --family demo`` found the demo's accuracy 0.970 at every level, Δ 0.000
on every one of 600 examples. This bench checks that the gates really act and measures why no
prediction moves: for the dense model and for ``teal`` at each level (the registered pruner, the
same calibration as that bench: 64 training examples, seed 0), on the first 600 test examples
(``--family sst2``: MiniLM-L6 fine-tuned on 16k SST-2 sentences, ``bench.common.sst2_minilm``, on
SST-2 dev; natural sentences instead of templates):

* the share of zeroed inputs at the gated layers (the gates act; first 64 texts, padding included);
* the logit margin ``|z1 - z0|`` of dense (its smallest values and quantiles);
* how far TEAL moves it, ``|Δmargin|`` (median, 99th percentile, largest);
* predictions that change, and the examples whose margin TEAL moves by more than dense's own margin.

The logits are the thresholded reference's (``ActSparseReferenceLinear``), which the deployed kernel
matches within its equivalence tolerance. Writes ``bench/results/teal_margins_<family>.json``/``.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import ROOT, cpu_model, sst2, sst2_minilm

LEVELS = (0.25, 0.40, 0.50)


def _rows(family: str) -> tuple[Path, list[dict[str, Any]], list[dict[str, Any]]]:
    """(model dir, calibration pool, eval rows)."""
    if family == "sst2":
        model_dir, _ = sst2_minilm()
        return model_dir, sst2("train"), sst2("dev")
    from audit.demo import ensure_demo_assets

    assets = ensure_demo_assets()
    read = lambda p: [json.loads(x) for x in Path(p).read_text(encoding="utf-8").splitlines() if x]  # noqa: E731
    return Path(assets["model"]), read(assets["data"]["train"]), read(assets["data"]["test"])[:600]


def _gate_share(model: torch.nn.Module, predictor: Any, texts: list[str]) -> float:
    """The share of gated-layer inputs below their gate's threshold (zeroed): first 64 texts, padding included."""
    from audit.deploy.activation import ActSparseReferenceLinear

    zero, total = [0], [0]
    hooks = []
    for m in model.modules():
        if isinstance(m, ActSparseReferenceLinear):

            def hook(mod: Any, inp: tuple[torch.Tensor, ...], _o: Any) -> None:
                x = inp[0].detach()
                t = float(mod.gate.threshold)
                zero[0] += int((x.abs() < t).sum())
                total[0] += x.numel()

            hooks.append(m.register_forward_hook(hook))
    predictor.logits(model, texts[:64])
    for h in hooks:
        h.remove()
    return zero[0] / max(total[0], 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=["demo", "sst2"], default="demo")
    args = ap.parse_args()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from audit.config import LayerSelection
    from audit.data import EvalSet
    from audit.env import configure_offline
    from audit.inference import Predictor
    from audit.pruning.base import PruneContext
    from audit.pruning.calibration import draw_calibration
    from audit.registry import PRUNERS

    configure_offline(True)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model_dir, pool, rows = _rows(args.family)
    tok = AutoTokenizer.from_pretrained(model_dir)
    predictor = Predictor(tok, max_length=64, batch_size=32)
    texts = [r["text"] for r in rows]
    labels = np.array([int(r["label"]) for r in rows])
    calib_set = EvalSet(name="train", texts=[r["text"] for r in pool], labels=np.array([int(r["label"]) for r in pool]))
    calib = draw_calibration(calib_set, predictor, n=64, seed=0, point_seed=0, dataset=args.family, split="train")
    dense = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    z_dense = predictor.logits(dense, texts)
    margin = np.abs(z_dense[:, 1] - z_dense[:, 0])
    pred_dense = z_dense.argmax(1)
    spec = PRUNERS.get("teal")
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "family": args.family,
        "n": len(texts),
        "dense": {
            "accuracy": float((pred_dense == labels).mean()),
            "margin_min": float(margin.min()),
            "margin_quantiles": {q: float(np.quantile(margin, float(q))) for q in ("0.01", "0.05", "0.5")},
            "margins_below_1": int((margin < 1.0).sum()),
        },
        "levels": {},
    }
    for level in LEVELS:
        model = copy.deepcopy(dense)
        pruner = spec.load()(spec, spec.params.model_validate({}))
        ctx = PruneContext(sparsity=level, seed=0, layers=LayerSelection(), calibration=calib)
        pruner.validate(model, ctx)
        pruner.prune(model, ctx)
        z = predictor.logits(model, texts)
        m_teal = z[:, 1] - z[:, 0]
        shift = np.abs(m_teal - (z_dense[:, 1] - z_dense[:, 0]))
        pred = z.argmax(1)
        out["levels"][f"{level:.2f}"] = {
            "zeroed_inputs": _gate_share(model, predictor, texts),
            "accuracy": float((pred == labels).mean()),
            "changed_predictions": int((pred != pred_dense).sum()),
            "max_abs_logit_change": float(np.abs(z - z_dense).max()),
            "margin_shift_median": float(np.median(shift)),
            "margin_shift_p99": float(np.quantile(shift, 0.99)),
            "margin_shift_max": float(shift.max()),
            "shift_over_margin_max": float((shift / np.maximum(margin, 1e-12)).max()),
            "examples_shift_exceeds_margin": int((shift > margin).sum()),
        }
        print(level, out["levels"][f"{level:.2f}"], flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    stem = ROOT / "bench" / "results" / f"teal_margins_{args.family}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    d = out["dense"]
    lines = [
        f"CPU: {out['cpu']}; torch {out['torch']}; `python -m bench.teal_margins --family {args.family}`; "
        f"n {out['n']}; {out['seconds']} s",
        "",
        f"Dense: accuracy {d['accuracy']:.3f}; logit margin |z1 - z0| min {d['margin_min']:.3f}, "
        + ", ".join(f"q{q} {v:.3f}" for q, v in d["margin_quantiles"].items())
        + f"; {d['margins_below_1']} margins below 1.",
        "",
        "| teal level | zeroed inputs | accuracy | changed predictions | max abs logit change | "
        "margin shift median / p99 / max | max shift / margin | shift > margin |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level, r in out["levels"].items():
        lines.append(
            f"| {float(level):.0%} | {r['zeroed_inputs']:.3f} | {r['accuracy']:.3f} | {r['changed_predictions']} | "
            f"{r['max_abs_logit_change']:.3f} | {r['margin_shift_median']:.3f} / {r['margin_shift_p99']:.3f} / "
            f"{r['margin_shift_max']:.3f} | {r['shift_over_margin_max']:.3f} | {r['examples_shift_exceeds_margin']} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
