"""Tiny random decoder-only causal LMs of each covered architecture, built in code."""

from __future__ import annotations

import torch
from torch import nn

ARCHS = ("llama", "gpt2", "gpt_neox", "opt")
VOCAB = 100


def tiny_decoder(arch: str, *, seed: int = 0, layers: int = 2) -> nn.Module:
    """A 2-block causal LM with random weights (hidden 32, 4 query heads; Llama: 2 KV heads), eval mode."""
    import transformers as tf

    torch.manual_seed(seed)
    common = {"vocab_size": VOCAB, "num_hidden_layers": layers}
    if arch == "llama":
        cfg = tf.LlamaConfig(
            hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
            max_position_embeddings=64, **common,
        )  # fmt: skip
        model = tf.LlamaForCausalLM(cfg)
    elif arch == "mistral":
        cfg = tf.MistralConfig(
            hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
            max_position_embeddings=64, **common,
        )  # fmt: skip
        model = tf.MistralForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = tf.Qwen2Config(
            hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
            max_position_embeddings=64, **common,
        )  # fmt: skip
        model = tf.Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_head=4, n_inner=64, n_positions=64, vocab_size=VOCAB, n_layer=layers)
        model = tf.GPT2LMHeadModel(cfg)
    elif arch == "gpt_neox":
        cfg = tf.GPTNeoXConfig(
            hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
            rotary_pct=0.5, **common,
        )  # fmt: skip
        model = tf.GPTNeoXForCausalLM(cfg)
    elif arch == "opt":
        cfg = tf.OPTConfig(
            hidden_size=32, num_attention_heads=4, ffn_dim=64, max_position_embeddings=64,
            word_embed_proj_dim=32, **common,
        )  # fmt: skip
        model = tf.OPTForCausalLM(cfg)
    else:
        raise ValueError(arch)
    # random init is small; spread the weights so heads and neurons differ clearly
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 1:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def batch(seed: int = 1, n: int = 3, length: int = 9, pad_last: int = 3) -> dict[str, torch.Tensor]:
    """Token ids with an attention mask; the last row is right-padded by ``pad_last`` positions."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    if pad_last:
        mask[-1, -pad_last:] = 0
        ids[-1, -pad_last:] = 0
    return {"input_ids": ids, "attention_mask": mask}
