"""The LM performance suite (suites/lm) on tiny causal LMs built in code.

The suite runs directly (setup once, dense first, the dense artifacts handed to each variant,
as the runner does) with a minimal context: a tokenizer-carrying predictor and the config's
paths/seed. A model "whose logits we control" always prefers one choice's tokens, so
correctness, McNemar counts and per-group accuracies are definite, not a tiny random model's whim.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from lm_helpers import TEXTS, tiny_llama, tiny_tokenizer

from audit.errors import DataError, ExitCode
from audit.registry import SUITES
from audit.suite import SuiteContext, Variant

ROOT = Path(__file__).resolve().parents[1]
CHOICES = [" negative", " positive"]


@pytest.fixture(scope="module")
def tok() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def llama(tok: Any) -> Any:
    return tiny_llama(tok)


class ControlledLM:
    """A causal LM whose next-token logits are 0 except +10 on ``favoured`` ids, at every position."""

    def __new__(cls, vocab: int, favoured: list[int]) -> Any:
        import torch

        class _LM(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.dummy = torch.nn.Parameter(torch.zeros(1))
                self.config = SimpleNamespace(max_position_embeddings=64)

            def forward(self, input_ids: Any, attention_mask: Any = None, **_: Any) -> Any:
                logits = torch.zeros(*input_ids.shape, vocab)
                logits[..., favoured] = 10.0
                return SimpleNamespace(logits=logits)

        return _LM()


def _ctx(tok: Any, *, n_boot: int = 200, max_length: int = 64) -> SuiteContext:
    config = SimpleNamespace(paths=SimpleNamespace(dataset=lambda p: Path(p)), seed=0, offline=True)
    predictor = SimpleNamespace(tokenizer=tok, max_length=max_length, batch_size=4, device="cpu")
    return SuiteContext(config=config, eval_set=None, predictor=predictor, id2label={}, n_boot=n_boot)  # type: ignore[arg-type]


def _variant(model: Any, vid: str) -> Variant:
    return Variant(point=SimpleNamespace(id=vid, is_baseline=vid == "dense"), model=model)  # type: ignore[arg-type]


def _outputs(params: dict[str, Any], ctx: SuiteContext, models: list[Any]) -> list[Any]:
    """The suite on ``models``, dense (the first) first, as the runner runs it: its SuiteOutputs."""
    spec = SUITES.get("lm")
    suite = spec.load()(spec, spec.params.model_validate(params))
    suite.setup(ctx)
    outs, base = [], None
    for i, model in enumerate(models):
        v = _variant(model, "dense" if i == 0 else f"v{i}")
        out = suite.run(v, ctx.for_suite(None if v.is_baseline else base))
        if v.is_baseline:
            base = out.artifacts
        outs.append(out)
    return outs


def _run(params: dict[str, Any], ctx: SuiteContext, models: list[Any]) -> list[Any]:
    """Measurements by id, per model."""
    return [{m.id: m for m in out.measurements} for out in _outputs(params, ctx, models)]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _own_ids(tok: Any, prompt: str) -> list[list[int]]:
    """Per choice, the ids of its continuation's tokens the other choice does not have."""
    from audit.models.lm_scoring import encode_pair

    a, b = (set(encode_pair(tok, prompt, c)[1]) for c in CHOICES)
    return [sorted(a - b), sorted(b - a)]


