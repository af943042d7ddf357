"""Shared pieces of the pruning tests: calibration data for the tiny model, pruners by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.config import LayerSelection
from audit.data import EvalSet
from audit.inference import Predictor
from audit.pruning.base import CalibrationData, PruneContext, Pruner, select_layers
from audit.pruning.calibration import draw_calibration
from audit.registry import PRUNERS


def calibration(model_dir: Path, data_dir: Path, *, n: int = 64, point_seed: int = 0) -> CalibrationData:
    """A real calibration sample of the tiny data, tokenized by the tiny model's tokenizer."""
    from transformers import AutoTokenizer

    rows = [json.loads(line) for line in (data_dir / "train.jsonl").read_text().splitlines()]
    es = EvalSet(name="train", texts=[r["text"] for r in rows], labels=np.array([r["label"] for r in rows]))
    pred = Predictor(AutoTokenizer.from_pretrained(model_dir), max_length=64, batch_size=32)
    return draw_calibration(es, pred, n=n, seed=0, point_seed=point_seed, dataset="tiny", split="train")


def pruner(name: str, **params: Any) -> Pruner:
    spec = PRUNERS.get(name)
    return spec.load()(spec, spec.params.model_validate(params))


def ctx(sparsity: float, calib: CalibrationData | None = None, seed: int = 0, **layers: Any) -> PruneContext:
    return PruneContext(sparsity=sparsity, seed=seed, layers=LayerSelection(**layers), calibration=calib)


def run(model: torch.nn.Module, name: str, sparsity: float, calib: CalibrationData | None = None, **params: Any):
    p = pruner(name, **params)
    c = ctx(sparsity, calib)
    p.validate(model, c)
    return p.prune(model, c)


def masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (m.weight != 0).clone() for n, m in select_layers(model, LayerSelection())}
