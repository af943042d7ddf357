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

Which units go, and how many, is decided by the structured method
(:mod:`audit.pruning.structured`, through the causal-LM adapter's ``unit_groups``,
``remove_heads``, ``remove_neurons`` and ``norm_scores``); this module removes them
(:func:`remove_kv_groups`, :func:`remove_neurons`) and gives the weight-magnitude score per
key-value group and per neuron (:func:`group_scores`, :func:`neuron_scores`).

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
MHA families) reload exactly (:func:`audit.pruning.structured.save_pruned` writes them
atomically, :func:`audit.pruning.structured.load_pruned` reads them through the adapter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit.errors import ModelError, UsageError
from audit.models.decoders import DecoderBlock, convert_conv1d, decoder_blocks, layout_for

SHAPES_KEY = "prune_audit_decoder"


def slice_linear(lin: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear with only the ``keep`` output rows (``dim=0``) or input columns (``dim=1``).

    Shared with :mod:`audit.models.classifier` (BERT heads and FFN neurons are removed the same way).
    """
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


def keep_index(n: int, drop: list[int]) -> torch.Tensor:
    """The indices ``0 .. n-1`` not in ``drop``, in order (what :func:`slice_linear` keeps)."""
    gone = set(drop)
    return torch.tensor([i for i in range(n) if i not in gone], dtype=torch.long)


def head_rows(heads: list[int], d: int) -> list[int]:
    """The rows (or columns) of ``heads`` in a projection whose head ``h`` spans ``h*d .. h*d+d-1``."""
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
    q_keep = keep_index(n_heads * d, head_rows(q_heads, d))
    lay = block.layout
    if lay.fused:
        qkv = block.linear("qkv")
        if lay.qkv_order == "blocked":  # [q | k | v], each n_heads * d
            span = n_heads * d
            rows = head_rows(q_heads, d)
            gone = rows + [span + r for r in rows] + [2 * span + r for r in rows]
        else:  # per head [q_h k_h v_h]
            gone = head_rows(q_heads, 3 * d)
        _set(block, "qkv", slice_linear(qkv, keep_index(qkv.out_features, gone), 0))
    else:
        kv_keep = keep_index(kv * d, head_rows(drop, d))
        _set(block, "q", slice_linear(block.linear("q"), q_keep, 0))
        _set(block, "k", slice_linear(block.linear("k"), kv_keep, 0))
        _set(block, "v", slice_linear(block.linear("v"), kv_keep, 0))
    _set(block, "o", slice_linear(block.linear("o"), q_keep, 1))
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
    keep = keep_index(width, drop)
    for role in ("gate", "up") if block.layout.gated else ("fc_in",):
        _set(block, role, slice_linear(block.linear(role), keep, 0))
    _set(block, "down", slice_linear(block.linear("down"), keep, 1))


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
    """Load a causal LM saved by :func:`audit.pruning.structured.save_pruned` (per-block widths, tied embeddings).

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
