"""Structured pruning: attention heads and FFN neurons removed physically.

Heads are removed with the model's own ``prune_heads`` (Hugging Face records them in
``config.pruned_heads`` and re-applies them when the model is loaded); FFN neurons
by shrinking ``intermediate.dense`` (rows) and ``output.dense`` (columns) with
``transformers.pytorch_utils.prune_linear_layer``. HF's ``BertConfig`` has a single
``intermediate_size``, so the width of every block's FFN is also written to
``config.prune_audit_ffn_widths``; when all blocks end up with the same width,
``intermediate_size`` is patched too, so that plain ``from_pretrained`` loads the
model. :func:`save_pruned` / :func:`load_pruned` round-trip any pruned model,
including non-uniform widths (from per-layer overrides).

What the sweep level means here: the fraction of heads, and the fraction of FFN
neurons, removed in each transformer block (``round(level · count)``). Per-layer
overrides apply through the block's ``attention.self.query`` (heads) and
``intermediate.dense`` (neurons) names. A block's heads are pruned when any of its
attention Linear layers is selected, its FFN when either FFN Linear layer is; all
layers that shrink are recorded, with their achieved weight sparsity counted against
their original size.

Supported: BERT-family encoders (``model_type`` ``bert`` — MiniLM included — and
``roberta``); other architectures get a :class:`UsageError` before any work.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit.errors import ModelError, UsageError
from audit.pruning.base import Applied, PruneContext, Pruner, Selection, ShapeChange, layer_targets, select_layers
from audit.pruning.calibration import eval_mode, labelled_loss, model_device

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("bert", "roberta")
FFN_WIDTHS_KEY = "prune_audit_ffn_widths"

ATTN_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
FFN_LINEARS = ("intermediate.dense", "output.dense")


@dataclass
class Block:
    """One transformer block of a BERT-family encoder."""

    index: int
    name: str  # e.g. "bert.encoder.layer.3"
    module: nn.Module

    @property
    def heads(self) -> int:
        return int(self.module.attention.self.num_attention_heads)

    @property
    def head_size(self) -> int:
        return int(self.module.attention.self.attention_head_size)

    @property
    def ffn_width(self) -> int:
        return int(self.module.intermediate.dense.out_features)

    def linear(self, suffix: str) -> nn.Linear:
        mod: Any = self.module
        for part in suffix.split("."):
            mod = getattr(mod, part)
        return mod


def bert_blocks(model: nn.Module) -> list[Block]:
    """The encoder blocks of a supported model, or a :class:`UsageError` naming what is supported."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    arch = type(model).__name__
    if model_type not in SUPPORTED_MODEL_TYPES or not hasattr(model, "prune_heads"):
        raise UsageError(
            f"structured pruning supports BERT-family encoders ({', '.join(SUPPORTED_MODEL_TYPES)}); "
            f"this model is {arch} (model_type {model_type!r})",
            where="method 'structured'",
            hint="use an unstructured or N:M method for this architecture",
        )
    base = model.base_model
    prefix = getattr(model, "base_model_prefix", "")
    try:
        layers = base.encoder.layer
        for blk in layers:
            for suffix in ATTN_LINEARS + FFN_LINEARS:
                Block(0, "", blk).linear(suffix)
            blk.attention.self.num_attention_heads  # noqa: B018 - structure check
    except AttributeError as exc:
        raise UsageError(
            f"{arch} does not have the BERT block layout structured pruning needs ({exc})",
            where="method 'structured'",
        ) from None
    return [
        Block(i, f"{prefix}.encoder.layer.{i}" if prefix else f"encoder.layer.{i}", b) for i, b in enumerate(layers)
    ]


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
    blocks = bert_blocks(model)
    selected_layers = select_layers(model, ctx.layers)
    selected = layer_targets(selected_layers, ctx.sparsity, ctx.layers)
    heads: dict[int, int] = {}
    neurons: dict[int, int] = {}
    targets: dict[str, float] = {}
    for b in blocks:
        attn = [f"{b.name}.{s}" for s in ATTN_LINEARS]
        ffn = [f"{b.name}.{s}" for s in FFN_LINEARS]
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
            "structured pruning found no attention or FFN Linear layer of an encoder block in sweep.layers",
            where="sweep.layers",
        )
    return Plan(heads=heads, neurons=neurons, targets=targets)


