from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from audit.config import config_from_text
from audit.errors import ModelError
from audit.model_io import load_model


def cfg(path: Path, extra: str = "") -> object:
    return config_from_text(
        f"model: {{path: {path}{extra}}}\ndata: {{files: {{test: t.csv}}, splits: {{eval: test}}}}\n"
    )


def test_loads_a_local_checkpoint_with_identity(tiny_model_dir: Path) -> None:
    loaded = load_model(cfg(tiny_model_dir))
    assert loaded.identity.architecture == "BertForSequenceClassification"
    assert loaded.identity.num_labels == 2 and loaded.id2label == {0: "negative", 1: "positive"}
    assert len(loaded.identity.fingerprint) == 64
    assert loaded.identity.params_total == sum(p.numel() for p in loaded.model.parameters())
    assert not loaded.model.training


def test_missing_path_and_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model directory"):
        load_model(cfg(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(cfg(tmp_path / "empty"))


def test_pickle_weights_are_refused_unless_allowed(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    d = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, d)
    state = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(ModelError, match="only pickle weights"):
        load_model(cfg(d))
    loaded = load_model(cfg(d, ", allow_pickle: true"))
    assert loaded.identity.num_labels == 2


def test_bare_encoder_without_head_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import BertForSequenceClassification

    d = tmp_path / "encoder"
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir)
    model.bert.save_pretrained(d, safe_serialization=True)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model_dir / f).exists():
            shutil.copy(tiny_model_dir / f, d / f)
    with pytest.raises(ModelError, match="no trained classification head"):
        load_model(cfg(d))
