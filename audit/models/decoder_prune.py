"""Structured pruning of decoder-only causal LMs, and its save/load round trip (our own code).

Attention: whole key-value groups are removed together with the query heads that
read them, so every block keeps its ratio ``heads / kv_heads`` (Llama's
``num_key_value_groups``, which ``repeat_kv`` uses, stays right). For multi-head
attention (GPT-2, GPT-NeoX, OPT) a group is one head. The rows of q/k/v (and their
biases) go, with the matching input columns of the output projection; in a fused qkv
the rows are found from its order: GPT-2's ``c_attn`` is ``[q | k | v]`` (each
``heads * head_dim``), NeoX's ``query_key_value`` is ``[q_h k_h v_h]`` per head.
The head size never changes. MLP: a neuron is a row of gate and up (gated) or of
fc_in (plain), with its bias, and the matching column of down / fc_out.

Counts per block come from the caller (:func:`plan_counts` turns a ratio, or a
per-block map of ratios, into ``round(ratio * count)``); which units go comes from a
score per unit, lowest first: the caller's (a tensor per block, e.g. gradient
scores; query-head scores are summed within each group), or the default weight
magnitude (:func:`group_scores`, :func:`neuron_scores`). :func:`importance_scores`
gives gradient scores (``|dL/dg|`` of unit gates on each query head and neuron).

Config: every pruned model carries ``config.prune_audit_decoder`` with the per-block
``heads``, ``kv_heads`` and ``ffn`` widths, the ``head_dim`` and whether GPT-2's
Conv1D layers were saved as Linear. The architecture's own fields are patched to
the per-block value when all blocks agree, and to the largest when they do not:

* Llama/Mistral/Qwen2 (``head_dim`` is a config field): ``num_attention_heads``,
  ``num_key_value_heads``, ``intermediate_size`` and ``head_dim`` are patched, so a
  uniformly pruned model also loads with plain ``from_pretrained``.
* GPT-2, GPT-NeoX, OPT derive the head size as ``hidden_size // heads``: their head
  count stays the original (else the head size would change) and only the FFN field
  (``n_inner``, ``intermediate_size``, ``ffn_dim``) is patched.

:func:`load_decoder` builds the model from the config, shrinks each block to the
recorded widths and loads the weights, so non-uniform models (and pruned heads of the
MHA families) reload exactly; :func:`save_decoder` writes atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit.atomic import atomic_dir
from audit.errors import ModelError, UsageError
from audit.models.decoders import DecoderBlock, convert_conv1d, decoder_blocks, layout_for

SHAPES_KEY = "prune_audit_decoder"


def _slice_linear(lin: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear with only the ``keep`` output rows (``dim=0``) or input columns (``dim=1``)."""
    w = lin.weight.detach()
    keep = keep.to(w.device)
    w = w.index_select(dim, keep)
    out_f, in_f = w.shape
    new = nn.Linear(in_f, out_f, bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if lin.bias is not None:
        b = lin.bias.detach()
        new.bias.data.copy_(b.index_select(0, keep) if dim == 0 else b)
    new.weight.requires_grad_(lin.weight.requires_grad)
    new.train(lin.training)
    return new


def _set(block: DecoderBlock, role: str, new: nn.Linear) -> None:
    path = getattr(block.layout, role)
    parent, _, leaf = path.rpartition(".")
    mod: Any = block.module
    for part in parent.split(".") if parent else []:
        mod = getattr(mod, part)
    setattr(mod, leaf, new)


def _keep(n: int, drop: list[int]) -> torch.Tensor:
    gone = set(drop)
    return torch.tensor([i for i in range(n) if i not in gone], dtype=torch.long)


def _head_rows(heads: list[int], d: int) -> list[int]:
    return [h * d + j for h in heads for j in range(d)]


def query_heads_of(block: DecoderBlock, groups: list[int]) -> list[int]:
    """Query heads that read key-value head ``g`` for each ``g`` (``repeat_kv``: head h reads ``h // G``)."""
    g = block.group_size
    return [gr * g + j for gr in sorted(groups) for j in range(g)]


def remove_kv_groups(block: DecoderBlock, drop: list[int]) -> list[int]:
    """Remove key-value groups ``drop`` (indices into the block's current KV heads) and their query heads.

    Returns:
        The query heads removed (current indices).
    """
    kv, d, n_heads = block.kv_heads, block.head_dim, block.heads
    drop = sorted(set(int(x) for x in drop))
    if not drop:
        return []
    if drop[0] < 0 or drop[-1] >= kv:
        raise UsageError(f"{block.name} has {kv} key-value heads; cannot remove {drop}", where="structured pruning")
    if len(drop) >= kv:
        raise UsageError(f"removing {len(drop)} of {kv} key-value heads would empty {block.name}", where="structured")
    q_heads = query_heads_of(block, drop)
    q_keep = _keep(n_heads * d, _head_rows(q_heads, d))
    lay = block.layout
    if lay.fused:
        qkv = block.linear("qkv")
        if lay.qkv_order == "blocked":  # [q | k | v], each n_heads * d
            span = n_heads * d
            rows = _head_rows(q_heads, d)
            gone = rows + [span + r for r in rows] + [2 * span + r for r in rows]
        else:  # per head [q_h k_h v_h]
            gone = _head_rows(q_heads, 3 * d)
        _set(block, "qkv", _slice_linear(qkv, _keep(qkv.out_features, gone), 0))
    else:
        kv_keep = _keep(kv * d, _head_rows(drop, d))
        _set(block, "q", _slice_linear(block.linear("q"), q_keep, 0))
        _set(block, "k", _slice_linear(block.linear("k"), kv_keep, 0))
        _set(block, "v", _slice_linear(block.linear("v"), kv_keep, 0))
    _set(block, "o", _slice_linear(block.linear("o"), q_keep, 1))
    _sync_attention(block)
    return q_heads


def _sync_attention(block: DecoderBlock) -> None:
    """Keep the attention module's own head bookkeeping in step with its (smaller) projections."""
    attn = block.attention
    if block.layout.heads_attr is not None:
        setattr(attn, block.layout.heads_attr, block.heads)
    if hasattr(attn, "split_size"):  # GPT-2 splits c_attn's output at split_size
        attn.split_size = block.heads * block.head_dim
    if hasattr(attn, "num_key_value_groups"):
        attn.num_key_value_groups = block.group_size


def remove_neurons(block: DecoderBlock, drop: list[int]) -> None:
    """Remove MLP neurons ``drop``: rows of gate and up (or fc_in), with their biases, and columns of down."""
    width = block.ffn
    drop = sorted(set(int(x) for x in drop))
    if not drop:
        return
    if drop[0] < 0 or drop[-1] >= width:
        raise UsageError(f"{block.name} has {width} MLP neurons; cannot remove {drop[:5]}...", where="structured")
    if len(drop) >= width:
        raise UsageError(f"removing all {width} MLP neurons would empty {block.name}", where="structured pruning")
    keep = _keep(width, drop)
    for role in ("gate", "up") if block.layout.gated else ("fc_in",):
        _set(block, role, _slice_linear(block.linear(role), keep, 0))
    _set(block, "down", _slice_linear(block.linear("down"), keep, 1))


def _pnorm(parts: list[torch.Tensor], p: int) -> torch.Tensor:
    return torch.stack(parts).sum(0).pow(1.0 / p)


def group_scores(model: nn.Module, p: int = 1) -> dict[int, torch.Tensor]:
    """Weight-magnitude score of each key-value group per block: the L``p`` norm of all its weights.

    A group's weights: its k and v rows (or its heads' rows of a fused qkv), the rows
    of its query heads and their columns of the output projection.
    """
    out = {}
    for b in decoder_blocks(model):
        d, g, kv = b.head_dim, b.group_size, b.kv_heads
        parts = []
        if b.layout.fused:
            w = b.linear("qkv").weight.detach().double().abs().pow(p)
            if b.layout.qkv_order == "blocked":
                parts.append(w.reshape(3, b.heads, d, -1).sum(dim=(0, 2, 3)))
            else:
                parts.append(w.reshape(b.heads, 3 * d, -1).sum(dim=(1, 2)))
        else:
            parts.append(b.linear("q").weight.detach().double().abs().pow(p).reshape(kv, g * d, -1).sum(dim=(1, 2)))
            for role in ("k", "v"):
                parts.append(b.linear(role).weight.detach().double().abs().pow(p).reshape(kv, d, -1).sum(dim=(1, 2)))
        wo = b.linear("o").weight.detach().double().abs().pow(p)
        parts.append(wo.reshape(wo.shape[0], kv, g * d).sum(dim=(0, 2)))
        out[b.index] = _pnorm(parts, p)
    return out


def neuron_scores(model: nn.Module, p: int = 1) -> dict[int, torch.Tensor]:
    """Weight-magnitude score of each MLP neuron per block: L``p`` norm of its input rows and output column."""
    out = {}
    for b in decoder_blocks(model):
        parts = [
            b.linear(r).weight.detach().double().abs().pow(p).sum(1)
            for r in (("gate", "up") if b.layout.gated else ("fc_in",))
        ]
        parts.append(b.linear("down").weight.detach().double().abs().pow(p).sum(0))
        out[b.index] = _pnorm(parts, p)
    return out


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch, padded positions (``attention_mask`` 0) not predicted."""
    labels = batch["input_ids"].clone()
    if "attention_mask" in batch:
        labels[batch["attention_mask"] == 0] = -100
    return model(**batch, labels=labels, use_cache=False).loss


def importance_scores(
    model: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    loss_fn: Any = None,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """``sum_b |dL_b/dg|`` of a unit gate on each query head and each MLP neuron, per block.

    The head gate multiplies the head's slice of the output projection's input (a
    head mask, Michel et al. 2019); the neuron gate multiplies the neuron's
    activation at the input of down / fc_out (Molchanov et al. 2017's Taylor score).
    Head scores are per query head; :func:`prune_decoder` sums them per key-value
    group. Dropout is off while scoring; the weights are not changed.

    Args:
        model: A supported causal LM.
        batches: Tokenized batches (``input_ids``, ``attention_mask``) on the model's device.
        loss_fn: ``(model, batch) -> scalar loss``; default :func:`lm_loss`.
    """
    loss_fn = loss_fn or lm_loss
    blocks = decoder_blocks(model)
    device = next(model.parameters()).device
    head_gates = {b.index: torch.ones(b.heads, device=device, requires_grad=True) for b in blocks}
    ffn_gates = {b.index: torch.ones(b.ffn, device=device, requires_grad=True) for b in blocks}
    heads = {i: torch.zeros(g.shape, dtype=torch.float64) for i, g in head_gates.items()}
    ffn = {i: torch.zeros(g.shape, dtype=torch.float64) for i, g in ffn_gates.items()}
    handles = []
    for b in blocks:
        hg, fg, d = head_gates[b.index], ffn_gates[b.index], b.head_dim

        def gate_heads(_m: nn.Module, args: tuple[Any, ...], hg: torch.Tensor = hg, d: int = d) -> tuple[Any, ...]:
            x = args[0]
            return ((x.unflatten(-1, (-1, d)) * hg[:, None].to(x.dtype)).flatten(-2), *args[1:])

        def gate_ffn(_m: nn.Module, args: tuple[Any, ...], fg: torch.Tensor = fg) -> tuple[Any, ...]:
            return (args[0] * fg.to(args[0].dtype), *args[1:])

        handles.append(b.linear("o").register_forward_pre_hook(gate_heads))
        handles.append(b.linear("down").register_forward_pre_hook(gate_ffn))
    was_training = model.training
    model.eval()
    try:
        gates = [*head_gates.values(), *ffn_gates.values()]
        for batch in batches:
            grads = torch.autograd.grad(loss_fn(model, batch), gates, allow_unused=True)
            for i, g in zip([*head_gates, *(f"f{k}" for k in ffn_gates)], grads, strict=True):
                if g is None:
                    continue
                target = ffn[int(i[1:])] if isinstance(i, str) else heads[i]
                target += g.detach().abs().double().cpu()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return heads, ffn


def as_group_scores(block: DecoderBlock, scores: torch.Tensor) -> torch.Tensor:
    """Scores per key-value group from a tensor of ``kv_heads`` (as is) or ``heads`` entries (summed per group)."""
    s = torch.as_tensor(scores).detach().double().reshape(-1).cpu()
    if s.numel() == block.kv_heads:
        return s
    if s.numel() == block.heads:
        return s.reshape(block.kv_heads, block.group_size).sum(1)
    raise UsageError(
        f"a head score for {block.name} needs {block.kv_heads} (per key-value group) or {block.heads} "
        f"(per query head) entries; got {s.numel()}",
        where="structured pruning",
    )


def _lowest(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` lowest scores (ties broken by position), sorted."""
    order = torch.argsort(torch.as_tensor(scores).detach().cpu().double(), stable=True)
    return sorted(int(i) for i in order[:k])


def _ratio_for(ratio: float | Mapping[int, float] | None, i: int) -> float | None:
    if ratio is None or isinstance(ratio, (int, float)):
        return None if ratio is None else float(ratio)
    return None if i not in ratio else float(ratio[i])


def plan_counts(
    model: nn.Module,
    group_ratio: float | Mapping[int, float] | None,
    ffn_ratio: float | Mapping[int, float] | None,
) -> tuple[dict[int, int], dict[int, int]]:
    """Key-value groups and MLP neurons to remove per block: ``round(ratio * count)``.

    A float applies to every block (uniform counts, so the config stays uniform); a
    map of block index to ratio applies to those blocks only. Removing every group or
    every neuron of a block is refused.
    """
    groups: dict[int, int] = {}
    neurons: dict[int, int] = {}
    for b in decoder_blocks(model):
        r = _ratio_for(group_ratio, b.index)
        if r is not None:
            k = int(round(r * b.kv_heads))
            if k >= b.kv_heads:
                raise UsageError(
                    f"a head ratio of {r:g} would remove all {b.kv_heads} key-value groups of {b.name} "
                    f"(round({r:g} × {b.kv_heads}) = {k})",
                    where="method 'structured'",
                    hint=f"use a level below {(b.kv_heads - 0.5) / b.kv_heads:.3f}",
                )
            if k:
                groups[b.index] = k
        r = _ratio_for(ffn_ratio, b.index)
        if r is not None:
            k = int(round(r * b.ffn))
            if k >= b.ffn:
                raise UsageError(
                    f"an FFN ratio of {r:g} would remove all {b.ffn} MLP neurons of {b.name}",
                    where="method 'structured'",
                )
            if k:
                neurons[b.index] = k
    return groups, neurons


@dataclass
class DecoderPruneResult:
    """What :func:`prune_decoder` removed, per block index (indices as they were before the call)."""

    groups_removed: dict[int, list[int]] = field(default_factory=dict)
    heads_removed: dict[int, list[int]] = field(default_factory=dict)
    neurons_removed: dict[int, list[int]] = field(default_factory=dict)
    shapes: dict[str, Any] = field(default_factory=dict)  # the config's SHAPES_KEY record afterwards


def prune_decoder(
    model: nn.Module,
    *,
    groups: Mapping[int, int] | None = None,
    neurons: Mapping[int, int] | None = None,
    group_scores_by_block: Mapping[int, torch.Tensor] | None = None,
    neuron_scores_by_block: Mapping[int, torch.Tensor] | None = None,
    p: int = 1,
) -> DecoderPruneResult:
    """Remove the lowest-scored key-value groups and MLP neurons of each block, then patch the config.

    Args:
        model: A supported causal LM (GPT-2 converted with :func:`convert_conv1d`).
        groups: Block index -> number of key-value groups (heads, for MHA) to remove.
        neurons: Block index -> number of MLP neurons to remove.
        group_scores_by_block: Block index -> scores per KV group or per query head
            (lowest removed); default :func:`group_scores` with norm ``p``.
        neuron_scores_by_block: Block index -> scores per neuron; default :func:`neuron_scores`.
        p: Norm of the default magnitude scores (1 or 2).
    """
    groups = dict(groups or {})
    neurons = dict(neurons or {})
    blocks = {b.index: b for b in decoder_blocks(model)}
    for i in [*groups, *neurons]:
        if i not in blocks:
            raise UsageError(f"block {i} does not exist (the model has {len(blocks)} blocks)", where="structured")
    if groups and group_scores_by_block is None:
        group_scores_by_block = group_scores(model, p)
    if neurons and neuron_scores_by_block is None:
        neuron_scores_by_block = neuron_scores(model, p)
    result = DecoderPruneResult()
    for i, b in blocks.items():
        k = int(groups.get(i, 0))
        if k:
            assert group_scores_by_block is not None
            if i not in group_scores_by_block:
                raise UsageError(f"no head scores given for block {i}", where="structured pruning")
            drop = _lowest(as_group_scores(b, group_scores_by_block[i]), k)
            result.groups_removed[i] = drop
            result.heads_removed[i] = remove_kv_groups(b, drop)
        k = int(neurons.get(i, 0))
        if k:
            assert neuron_scores_by_block is not None
            if i not in neuron_scores_by_block:
                raise UsageError(f"no neuron scores given for block {i}", where="structured pruning")
            s = torch.as_tensor(neuron_scores_by_block[i]).reshape(-1)
            if s.numel() != b.ffn:
                raise UsageError(
                    f"a neuron score for {b.name} needs {b.ffn} entries; got {s.numel()}", where="structured pruning"
                )
            drop = _lowest(s, k)
            remove_neurons(b, drop)
            result.neurons_removed[i] = drop
    result.shapes = patch_decoder_config(model)
    return result


def decoder_shapes(model: nn.Module) -> dict[str, Any]:
    """Per-block ``heads``, ``kv_heads``, ``ffn``, the ``head_dim``, and whether Conv1D became Linear."""
    blocks = decoder_blocks(model)
    dims = {b.head_dim for b in blocks}
    if len(dims) != 1:
        raise ModelError(f"blocks disagree on the head size: {sorted(dims)}", where="structured pruning")
    return {
        "heads": [b.heads for b in blocks],
        "kv_heads": [b.kv_heads for b in blocks],
        "ffn": [b.ffn for b in blocks],
        "head_dim": dims.pop(),
        "conv1d_as_linear": layout_for(model).family == "gpt2",
    }


def patch_decoder_config(model: nn.Module) -> dict[str, Any]:
    """Write :data:`SHAPES_KEY` and patch the architecture's own size fields (see the module docstring)."""
    shapes = decoder_shapes(model)
    lay = layout_for(model)
    config = model.config
    setattr(config, SHAPES_KEY, shapes)
    setattr(config, lay.ffn_field, max(shapes["ffn"]))
    if lay.head_dim_in_config:
        config.head_dim = shapes["head_dim"]
        setattr(config, lay.heads_field, max(shapes["heads"]))
        if lay.kv_heads_field is not None:
            setattr(config, lay.kv_heads_field, max(shapes["kv_heads"]))
    return shapes


def save_decoder(model: nn.Module, directory: str | Path, tokenizer: Any = None, *, overwrite: bool = False) -> Path:
    """Save a (structurally pruned) causal LM so that :func:`load_decoder` restores it exactly.

    Written to a temporary sibling directory and moved into place, so a failed save
    leaves nothing half-written.
    """
    out = Path(directory)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists", where="save_decoder", hint="pass overwrite=True or another path")
    patch_decoder_config(model)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out


def _shrink_to(block: DecoderBlock, heads: int, kv_heads: int, ffn: int, where: str) -> None:
    if kv_heads > block.kv_heads or ffn > block.ffn or heads * block.kv_heads != kv_heads * block.heads:
        raise ModelError(
            f"block {block.index} is recorded as {heads} heads / {kv_heads} KV heads / {ffn} neurons, which the "
            f"config's {block.heads} / {block.kv_heads} / {block.ffn} cannot be cut down to",
            where=where,
        )
    remove_kv_groups(block, list(range(kv_heads, block.kv_heads)))
    remove_neurons(block, list(range(ffn, block.ffn)))


def load_decoder(directory: str | Path) -> nn.Module:
    """Load a causal LM saved by :func:`save_decoder` (per-block widths restored, tied embeddings kept tied).

    Raises:
        ModelError: Not a saved checkpoint, or weights that do not fit the recorded shapes.
        UsageError: An architecture without a decoder layout.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    d = Path(directory)
    if not (d / "config.json").is_file():
        raise ModelError(f"{d} has no config.json; not a saved checkpoint", where="load_decoder")
    if not (d / "model.safetensors").is_file():
        raise ModelError(f"{d} has no model.safetensors", where="load_decoder")
    config = AutoConfig.from_pretrained(d, local_files_only=True)
    layout_for(config)
    shapes = getattr(config, SHAPES_KEY, None)
    state = load_file(str(d / "model.safetensors"))
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    model = AutoModelForCausalLM.from_config(config)
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    where = str(d / "config.json")
    if shapes is not None and shapes.get("conv1d_as_linear"):
        convert_conv1d(model)
    blocks = decoder_blocks(model)
    if shapes is not None:
        n = len(shapes.get("ffn", []))
        if not (len(shapes.get("heads", [])) == len(shapes.get("kv_heads", [])) == n == len(blocks)):
            raise ModelError(f"{SHAPES_KEY} does not list one entry per block ({len(blocks)} blocks)", where=where)
        for b, h, kv, f in zip(blocks, shapes["heads"], shapes["kv_heads"], shapes["ffn"], strict=True):
            _shrink_to(b, int(h), int(kv), int(f), where)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ModelError(f"the weights in {d} do not fit the pruned shapes: {exc}", where="load_decoder") from None
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ptrs = {params[k].data_ptr() for k in state if k in params}
    untied = [k for k in missing if k not in params or params[k].data_ptr() not in loaded_ptrs]
    if untied or unexpected:
        raise ModelError(
            f"the weights in {d} do not fit the model: missing {untied[:3]}, unexpected {list(unexpected)[:3]}",
            where="load_decoder",
        )
    model.eval()
    return model
