"""Tiny causal LMs, tokenizers and GGUF files built in code for the causal-LM tests.

* :func:`tiny_tokenizer`: a byte-level BPE (``tokenizers``) trained in milliseconds on a few
  sentences, wrapped as a ``PreTrainedTokenizerFast`` with ``<unk>``/``<s>``/``</s>``.
* :func:`tiny_llama`: a seeded random ``LlamaForCausalLM`` (2 blocks, width 32, 4 query /
  2 key-value heads: grouped-query attention as in SmolLM2).
* :func:`write_tiny_gguf`: the model and tokenizer written as a real GGUF file with
  ``gguf.GGUFWriter`` (tensor names from ``gguf``'s own HF→GGUF name map, Q/K rows permuted as
  llama.cpp's converter does, 2-D weights quantized by ``gguf.quants``), which transformers'
  GGUF loader reads back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TEXTS = [
    "the movie was great and the food was good",
    "a terrible hotel with bad service and a rude waiter",
    "Paris is the capital of France and Rome is the capital of Italy",
    "Review: the book was boring. Sentiment: negative",
    "Review: a lovely, moving film. Sentiment: positive",
]
SPECIALS = ["<unk>", "<s>", "</s>"]


def tiny_tokenizer(vocab_size: int = 300) -> Any:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        TEXTS * 10, vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIALS, show_progress=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def tiny_llama(tokenizer: Any, *, seed: int = 0, layers: int = 2, max_positions: int = 64) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    # random init gives near-uniform next-token distributions; scale the head up so the
    # model has definite preferences (greedy decoding then does not hinge on rounding)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model


def write_tiny_gguf(path: Path, model: Any, tokenizer: Any, *, qtype: str = "Q8_0", name: str = "tiny") -> Path:
    """Write ``model`` + ``tokenizer`` (from :func:`tiny_llama`/:func:`tiny_tokenizer`) as a GGUF file.

    ``qtype``: ``F32`` (lossless) or a ``gguf.GGMLQuantizationType`` the ``gguf`` library can
    quantize (``Q8_0``, ``Q4_1``...); the file type recorded is the matching ``LlamaFileType``.
    """
    import gguf
    import numpy as np

    cfg = model.config
    qt = gguf.GGMLQuantizationType[qtype]
    ftype = gguf.LlamaFileType.ALL_F32 if qtype == "F32" else gguf.LlamaFileType[f"MOSTLY_{qtype}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(int(ftype))
    tokens = [""] * len(tokenizer)
    for tok, idx in tokenizer.get_vocab().items():
        tokens[idx] = tok
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_unk_token_id(tokenizer.unk_token_id)
    w.add_add_bos_token(False)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, param in model.state_dict().items():
        arr = param.detach().float().numpy()
        if hf_name.endswith("q_proj.weight"):
            arr = _permute(arr, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            arr = _permute(arr, cfg.num_key_value_heads)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if arr.ndim == 2 and qtype != "F32":
            w.add_tensor(gguf_name, gguf.quants.quantize(arr, qt), raw_dtype=qt)
        else:
            w.add_tensor(gguf_name, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _permute(weights: Any, n_head: int) -> Any:
    """llama.cpp's Q/K row permutation (convert_hf_to_gguf.py); transformers' loader undoes it."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )
