"""A causal LM as a zero-shot classifier (``model.zero_shot``): the classifier suites audit it unchanged.

The predictor's class probabilities are checked against a softmax of choice log-likelihoods
recomputed here from the tiny Llama's own forward pass (one unpadded sequence per prompt and
choice); one in-process audit runs performance, ood, bias and adversarial on a tiny Llama and a
pruned copy; the refusals (no ``model.zero_shot`` for a classifier suite, ``zero_shot`` on a
classifier, bad templates and choices) are checked before any work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import write_config, write_jsonl
from lm_helpers import tiny_llama, tiny_tokenizer

from audit.config import ZeroShotConfig, config_from_text, load_config
from audit.errors import ConfigError, UsageError

TEMPLATE = "Review: {text}\nSentiment:"
CHOICES = [" negative", " positive"]
REVIEWS = [
    ("he said the movie was great and the food was good", 1, "m"),
    ("she found a terrible hotel with bad service", 0, "f"),
    ("John thought the book was boring", 0, "m"),
    ("Mary loved a lovely, moving film", 1, "f"),
    ("his waiter was rude and the soup was cold", 0, "m"),
    ("her trip to Paris was great", 1, "f"),
    ("the man said the service was bad", 0, "m"),
    ("the woman said the food was good", 1, "f"),
]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Any:
    """The tiny model runs faster on one thread (and a run with runtime.threads changes the process's)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def llama(tok: Any) -> Any:
    return tiny_llama(tok)


def _predictor(tok: Any, **zero_shot: Any) -> Any:
    from audit.models.causal_lm import LMPredictor

    zs = ZeroShotConfig.model_validate({"template": TEMPLATE, "choices": CHOICES, **zero_shot})
    return LMPredictor(tok, max_length=64, batch_size=3, zero_shot=zs)


def _loglik_by_hand(model: Any, tok: Any, prompt: str, choice: str) -> float:
    """Summed log p(choice tokens | prompt), from one unpadded forward pass of prompt + choice."""
    import torch

    ctx = tok(prompt, add_special_tokens=False)["input_ids"]
    whole = tok(prompt + choice, add_special_tokens=False)["input_ids"]
    assert whole[: len(ctx)] == ctx  # the prompt's tokens are a prefix: the rest is the choice's
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), dim=-1)
    return float(sum(logp[j - 1, whole[j]] for j in range(len(ctx), len(whole))))


def test_proba_is_the_softmax_of_the_choice_loglikelihoods_of_the_models_own_forward_pass(tok, llama) -> None:
    texts = [t for t, _, _ in REVIEWS]
    pred = _predictor(tok)
    proba = pred.proba(llama, texts)
    ll = np.array([[_loglik_by_hand(llama, tok, TEMPLATE.format(text=t), c) for c in CHOICES] for t in texts])
    expected = np.exp(ll - ll.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert proba.shape == (len(texts), 2)
    np.testing.assert_allclose(pred.logits(llama, texts), ll, atol=1e-4)
    np.testing.assert_allclose(proba, expected, atol=1e-5)
    assert np.ptp(proba[:, 1]) > 1e-3  # the texts are scored apart, not one shared row


def test_normalize_chars_divides_each_choice_by_its_length_in_characters(tok, llama) -> None:
    texts = [t for t, _, _ in REVIEWS[:3]]
    choices = ["bad", "excellent"]  # 3 and 9 characters; the delimiter's space is not counted
    plain = _predictor(tok, choices=choices, delimiter=" ").logits(llama, texts)
    normed = _predictor(tok, choices=choices, delimiter=" ", normalize="chars").logits(llama, texts)
    np.testing.assert_allclose(normed, plain / np.array([3.0, 9.0]), rtol=1e-9)
    assert not np.allclose(normed, plain)


def test_the_same_texts_are_scored_once_per_model(tok, llama) -> None:
    import copy

    pred = _predictor(tok)
    texts = [t for t, _, _ in REVIEWS]
    first = pred.proba(llama, texts)
    again = pred.proba(llama, texts)
    assert pred.forward_calls == 1 and np.array_equal(first, again)
    other = copy.deepcopy(llama)
    pred.proba(other, texts)
    assert pred.forward_calls == 2  # another model object is scored anew


def test_text_pairs_fill_the_text_pair_slot_and_are_refused_where_the_template_has_none(tok) -> None:
    pairs = _predictor(tok, template="A: {text}\nB: {text_pair}\nSame:")
    assert pairs.prompts(["x"], ["y"]) == ["A: x\nB: y\nSame:"]
    with pytest.raises(UsageError, match=r"uses \{text_pair\}, but these texts come without pairs"):
        pairs.prompts(["x"])
    with pytest.raises(UsageError, match=r"has no \{text_pair\}"):
        _predictor(tok).prompts(["x"], ["y"])


CONFIG = (
    "model: {{path: m, kind: {kind}, zero_shot: {zs}}}\n"
    "data: {{files: {{test: t.jsonl}}, splits: {{eval: test, calibration: null}}}}\n"
)


@pytest.mark.parametrize(
    ("kind", "zs", "message"),
    [
        ("classifier", f"{{template: '{{text}}:', choices: {CHOICES}}}", "model.zero_shot is for a causal LM"),
        ("auto", f"{{template: 'Review:', choices: {CHOICES}}}", "must contain {text}"),
        ("auto", f"{{template: '{{review}}', choices: {CHOICES}}}", "{text} and {text_pair} only, found {review}"),
        ("auto", "{template: '{text}', choices: [' yes']}", "at least two choices"),
        ("auto", "{template: '{text}', choices: [' Yes', 'yes ']}", "must be distinct"),
    ],
)
def test_bad_zero_shot_settings_are_config_errors_naming_model_zero_shot(kind: str, zs: str, message: str) -> None:
    with pytest.raises(ConfigError, match="model") as err:
        config_from_text(CONFIG.format(kind=kind, zs=zs), "audit.yaml")
    assert message in str(err.value) and "model.zero_shot" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory: pytest.TempPathFactory, tok: Any, llama: Any) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("zs")
    llama.save_pretrained(root / "model", safe_serialization=True)
    tok.save_pretrained(root / "model")
    rows = [
        {"id": f"r{i}", "text": t, "label": CHOICES[y].strip() if i % 2 else y, "gender": g}
        for i, (t, y, g) in enumerate(REVIEWS * 2)
    ]
    write_jsonl(root / "data" / "train.jsonl", rows)
    write_jsonl(root / "data" / "test.jsonl", rows)
    return root / "model", root / "data"