def test_dense_perplexity_is_exp_of_the_recomputed_summed_nll(tmp_path: Path, tok: Any, llama: Any) -> None:
    import torch

    data = _write_csv(tmp_path / "docs.csv", [{"text": t} for t in TEXTS])
    (outs,) = [_run({"perplexity": [{"name": "docs", "path": str(data)}]}, _ctx(tok), [llama])]
    total_nll, total_tokens = 0.0, 0
    for text in TEXTS:  # independent of audit.models.lm_scoring: one plain forward pass per document
        ids = torch.tensor([[tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            logits = llama(input_ids=ids).logits[0, :-1]
        total_nll += float(torch.nn.functional.cross_entropy(logits.double(), ids[0, 1:], reduction="sum"))
        total_tokens += ids.shape[1] - 1
    m = outs[0]["lm/docs/perplexity"]
    assert m.value == pytest.approx(np.exp(total_nll / total_tokens), rel=1e-6)
    assert m.details["tokens"] == total_tokens
    assert m.ci_low < m.value < m.ci_high


def test_identical_variant_has_zero_nll_delta_and_p_value_one(tmp_path: Path, tok: Any, llama: Any) -> None:
    data = _write_csv(tmp_path / "docs.csv", [{"text": t} for t in TEXTS])
    outs = _run({"perplexity": [{"name": "docs", "path": str(data)}]}, _ctx(tok), [llama, copy.deepcopy(llama)])
    delta = outs[1]["lm/docs/nll_delta"]
    assert (delta.value, delta.details["paired"]["p_value"]) == (0.0, 1.0)
    assert (delta.ci_low, delta.ci_high) == (0.0, 0.0)
    assert outs[1]["lm/docs/perplexity_ratio"].value == 1.0


def test_degraded_variant_has_a_definite_negative_acc_delta_with_mcnemar_counts(tmp_path: Path, tok: Any) -> None:
    # 6 positive and 2 negative reviews; dense always prefers " positive", the variant " negative"
    rows = [{"text": t, "label": "positive"} for t in TEXTS[:5] + ["fine"]]
    rows += [{"text": "awful", "label": "negative"}, {"text": "dull", "label": 0}]
    data = _write_csv(tmp_path / "reviews.csv", rows)
    ids = _own_ids(tok, "Review: fine\nSentiment:")
    assert ids[0] and ids[1]  # each choice has tokens of its own: favouring them makes the preference definite
    dense, degraded = ControlledLM(len(tok), ids[1]), ControlledLM(len(tok), ids[0])
    task = {"name": "sst", "path": str(data), "template": "Review: {text}\nSentiment:", "choices": CHOICES}
    raw = _outputs({"choice_tasks": [task], "n_examples": 4}, _ctx(tok), [dense, degraded])
    outs = [{m.id: m for m in out.measurements} for out in raw]
    assert outs[0]["lm/sst/acc"].value == 0.75
    assert [(r["prompt"], r["dense"], r["variant"]) for r in raw[1].examples] == [
        (f"Review: {r['text']}\nSentiment:", " positive", " negative") for r in rows[:4]
    ]  # the report's examples: rows dense got right and the variant gets wrong, in data order
    m = outs[1]["lm/sst/acc_delta"]
    p = m.details["paired"]
    assert (m.value, p["lost"], p["gained"], p["test"]) == (-0.5, 6, 2, "exact McNemar")
    assert p["p_value"] == pytest.approx(0.2890625)  # two-sided binomial: 6 of 8 discordant pairs


def test_per_group_acc_comes_from_metricframe_groups(tmp_path: Path, tok: Any) -> None:
    from fairlearn.metrics import MetricFrame

    labels = ["positive"] * 4 + ["positive", "negative", "positive", "negative"]
    domains = ["books"] * 4 + ["films"] * 4
    pairs = enumerate(zip(labels, domains, strict=True))
    rows = [{"text": f"text {i}", "label": lab, "domain": d} for i, (lab, d) in pairs]
    data = _write_csv(tmp_path / "reviews.csv", rows)
    dense = ControlledLM(len(tok), _own_ids(tok, "Review: text 0\nSentiment:")[1])
    task = {
        "name": "sst",
        "path": str(data),
        "template": "Review: {text}\nSentiment:",
        "choices": CHOICES,
        "columns": {"text": "text", "label": "label", "groups": ["domain"]},
    }
    (outs,) = _run({"choice_tasks": [task]}, _ctx(tok), [dense])
    groups = outs["lm/sst/acc"].groups["domain"]
    gold = np.array([1 if lab == "positive" else 0 for lab in labels])
    mf = MetricFrame(
        metrics=lambda y, p: float(np.mean(y == p)),
        y_true=gold,
        y_pred=np.ones(8, dtype=int),
        sensitive_features={"domain": np.array(domains)},
    )
    assert {g: v.value for g, v in groups.items()} == {"books": 1.0, "films": 0.5} == mf.by_group.to_dict()
    assert {g: v.n for g, v in groups.items()} == {"books": 4, "films": 4}


def test_template_with_an_unknown_column_is_a_one_line_data_error(tmp_path: Path, tok: Any) -> None:
    data = _write_csv(tmp_path / "reviews.csv", [{"text": "good", "label": 1}])
    task = {"name": "sst", "path": str(data), "template": "{title}: {text}", "choices": CHOICES}
    with pytest.raises(DataError) as err:
        _run({"choice_tasks": [task]}, _ctx(tok), [])
    msg = str(err.value)
    assert err.value.exit_code == ExitCode.USAGE_ERROR
    assert "\n" not in msg and "{title}" in msg and str(data) in msg and "['text']" in msg


def test_unknown_gold_column_is_a_one_line_data_error(tmp_path: Path, tok: Any) -> None:
    data = _write_csv(tmp_path / "reviews.csv", [{"text": "good", "sentiment": 1}])
    task = {"name": "sst", "path": str(data), "template": "{text}", "choices": CHOICES}
    with pytest.raises(DataError) as err:
        _run({"choice_tasks": [task]}, _ctx(tok), [])
    msg = str(err.value)
    assert err.value.exit_code == ExitCode.USAGE_ERROR
    assert "\n" not in msg and "'label' (columns.label) not found" in msg and str(data) in msg


def _lm_config(tmp_path: Path, tok: Any, llama: Any, task: str) -> Path:
    """A run config for the tiny llama (saved to disk) whose lm suite has one choice task ``task`` (YAML flow map)."""
    model_dir = tmp_path / "model"
    llama.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = _write_csv(tmp_path / "reviews.csv", [{"text": t, "label": i % 2} for i, t in enumerate(TEXTS)])
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(
        f"model: {{path: {model_dir}, max_length: 64}}\n"
        f"data:\n  files: {{test: {data}}}\n  columns: {{text: text, label: null}}\n"
        "  splits: {eval: test, calibration: null}\n"
        "sweep: {methods: [magnitude], sparsities: [0.5]}\ndeploy: {enabled: false}\n"
        f"output_dir: {tmp_path / 'out'}\npolicy: lm-default\n"
        f"suites:\n  lm:\n    choice_tasks:\n      - {{name: sst, path: {data}, choices: [' a', ' b'], {task}}}\n",
        encoding="utf-8",
    )
    return cfg


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "audit", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_template_without_text_is_exit_4_at_validate(tmp_path: Path, tok: Any, llama: Any) -> None:
    cfg = _lm_config(tmp_path, tok, llama, "template: 'Review: {review} Sentiment:'")
    proc = _cli("validate", str(cfg))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == ExitCode.USAGE_ERROR
    assert len(lines) == 1 and "must contain {text}" in lines[0] and f"{cfg}:" in lines[0]


def test_unknown_template_column_stops_the_run_with_exit_4_before_anything_is_written(
    tmp_path: Path, tok: Any, llama: Any
) -> None:
    cfg = _lm_config(tmp_path, tok, llama, "template: '{title}: {text}'")
    proc = _cli("run", "-c", str(cfg))
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == ExitCode.USAGE_ERROR
    assert len(errors) == 1 and "template field {title} names no column" in errors[0] and "reviews.csv" in errors[0]
    assert not (tmp_path / "out" / "results.json").exists()


def test_lm_spec_declares_directions_and_causal_lm_kind() -> None:
    spec = SUITES.get("lm")
    assert spec.model_kinds == ("causal-lm",)
    lower = {m.name for m in spec.metrics if m.higher_is_better is False}
    assert lower == {"perplexity", "nll_delta", "perplexity_ratio", "corruption_perplexity_ratio"}
    assert all(m.higher_is_better is not None for m in spec.metrics)


def test_lm_measurements_join_the_fdr_family_the_lm_policy_and_the_reports(tmp_path: Path, tok: Any) -> None:
    from results_factory import run, variant

    from audit.analysis import analyze_sweep
    from audit.paired import RECORD_KEYS
    from audit.policy import evaluate_policy, load_policy
    from audit.results import MetricInfo
    from reports.writer import render_reports

    rows = [{"text": f"review {i}", "label": "positive"} for i in range(12)]
    data = _write_csv(tmp_path / "reviews.csv", rows)
    ids = _own_ids(tok, "Review: review 0\nSentiment:")
    task = {"name": "sst", "path": str(data), "template": "Review: {text}\nSentiment:", "choices": CHOICES}
    params = {"choice_tasks": [task], "perplexity": [{"name": "docs", "path": str(data)}]}
    dense, worse = _run(params, _ctx(tok), [ControlledLM(len(tok), ids[1]), ControlledLM(len(tok), ids[0])])
    res = run(list(dense.values()), [variant("magnitude-0.5", "magnitude", 0.5, list(worse.values()))], suites=("lm",))
    spec = SUITES.get("lm")
    res.metrics.update(
        {
            f"lm/{s.name}": MetricInfo(suite="lm", name=s.name, meaning=s.meaning, higher_is_better=s.higher_is_better)
            for s in spec.metrics
        }
    )
    analyze_sweep(res)
    records = {mid: mm.details["paired"] for mid, mm in worse.items() if "paired" in mm.details}
    assert set(records) == {"lm/sst/acc_delta", "lm/docs/nll_delta"}
    assert all(tuple(r) == RECORD_KEYS and r["q_value"] is not None for r in records.values())
    assert res.statistics["multiple_testing"]["n_tests"] == 2
    paired_acc = worse["lm/sst/acc_delta"].details["paired"]
    assert (paired_acc["lost"], paired_acc["p_value"]) == (12, pytest.approx(2 * 0.5**12))
    assert paired_acc["significant"] is True and paired_acc["regression"] is True
    res.verdict = evaluate_policy(load_policy("lm-default")[0], res)
    status = {r.rule: r.status for r in res.verdict.rules}
    assert status["lm-zero-shot-accuracy-drop"] == "FAIL"
    out = render_reports(res, ["all"])  # no edit in reports/: the views iterate the registered specs
    assert f"{spec.title}</h2>" in out["html"] and "nll_delta" in out["html"]  # the suite's own section
    assert "`lm/sst/acc_delta`" in out["markdown"]  # the summary's regressions and judged metrics


def test_greedy_agreement_is_one_by_construction_on_dense_and_counts_tokens_in_place(
    tmp_path: Path, tok: Any, llama: Any
) -> None:
    import torch

    from audit.models.lm_scoring import greedy_continuations

    prompts = ["the movie was", "Paris is the", "a terrible"]
    data = _write_csv(tmp_path / "prompts.csv", [{"text": p} for p in prompts])
    silent = copy.deepcopy(llama)
    with torch.no_grad():
        silent.lm_head.weight.zero_()  # every logit 0: greedy picks token 0 at every step
    params = {"generation": [{"name": "p", "path": str(data), "max_new_tokens": 6}]}
    dense, same, zero = _run(params, _ctx(tok), [llama, copy.deepcopy(llama), silent])
    assert dense["lm/p/greedy_agreement"].details == {"by_construction": True}
    assert (same["lm/p/greedy_agreement"].value, same["lm/p/greedy_exact_match"].value) == (1.0, 1.0)
    ref = greedy_continuations(llama, tok, prompts, max_new_tokens=6)
    expected = np.mean([np.sum(r[:6] == 0) / len(r) for r in ref])
    assert zero["lm/p/greedy_agreement"].value == pytest.approx(expected)


def test_a_choice_task_without_a_gold_column_is_refused_at_config_time() -> None:
    from pydantic import ValidationError

    task = {"name": "t", "path": "x.csv", "template": "{text}", "choices": [" a", " b"], "columns": {"label": None}}
    with pytest.raises(ValidationError, match="set columns.label"):
        SUITES.get("lm").params.model_validate({"choice_tasks": [task]})


def test_limitations_name_only_the_suites_that_could_measure_the_audited_model_kind() -> None:
    from results_factory import m, run

    from audit.results import ModelIdentity
    from reports.views import limitations

    lm_not_run, ood_not_run = SUITES.get("lm").not_run, SUITES.get("ood").not_run
    classifier = run([m("accuracy", 0.9)], [])
    lm = run([m("accuracy", 0.9)], [])
    lm.model = ModelIdentity(source="m", fingerprint="f" * 64, kind="causal-lm")
    assert (lm_not_run in limitations(classifier), ood_not_run in limitations(classifier)) == (False, True)
    # ood measures a causal LM too (as a zero-shot classifier, model.zero_shot): not running it is a limitation
    assert (lm_not_run in limitations(lm), ood_not_run in limitations(lm)) == (True, True)


def test_prompts_longer_than_max_length_are_counted_in_a_warning(tmp_path: Path, tok: Any) -> None:
    texts = [*TEXTS, "good", "bad"]
    data = _write_csv(tmp_path / "reviews.csv", [{"text": t, "label": 1} for t in texts])
    task = {"name": "sst", "path": str(data), "template": "Review: {text}\nSentiment:", "choices": CHOICES}
    spec = SUITES.get("lm")
    suite = spec.load()(spec, spec.params.model_validate({"choice_tasks": [task]}))
    suite.setup(_ctx(tok, max_length=20))
    longest = max(CHOICES, key=len)
    lengths = [len(tok(f"Review: {t}\nSentiment:{longest}", add_special_tokens=False)["input_ids"]) for t in texts]
    cut = sum(n > 21 for n in lengths)
    out = suite.run(_variant(ControlledLM(len(tok), [0]), "dense"), _ctx(tok, max_length=20))
    assert 0 < cut < len(texts)  # the lengths straddle the limit, so the count is informative
    assert [w for w in out.warnings if "cut on the left" in w] == [
        f"dataset sst ({data}): {cut} of {len(texts)} prompts with their longest choice are longer than "
        "max_length=20 tokens and are cut on the left (the model sees only their last tokens)"
    ]