def norm_scores(blocks: list[Block], p: int) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """L``p`` norm of each head's and each neuron's weights (in and out), per block."""
    head_scores, neuron_scores = {}, {}
    for b in blocks:
        d = b.head_size
        parts = []
        for s in ("attention.self.query", "attention.self.key", "attention.self.value"):
            w = b.linear(s).weight.detach().double()
            parts.append(w.abs().pow(p).reshape(b.heads, d, -1).sum(dim=(1, 2)))
        wo = b.linear("attention.output.dense").weight.detach().double()
        parts.append(wo.abs().pow(p).reshape(wo.shape[0], b.heads, d).sum(dim=(0, 2)))
        head_scores[b.index] = torch.stack(parts).sum(0).pow(1.0 / p)
        wi = b.linear("intermediate.dense").weight.detach().double()
        wo2 = b.linear("output.dense").weight.detach().double()
        neuron_scores[b.index] = (wi.abs().pow(p).sum(1) + wo2.abs().pow(p).sum(0)).pow(1.0 / p)
    return head_scores, neuron_scores


def importance_scores(
    model: nn.Module, blocks: list[Block], calibration: Any
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """``sum_b |dL_b/dg|`` of a unit gate ``g = 1`` on each head's context and each FFN neuron.

    The head gate multiplies the head's slice of the input of ``attention.output.dense``
    (equivalent to Michel et al.'s head mask); the neuron gate multiplies the neuron's
    activation at the input of ``output.dense`` (Molchanov et al. 2017's Taylor score).
    """
    device = model_device(model)
    head_gates = {b.index: torch.ones(b.heads, device=device, requires_grad=True) for b in blocks}
    ffn_gates = {b.index: torch.ones(b.ffn_width, device=device, requires_grad=True) for b in blocks}
    head_acc = {i: torch.zeros(g.shape, dtype=torch.float64, device=device) for i, g in head_gates.items()}
    ffn_acc = {i: torch.zeros(g.shape, dtype=torch.float64, device=device) for i, g in ffn_gates.items()}
    handles = []
    for b in blocks:
        hg, fg, d = head_gates[b.index], ffn_gates[b.index], b.head_size

        def gate_heads(_m: nn.Module, args: tuple[Any, ...], hg: torch.Tensor = hg, d: int = d) -> tuple[Any, ...]:
            return (args[0] * hg.repeat_interleave(d), *args[1:])

        def gate_ffn(_m: nn.Module, args: tuple[Any, ...], fg: torch.Tensor = fg) -> tuple[Any, ...]:
            return (args[0] * fg, *args[1:])

        handles.append(b.linear("attention.output.dense").register_forward_pre_hook(gate_heads))
        handles.append(b.linear("output.dense").register_forward_pre_hook(gate_ffn))
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


def _original_head_ids(model: nn.Module, block: Block) -> list[int]:
    """Original head index of each current head (HF indexes pruned_heads by the original heads)."""
    total = int(model.config.num_attention_heads)
    gone = set(model.config.pruned_heads.get(block.index, []))
    return [h for h in range(total) if h not in gone]


def remove_ffn_neurons(block: Block, drop: list[int]) -> None:
    """Shrink the block's FFN to the neurons not in ``drop``."""
    from transformers.pytorch_utils import prune_linear_layer

    if not drop:
        return
    width = block.ffn_width
    keep = torch.tensor([j for j in range(width) if j not in set(drop)], dtype=torch.long)
    block.module.intermediate.dense = prune_linear_layer(block.module.intermediate.dense, keep, dim=0)
    block.module.output.dense = prune_linear_layer(block.module.output.dense, keep, dim=1)


def patch_ffn_config(model: nn.Module) -> list[int]:
    """Write each block's FFN width to the config; patch ``intermediate_size`` when uniform."""
    widths = [b.ffn_width for b in bert_blocks(model)]
    setattr(model.config, FFN_WIDTHS_KEY, widths)
    if len(set(widths)) == 1:
        model.config.intermediate_size = widths[0]
    return widths


class StructuredPruner(Pruner):
    """Remove the lowest-ranked heads and FFN neurons of each block, physically."""

    def validate(self, model: nn.Module, ctx: PruneContext) -> None:
        super().validate(model, ctx)
        plan_removal(model, ctx, list(self.params.units))

    def apply(self, model: nn.Module, selection: Selection, ctx: PruneContext) -> Applied:
        p = self.params
        blocks = bert_blocks(model)
        removal = plan_removal(model, ctx, list(p.units))
        affected = []
        for b in blocks:
            if b.index in removal.heads:
                affected += [f"{b.name}.{s}" for s in ATTN_LINEARS]
            if b.index in removal.neurons:
                affected += [f"{b.name}.{s}" for s in FFN_LINEARS]
        modules = dict(model.named_modules())
        shapes = ShapeChange(
            original_shapes={n: list(modules[n].weight.shape) for n in affected},
            original_totals={n: int(modules[n].weight.numel()) for n in affected},
            original_params_total=sum(q.numel() for q in model.parameters()),
        )
        if p.criterion == "importance":
            head_scores, neuron_scores = importance_scores(model, blocks, self.calibration(ctx))
        else:
            head_scores, neuron_scores = norm_scores(blocks, 2 if p.criterion == "l2" else 1)
        to_prune: dict[int, list[int]] = {}
        for b in blocks:
            k = removal.heads.get(b.index, 0)
            if k:
                ids = _original_head_ids(model, b)
                to_prune[b.index] = [ids[j] for j in _lowest(head_scores[b.index], k)]
                shapes.heads_removed[b.name] = sorted(to_prune[b.index])
                for s in ATTN_LINEARS:
                    shapes.layer_extra[f"{b.name}.{s}"] = {"heads_removed": shapes.heads_removed[b.name]}
            k = removal.neurons.get(b.index, 0)
            if k:
                remove_ffn_neurons(b, _lowest(neuron_scores[b.index], k))
                shapes.neurons_removed[b.name] = k
                for s in FFN_LINEARS:
                    shapes.layer_extra[f"{b.name}.{s}"] = {"neurons_removed": k}
        if to_prune:
            model.prune_heads(to_prune)  # patches config.pruned_heads
        widths = patch_ffn_config(model)
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
            f"config patched: pruned_heads, {FFN_WIDTHS_KEY}={widths}"
            + (", intermediate_size" if len(set(widths)) == 1 else " (non-uniform: reload with load_pruned)"),
        ]
        recorded = Selection([(n, modules[n]) for n in affected], removal.targets, ctx.sparsity)
        return Applied(notes=notes, recorded=recorded, shapes=shapes)


