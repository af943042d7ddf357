"""Where things are in a decoder-only causal LM, per architecture.

A :class:`DecoderLayout` names, for one family of Hugging Face ``*ForCausalLM``
models, the block list, each block's attention projections (separate q/k/v/o or a
fused qkv), the MLP Linear layers (gated: gate/up/down; plain: fc_in/fc_out), where
the head geometry lives, the final norm, the LM head and the embeddings. It is chosen
from ``config.model_type`` (:func:`layout_for`); anything else is a
:class:`~audit.errors.UsageError` naming the supported types.

Covered: ``llama``, ``mistral``, ``qwen2`` (one layout, grouped-query attention),
``gpt2`` (fused ``c_attn`` = [q | k | v]), ``gpt_neox`` / Pythia (fused
``query_key_value`` interleaved per head: [q_h | k_h | v_h] for each head h) and
``opt``.

GPT-2 is built from transformers' ``Conv1D`` (``y = x W + b`` with ``W`` stored
``[in, out]``). :func:`convert_conv1d` swaps every ``Conv1D`` for an ``nn.Linear``
holding ``W^T`` (the same arithmetic, so logits are unchanged), after which every
pruning method and sparse deploy format that handles ``nn.Linear`` applies.
:func:`decoder_blocks` refuses a model that still holds ``Conv1D`` layers.

The LM head and the embeddings are never among :func:`prunable_linears`; a tied LM
head (GPT-2, OPT, Llama with ``tie_word_embeddings``) stays the embedding matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from audit.errors import UsageError


@dataclass(frozen=True)
class DecoderLayout:
    """Module names of one decoder architecture (paths relative to the ``*ForCausalLM`` root or a block)."""

    family: str
    model_types: tuple[str, ...]
    blocks: str  # the ModuleList of decoder blocks, from the root
    attention: str  # the attention module, from a block
    q: str | None  # separate projections, from a block (None when fused)
    k: str | None
    v: str | None
    qkv: str | None  # fused projection, from a block
    qkv_order: str | None  # "blocked" ([q | k | v], GPT-2) or "per_head" ([q_h k_h v_h]..., NeoX)
    o: str
    gate: str | None  # gated MLP (gate and up feed down)
    up: str | None
    fc_in: str | None  # plain MLP (fc_in feeds fc_out)
    down: str  # the MLP's output Linear (down_proj / fc_out)
    head_dim_attr: str  # attribute of the attention module holding the head size
    heads_attr: str | None  # attribute of the attention module holding its head count, if it has one
    final_norm: str
    lm_head: str
    embeddings: tuple[str, ...]
    heads_field: str  # config fields
    kv_heads_field: str | None
    ffn_field: str
    head_dim_in_config: bool  # config.head_dim is honoured (else head_dim = hidden_size // heads)

    @property
    def gated(self) -> bool:
        return self.gate is not None

    @property
    def fused(self) -> bool:
        return self.qkv is not None


LLAMA = DecoderLayout(
    family="llama",
    model_types=("llama", "mistral", "qwen2"),
    blocks="model.layers",
    attention="self_attn",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    qkv=None,
    qkv_order=None,
    o="self_attn.o_proj",
    gate="mlp.gate_proj",
    up="mlp.up_proj",
    fc_in=None,
    down="mlp.down_proj",
    head_dim_attr="head_dim",
    heads_attr=None,
    final_norm="model.norm",
    lm_head="lm_head",
    embeddings=("model.embed_tokens",),
    heads_field="num_attention_heads",
    kv_heads_field="num_key_value_heads",
    ffn_field="intermediate_size",
    head_dim_in_config=True,
)

GPT2 = DecoderLayout(
    family="gpt2",
    model_types=("gpt2",),
    blocks="transformer.h",
    attention="attn",
    q=None,
    k=None,
    v=None,
    qkv="attn.c_attn",
    qkv_order="blocked",
    o="attn.c_proj",
    gate=None,
    up=None,
    fc_in="mlp.c_fc",
    down="mlp.c_proj",
    head_dim_attr="head_dim",
    heads_attr="num_heads",
    final_norm="transformer.ln_f",
    lm_head="lm_head",
    embeddings=("transformer.wte", "transformer.wpe"),
    heads_field="n_head",
    kv_heads_field=None,
    ffn_field="n_inner",
    head_dim_in_config=False,
)

NEOX = DecoderLayout(
    family="gpt_neox",
    model_types=("gpt_neox",),
    blocks="gpt_neox.layers",
    attention="attention",
    q=None,
    k=None,
    v=None,
    qkv="attention.query_key_value",
    qkv_order="per_head",
    o="attention.dense",
    gate=None,
    up=None,
    fc_in="mlp.dense_h_to_4h",
    down="mlp.dense_4h_to_h",
    head_dim_attr="head_size",
    heads_attr=None,
    final_norm="gpt_neox.final_layer_norm",
    lm_head="embed_out",
    embeddings=("gpt_neox.embed_in",),
    heads_field="num_attention_heads",
    kv_heads_field=None,
    ffn_field="intermediate_size",
    head_dim_in_config=False,
)

OPT = DecoderLayout(
    family="opt",
    model_types=("opt",),
    blocks="model.decoder.layers",
    attention="self_attn",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    qkv=None,
    qkv_order=None,
    o="self_attn.out_proj",
    gate=None,
    up=None,
    fc_in="fc1",
    down="fc2",
    head_dim_attr="head_dim",
    heads_attr="num_heads",
    final_norm="model.decoder.final_layer_norm",
    lm_head="lm_head",
    embeddings=("model.decoder.embed_tokens", "model.decoder.embed_positions"),
    heads_field="num_attention_heads",
    kv_heads_field=None,
    ffn_field="ffn_dim",
    head_dim_in_config=False,
)

LAYOUTS: tuple[DecoderLayout, ...] = (LLAMA, GPT2, NEOX, OPT)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for lay in LAYOUTS for t in lay.model_types)


def layout_for(model_or_config: Any) -> DecoderLayout:
    """The layout of a model (or config) by ``model_type``; a UsageError names the supported types."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for lay in LAYOUTS:
        if model_type in lay.model_types:
            return lay
    arch = type(model_or_config).__name__
    raise UsageError(
        f"decoder layouts cover model_type {', '.join(SUPPORTED_MODEL_TYPES)}; this model is {arch} "
        f"(model_type {model_type!r})",
        where="model",
        hint="load a Llama/Mistral/Qwen2, GPT-2, GPT-NeoX/Pythia or OPT causal LM",
    )


