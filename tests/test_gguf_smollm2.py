"""The real embedded SmolLM2-135M-Instruct GGUF through transformers' GGUF loader and the cache (slow).

One test: the first load dequantizes the 98 MB Q4_1 file and writes the cache entry; the second
reads the cached safetensors. It took 114 s on 2 cores at load average 7 (the first load alone
75-90 s there), over the 60 s a test may take in ``make test``, so it runs only when asked:

    PRUNE_AUDIT_SMOLLM2_TEST=1 .venv/bin/python -m pytest tests/test_gguf_smollm2.py

The tiny GGUF files of tests/test_gguf.py exercise the same code on every run.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

from audit.models import gguf as gg  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("PRUNE_AUDIT_SMOLLM2_TEST") != "1",
    reason="the real SmolLM2 load takes over a minute on 2 cores; set PRUNE_AUDIT_SMOLLM2_TEST=1 to run it",
)
def test_the_embedded_smollm2_loads_dequantized_then_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_AUDIT_CACHE_DIR", str(tmp_path / "cache"))
    path = gg.embedded_smollm2_path()
    first = gg.load_gguf(path)
    assert first.from_cache is False
    assert (first.info.file_type, first.info.tensor_types) == ("Q4_1", {"F32": 61, "Q4_1": 210, "Q8_0": 1})
    assert first.info.quantized is True
    cfg = first.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (9, 3, 49152)
    assert sum(p.numel() for p in first.model.parameters()) == 134_515_008
    assert next(first.model.parameters()).dtype == torch.float32
    tok = first.tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0].item() != tok.bos_token_id  # SmolLM2 adds no BOS (tokenizer.ggml.add_bos_token false)

    second = gg.load_gguf(path)
    assert second.from_cache is True
    assert second.info.sha256 == first.info.sha256
    with torch.no_grad():
        a = first.model(ids).logits[0, -1]
        b = second.model(ids).logits[0, -1]
    torch.testing.assert_close(a, b)
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = second.model.generate(chat, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, chat.shape[1] :], skip_special_tokens=True)