def save_pruned(model: nn.Module, directory: str | Path, tokenizer: Any = None, *, overwrite: bool = False) -> Path:
    """Save a (structurally) pruned model so that :func:`load_pruned` restores it exactly.

    Written to a temporary sibling directory and moved into place, so a failed save
    leaves nothing half-written.
    """
    bert_blocks(model)
    out = Path(directory)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists", where="save_pruned", hint="pass overwrite=True or another path")
    patch_ffn_config(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_pruned(directory: str | Path) -> nn.Module:
    """Load a model saved by :func:`save_pruned` (heads and per-block FFN widths restored).

    Raises:
        ModelError: The directory is not a saved checkpoint, or its weights do not fit
            the recorded shapes.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.modeling_utils import load_sharded_checkpoint

    d = Path(directory)
    if not (d / "config.json").is_file():
        raise ModelError(f"{d} has no config.json; not a saved checkpoint", where="load_pruned")
    config = AutoConfig.from_pretrained(d, local_files_only=True)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise UsageError(
            f"load_pruned supports {', '.join(SUPPORTED_MODEL_TYPES)}; {d} holds model_type {config.model_type!r}",
            where="load_pruned",
        )
    widths = getattr(config, FFN_WIDTHS_KEY, None)
    model = AutoModelForSequenceClassification.from_config(config)  # re-applies config.pruned_heads
    blocks = bert_blocks(model)
    if widths is not None:
        if len(widths) != len(blocks):
            raise ModelError(
                f"{FFN_WIDTHS_KEY} lists {len(widths)} widths but the model has {len(blocks)} blocks",
                where=str(d / "config.json"),
            )
        for b, w in zip(blocks, widths, strict=True):
            if w != b.ffn_width:
                remove_ffn_neurons(b, list(range(int(w), b.ffn_width)))
    try:
        if (d / "model.safetensors").is_file():
            missing, unexpected = model.load_state_dict(load_file(str(d / "model.safetensors")), strict=False)
            if missing or unexpected:
                raise RuntimeError(f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")
        elif (d / "model.safetensors.index.json").is_file():
            load_sharded_checkpoint(model, d, strict=True)
        else:
            raise ModelError(f"{d} has no model.safetensors", where="load_pruned")
    except RuntimeError as exc:
        raise ModelError(f"the weights in {d} do not fit the pruned shapes: {exc}", where="load_pruned") from None
    model.eval()
    return model