def get_module(root: nn.Module, path: str) -> nn.Module:
    mod: Any = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(get_module(root, parent) if parent else root, leaf, new)


def root_path(model: nn.Module, layout: DecoderLayout, path: str) -> str:
    """``path`` as seen from ``model``: the full ``*ForCausalLM`` path, or without its first part for a base model."""
    try:
        get_module(model, path)
        return path
    except AttributeError:
        head, _, tail = path.partition(".")
        prefix = getattr(model, "base_model_prefix", None)
        if head == prefix and tail:
            get_module(model, tail)
            return tail
        raise


@dataclass
class DecoderBlock:
    """One decoder block with its current (possibly pruned) head geometry and FFN width."""

    index: int
    name: str  # full module name, e.g. "model.layers.3"
    module: nn.Module
    layout: DecoderLayout

    def linear(self, role: str) -> nn.Linear:
        """The Linear playing ``role`` (``q k v o qkv gate up fc_in down``)."""
        path = getattr(self.layout, role)
        if path is None:
            raise KeyError(f"{self.layout.family} blocks have no {role!r} projection")
        return get_module(self.module, path)  # type: ignore[return-value]

    def linear_name(self, role: str) -> str:
        return f"{self.name}.{getattr(self.layout, role)}"

    @property
    def roles(self) -> tuple[str, ...]:
        lay = self.layout
        attn = ("qkv", "o") if lay.fused else ("q", "k", "v", "o")
        mlp = ("gate", "up", "down") if lay.gated else ("fc_in", "down")
        return attn + mlp

    @property
    def attention_roles(self) -> tuple[str, ...]:
        return ("qkv", "o") if self.layout.fused else ("q", "k", "v", "o")

    @property
    def mlp_roles(self) -> tuple[str, ...]:
        return ("gate", "up", "down") if self.layout.gated else ("fc_in", "down")

    def linears(self) -> dict[str, str]:
        """Role -> full Linear name."""
        return {r: self.linear_name(r) for r in self.roles}

    @property
    def attention(self) -> nn.Module:
        return get_module(self.module, self.layout.attention)

    @property
    def head_dim(self) -> int:
        return int(getattr(self.attention, self.layout.head_dim_attr))

    @property
    def heads(self) -> int:
        if self.layout.fused:
            return self.linear("qkv").out_features // (3 * self.head_dim)
        return self.linear("q").out_features // self.head_dim

    @property
    def kv_heads(self) -> int:
        if self.layout.fused:
            return self.heads
        return self.linear("k").out_features // self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads per key-value head (1 for multi-head attention)."""
        return self.heads // self.kv_heads

    @property
    def ffn(self) -> int:
        return self.linear("down").in_features


