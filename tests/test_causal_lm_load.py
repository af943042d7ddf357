"""Loading causal LMs through the config: a Hugging Face directory (kind auto) and a GGUF file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from decoder_helpers import tiny_decoder
from lm_helpers import tiny_llama, tiny_tokenizer, write_tiny_gguf

from audit.config import config_from_text
from audit.errors import ModelError
from audit.fingerprint import file_sha256
from audit.model_io import load_model
from audit.models.causal_lm import LMPredictor


def _config(tmp_path: Path, model_line: str):
    data = tmp_path / "t.jsonl"
    data.write_text('{"text": "a b"}\n', encoding="utf-8")
    text = f"{model_line}\ndata: {{files: {{test: {data}}}, splits: {{eval: test, calibration: null}}}}\n"
    return config_from_text(text, base_dir=str(tmp_path))


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_a_gguf_file_loads_as_a_causal_lm_with_its_sha256_as_fingerprint(tok, tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.Q8_0.gguf", tiny_llama(tok), tok, qtype="Q8_0")
    loaded = load_model(_config(tmp_path, "model: {gguf_file: tiny.Q8_0.gguf}"))  # relative to the config
    ident = loaded.identity
    assert ident.kind == "causal-lm" and ident.fingerprint == file_sha256(path)
    assert ident.gguf["file_type"] == "Q8_0" and ident.gguf["quantized_upstream"] is True
    assert ident.architecture == "LlamaForCausalLM" and loaded.adapter.spec.name == "causal-lm"
    assert isinstance(loaded.adapter.predictor(loaded.tokenizer, max_length=16, batch_size=2), LMPredictor)


def test_a_missing_gguf_file_is_a_model_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no GGUF file at") as exc:
        load_model(_config(tmp_path, "model: {gguf_file: nope.gguf}"))
    assert "model.gguf_file=nope.gguf" in str(exc.value)


def test_a_gpt2_directory_loads_with_conv1d_converted_and_a_pad_token(tmp_path: Path) -> None:
    from transformers import GPT2TokenizerFast
    from transformers.pytorch_utils import Conv1D

    model = tiny_decoder("gpt2")
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    tok = tiny_tokenizer()
    GPT2TokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="</s>").save_pretrained(tmp_path / "m")
    loaded = load_model(_config(tmp_path, "model: {path: m}"))
    assert not any(isinstance(m, Conv1D) for m in loaded.model.modules())
    assert loaded.tokenizer.pad_token == "</s>"  # GPT-2 has no pad token: EOS pads
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    assert loaded.identity.kind == "causal-lm" and loaded.identity.num_labels == 0
