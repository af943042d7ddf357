"""Regression attribution (audit/attribution.py): restoring layer groups to dense and re-measuring.

The tiny BERT classifier's variants here are made by hand so that what each group explains is
known by construction: the blocks whose layers are not touched are no candidates at all, and the
block holding every change restores dense exactly.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import write_config
from results_factory import judged_rich_run, m, run, variant

from audit.config import config_from_text, load_config
from audit.config_attribution import AttributionConfig
from audit.errors import ConfigError, UsageError
from audit.results import (
    AttributionGroup,
    AttributionHoldout,
    GroupDiagnostic,
    HoldoutCheck,
    RegressionAttribution,
    RuleResult,
    Verdict,
    load_results,
)

# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The dense tiny model, its adapter, a predictor and the test split."""
    from audit.data import load_split
    from audit.inference import Predictor
    from audit.model_io import load_model
    from audit.models import adapter_of

    tmp = tmp_path_factory.mktemp("attr")
    cfg = load_config(write_config(tmp / "audit.yaml", tiny_model_dir, tiny_data_dir))
    loaded = load_model(cfg)
    es = load_split(cfg, "test", loaded.id2label)
    predictor = Predictor(loaded.tokenizer, max_length=64, batch_size=64)
    return {"dense": loaded.model, "adapter": adapter_of(loaded.model), "predictor": predictor, "es": es}


def _linear(model, name: str):
    return dict(model.named_modules())[name]


