"""Structured pruning: attention heads and FFN neurons removed physically.

Which units a block has, how they are removed and how the config is patched so that
the smaller model reloads is the model adapter's (:meth:`~audit.models.ModelAdapter.unit_groups`,
``remove_heads``, ``remove_neurons``, ``finish_structured``, ``save_pruned``/``load_pruned``;
for BERT-family classifiers see :mod:`audit.models.classifier`). This module ranks the
units and decides how many go. :func:`save_pruned` / :func:`load_pruned` round-trip any
pruned model, including non-uniform FFN widths (from per-layer overrides).

What the sweep level means here: the fraction of heads, and the fraction of FFN
neurons, removed in each transformer block (``round(level · count)``). Per-layer
overrides apply through the block's first attention in-projection (heads) and first FFN
in-projection (neurons). A block's heads are pruned when any of its attention Linear
layers is selected, its FFN when any FFN Linear layer is; all layers that shrink are
recorded, with their achieved weight sparsity counted against their original size.

Architectures whose adapter has no unit groups get a :class:`UsageError` before any work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit.atomic import atomic_dir
from audit.errors import ModelError, UsageError
from audit.models import UnitGroups, adapter_for, adapter_of
from audit.models.classifier import FFN_WIDTHS_KEY  # noqa: F401 - re-exported (the config key of FFN widths)
from audit.pruning.base import Applied, PruneContext, Pruner, Selection, ShapeChange, layer_targets, select_layers
from audit.pruning.calibration import eval_mode, labelled_loss, model_device

log = logging.getLogger(__name__)

Block = UnitGroups
"""One transformer block's removable units (the former name)."""


def unit_blocks(model: nn.Module) -> list[UnitGroups]:
    """The blocks' heads and FFN neurons (from the model's adapter), or a :class:`UsageError`."""
    return adapter_of(model, where="method 'structured'").unit_groups(model)


bert_blocks = unit_blocks
"""The former name of :func:`unit_blocks`."""


@dataclass
class Plan:
    """How many heads and neurons each block loses."""

    heads: dict[int, int]  # block index -> heads to remove
    neurons: dict[int, int]  # block index -> neurons to remove
    targets: dict[str, float]  # Linear name -> its block's ratio


def _ratio(names: list[str], selected: dict[str, float], prefer: str) -> float | None:
    if prefer in selected:
        return selected[prefer]
    for n in names:
        if n in selected:
            return selected[n]
    return None


def plan_removal(model: nn.Module, ctx: PruneContext, units: list[str]) -> Plan:
    """Count the heads and neurons to remove per block; refuse to remove every head."""
    blocks = unit_blocks(model)
    selected_layers = select_layers(model, ctx.layers)
    selected = layer_targets(selected_layers, ctx.sparsity, ctx.layers)
    heads: dict[int, int] = {}
    neurons: dict[int, int] = {}
    targets: dict[str, float] = {}
    for b in blocks:
        attn = [f"{b.name}.{s}" for s in b.attn_linears]
        ffn = [f"{b.name}.{s}" for s in b.ffn_linears]
        if "heads" in units:
            r = _ratio(attn, selected, attn[0])
            if r is not None:
                k = int(round(r * b.heads))
                if k >= b.heads:
                    raise UsageError(
                        f"a head ratio of {r:g} would remove all {b.heads} heads of {b.name} "
                        f"(round({r:g} × {b.heads}) = {k})",
                        where="method 'structured'",
                        hint=f"use a level below {(b.heads - 0.5) / b.heads:.3f}, or an override for that block",
                    )
                heads[b.index] = k
                targets.update(dict.fromkeys(attn, r))
        if "ffn" in units:
            r = _ratio(ffn, selected, ffn[0])
            if r is not None:
                k = int(round(r * b.ffn_width))
                if k >= b.ffn_width:
                    raise UsageError(
                        f"an FFN ratio of {r:g} would remove all {b.ffn_width} neurons of {b.name}",
                        where="method 'structured'",
                    )
                neurons[b.index] = k
                targets.update(dict.fromkeys(ffn, r))
    if not heads and not neurons:
        raise UsageError(
            "structured pruning found no attention or FFN Linear layer of a transformer block in sweep.layers",
            where="sweep.layers",
        )
    return Plan(heads=heads, neurons=neurons, targets=targets)