def _lm_config(tmp_path: Path, model: Path, data: Path, *, zero_shot: bool, suites: str) -> Path:
    zs = f"  zero_shot: {{template: {json.dumps(TEMPLATE)}, choices: {json.dumps(CHOICES)}}}\n" if zero_shot else ""
    return write_config(
        tmp_path / "audit.yaml",
        model,
        data,
        model=f"model:\n  path: {model}\n  max_length: 48\n{zs}",
        data=(
            "data:\n"
            f"  files: {{train: {data / 'train.jsonl'}, test: {data / 'test.jsonl'}}}\n"
            "  columns: {text: text, label: label, id: id, groups: [gender]}\n"
            "  splits: {eval: test, calibration: train}\n"
        ),
        sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.5]\n  seeds: [0]\n",
        suites=suites,
        policy="policy: null\n",
        runtime="runtime:\n  n_boot: 20\n  batch_size: 16\n  threads: 1\n",
        deploy="deploy:\n  enabled: false\n",  # the deployment stage is tests/test_causal_lm_deploy.py's
    )


SUITES = (
    "suites:\n"
    "  performance: {}\n"
    "  ood: {corruptions: [{kind: typo, rate: 0.5}], n_examples: 0}\n"
    "  bias: {}\n"
    "  adversarial: {recipes: [pruthi], n_examples: 4, query_budget: 20, min_paired_n: 1, "
    "sentence_encoder: false, time_budget_s: null}\n"
)


def test_ood_bias_and_adversarial_audit_a_zero_shot_llama_paired_with_dense(lm_dirs, tmp_path: Path) -> None:
    from audit.runner import run_audit

    model, data = lm_dirs
    cfg = load_config(_lm_config(tmp_path, model, data, zero_shot=True, suites=SUITES))
    result = run_audit(cfg, write=False).result
    assert result.model.kind == "causal-lm" and result.model.labels == {"0": "negative", "1": "positive"}
    assert not [e for v in result.variants for e in v.errors], [e.message for v in result.variants for e in v.errors]
    (variant,) = result.variants
    dense = {m.id: m for m in result.baseline.measurements}
    pruned = {m.id: m for m in variant.measurements}
    # performance: the dense accuracy is the zero-shot predictor's on the eval rows (gold by index and by text)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from audit.models.causal_lm import LMPredictor

    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    pred = LMPredictor(AutoTokenizer.from_pretrained(model), max_length=48, zero_shot=cfg.model.zero_shot)
    texts, gold = [t for t, _, _ in REVIEWS * 2], np.array([y for _, y, _ in REVIEWS * 2])
    expected = float((pred.proba(lm, texts).argmax(axis=1) == gold).mean())
    assert dense["performance/test/accuracy"].value == pytest.approx(expected)
    assert "ood/test-typo/accuracy" in dense
    for metric in ("accuracy_delta", "ece", "accuracy_drop", "detection_auroc"):
        assert "paired" in pruned[f"ood/test-typo/{metric}"].details, metric
    assert "paired" in pruned["ood/test/ece"].details
    assert set(dense["bias/test/selection_rate"].groups["gender"]) == {"f", "m"}
    assert "bias/test/pruning_disparate_impact" in pruned and "bias/test/counterfactual_flip_rate" in dense
    assert "paired" in pruned["bias/test/counterfactual_flip_rate"].details
    assert "adversarial/pruthi/success_rate" in dense and "adversarial/pruthi/transfer_accuracy" in pruned
    assert "paired" in pruned["adversarial/pruthi/accuracy_under_attack_delta"].details
    # the model card and the report's identity name the template and the choices the LM was scored with
    from reports.model_card import render
    from reports.views.identity import model_view

    line = cfg.model.zero_shot.describe()
    assert repr(TEMPLATE) in line and "' negative' / ' positive'" in line and model_view(result)["zero_shot"] == line
    card = render(result, variant=variant.id)
    assert "It was audited as a zero-shot classifier: prompt" in card and "positive" in card.split("audited as")[1]