def _damage(model, names: list[str], scale: float = 50.0, seed: int = 0) -> None:
    """Add large noise to the weights of ``names`` (the variant's 'pruning decisions')."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in names:
            w = _linear(model, n).weight
            w.add_(torch.randn(w.shape, generator=gen) * scale * float(w.std()))


def _zero_smallest(model, name: str) -> None:
    """Zero the one smallest-magnitude weight of ``name`` (a negligible pruning decision)."""
    import torch

    w = _linear(model, name).weight
    with torch.no_grad():
        w.view(-1)[int(torch.argmin(w.abs()))] = 0.0


def _blocks(tiny) -> tuple[str, list[str]]:
    path, blocks = tiny["adapter"].blocks(tiny["dense"])
    return path, [f"{path}.{i}" for i in range(len(blocks))]


def _flipped(tiny, model) -> np.ndarray:
    """Rows dense classifies correctly and ``model`` does not: on them dense scores 1, the variant 0."""
    es, pred = tiny["es"], tiny["predictor"]
    d = pred.proba(tiny["dense"], es.texts, es.text_pairs).argmax(axis=1) == es.labels
    v = pred.proba(model, es.texts, es.text_pairs).argmax(axis=1) == es.labels
    rows = np.flatnonzero(d & ~v)
    assert len(rows) >= 5, "precondition: the damaged variant must lose some examples dense gets right"
    return rows


def _search(
    tiny, model, members, *, budget: int = 10**6, granularity: str = "layer", n_boot: int = 50, holdout: float = 0.0
):
    from audit.attribution import Search
    from audit.suite import DefiningExamples

    ex = DefiningExamples.of(tiny["es"], members, "flipped rows")
    rec = RegressionAttribution(variant="v", metric="performance/test/accuracy_delta", test="paired",
                                status="not_attributable")  # fmt: skip
    return Search(
        dense=tiny["dense"],
        variant=model,
        adapter=tiny["adapter"],
        predictor=tiny["predictor"],
        examples=ex,
        budget=budget,
        granularity=granularity,
        n_boot=n_boot,
        seed=0,
        holdout=holdout,
    ).run(rec)


def _group(rec: RegressionAttribution, name: str) -> AttributionGroup:
    return next(g for g in rec.groups if g.name == name)


# -- the adapter says what a block and a layer type are ------------------------------------------


def test_classifier_layer_groups_split_attention_and_ffn(tiny) -> None:
    groups = tiny["adapter"].layer_groups(tiny["dense"])
    _, blocks = _blocks(tiny)
    # the pooler and the classification head are Linear layers outside the blocks
    assert [(g.block_name, g.kind) for g in groups] == [
        *((b, k) for b in blocks for k in ("attention", "ffn")),
        ("outside blocks", "other"),
    ]
    attn = groups[0].linears
    assert all(".attention." in n for n in attn) and len(attn) == 4
    assert all(".attention." not in n for n in groups[1].linears) and len(groups[1].linears) == 2


def test_plain_module_groups_are_whole_blocks() -> None:
    from torch import nn

    from audit.models import adapter_of

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)) for _ in range(3)])
            self.head = nn.Linear(4, 2)

    groups = adapter_of(Net()).layer_groups(Net())
    assert [(g.block, g.kind, len(g.linears)) for g in groups] == [
        (0, "layers", 2),
        (1, "layers", 2),
        (2, "layers", 2),
        (None, "other", 1),
    ]


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_causal_lm_layer_groups_follow_the_decoder_layout(arch: str) -> None:
    from decoder_helpers import tiny_decoder

    from audit.models import adapter_of

    model = tiny_decoder(arch)
    adapter = adapter_of(model)
    groups = adapter.layer_groups(model)
    assert [(g.block, g.kind) for g in groups] == [(i, k) for i in range(2) for k in ("attention", "ffn")]
    assert sorted(n for g in groups for n in g.linears) == sorted(n for n, _ in adapter.prunable_linears(model))


# -- the search ------------------------------------------------------------------------------


def test_one_damaged_block_explains_the_whole_gap(tiny) -> None:
    _, blocks = _blocks(tiny)
    model = copy.deepcopy(tiny["dense"])
    _damage(model, [f"{blocks[1]}.attention.self.value"])
    rows = _flipped(tiny, model)
    rec = _search(tiny, model, rows)
    assert rec.status == "complete" and rec.dense_value == 1.0 and rec.variant_value == 0.0
    # only block 1 differs: it is the only block candidate, and restoring it is dense exactly
    assert [g.name for g in rec.groups if g.level == "block"] == [blocks[1]]
    b1 = _group(rec, blocks[1])
    assert b1.share == 1.0 and (b1.ci_low, b1.ci_high) == (1.0, 1.0)
    assert b1.kind == "attention"  # its only changed layer is an attention projection


def test_restoring_every_layer_gives_share_one_exactly(tiny) -> None:
    _, blocks = _blocks(tiny)
    model = copy.deepcopy(tiny["dense"])
    damaged = [f"{b}.{s}" for b in blocks for s in ("attention.self.value", "intermediate.dense")]
    _damage(model, damaged)
    rec = _search(tiny, model, _flipped(tiny, model), granularity="block")
    everything = _group(rec, "all")
    assert everything.share == 1.0 and everything.value == rec.dense_value
    assert sorted(everything.layers) == sorted(damaged)


def test_a_negligible_decision_elsewhere_explains_almost_nothing(tiny) -> None:
    _, blocks = _blocks(tiny)
    model = copy.deepcopy(tiny["dense"])
    _damage(model, [f"{blocks[1]}.attention.self.value"])
    _zero_smallest(model, f"{blocks[0]}.attention.self.query")
    rec = _search(tiny, model, _flipped(tiny, model))
    assert _group(rec, blocks[1]).share >= 0.9
    assert abs(_group(rec, blocks[0]).share) <= 0.1


def test_type_granularity_evaluates_blocks_then_types_and_counts_passes(tiny) -> None:
    _, blocks = _blocks(tiny)
    model = copy.deepcopy(tiny["dense"])
    _damage(model, [f"{b}.{s}" for b in blocks for s in ("attention.self.value", "intermediate.dense")])
    rows = _flipped(tiny, model)
    rec = _search(tiny, model, rows, granularity="type")
    levels = [g.level for g in rec.groups]
    assert levels == ["all"] + ["block"] * len(blocks) + ["type"] * 2 * len(blocks)
    assert rec.status == "complete" and rec.not_evaluated == []
    # two evaluations (variant, dense) and one per group, each over every defining example
    assert rec.forward_passes == len(rows) * (2 + len(rec.groups))
    assert {(g.block, g.kind) for g in rec.groups if g.level == "type"} == {
        (i, k) for i in range(len(blocks)) for k in ("attention", "ffn")
    }


def test_budget_is_respected_and_what_was_left_is_recorded(tiny) -> None:
    _, blocks = _blocks(tiny)
    model = copy.deepcopy(tiny["dense"])
    _damage(model, [f"{b}.attention.self.value" for b in blocks])
    rows = _flipped(tiny, model)
    n = len(rows)
    rec = _search(tiny, model, rows, budget=3 * n + n - 1)  # variant, dense, `all`, and not one more
    assert rec.forward_passes == 3 * n <= rec.budget_forward_passes
    assert [g.name for g in rec.groups] == ["all"]
    assert rec.status == "partial" and rec.not_evaluated == blocks


def test_budget_below_variant_and_dense_is_not_attributable(tiny) -> None:
    _, blocks = _blocks(tiny)
    model = copy.deepcopy(tiny["dense"])
    _damage(model, [f"{blocks[0]}.intermediate.dense"])
    rows = np.arange(20)  # the refusal comes before any forward pass: which rows does not matter
    rec = _search(tiny, model, rows, budget=2 * len(rows) - 1)
    assert rec.status == "not_attributable" and "budget_forward_passes" in rec.reason
    assert rec.forward_passes == 0 and rec.groups == []


def test_a_zero_shot_causal_lm_regression_is_found_in_its_damaged_decoder_block() -> None:
    """The search on a tiny Llama scored as a zero-shot classifier: labels are dense's own predictions, so
    dense is right on every row by construction and the rows the damage flips are a regression of known cause."""
    from lm_helpers import tiny_llama, tiny_tokenizer

    from audit.attribution import attribute
    from audit.config import ZeroShotConfig
    from audit.models import adapter_of
    from audit.models.causal_lm import LMPredictor
    from audit.suite import DefiningExamples

    tok = tiny_tokenizer()
    dense = tiny_llama(tok).eval()
    adapter = adapter_of(dense)
    zs = ZeroShotConfig.model_validate(
        {"template": "Review: {text}\nSentiment:", "choices": [" negative", " positive"]}
    )
    pred = LMPredictor(tok, max_length=48, batch_size=16, zero_shot=zs)
    words = "the movie book food hotel was great good bad boring terrible lovely rude and with a".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(80)]
    labels = pred.proba(dense, texts).argmax(axis=1)
    variant = copy.deepcopy(dense)
    path, _ = adapter.blocks(dense)
    _damage(variant, [f"{path}.1.self_attn.v_proj", f"{path}.1.mlp.down_proj"], scale=20.0)
    flipped = np.flatnonzero(pred.proba(variant, texts).argmax(axis=1) != labels)
    assert len(flipped) >= 4, "precondition: the damage must flip some of dense's predictions"
    ex = DefiningExamples("zs", texts, None, labels, flipped, "flipped rows", {"g": np.array(["a", "b"] * 40)})
    rec = RegressionAttribution(variant="v", metric="performance/zs/accuracy_delta", test="paired",
                                status="not_attributable")  # fmt: skip
    attribute(rec, dense=dense, variant=variant, adapter=adapter, predictor=pred, examples=ex, budget=10**6,
              granularity="type", n_boot=20, seed=0, holdout=0.0)  # fmt: skip
    assert rec.status == "complete" and (rec.dense_value, rec.variant_value) == (1.0, 0.0)
    # only decoder block 1 changed: it is the only block candidate and restoring it is dense exactly
    assert [(g.name, g.share) for g in rec.groups if g.level == "block"] == [(f"{path}.1", 1.0)]
    assert {g.kind for g in rec.groups if g.level == "type"} == {"attention", "ffn"}
    # a zero-shot LM's diagnostics: margins for both models, no gradient norms (its class logits are no training loss)
    assert rec.diagnostics and all(d.margin_dense is not None and d.margin_variant is not None for d in rec.diagnostics)
    assert all(d.grad_norm_dense is None and d.grad_norm_variant is None for d in rec.diagnostics)


# -- held-out check ----------------------------------------------------------------------------


def test_holdout_split_is_a_seeded_disjoint_partition() -> None:
    from audit.attribution import split_holdout

    members = np.arange(100, 141)  # 41 rows, not starting at 0
    sel, held = split_holdout(members, 0.5, [3, 1])
    assert len(held) == 20 and len(sel) == 21  # round(0.5 * 41) = 20 (half to even)
    assert set(sel).isdisjoint(held) and sorted([*sel, *held]) == list(members)
    assert list(sel) == sorted(sel) and list(held) == sorted(held)  # the members' order is kept
    again_sel, again_held = split_holdout(members, 0.5, [3, 1])
    assert list(again_held) == list(held) and list(again_sel) == list(sel)
    assert list(split_holdout(members, 0.5, [3, 2])[1]) != list(held)


@pytest.mark.parametrize(("n", "fraction"), [(1, 0.5), (10, 0.0), (10, 0.01), (10, 0.99)])
def test_holdout_split_holds_nothing_out_when_a_part_would_be_empty(n: int, fraction: float) -> None:
    from audit.attribution import split_holdout

    sel, held = split_holdout(np.arange(n), fraction, 0)
    assert list(sel) == list(range(n)) and len(held) == 0


def test_held_out_check_re_measures_each_levels_best_group_on_unseen_rows(tiny) -> None:
    _, blocks = _blocks(tiny)
    model = copy.deepcopy(tiny["dense"])
    _damage(
        model, [f"{blocks[1]}.attention.self.{p}" for p in ("query", "value")] + [f"{blocks[1]}.intermediate.dense"]
    )
    rows = _flipped(tiny, model)
    rec = _search(tiny, model, rows, granularity="layer", holdout=0.5)
    h = rec.holdout
    assert h is not None and h.n_selection + h.n_holdout == len(rows) and h.n_holdout == round(0.5 * len(rows))
    assert rec.n_examples == h.n_selection
    assert (h.dense_value, h.variant_value, h.gap) == (1.0, 0.0, 1.0)  # flipped rows, on both parts
    # per level, the group with the largest share on the selection rows (first in search order on ties)
    best = {}
    for g in rec.groups:
        if g.level != "all" and (g.level not in best or g.share > best[g.level].share):
            best[g.level] = g
    assert [(c.level, c.name, c.share_selection) for c in h.checks] == [
        (lv, best[lv].name, best[lv].share) for lv in ("block", "type", "layer")
    ]
    # only block 1 changed: restoring it is dense exactly, on the held-out rows too
    assert h.checks[0].name == blocks[1] and h.checks[0].share == 1.0
    # the search on the selection rows, then the variant, dense and each check on the held-out rows
    assert h.forward_passes == h.n_holdout * (2 + len(h.checks))
    assert rec.forward_passes == h.n_selection * (2 + len(rec.groups)) + h.forward_passes


def test_held_out_passes_are_reserved_before_the_search_spends_the_budget(tiny) -> None:
    _, blocks = _blocks(tiny)
    model = copy.deepcopy(tiny["dense"])
    _damage(model, [f"{b}.attention.self.value" for b in blocks])
    rows = _flipped(tiny, model)
    from audit.attribution import split_holdout

    sel, held = split_holdout(rows, 0.5, 0)
    reserve = len(held) * (2 + 1)  # granularity block: one checked level
    rec = _search(tiny, model, rows, granularity="block", holdout=0.5, budget=3 * len(sel) + reserve)
    assert [g.name for g in rec.groups] == ["all"] and rec.not_evaluated == blocks
    # no block was evaluated, so no block is checked, and the check spent only the variant and dense passes
    assert rec.holdout.checks == [] and rec.holdout.forward_passes == 2 * len(held)
    assert rec.forward_passes <= rec.budget_forward_passes


def test_structured_variant_is_not_attributable(tiny) -> None:
    from audit.models.decoder_prune import keep_index, slice_linear

    _, blocks = _blocks(tiny)
    model = copy.deepcopy(tiny["dense"])
    block = dict(model.named_modules())[blocks[0]]
    width = block.intermediate.dense.out_features
    keep = keep_index(width, [0])
    block.intermediate.dense = slice_linear(block.intermediate.dense, keep, 0)
    block.output.dense = slice_linear(block.output.dense, keep, 1)
    rec = _search(tiny, model, np.arange(10))
    assert rec.status == "not_attributable" and "changed shape" in rec.reason and rec.forward_passes == 0


def test_restoring_puts_the_variant_back_afterwards(tiny) -> None:
    import torch

    from audit.attribution import restored

    _, blocks = _blocks(tiny)
    model = copy.deepcopy(tiny["dense"])
    name = f"{blocks[0]}.output.dense"
    _damage(model, [name])
    before = _linear(model, name).weight.detach().clone()
    with restored(tiny["dense"], model, [name]):
        assert torch.equal(_linear(model, name).weight, _linear(tiny["dense"], name).weight)
    assert torch.equal(_linear(model, name).weight, before)


# -- Tran et al.'s diagnostics ---------------------------------------------------------------------


def test_diagnostics_margins_and_masked_gradient(tiny) -> None:
    import torch

    from audit.attribution import diagnostics
    from audit.suite import DefiningExamples

    _, blocks = _blocks(tiny)
    model = copy.deepcopy(tiny["dense"])
    name = f"{blocks[1]}.output.dense"
    with torch.no_grad():
        _linear(model, name).weight.zero_()  # fully pruned: the variant keeps no weight of the one changed layer
    es = tiny["es"]
    rows, passes, note = diagnostics(
        dense=tiny["dense"],
        variant=model,
        adapter=tiny["adapter"],
        predictor=tiny["predictor"],
        examples=DefiningExamples.of(es),
    )
    assert rows[0].feature == "all" and rows[0].n == len(es)
    expected = {("all", "all")} | {(f, str(g)) for f, v in es.groups.items() for g in set(v.astype(str).tolist())}
    assert {(r.feature, r.group) for r in rows} == expected
    proba = tiny["predictor"].proba(tiny["dense"], es.texts, es.text_pairs)
    top2 = np.sort(proba, axis=1)[:, -2:]
    assert rows[0].margin_dense == pytest.approx(float((top2[:, 1] - top2[:, 0]).mean()))
    for r in rows:
        assert r.grad_norm_dense is not None and r.grad_norm_dense > 0
        assert r.grad_norm_variant == 0.0  # the gradient is taken over the weights the variant keeps: none
    assert "gradient norm" in note and passes > 4 * len(es)


# -- selecting regressions -------------------------------------------------------------------------


def _with_regressions():
    variants = [
        variant("magnitude-s0.50-seed0", "magnitude", 0.5, [m("accuracy", 0.8)]),
        variant("magnitude-s0.90-seed0", "magnitude", 0.9, [m("accuracy", 0.6)]),
    ]
    res = run([m("accuracy", 0.9)], variants)
    res.statistics["multiple_testing"] = {"alpha": 0.05}
    res.statistics["regressions"] = [
        {"variant": "magnitude-s0.50-seed0", "metric": "performance/test/accuracy_delta", "test": "paired",
         "delta": -0.1, "q_value": 0.01},
        {"variant": "magnitude-s0.90-seed0", "metric": "performance/test/accuracy_delta", "test": "paired",
         "delta": -0.3, "q_value": 0.001},
        {"variant": "magnitude-s0.90-seed0", "metric": "bias/test/pruning_disparate_impact",
         "test": "paired_groups.gender.female", "delta": -0.2, "q_value": 0.02},
        {"variant": "magnitude-s0.90-seed0", "metric": "ood/shift/accuracy_delta", "test": "paired",
         "delta": -0.2, "q_value": 0.2},
    ]  # fmt: skip
    res.verdict = Verdict(
        policy="p",
        policy_fingerprint="x",
        status="FAIL",
        exit_code=1,
        rules=[
            RuleResult(rule="no-loss", variant="magnitude-s0.50-seed0", metric="performance/test/accuracy",
                       status="FAIL", severity="fail"),
            RuleResult(rule="no-loss", variant="magnitude-s0.90-seed0", metric="performance/test/accuracy",
                       status="PASS", severity="fail"),
        ],
    )  # fmt: skip
    return res


def test_selection_keeps_significant_ones_smallest_q_first() -> None:
    from audit.attribution import select_regressions

    chosen, qualified = select_regressions(_with_regressions(), AttributionConfig(enabled=True, max_regressions=2))
    assert qualified == 3  # q 0.2 is above the FDR level 0.05
    assert [(r["variant"], r["q_value"]) for r in chosen] == [
        ("magnitude-s0.90-seed0", 0.001),
        ("magnitude-s0.50-seed0", 0.01),
    ]


def test_selection_gives_the_places_to_regressions_that_can_be_re_measured_first() -> None:
    from audit.attribution import select_regressions

    def measurable(reg: dict) -> bool:  # say the performance suite could not name its examples
        return not reg["metric"].startswith("performance/")

    chosen, qualified = select_regressions(
        _with_regressions(), AttributionConfig(enabled=True, max_regressions=2), measurable
    )
    assert qualified == 3
    assert [(r["metric"], r["q_value"]) for r in chosen] == [
        ("bias/test/pruning_disparate_impact", 0.02),  # the largest q, but the only measurable one
        ("performance/test/accuracy_delta", 0.001),  # then the rest, smallest q first
    ]


def test_selection_by_rule_and_metric() -> None:
    from audit.attribution import select_regressions

    res = _with_regressions()
    by_rule, _ = select_regressions(res, AttributionConfig(enabled=True, rules=["no-loss"]))
    assert [(r["variant"], r["rules"]) for r in by_rule] == [("magnitude-s0.50-seed0", ["no-loss"])]
    by_metric, _ = select_regressions(res, AttributionConfig(enabled=True, metrics=["bias/*"]))
    assert [r["metric"] for r in by_metric] == ["bias/test/pruning_disparate_impact"]


# -- config ----------------------------------------------------------------------------------------

BASE = "model: {path: m}\ndata: {files: {test: t.csv}, columns: {text: t, label: l}, splits: {eval: test}}\n"


def test_config_default_is_off_and_absent_from_the_dump() -> None:
    cfg = config_from_text(BASE)
    assert cfg.attribution.enabled is False
    assert "attribution" not in cfg.model_dump(mode="json")
    on = config_from_text(BASE + "attribution: {enabled: true, granularity: type}\n")
    assert on.model_dump(mode="json")["attribution"]["granularity"] == "type"


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ("attribution: {enabled: true, granularity: heads}\n", "granularity"),
        ("attribution: {enabled: true, rules: []}\n", "empty list"),
        ("attribution: {enabled: true, budget_forward_passes: 0}\n", "budget_forward_passes"),
        ("attribution: {enabled: true, budgett: 5}\n", "budgett"),
    ],
)
def test_config_errors_are_clear(section: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_text(BASE + section)
    assert needle in str(err.value)
    assert err.value.line == 3  # the attribution line of the text


def test_preflight_refuses_an_unknown_rule(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    from audit.run.session import preflight

    cfg = load_config(
        write_config(tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir,
                     attribution="attribution: {enabled: true, rules: [no-such-rule]}\n")
    )  # fmt: skip
    with pytest.raises(UsageError) as err:
        preflight(cfg)
    assert "no-such-rule" in str(err.value) and err.value.where == "attribution.rules"


# -- results and report ----------------------------------------------------------------------------


def _record(variant_id: str) -> RegressionAttribution:
    return RegressionAttribution(
        variant=variant_id,
        metric="performance/test/accuracy_delta",
        test="paired",
        q_value=0.001,
        delta=-0.2,
        status="partial",
        dataset="test",
        scope="every example",
        measure="accuracy",
        n_examples=100,
        dense_value=0.9,
        variant_value=0.7,
        gap=0.2,
        budget_forward_passes=700,
        forward_passes=600,
        groups=[
            AttributionGroup(name="all", level="all", layers=["b.0.q", "b.1.f"], value=0.9, share=1.0,
                             ci_low=1.0, ci_high=1.0, forward_passes=100),
            AttributionGroup(name="b.0", level="block", block=0, layers=["b.0.q"], kind="attention", value=0.72,
                             share=0.1, ci_low=0.0, ci_high=0.2, forward_passes=100),
            AttributionGroup(name="b.1", level="block", block=1, layers=["b.1.f"], kind="ffn", value=0.88,
                             share=0.9, ci_low=0.8, ci_high=1.0, forward_passes=100),
        ],
        not_evaluated=["b.1.f"],
        diagnostics=[GroupDiagnostic(feature="gender", group="female", n=50, grad_norm_dense=0.5,
                                     grad_norm_variant=0.9, margin_dense=0.6, margin_variant=0.3)],
        holdout=AttributionHoldout(fraction=0.5, n_selection=100, n_holdout=100, dense_value=0.9, variant_value=0.75,
                                   gap=0.15, forward_passes=300, ci_method="bootstrap",
                                   checks=[HoldoutCheck(name="b.1", level="block", layers=["b.1.f"],
                                                        share_selection=0.9, value=0.85, share=2 / 3,
                                                        ci_low=0.41, ci_high=0.93)]),
    )  # fmt: skip


def test_results_round_trip_and_old_results_load(tmp_path: Path) -> None:
    res = judged_rich_run()
    assert "attribution" not in json.loads(res.to_json())  # off: results.json as before
    res.attribution = [_record(res.variants[0].id)]
    path = tmp_path / "results.json"
    path.write_text(res.to_json(), encoding="utf-8")
    back = load_results(path)
    assert back.attribution == res.attribution


def test_report_renders_the_section_under_its_regression() -> None:
    from reports.writer import render_reports

    res = judged_rich_run()
    failing = next(r.variant for r in res.verdict.rules if r.status == "FAIL")
    res.attribution = [_record(failing)]
    html = render_reports(res, ["html"])["html"]
    assert "attribution-heatmap" in html and "Attribution:" in html
    regressions = html[html.index('<section id="regressions">') :]
    assert regressions.index(failing) < regressions.index("attribution-heatmap")
    assert "90 %" in html and "[80, 100] %" in html  # block b.1's share and CI
    assert "Not reached within the budget: b.1.f" in html
    held = html[html.index("attribution-holdout") :]
    assert "100 of the 200 defining examples were held out" in html
    assert held.index("90 %") < held.index("67 %") < held.index("[41, 93] %")  # chosen at 90 %, 67 % held out
    res.attribution = None
    assert "attribution-heatmap" not in render_reports(res, ["html"])["html"]


def test_markdown_summary_names_the_groups_that_explain_most() -> None:
    from reports.writer import render_reports

    res = judged_rich_run()
    assert "Regression attribution" not in render_reports(res, ["markdown"])["markdown"]
    res.attribution = [_record(res.variants[0].id)]
    md = render_reports(res, ["markdown"])["markdown"]
    assert "### Regression attribution" in md
    line = next(x for x in md.splitlines() if "accuracy_delta" in x and "partial" in x)
    assert line.index("b.1 90 %") < line.index("b.0 10 %") < line.index(r"b.1 67 % \[41, 93\] %")
    assert "600 / 700" in line


def test_heatmap_cells_follow_blocks_and_kinds() -> None:
    from reports.views.attribution import heatmap

    h = heatmap(_record("v"))
    assert h["cols"] == ["attention", "FFN"]
    assert [r["block"] for r in h["rows"]] == ["b.0", "b.1"]
    assert [c["text"] for c in h["rows"][0]["cells"]] == ["10 %", ""]  # block 0 holds attention only
    assert [c["text"] for c in h["rows"][1]["cells"]] == ["", "90 %"]
    assert h["rows"][0]["cells"][1]["title"] == "not pruned"


# -- in a run --------------------------------------------------------------------------------------


def test_run_attributes_a_significant_regression(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    from audit.runner import run_audit

    cfg = load_config(
        write_config(
            tmp_path / "audit.yaml",
            tiny_model_dir,
            tiny_data_dir,
            sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.9]\n  seeds: [0]\n",
            attribution="attribution:\n  enabled: true\n  metrics: ['performance/*']\n  max_regressions: 1\n"
            "  budget_forward_passes: 2000\n  granularity: type\n  n_boot: 50\n",
        )
    )
    outcome = run_audit(cfg, formats=["json", "html"])
    back = load_results(outcome.output_dir / "results.json")
    assert back.attribution is not None and len(back.attribution) == 1
    a = back.attribution[0]
    assert a.variant == "magnitude-s0.90-seed0" and a.metric.startswith("performance/")
    assert a.status in ("complete", "partial") and a.forward_passes <= 2000
    h = a.holdout  # the default holdout, 0.5
    assert h is not None and h.fraction == 0.5 and h.n_selection == a.n_examples
    assert a.forward_passes == a.n_examples * (2 + len(a.groups)) + h.forward_passes
    assert a.groups[0].name == "all" and a.groups[0].share == 1.0  # magnitude touches only the Linear weights
    # the gap re-measured on both parts together is the regression's recorded change (up to near-tie flips
    # of the deployed model)
    n = h.n_selection + h.n_holdout
    assert (a.gap * h.n_selection + h.gap * h.n_holdout) / n == pytest.approx(-a.delta, abs=2 / n)
    assert "attribution-heatmap" in (outcome.output_dir / "report.html").read_text(encoding="utf-8")


def test_a_failing_diagnostic_keeps_the_search_findings(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    import audit.attribution._search as search_mod
    from audit.suite import DefiningExamples

    def broken(**_: object) -> None:
        raise RuntimeError("no gradients today")

    import torch

    monkeypatch.setattr(search_mod, "diagnostics", broken)
    model = copy.deepcopy(tiny["dense"])
    with torch.no_grad():  # logits negated: every row dense gets right, this variant gets wrong (two classes)
        model.classifier.weight.neg_()
        model.classifier.bias.neg_()
    rows = _flipped(tiny, model)
    rec = RegressionAttribution(variant="v", metric="performance/test/accuracy_delta", test="paired",
                                status="not_attributable")  # fmt: skip
    search_mod.attribute(
        rec, dense=tiny["dense"], variant=model, adapter=tiny["adapter"], predictor=tiny["predictor"],
        examples=DefiningExamples.of(tiny["es"], rows, "flipped rows"), budget=10**6, n_boot=20,
    )  # fmt: skip
    assert rec.status == "complete" and _group(rec, "all").share == 1.0
    assert rec.diagnostics == [] and rec.diagnostics_note == "diagnostics failed: RuntimeError: no gradients today"


# -- the `prune-audit attribute` command -------------------------------------------------------------


def _cli(*args: str):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "audit", *args], capture_output=True, text=True, env=env, timeout=600
    )  # fmt: skip


@pytest.mark.slow
def test_attribute_command_re_finishes_a_finished_run(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    sweep = "sweep:\n  methods: [magnitude]\n  sparsities: [0.9]\n  seeds: [0]\n"
    cfg = write_config(tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir, sweep=sweep)
    out = tmp_path / "out"
    first = _cli("run", "-c", str(cfg), "-f", "json")
    assert (out / "results.json").is_file(), first.stderr
    before = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert "attribution" not in before

    r = _cli("attribute", "-c", str(cfg), "--metric", "performance/*", "--max-regressions", "1", "--budget", "2000",
             "--granularity", "block", "-f", "json", "-f", "html")  # fmt: skip
    assert r.returncode == first.returncode, r.stderr  # the run's verdict, unchanged
    assert "0 computed" in r.stdout and "units reused" in r.stdout  # the run's store: nothing measured again
    after = json.loads((out / "results.json").read_text(encoding="utf-8"))
    for key in ("baseline", "variants"):  # the same measurements (the timings say what was reused)
        was = before[key] if key == "variants" else [before[key]]
        now = after[key] if key == "variants" else [after[key]]
        assert [v["measurements"] for v in now] == [v["measurements"] for v in was]
        assert all(v["timing"]["reused"] for v in now)
    assert (after["verdict"]["status"], after["verdict"]["rules"]) == (
        before["verdict"]["status"],
        before["verdict"]["rules"],
    )
    [a] = after["attribution"]
    assert a["variant"] == "magnitude-s0.90-seed0" and a["metric"].startswith("performance/")
    assert a["granularity"] == "block" and a["budget_forward_passes"] == 2000 and a["holdout"]["fraction"] == 0.5
    assert f"attribution: magnitude-s0.90-seed0 {a['metric']}" in r.stdout
    assert "attribution-heatmap" in (out / "report.html").read_text(encoding="utf-8")


def test_attribute_command_refuses_a_config_without_a_finished_run(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir)
    r = _cli("attribute", "-c", str(cfg))
    assert r.returncode == 4, r.stderr
    assert "no finished run of this config" in r.stderr and "0 of its" in r.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def test_an_attack_regression_is_attributed_on_the_variants_stored_attacked_examples(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wiring for the adversarial suite: the variant's attack records reach attribution, from the run and from
    the store. Which regression is selected is fixed by the test (a tiny model's attacks need not be significant)."""
    import audit.attribution._run as run_mod
    from audit.runner import run_audit

    metric = "adversarial/deepwordbug/accuracy_under_attack_delta"

    def select(result, cfg, measurable=None):  # the variant's attack delta, whatever its q
        v = result.variants[0]
        reg = {"variant": v.id, "metric": metric, "test": "paired", "q_value": 0.01,
               "delta": v.measurement(metric).value, "rules": []}  # fmt: skip
        return [reg], 1

    monkeypatch.setattr(run_mod, "select_regressions", select)
    cfg_path = write_config(
        tmp_path / "audit.yaml",
        tiny_model_dir,
        tiny_data_dir,
        sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.9]\n  seeds: [0]\n",
        suites="suites:\n  adversarial: {recipes: [deepwordbug], n_examples: 8, query_budget: 40}\n",
        attribution="attribution:\n  enabled: true\n  budget_forward_passes: 400\n  n_boot: 20\n  holdout: 0\n",
    )
    first = run_audit(load_config(cfg_path), formats=["json"], resume=True)
    n = first.result.variants[0].measurement(metric).n
    rec = first.result.attribution[0]
    assert rec.dataset == "deepwordbug" and rec.scope.startswith(f"the {n} examples deepwordbug attacked on dense")
    assert rec.n_examples == n
    again = run_audit(load_config(cfg_path), formats=["json"], resume=True, require_stored=True)
    assert again.units_reused == again.units_total
    same = again.result.attribution[0].model_dump(exclude={"wall_time_s"})
    assert same == rec.model_dump(exclude={"wall_time_s"})  # the records came back from the store