def norm_scores(blocks: list[UnitGroups], p: int) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """L``p`` norm of each head's and each neuron's weights (in and out), per block."""
    head_scores, neuron_scores = {}, {}
    for b in blocks:
        parts = []
        for s, rows in b.head_rows.items():
            w = b.linear(s).weight.detach().double()
            parts.append(w.abs().pow(p).reshape(b.heads, rows, -1).sum(dim=(1, 2)))
        out, cols = b.head_out
        wo = b.linear(out).weight.detach().double()
        parts.append(wo.abs().pow(p).reshape(wo.shape[0], b.heads, cols).sum(dim=(0, 2)))
        head_scores[b.index] = torch.stack(parts).sum(0).pow(1.0 / p)
        score = b.linear(b.ffn_out).weight.detach().double().abs().pow(p).sum(0)
        for s in b.ffn_in:
            score = score + b.linear(s).weight.detach().double().abs().pow(p).sum(1)
        neuron_scores[b.index] = score.pow(1.0 / p)
    return head_scores, neuron_scores


def importance_scores(
    model: nn.Module, blocks: list[UnitGroups], calibration: Any
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """``sum_b |dL_b/dg|`` of a unit gate ``g = 1`` on each head's context and each FFN neuron.

    The head gate multiplies the head's slice of the input of the attention
    out-projection (equivalent to Michel et al.'s head mask); the neuron gate multiplies
    the neuron's activation at the input of the FFN down-projection (Molchanov et al.
    2017's Taylor score).
    """
    device = model_device(model)
    head_gates = {b.index: torch.ones(b.heads, device=device, requires_grad=True) for b in blocks}
    ffn_gates = {b.index: torch.ones(b.ffn_width, device=device, requires_grad=True) for b in blocks}
    head_acc = {i: torch.zeros(g.shape, dtype=torch.float64, device=device) for i, g in head_gates.items()}
    ffn_acc = {i: torch.zeros(g.shape, dtype=torch.float64, device=device) for i, g in ffn_gates.items()}
    handles = []
    for b in blocks:
        hg, fg, d = head_gates[b.index], ffn_gates[b.index], b.head_out[1]

        def gate_heads(_m: nn.Module, args: tuple[Any, ...], hg: torch.Tensor = hg, d: int = d) -> tuple[Any, ...]:
            return (args[0] * hg.repeat_interleave(d), *args[1:])

        def gate_ffn(_m: nn.Module, args: tuple[Any, ...], fg: torch.Tensor = fg) -> tuple[Any, ...]:
            return (args[0] * fg, *args[1:])

        handles.append(b.linear(b.head_out[0]).register_forward_pre_hook(gate_heads))
        handles.append(b.linear(b.ffn_out).register_forward_pre_hook(gate_ffn))
    gates = list(head_gates.values()) + list(ffn_gates.values())
    with eval_mode(model):
        try:
            with torch.enable_grad():
                for batch, labels in calibration.labelled_batches():
                    loss = labelled_loss(model, batch, labels, device, reduction="sum")
                    grads = torch.autograd.grad(loss, gates)
                    for i, g in enumerate(grads[: len(blocks)]):
                        head_acc[blocks[i].index] += g.abs().double()
                    for i, g in enumerate(grads[len(blocks) :]):
                        ffn_acc[blocks[i].index] += g.abs().double()
        finally:
            for h in handles:
                h.remove()
    return head_acc, ffn_acc


def _lowest(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` lowest scores (ties broken by position), sorted."""
    order = torch.argsort(scores.cpu(), stable=True)
    return sorted(int(i) for i in order[:k])


class StructuredPruner(Pruner):
    """Remove the lowest-ranked heads and FFN neurons of each block, physically."""

    def validate(self, model: nn.Module, ctx: PruneContext) -> None:
        super().validate(model, ctx)
        plan_removal(model, ctx, list(self.params.units))

    def apply(self, model: nn.Module, selection: Selection, ctx: PruneContext) -> Applied:
        p = self.params
        adapter = adapter_of(model, where="method 'structured'")
        blocks = adapter.unit_groups(model)
        removal = plan_removal(model, ctx, list(p.units))
        affected = []
        for b in blocks:
            if b.index in removal.heads:
                affected += [f"{b.name}.{s}" for s in b.attn_linears]
            if b.index in removal.neurons:
                affected += [f"{b.name}.{s}" for s in b.ffn_linears]
        modules = dict(model.named_modules())
        shapes = ShapeChange(
            original_shapes={n: list(modules[n].weight.shape) for n in affected},
            original_totals={n: int(modules[n].weight.numel()) for n in affected},
            original_params_total=sum(q.numel() for q in model.parameters()),
        )
        if p.criterion == "importance":
            head_scores, neuron_scores = importance_scores(model, blocks, self.calibration(ctx))
        elif hasattr(adapter, "norm_scores"):  # a family whose unit rows are not contiguous (fused GPT-2 qkv)
            head_scores, neuron_scores = adapter.norm_scores(model, blocks, 2 if p.criterion == "l2" else 1)
        else:
            head_scores, neuron_scores = norm_scores(blocks, 2 if p.criterion == "l2" else 1)
        to_prune: dict[int, list[int]] = {}
        for b in blocks:
            k = removal.heads.get(b.index, 0)
            if k:
                ids = adapter.head_ids(model, b)
                to_prune[b.index] = [ids[j] for j in _lowest(head_scores[b.index], k)]
                shapes.heads_removed[b.name] = sorted(to_prune[b.index])
                for s in b.attn_linears:
                    shapes.layer_extra[f"{b.name}.{s}"] = {"heads_removed": shapes.heads_removed[b.name]}
            k = removal.neurons.get(b.index, 0)
            if k:
                adapter.remove_neurons(model, b, _lowest(neuron_scores[b.index], k))
                shapes.neurons_removed[b.name] = k
                for s in b.ffn_linears:
                    shapes.layer_extra[f"{b.name}.{s}"] = {"neurons_removed": k}
        if to_prune:
            adapter.remove_heads(model, to_prune)
        config_notes = adapter.finish_structured(model)
        modules = dict(model.named_modules())
        notes = [
            "sparsity = fraction of heads and of FFN neurons removed per block "
            f"({', '.join(p.units)}); weights removed physically, achieved sparsity counted against original sizes",
            f"ranked by {p.criterion}"
            + (
                "; calibration sample drawn with the point's seed"
                if p.criterion == "importance"
                else " (deterministic: the seed does not change the choice)"
            ),
            *config_notes,
        ]
        recorded = Selection([(n, modules[n]) for n in affected], removal.targets, ctx.sparsity)
        return Applied(notes=notes, recorded=recorded, shapes=shapes)


def save_pruned(model: nn.Module, directory: str | Path, tokenizer: Any = None, *, overwrite: bool = False) -> Path:
    """Save a (structurally) pruned model so that :func:`load_pruned` restores it exactly.

    Written to a temporary sibling directory and moved into place, so a failed save
    leaves nothing half-written.
    """
    adapter = adapter_of(model, where="save_pruned")
    adapter.unit_groups(model, where="save_pruned")
    out = Path(directory)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists", where="save_pruned", hint="pass overwrite=True or another path")
    adapter.finish_structured(model)
    with atomic_dir(out) as tmp:
        adapter.save_pruned(model, tmp, tokenizer)
    return out


def load_pruned(directory: str | Path) -> nn.Module:
    """Load a model saved by :func:`save_pruned` (heads and per-block FFN widths restored).

    Raises:
        ModelError: The directory is not a saved checkpoint, or its weights do not fit
            the recorded shapes.
    """
    from transformers import AutoConfig

    d = Path(directory)
    if not (d / "config.json").is_file():
        raise ModelError(f"{d} has no config.json; not a saved checkpoint", where="load_pruned")
    config = AutoConfig.from_pretrained(d, local_files_only=True)
    return adapter_for(config, where="load_pruned").load_pruned(d, config)