def decoder_blocks(model: nn.Module) -> list[DecoderBlock]:
    """The decoder blocks of a supported causal LM, checked against its layout.

    Raises:
        UsageError: Unsupported ``model_type``, a module missing from the layout, or
            GPT-2 ``Conv1D`` layers not yet converted (:func:`convert_conv1d`).
    """
    lay = layout_for(model)
    arch = type(model).__name__
    try:
        path = root_path(model, lay, lay.blocks)
        blocks = get_module(model, path)
    except AttributeError as exc:
        raise UsageError(f"{arch} does not have the {lay.family} decoder layout ({exc})", where="model") from None
    out = [DecoderBlock(i, f"{path}.{i}", b, lay) for i, b in enumerate(blocks)]
    for blk in out:
        for role in blk.roles:
            try:
                mod = blk.linear(role)
            except AttributeError as exc:
                raise UsageError(
                    f"{arch} block {blk.index} does not have the {lay.family} layout ({exc})", where="model"
                ) from None
            if type(mod).__name__ == "Conv1D":
                raise UsageError(
                    f"{blk.linear_name(role)} is a transformers Conv1D, not an nn.Linear",
                    where="model",
                    hint="call audit.models.decoders.convert_conv1d(model) first",
                )
            if not isinstance(mod, nn.Linear):
                raise UsageError(
                    f"{blk.linear_name(role)} is a {type(mod).__name__}, expected nn.Linear", where="model"
                )
    return out


def prunable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every Linear of every block, in block order (the LM head and embeddings are not among them)."""
    return [(blk.linear_name(r), blk.linear(r)) for blk in decoder_blocks(model) for r in blk.roles]


def protected_modules(model: nn.Module) -> list[str]:
    """Names of the LM head, the embeddings and the final norm: never pruned by default."""
    lay = layout_for(model)
    names = []
    for p in (lay.lm_head, *lay.embeddings, lay.final_norm):
        try:
            names.append(root_path(model, lay, p))
        except AttributeError:
            continue  # a base model has no LM head; OPT without a final norm
    return names


def embeddings_tied(model: nn.Module) -> bool:
    """Whether the LM head's weight is the input embedding matrix (the same tensor)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return head is not None and emb is not None and head.weight is emb.weight


def convert_conv1d(model: nn.Module) -> list[str]:
    """Replace every transformers ``Conv1D`` by an ``nn.Linear`` computing the same ``x W + b``.

    The Linear holds ``W^T`` (contiguous) and the same bias, on the same device and in
    the same dtype; parameters are copied, so the Conv1D's tensors are not shared.
    Returns the converted module names (empty when there was none).
    """
    from transformers.pytorch_utils import Conv1D

    names = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    for name in names:
        conv = get_module(model, name)
        w = conv.weight.detach()
        lin = nn.Linear(w.shape[0], w.shape[1], bias=conv.bias is not None, device=w.device, dtype=w.dtype)
        lin.weight.data.copy_(w.t())
        if conv.bias is not None:
            lin.bias.data.copy_(conv.bias.detach())
        lin.train(conv.training)
        set_module(model, name, lin)
    return names