def test_a_counterfactual_flip_regression_is_found_in_its_damaged_block(tiny) -> None:
    """Counterfactual pairs built by construction: both texts get the same class from dense and different ones
    from the damaged variant, so every pair is a new flip of known cause."""
    from audit.attribution import Search
    from audit.suite import DefiningExamples

    es, pred = tiny["es"], tiny["predictor"]
    _, blocks = _blocks(tiny)
    model = copy.deepcopy(tiny["dense"])
    _damage(model, [f"{blocks[1]}.output.dense"], scale=200.0)
    d = pred.proba(tiny["dense"], es.texts, es.text_pairs).argmax(axis=1)
    v = pred.proba(model, es.texts, es.text_pairs).argmax(axis=1)
    pairs = [(i, j) for i in range(len(es)) for j in range(i + 1, len(es)) if d[i] == d[j] and v[i] != v[j]][:40]
    assert len(pairs) >= 10, "precondition: the damage must split some pairs dense keeps together"
    ex = DefiningExamples(
        dataset=es.name, texts=[es.texts[i] for i, _ in pairs], text_pairs=None,
        labels=np.asarray(es.labels)[[i for i, _ in pairs]], members=np.arange(len(pairs)), scope="constructed pairs",
        measure="counterfactual_consistency", counterparts=[es.texts[j] for _, j in pairs],
    )  # fmt: skip
    rec = RegressionAttribution(variant="v", metric="bias/test/counterfactual_flip_rate", test="paired",
                                status="not_attributable")  # fmt: skip
    Search(dense=tiny["dense"], variant=model, adapter=tiny["adapter"], predictor=pred, examples=ex, budget=10**6,
           granularity="block", n_boot=20, seed=0).run(rec)  # fmt: skip
    assert rec.status == "complete" and (rec.dense_value, rec.variant_value) == (1.0, 0.0)
    assert rec.measure == "counterfactual_consistency"
    # only block 1 changed: it is the only block candidate, and restoring it is dense exactly
    assert [(g.name, g.share) for g in rec.groups if g.level == "block"] == [(blocks[1], 1.0)]
    n = len(pairs)
    # both texts of a pair are scored: 2 passes per pair and evaluation (variant, dense, all, 2 blocks)
    assert rec.forward_passes == 2 * n * (2 + len(rec.groups)) and all(g.forward_passes == 2 * n for g in rec.groups)


def test_counterparts_without_the_counterfactual_measure_are_refused(tiny) -> None:
    from audit.attribution import Search
    from audit.suite import DefiningExamples

    es = tiny["es"]
    ex = DefiningExamples.of(es, np.arange(10), "rows")
    ex.counterparts = list(es.texts[:10])
    rec = RegressionAttribution(variant="v", metric="m/d/x", test="paired", status="not_attributable")
    Search(dense=tiny["dense"], variant=tiny["dense"], adapter=tiny["adapter"], predictor=tiny["predictor"],
           examples=ex, budget=10**6).run(rec)  # fmt: skip
    assert rec.status == "not_attributable" and "counterpart texts" in rec.reason