def test_a_classifier_suite_without_zero_shot_refuses_a_causal_lm_before_any_work(lm_dirs, tmp_path: Path) -> None:
    from audit.runner import run_audit

    model, data = lm_dirs
    cfg = load_config(_lm_config(tmp_path, model, data, zero_shot=False, suites="suites:\n  ood: {}\n"))
    with pytest.raises(UsageError) as err:
        run_audit(cfg)
    assert err.value.exit_code == 4 and err.value.where == "model.zero_shot"
    assert "suite 'ood' measures a causal LM as a zero-shot classifier" in err.value.format()
    assert "\n" not in err.value.format() and not (tmp_path / "out").exists()


def test_zero_shot_on_a_checkpoint_that_is_a_classifier_is_refused_naming_model_zero_shot(tmp_path: Path) -> None:
    from audit.run.session import preflight

    ckpt = tmp_path / "m"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    (ckpt / "model.safetensors").write_bytes(b"")
    (ckpt / "tokenizer.json").write_text("{}")
    write_jsonl(tmp_path / "t.jsonl", [{"text": "x", "label": 0}])
    cfg = config_from_text(
        CONFIG.format(kind="auto", zs=f"{{template: '{{text}}:', choices: {CHOICES}}}"), base_dir=str(tmp_path)
    )
    with pytest.raises(UsageError, match="the audited model is a classifier") as err:
        preflight(cfg)
    assert err.value.where == "model.zero_shot"


def test_allocation_on_a_zero_shot_llama_probes_its_decoder_blocks_and_audits_the_choice(
    lm_dirs, tmp_path: Path
) -> None:
    """``sweep.allocate`` goes through the model adapter: on a causal LM its blocks are the decoder layers."""
    from audit.runner import run_audit

    model, data = lm_dirs
    write_jsonl(
        tmp_path / "validation.jsonl",
        [{"id": f"v{i}", "text": f"honestly, {t}", "label": y, "gender": g} for i, (t, y, g) in enumerate(REVIEWS)],
    )
    policy = tmp_path / "impossible.yaml"
    policy.write_text(
        "name: impossible\nrules:\n  - {id: acc-impossible, metric: performance/*/accuracy, min: 1.5, "
        "rationale: no accuracy reaches it}\n",
        encoding="utf-8",
    )
    cfg_path = _lm_config(tmp_path, model, data, zero_shot=True, suites="suites:\n  performance: {}\n")
    text = cfg_path.read_text(encoding="utf-8")
    text = text.replace(
        f"test: {data / 'test.jsonl'}}}", f"test: {data / 'test.jsonl'}, validation: {tmp_path / 'validation.jsonl'}}}"
    ).replace(
        "seeds: [0]\n",
        f"seeds: [0]\n  allocate: {{method: magnitude, policy: {policy}, target: 0.5, budget: 3, start: uniform, "
        "selection: {split: validation}}\n",
    )
    result = run_audit(config_from_text(text, name="audit.yaml"), write=False).result
    a = result.allocation
    assert a is not None and a.blocks == ["model.layers.0", "model.layers.1"]  # tiny_llama's two decoder layers
    assert [s.kind for s in a.steps] == ["start", "probe", "probe"] and (a.selection_n, a.selection_dropped) == (8, 0)
    v = next(v for v in result.variants if v.id == a.variant)
    assert v.id == "magnitude-alloc-s0.50-seed0" and [b.block for b in v.pruning.profile.blocks] == a.blocks
    assert v.pruning.profile.weighted_target == pytest.approx(0.5, abs=1e-9)
