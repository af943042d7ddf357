"""Run one suite directly (no runner) on the tiny model: dense first, then pruned variants.

Used by the OOD and bias suite tests; mirrors what :func:`audit.runner.run_audit` does
for a suite (setup once, dense baseline artifacts handed to every later variant).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import write_config

from audit.config import AuditConfig, LayerSelection, load_config
from audit.registry import PRUNERS, SUITES
from audit.suite import Suite, SuiteContext, SuiteOutput, Variant


@dataclass
class TinyAudit:
    config: AuditConfig
    ctx: SuiteContext
    variants: list[Variant]

    def suite(self, name: str, params: dict[str, Any] | None = None) -> Suite:
        spec = SUITES.get(name)
        return spec.load()(spec, spec.params.model_validate(params or {}))

    def run(self, suite: Suite, *, setup: bool = True) -> list[SuiteOutput]:
        """``suite`` on every variant, dense first, as the runner does."""
        if setup:
            suite.setup(self.ctx)
        outs = []
        base = None
        for v in self.variants:
            out = suite.run(v, self.ctx.for_suite(None if v.is_baseline else base))
            if v.is_baseline:
                base = out.artifacts
            outs.append(out)
        return outs


def tiny_audit(model_dir: Path, data_dir: Path, tmp: Path, *, sparsities: tuple[float, ...] = (0.9,)) -> TinyAudit:
    """Dense tiny model plus magnitude-pruned copies, with a suite context over the test split."""
    import torch

    from audit.data import load_split
    from audit.inference import Predictor
    from audit.model_io import load_model
    from audit.plan import plan
    from audit.pruning.base import PruneContext

    sweep = f"sweep:\n  methods: [magnitude]\n  sparsities: [{', '.join(str(s) for s in sparsities)}]\n"
    cfg = load_config(write_config(tmp / "audit.yaml", model_dir, data_dir, sweep=sweep))
    loaded = load_model(cfg)
    es = load_split(cfg, "test", loaded.id2label)
    predictor = Predictor(loaded.tokenizer, max_length=64, batch_size=64)
    ctx = SuiteContext(config=cfg, eval_set=es, predictor=predictor, id2label=loaded.id2label, n_boot=50, seed=0)
    points = plan(cfg)
    variants = [Variant(point=points[0], model=loaded.model)]
    spec = PRUNERS.get("magnitude")
    pruner = spec.load()(spec, spec.params.model_validate({}))
    for point in points[1:]:
        torch.manual_seed(0)
        model = copy.deepcopy(loaded.model)
        record = pruner.prune(
            model, PruneContext(sparsity=point.sparsity, seed=0, layers=LayerSelection.model_validate(point.layers))
        )
        model.eval()
        variants.append(Variant(point=point, model=model, pruning=record))
    return TinyAudit(cfg, ctx, variants)
