"""The lm suite's OOD side (suites/lm/ood.py): seeded corruptions of perplexity sets, OOD detection from the NLL.

The suite runs directly on the tiny llama (setup once, dense first, dense's artifacts handed to the
variant, as the runner does). Expected values are recomputed independently: corrupted texts with
:func:`suites.ood.corruptions.corrupt`, per-document NLL with one plain forward pass per document,
AUROC with sklearn.
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from lm_helpers import TEXTS, tiny_llama, tiny_tokenizer

from audit.errors import ConfigError, ExitCode
from audit.registry import SUITES
from audit.suite import SuiteContext, Variant

OTHER = ["zq xv kjw pqq", "1234 5678 90", "QQQ ZZZ XXX WWW", "vvv jjj kkk"]


@pytest.fixture(scope="module")
def tok() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def llama(tok: Any) -> Any:
    return tiny_llama(tok)


def _ctx(tok: Any, n_boot: int = 100) -> SuiteContext:
    config = SimpleNamespace(paths=SimpleNamespace(dataset=lambda p: Path(p)), seed=0, offline=True)
    predictor = SimpleNamespace(tokenizer=tok, max_length=64, batch_size=4, device="cpu")
    return SuiteContext(config=config, eval_set=None, predictor=predictor, id2label={}, n_boot=n_boot)  # type: ignore[arg-type]


def _csv(path: Path, texts: list[str]) -> str:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text"])
        w.writeheader()
        w.writerows({"text": t} for t in texts)
    return str(path)


def _suite(params: dict[str, Any], ctx: SuiteContext) -> Any:
    spec = SUITES.get("lm")
    suite = spec.load()(spec, spec.params.model_validate(params))
    suite.setup(ctx)
    return suite


def _run(params: dict[str, Any], ctx: SuiteContext, models: list[Any]) -> list[dict[str, Any]]:
    """Measurements by id per model, dense (the first) first."""
    suite, outs, base = _suite(params, ctx), [], None
    for i, model in enumerate(models):
        vid = "dense" if i == 0 else f"v{i}"
        v = Variant(point=SimpleNamespace(id=vid, is_baseline=i == 0), model=model)  # type: ignore[arg-type]
        out = suite.run(v, ctx.for_suite(base))
        base = out.artifacts if i == 0 else base
        outs.append({m.id: m for m in out.measurements})
    return outs


def _doc_nll(model: Any, tok: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and token count per document: one plain forward pass after BOS (not audit's scorer)."""
    import torch

    nll, tokens = [], []
    for text in texts:
        ids = torch.tensor([[tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        nll.append(float(torch.nn.functional.cross_entropy(logits.double(), ids[0, 1:], reduction="sum")))
        tokens.append(ids.shape[1] - 1)
    return np.array(nll), np.array(tokens, dtype=float)


def test_a_corrupted_copy_is_scored_on_exactly_the_seeded_text_corrupt_returns(
    tmp_path: Path, tok: Any, llama: Any
) -> None:
    from suites.ood.corruptions import corrupt

    params = {
        "perplexity": [
            {
                "name": "docs",
                "path": _csv(tmp_path / "d.csv", TEXTS),
                "corruptions": [
                    {"kind": "typo", "rate": 0.5, "seed": 3},
                    {"kind": "casing", "rate": 0.5, "name": "shouty"},
                ],
            }
        ]
    }
    expected = corrupt(TEXTS, "typo", rate=0.5, seed=3)
    assert expected != TEXTS  # the seeded corruption changes something (fixed by the seed)
    suites = [_suite(params, _ctx(tok)), _suite(params, _ctx(tok))]
    for suite in suites:  # reproducible: two setups, the same texts
        (typo,) = [s for s in suite.sets if s.name == "docs-typo"]
        assert typo.inputs == expected and typo.es.texts == expected
    assert [s.name for s in suites[0].sets] == ["docs", "docs-typo", "shouty"]

    (dense,) = _run(params, _ctx(tok), [llama])
    nll, tokens = _doc_nll(llama, tok, expected)
    c_nll, c_tok = _doc_nll(llama, tok, TEXTS)
    assert dense["lm/docs-typo/perplexity"].value == pytest.approx(np.exp(nll.sum() / tokens.sum()), rel=1e-6)
    ratio = dense["lm/docs-typo/corruption_perplexity_ratio"]
    want = np.exp(nll.sum() / tokens.sum() - c_nll.sum() / c_tok.sum())
    assert ratio.value == pytest.approx(want, rel=1e-6)
    assert ratio.details["clean_set"] == "docs" and ratio.details["changed_documents"] == sum(
        a != b for a, b in zip(expected, TEXTS, strict=True)
    )
    assert "paired" not in ratio.details  # dense: nothing to compare with


def test_ood_auroc_is_sklearns_on_the_independently_computed_mean_nll_and_the_delta_is_paired(
    tmp_path: Path, tok: Any, llama: Any
) -> None:
    from sklearn.metrics import roc_auc_score

    from audit.paired import RECORD_KEYS

    params = {
        "perplexity": [
            {"name": "in-set", "path": _csv(tmp_path / "i.csv", TEXTS)},
            {"name": "out-set", "path": _csv(tmp_path / "o.csv", OTHER)},
        ],
        "ood_detection": [{"name": "shift", "in": "in-set", "out": "out-set"}],
    }
    other = tiny_llama(tok, seed=1)
    dense, same, changed = _run(params, _ctx(tok), [llama, copy.deepcopy(llama), other])
    aucs = []
    for model, ms in ((llama, dense), (other, changed)):
        n_in, t_in = _doc_nll(model, tok, TEXTS)
        n_out, t_out = _doc_nll(model, tok, OTHER)
        y = np.r_[np.zeros(len(TEXTS)), np.ones(len(OTHER))]
        aucs.append(roc_auc_score(y, np.r_[n_in / t_in, n_out / t_out]))
        m = ms["lm/shift/ood_auroc"]
        assert m.value == pytest.approx(aucs[-1], abs=1e-12)
        assert m.n == len(TEXTS) + len(OTHER) and m.ci_low <= m.value <= m.ci_high
    assert "lm/shift/ood_auroc_delta" not in dense

    rec = same["lm/shift/ood_auroc_delta"].details["paired"]
    assert set(RECORD_KEYS) <= set(rec) and rec["test"] == "DeLong (paired ROC AUCs)"
    assert same["lm/shift/ood_auroc_delta"].value == 0.0 and rec["p_value"] == 1.0

    delta = changed["lm/shift/ood_auroc_delta"]
    assert delta.value == pytest.approx(aucs[1] - aucs[0], abs=1e-12)
    assert delta.details["paired"]["baseline"] == pytest.approx(aucs[0], abs=1e-12)


def test_identical_variant_pairs_the_corrupted_copy_with_dense(tmp_path: Path, tok: Any, llama: Any) -> None:
    params = {
        "perplexity": [
            {"name": "docs", "path": _csv(tmp_path / "d.csv", TEXTS), "corruptions": [{"kind": "typo", "rate": 0.5}]}
        ]
    }
    _, same = _run(params, _ctx(tok), [llama, copy.deepcopy(llama)])
    assert same["lm/docs-typo/nll_delta"].value == pytest.approx(0.0, abs=1e-12)
    assert same["lm/docs-typo/perplexity_ratio"].value == pytest.approx(1.0, abs=1e-12)
    rec = same["lm/docs-typo/corruption_perplexity_ratio"].details["paired"]
    assert rec["delta"] == pytest.approx(0.0, abs=1e-12) and rec["ci_low"] == rec["ci_high"] == 0.0


CONFIG = """model: {path: /nonexistent/model, max_length: 64}
data:
  files: {test: /nonexistent/x.csv}
  columns: {text: text, label: null}
  splits: {eval: test, calibration: null}
suites:
  lm:
    perplexity:
      - {name: reviews, path: a.csv, corruptions: [{kind: KIND}]}
    ood_detection:
      - {name: shift, in: reviews, out: OUT}
"""


@pytest.mark.parametrize(
    ("kind", "out", "key", "says"),
    [
        ("typpo", "reviews-typpo", "perplexity.0.corruptions.0.kind", "'typo', 'casing'"),
        ("typo", "news", "ood_detection.0.out", "'news' names no perplexity set"),
        ("typo", "reviews", "ood_detection.0.out", "in and out are the same set"),
    ],
)
def test_bad_corruption_kind_or_detection_set_is_a_config_error_naming_the_key(
    kind: str, out: str, key: str, says: str
) -> None:
    from audit.config import config_from_text

    with pytest.raises(ConfigError) as err:
        config_from_text(CONFIG.replace("KIND", kind).replace("OUT", out), "audit.yaml")
    msg = str(err.value)
    assert err.value.exit_code == ExitCode.USAGE_ERROR and "\n" not in msg
    assert msg.startswith("audit.yaml:") and f"{key}: " in msg and says in msg


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


def test_the_ood_records_join_the_fdr_family_the_lm_policy_and_the_reports(tmp_path: Path, tok: Any) -> None:
    """Dense favours exactly the in-set's tokens (AUROC 1 by construction); the variant is uniform (AUROC 0.5)."""
    from results_factory import run, variant

    from audit.analysis import analyze_sweep
    from audit.paired import RECORD_KEYS
    from audit.policy import evaluate_policy, load_policy
    from audit.results import MetricInfo
    from reports.writer import render_reports

    favoured = sorted({i for t in TEXTS for i in tok(t, add_special_tokens=False)["input_ids"]})
    assert all(set(tok(t, add_special_tokens=False)["input_ids"]) - set(favoured) for t in OTHER)
    params = {
        "perplexity": [
            {"name": "in-set", "path": _csv(tmp_path / "i.csv", TEXTS), "corruptions": [{"kind": "typo", "rate": 0.5}]},
            {"name": "out-set", "path": _csv(tmp_path / "o.csv", OTHER)},
        ],
        "ood_detection": [{"name": "shift", "in": "in-set", "out": "out-set"}],
    }
    dense, flat = _run(params, _ctx(tok), [ControlledLM(len(tok), favoured), ControlledLM(len(tok), [])])
    assert dense["lm/shift/ood_auroc"].value == 1.0 and flat["lm/shift/ood_auroc"].value == 0.5
    assert flat["lm/shift/ood_auroc_delta"].value == -0.5
    assert flat["lm/in-set-typo/corruption_perplexity_ratio"].value == pytest.approx(1.0, abs=1e-12)  # uniform

    res = run(list(dense.values()), [variant("magnitude-0.5", "magnitude", 0.5, list(flat.values()))], suites=("lm",))
    spec = SUITES.get("lm")
    res.metrics.update(
        {
            f"lm/{s.name}": MetricInfo(suite="lm", name=s.name, meaning=s.meaning, higher_is_better=s.higher_is_better)
            for s in spec.metrics
        }
    )
    analyze_sweep(res)
    records = {mid: m.details["paired"] for mid, m in flat.items() if "paired" in m.details}
    assert set(records) == {
        "lm/in-set/nll_delta",
        "lm/in-set-typo/nll_delta",
        "lm/out-set/nll_delta",
        "lm/in-set-typo/corruption_perplexity_ratio",
        "lm/shift/ood_auroc_delta",
    }
    assert all(tuple(r) == RECORD_KEYS and r["q_value"] is not None for r in records.values())
    assert res.statistics["multiple_testing"]["n_tests"] == 5
    res.verdict = evaluate_policy(load_policy("lm-default")[0], res)
    status = {r.rule: r.status for r in res.verdict.rules}
    assert status["lm-ood-detection-drop"] == "WARN"  # -0.5 < -0.05
    assert status["lm-corruption-sensitivity"] == "PASS"  # the uniform model's ratio (1.0) is not above dense's
    out = render_reports(res, ["all"])
    assert "ood_auroc_delta" in out["html"] and "corruption_perplexity_ratio" in out["html"]
