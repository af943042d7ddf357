"""Policy-guided allocation (``sweep.allocate``, audit/allocation.py) and the explicit ``profile: blocks``.

The search's moves are tested with evaluators built by hand, so which allocation passes is known
by construction (not by how a tiny model happens to behave); the runs on the tiny model test the
wiring: the selection split, the record, the chosen variant audited on eval, the report.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import demo_rows, pass_policy, write_config, write_jsonl

from audit.allocation import (
    Evaluation,
    move,
    next_move,
    search_loop,
    selection_set,
    violation,
    weighted_mean,
)
from audit.config import config_from_text, load_config
from audit.data import EvalSet
from audit.errors import ConfigError, UsageError
from audit.policy import policy_from_text
from audit.results import RuleResult, RunResult, load_results

ROOT = Path(__file__).resolve().parent.parent

# -- the moves -------------------------------------------------------------------------------------


def test_a_move_keeps_the_weighted_mean_and_the_bounds() -> None:
    s, w = [0.6, 0.6, 0.6], [100, 300, 50]
    moved = move(s, w, donor=0, receiver=1, step=0.05, lo=0.0, hi=0.95)
    assert moved == pytest.approx([0.55, 0.6 + 0.05 * 100 / 300, 0.6])
    assert weighted_mean(moved, w) == pytest.approx(0.6, abs=1e-12)
    # the receiver's room (0.95 - 0.9) limits the move: the donor gives only what fits
    capped = move([0.6, 0.9], [100, 100], donor=0, receiver=1, step=0.2, lo=0.0, hi=0.95)
    assert capped == pytest.approx([0.55, 0.95])
    assert move([0.1, 0.5], [1, 1], donor=0, receiver=1, step=0.05, lo=0.1, hi=0.95) is None


def test_next_move_takes_from_the_most_sensitive_onto_the_least() -> None:
    s, w = [0.6, 0.6, 0.6], [10, 10, 10]
    moved, donor, receiver = next_move(s, w, [0.2, 3.0, -1.0], 0.05, 0.0, 0.95)
    assert (donor, receiver) == (1, 2)
    assert moved == pytest.approx([0.6, 0.55, 0.65])
    # the most sensitive block at the floor: the next one gives
    _, donor, receiver = next_move([0.6, 0.0, 0.6], w, [0.2, 3.0, -1.0], 0.05, 0.0, 0.95)
    assert (donor, receiver) == (0, 2)
    assert next_move(s, w, [1.0, 1.0, 1.0], 0.05, 0.0, 0.95) is None  # no block is more sensitive than another


def test_violation_sums_how_far_failing_rules_are_past_their_bounds() -> None:
    policy = policy_from_text(
        "name: p\nrules:\n"
        "  - {id: a, metric: performance/*/accuracy, min: 0.8, rationale: r}\n"
        "  - {id: b, metric: performance/*/accuracy_delta, comparison: delta_vs_baseline, min: -0.05, rationale: r}\n"
    )

    def rr(rule: str, status: str, compared: float | None) -> RuleResult:
        return RuleResult(rule=rule, variant="v", metric="m", status=status, severity="fail", compared=compared)

    assert violation(policy, [rr("a", "FAIL", 0.7), rr("b", "FAIL", -0.1)]) == pytest.approx(0.15)
    assert violation(policy, [rr("a", "PASS", 0.9), rr("b", "FAIL", -0.06)]) == pytest.approx(0.01)
    assert violation(policy, [rr("a", "ERROR", None)]) is None


# -- the search, with evaluators that pass by construction -----------------------------------------


def _evaluator(limit: float, calls: list[list[float]]):
    """Passes when block 0 is at most ``limit`` sparse; block 0 alone decides (block 1 is harmless)."""

    def evaluate(s: list[float]) -> Evaluation:
        calls.append(list(s))
        v = max(0.0, s[0] - limit)
        return Evaluation(results=[], status="PASS" if v <= 1e-12 else "FAIL", violation=v, passed=v <= 1e-12)

    return evaluate


def test_the_search_moves_sparsity_off_the_sensitive_block_until_the_policy_passes() -> None:
    calls: list[list[float]] = []
    names, w = ["b0", "b1"], [100, 100]
    out = search_loop(_evaluator(0.45, calls), names, w, [0.6, 0.6], budget=20, step=0.05, lo=0.0, hi=0.95)
    kinds = [s.kind for s in out.steps]
    assert kinds == ["start", "probe", "probe", "trial", "trial", "trial"]
    assert out.steps[1].sparsities == [0.0, 0.6] and out.steps[2].sparsities == [0.6, 0.0]
    assert out.sensitivity[0] > out.sensitivity[1] == 0.0
    assert out.passed and out.chosen == pytest.approx([0.45, 0.75])
    assert out.chosen_step == 5 and [s.accepted for s in out.steps] == [False] * 5 + [True]
    assert all(s.weighted_sparsity == pytest.approx(0.6) for s in out.steps if s.kind != "probe")
    assert out.outcome == "a trial passes on the selection split"
    assert len(calls) == len(out.steps)


def test_the_search_is_deterministic() -> None:
    a = search_loop(
        _evaluator(0.4, []), ["b0", "b1", "b2"], [10, 20, 30], [0.6] * 3, budget=30, step=0.05, lo=0, hi=0.9
    )
    b = search_loop(
        _evaluator(0.4, []), ["b0", "b1", "b2"], [10, 20, 30], [0.6] * 3, budget=30, step=0.05, lo=0, hi=0.9
    )
    assert [s.model_dump() for s in a.steps] == [s.model_dump() for s in b.steps]
    assert a.chosen == b.chosen


def test_a_passing_start_is_chosen_without_probes() -> None:
    calls: list[list[float]] = []
    out = search_loop(_evaluator(0.7, calls), ["b0", "b1"], [1, 1], [0.6, 0.6], budget=5, step=0.05, lo=0.0, hi=0.95)
    assert [s.kind for s in out.steps] == ["start"] and out.passed and out.chosen_step == 0
    assert calls == [[0.6, 0.6]]


def test_the_budget_counts_every_evaluation_and_the_best_is_audited() -> None:
    calls: list[list[float]] = []
    out = search_loop(_evaluator(0.1, calls), ["b0", "b1"], [1, 1], [0.6, 0.6], budget=5, step=0.05, lo=0.0, hi=0.95)
    assert len(calls) == len(out.steps) == 5 and not out.passed
    assert out.outcome.startswith("budget of 5 evaluations spent without a passing allocation")
    # the smallest violation among start and trials (probes are not candidates): the last trial
    assert out.chosen_step == 4 and out.chosen == pytest.approx([0.5, 0.7])


def test_an_error_at_the_start_stops_the_search() -> None:
    def evaluate(s: list[float]) -> Evaluation:
        return Evaluation(results=[], status="ERROR", violation=None, passed=False)

    out = search_loop(evaluate, ["b0", "b1"], [1, 1], [0.6, 0.6], budget=9, step=0.05, lo=0.0, hi=0.95)
    assert len(out.steps) == 1 and out.chosen_step == 0 and not out.passed
    assert out.outcome.startswith("a rule gave ERROR on the start allocation")


# -- the selection split ----------------------------------------------------------------------------


def _set(name: str, texts: list[str]) -> EvalSet:
    return EvalSet(name=name, texts=texts, labels=np.arange(len(texts)) % 2)


def test_selection_rows_that_are_also_eval_rows_are_dropped() -> None:
    ev = _set("test", ["a", "b", "c"])
    sel, dropped = selection_set(ev, _set("validation", ["b", "x", "y", "c", "z"]), n=None, seed=0)
    assert dropped == 2 and sel.texts == ["x", "y", "z"]
    assert not set(sel.texts) & set(ev.texts)
    assert sel.name == "test"  # the policy's metric ids match those of the eval audit


def test_the_selection_sample_is_seeded() -> None:
    ev = _set("test", ["a"])
    cand = _set("validation", [f"t{i}" for i in range(50)])
    one, _ = selection_set(ev, cand, n=10, seed=3)
    two, _ = selection_set(ev, cand, n=10, seed=3)
    other, _ = selection_set(ev, cand, n=10, seed=4)
    assert one.texts == two.texts and len(one) == 10 and one.texts != other.texts


def test_a_selection_split_inside_eval_is_refused() -> None:
    with pytest.raises(UsageError, match="every row of the selection split also occurs in the eval split"):
        selection_set(_set("test", ["a", "b"]), _set("validation", ["b", "a"]), n=None, seed=0)


# -- config ---------------------------------------------------------------------------------------

BASE = (
    "model: {path: m}\n"
    "data: {files: {test: t.csv, train: r.csv, validation: v.csv}, columns: {text: t, label: l}, "
    "splits: {eval: test, calibration: train}}\n"
)


def _allocate(text: str, methods: str = "[wanda, {name: nm, params: {n: 2, m: 4}}]") -> str:
    return BASE + f"sweep:\n  methods: {methods}\n  sparsities: [0.6]\n  allocate: {text}\n"


def test_allocate_is_absent_from_the_dump_when_unset_and_parses_when_set() -> None:
    assert "allocate" not in config_from_text(BASE).model_dump(mode="json")["sweep"]
    cfg = config_from_text(_allocate("{method: wanda, target: 0.6, selection: {split: validation}}"))
    a = cfg.sweep.allocate
    assert (a.method, a.target, a.budget, a.start, a.step, a.selection.split) == (
        "wanda",
        0.6,
        12,
        "owl",
        0.05,
        "validation",
    )


@pytest.mark.parametrize(
    ("text", "needle", "line"),
    [  # line 4: the sweep mapping (checks across its keys); line 6: the allocate mapping itself
        ("{method: wanda, target: 0.6, selection: {split: test}}", "the eval split", 4),
        ("{method: wanda, target: 0.6, selection: {split: dev}}", "'dev' but data.files has", 4),
        ("{method: wandaa, target: 0.6, selection: {split: validation}}", "is not among sweep.methods", 4),
        ("{method: nm, target: 0.6, selection: {split: validation}}", "takes no per-block sparsities", 4),
        ("{method: 5, target: 0.6, selection: {split: validation}}", "index 5", 4),
        ("{method: wanda, target: 1.2, selection: {split: validation}}", "target must be in (0, 1)", 6),
        ("{method: wanda, target: 0.6, start: random, selection: {split: validation}}", "owl or uniform", 6),
        ("{method: wanda, target: 0.6, selection: {split: validation}, budgett: 3}", "budgett", 6),
        ("{method: wanda, target: 0.6}", "selection", 6),
    ],
)
def test_allocate_config_errors_are_clear(text: str, needle: str, line: int) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_text(_allocate(text))
    assert needle in str(err.value)
    assert err.value.line == line


def test_allocate_needs_a_policy() -> None:
    with pytest.raises(ConfigError, match="sweep.allocate has no policy and the run has none"):
        config_from_text(_allocate("{method: wanda, target: 0.6, selection: {split: validation}}") + "policy: null\n")


def test_allocate_refuses_a_blocks_or_global_method() -> None:
    with pytest.raises(ConfigError, match="scope global or a blocks profile"):
        config_from_text(
            _allocate(
                "{method: 0, target: 0.6, selection: {split: validation}}",
                "[{name: magnitude, params: {scope: global}}]",
            )
        )


# -- profile: blocks --------------------------------------------------------------------------------


def test_blocks_profile_params() -> None:
    from audit.pruning.specs import WandaParams, parse_block_keys

    assert parse_block_keys({"0": 0.4, "1-3": 0.6}) == {0: 0.4, 1: 0.6, 2: 0.6, 3: 0.6}
    p = WandaParams.model_validate({"profile": "blocks", "blocks": {"0-1": 0.5}})
    dumped = p.model_dump(mode="json")
    assert (dumped["profile"], dumped["blocks"], "owl" in dumped) == ("blocks", {"0-1": 0.5}, False)
    for bad, needle in [
        ({"0": 0.5, "0-1": 0.6}, "given twice"),
        ({"a": 0.5}, "not a block index or range"),
        ({"0": 1.0}, "must be in [0, 1)"),
        ({"2-1": 0.5}, "ends before it starts"),
    ]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            WandaParams.model_validate({"profile": "blocks", "blocks": bad})
    with pytest.raises(ValueError, match="profile blocks needs"):
        WandaParams.model_validate({"profile": "blocks"})
    with pytest.raises(ValueError, match="blocks are given but profile is uniform"):
        WandaParams.model_validate({"blocks": {"0": 0.5}})


def test_blocks_profile_prunes_each_block_to_its_target_and_records_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    from audit.config import LayerSelection
    from audit.model_io import load_model
    from audit.pruning.base import PruneContext
    from audit.pruning.magnitude import MagnitudePruner
    from audit.pruning.specs import MAGNITUDE, MagnitudeParams

    cfg = load_config(write_config(tmp_path / "audit.yaml", tiny_model_dir, tmp_path))
    model = load_model(cfg).model
    pruner = MagnitudePruner(MAGNITUDE, MagnitudeParams(profile="blocks", blocks={"0": 0.25, "1": 0.75}))
    ctx = PruneContext(sparsity=0.5, seed=0, layers=LayerSelection())
    pruner.validate(model, ctx)
    record = pruner.prune(model, ctx)
    assert record.profile is not None and record.profile.name == "blocks"
    assert [b.target_sparsity for b in record.profile.blocks] == [0.25, 0.75]
    assert record.profile.weighted_target == pytest.approx(0.5)  # the two tiny blocks hold the same weights
    for layer in record.layers:
        expected = 0.25 if ".layer.0." in layer.name else 0.75
        assert layer.target_sparsity == expected
        assert 1 - layer.nonzero / layer.total == pytest.approx(expected, abs=1 / layer.total)
    assert "outlier_ratio" not in record.profile.blocks[0].model_dump(mode="json")
    short = MagnitudePruner(MAGNITUDE, MagnitudeParams(profile="blocks", blocks={"0": 0.5}))
    with pytest.raises(UsageError, match=r"leaves out block\(s\) \[1\]"):
        short.validate(copy.deepcopy(model), ctx)


def test_the_allocated_point_is_labelled_alloc() -> None:
    from audit.plan import allocated_point

    cfg = config_from_text(_allocate("{method: wanda, target: 0.6, selection: {split: validation}}"))
    point = allocated_point(cfg, {"0": 0.5, "1": 0.7})
    assert point.label == "wanda-alloc" and point.id == "wanda-alloc-s0.60-seed0"
    assert (point.params["profile"], point.params["blocks"]) == ("blocks", {"0": 0.5, "1": 0.7})
    assert "owl" not in point.params
    assert point.key != allocated_point(cfg, {"0": 0.7, "1": 0.5}).key


# -- in a run ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alloc_data(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/test as the tiny data, and a validation split of its own plus 10 rows copied from test."""
    d = tmp_path_factory.mktemp("alloc-data")
    for name in ("train", "test"):
        (d / f"{name}.jsonl").write_bytes((tiny_data_dir / f"{name}.jsonl").read_bytes())
    test_rows = [json.loads(line) for line in (d / "test.jsonl").read_text().splitlines()]
    write_jsonl(d / "validation.jsonl", demo_rows("validation", 120, seed=5) + test_rows[:10])
    return d


def _data(d: Path) -> str:
    return (
        "data:\n"
        f"  files: {{train: {d / 'train.jsonl'}, test: {d / 'test.jsonl'}, validation: {d / 'validation.jsonl'}}}\n"
        "  columns: {text: text, label: label, id: id, groups: [gender, identity]}\n"
        "  splits: {eval: test, calibration: train}\n"
    )


def _impossible(directory: Path) -> Path:
    """A policy no candidate can pass (accuracy of at least 1.5): the search runs to its budget."""
    p = directory / "impossible.yaml"
    p.write_text(
        "name: impossible\nrules:\n  - {id: acc-impossible, metric: performance/*/accuracy, min: 1.5, "
        "rationale: no accuracy reaches it}\n",
        encoding="utf-8",
    )
    return p


def test_cli_run_with_allocate_records_the_search_and_audits_the_chosen_allocation(
    tiny_model_dir: Path, alloc_data: Path, tmp_path: Path
) -> None:
    policy = _impossible(tmp_path)
    cfg = write_config(
        tmp_path / "audit.yaml",
        tiny_model_dir,
        alloc_data,
        data=_data(alloc_data),
        sweep="sweep:\n  methods: [wanda]\n  sparsities: [0.6]\n  seeds: [0]\n"
        f"  allocate: {{method: wanda, policy: {policy}, target: 0.6, budget: 3, selection: {{split: validation}}}}\n",
        policy=pass_policy(tmp_path),
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", "audit", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    back = load_results(tmp_path / "out" / "results.json")
    a = back.allocation
    assert a is not None and a.variant == "wanda-alloc-s0.60-seed0"
    assert (a.selection_split, a.eval_split, a.selection_dropped, a.selection_n) == ("validation", "test", 10, 120)
    assert a.evaluations == len(a.steps) == 3 and not a.passed  # the start and one probe per block
    assert [s.kind for s in a.steps] == ["start", "probe", "probe"]
    assert [s.sparsities[i] for i, s in enumerate(a.steps[1:])] == [0.0, 0.0]
    assert all(s.status == "FAIL" and s.rules[0].rule == "acc-impossible" for s in a.steps)
    assert a.outcome.startswith("budget of 3 evaluations spent")
    chosen = a.steps[0]  # the only candidate (probes are not candidates)
    assert a.chosen == 0 and chosen.accepted
    # the chosen allocation is an ordinary variant: pruned with its blocks, deployed, judged on eval
    v = next(v for v in back.variants if v.id == a.variant)
    assert v.point.params["profile"] == "blocks"
    assert [b.target_sparsity for b in v.pruning.profile.blocks] == pytest.approx(chosen.sparsities, abs=1e-6)
    assert v.pruning.profile.weighted_target == pytest.approx(0.6, abs=1e-9)
    assert v.deployment is not None and v.deployment.equivalence is not None
    assert {r.rule for r in back.verdict.rules if r.variant == a.variant} == {"accuracy-defined"}
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'id="allocation"' in html and "bert.encoder.layer.0 restored to dense" in html
    assert "### Policy-guided allocation" in (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")


def test_the_real_search_is_deterministic_and_a_passing_start_is_chosen(
    tiny_model_dir: Path, alloc_data: Path, tmp_path: Path
) -> None:
    from audit.allocation import search
    from audit.runner import prepare

    cfg = load_config(
        write_config(
            tmp_path / "audit.yaml",
            tiny_model_dir,
            alloc_data,
            data=_data(alloc_data),
            sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.5]\n  seeds: [0]\n"
            "  allocate: {method: magnitude, target: 0.5, budget: 3, start: uniform, selection: {split: validation}}\n",
            policy=pass_policy(tmp_path),
        )
    )
    session = prepare(cfg)
    one, chosen_one = search(session)
    two, chosen_two = search(session)
    assert one.model_dump() == two.model_dump() and chosen_one == chosen_two
    assert one.passed and one.chosen == 0 and [s.kind for s in one.steps] == ["start"]
    assert one.steps[0].sparsities == [0.5, 0.5]  # uniform start


def test_preflight_refuses_an_allocation_policy_about_no_suite_of_the_run(
    tiny_model_dir: Path, alloc_data: Path, tmp_path: Path
) -> None:
    from audit.run.session import preflight

    p = tmp_path / "ood-only.yaml"
    p.write_text("name: o\nrules:\n  - {id: o, metric: ood/*/accuracy, min: 0.1, rationale: r}\n", encoding="utf-8")
    cfg = load_config(
        write_config(
            tmp_path / "audit.yaml",
            tiny_model_dir,
            alloc_data,
            data=_data(alloc_data),
            sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.5]\n"
            f"  allocate: {{method: magnitude, policy: {p}, target: 0.5, selection: {{split: validation}}}}\n",
        )
    )
    with pytest.raises(UsageError, match="whose rules name no suite of this run"):
        preflight(cfg)


def test_a_budget_below_the_probes_stops_after_the_start() -> None:
    calls: list[list[float]] = []
    out = search_loop(_evaluator(0.1, calls), ["b0", "b1"], [1, 1], [0.6, 0.6], budget=2, step=0.05, lo=0.0, hi=0.95)
    assert len(calls) == 1 and not out.passed and out.chosen_step == 0
    assert out.outcome.startswith("budget 2 does not cover the start and the 2 sensitivity probes")


def test_a_resumed_run_reuses_the_stored_search_and_a_changed_policy_searches_again(
    tiny_model_dir: Path, alloc_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.allocation import _Search
    from audit.runner import run_audit

    policy = _impossible(tmp_path)
    sweep = (
        "sweep:\n  methods: [magnitude]\n  sparsities: [0.5]\n  seeds: [0]\n"
        f"  allocate: {{method: magnitude, policy: {policy}, target: 0.5, budget: 3, start: uniform, "
        "selection: {split: validation}}\n"
    )
    cfg_path = write_config(
        tmp_path / "audit.yaml", tiny_model_dir, alloc_data, data=_data(alloc_data), sweep=sweep,
        policy=pass_policy(tmp_path),
    )  # fmt: skip
    calls: list[list[float]] = []
    real = _Search.evaluate

    def counting(self: _Search, sparsities: list[float]) -> Evaluation:
        calls.append(list(sparsities))
        return real(self, sparsities)

    monkeypatch.setattr(_Search, "evaluate", counting)
    first = run_audit(load_config(cfg_path), formats=["json"], resume=True)
    assert len(calls) == 3 and first.result.allocation is not None
    again = run_audit(load_config(cfg_path), formats=["json"], resume=True)
    assert len(calls) == 3, "the stored search is reused: no evaluation runs again"
    assert again.result.allocation == first.result.allocation
    assert again.units_reused == again.units_total  # the chosen variant's units are stored too
    policy.write_text(policy.read_text(encoding="utf-8").replace("min: 1.5", "min: 1.25"), encoding="utf-8")
    run_audit(load_config(cfg_path), formats=["json"], resume=True)
    assert len(calls) == 6, "the search's policy changed: it runs again"


def test_attribute_refuses_a_run_whose_allocation_search_is_not_stored(
    tiny_model_dir: Path, alloc_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.allocation import _Search
    from audit.runner import run_audit

    sweep = (
        "sweep:\n  methods: [magnitude]\n  sparsities: [0.5]\n  seeds: [0]\n"
        "  allocate: {method: magnitude, target: 0.5, budget: 2, start: uniform, selection: {split: validation}}\n"
    )
    cfg_path = write_config(
        tmp_path / "audit.yaml", tiny_model_dir, alloc_data, data=_data(alloc_data), sweep=sweep,
        policy=pass_policy(tmp_path),
    )  # fmt: skip
    monkeypatch.setattr(_Search, "evaluate", lambda self, s: pytest.fail("no evaluation may run"))
    with pytest.raises(UsageError, match="no finished allocation search of this config"):
        run_audit(load_config(cfg_path), formats=["json"], resume=True, require_stored=True)
    assert not (tmp_path / "out" / "results.json").exists()


# -- what would pass: the verdict line, the summary and the model card -------------------------------


def _with_allocation(variant: str, *, passed: bool) -> RunResult:
    """The golden judged run with an allocation record whose chosen variant is ``variant`` (its eval verdict is
    the golden policy's on that variant)."""
    from results_factory import judged_rich_run

    from audit.results import AllocationRecord, AllocationStep

    res = judged_rich_run()
    chosen = [0.75, 0.75, 0.53, 0.6, 0.6, 0.6]
    res.allocation = AllocationRecord(
        method="wanda", variant=variant, policy="golden.yaml", policy_fingerprint="f", target_sparsity=0.6,
        budget=12, evaluations=3, start="owl", step=0.05, bounds=[0.0, 0.95], selection_split="validation",
        eval_split="test", selection_n=100, selection_dropped=2, blocks=[f"b.{i}" for i in range(6)],
        block_weights=[1] * 6, passed=passed, chosen=2, outcome="o", suites=["performance"],
        steps=[AllocationStep(index=i, kind="trial", sparsities=chosen, weighted_sparsity=0.6, status="PASS",
                              violation=0.0)
               for i in range(3)],
    )  # fmt: skip
    return res


def test_block_runs_joins_consecutive_blocks_at_the_same_level() -> None:
    from reports.views.allocation import block_runs

    assert block_runs([0.75, 0.75, 0.53, 0.6, 0.6, 0.6]) == "blocks 0–1 at 75 %, block 2 at 53 %, blocks 3–5 at 60 %"
    assert block_runs([0.6, 0.5, 0.6]) == "block 0 at 60 %, block 1 at 50 %, block 2 at 60 %"


def test_an_allocation_passing_on_selection_and_eval_is_what_would_pass_in_verdict_summary_and_card() -> None:
    from reports.views.allocation import what_would_pass
    from reports.writer import render_reports

    res = _with_allocation("wanda-s0.50-seed0", passed=True)  # every golden rule passes this variant
    w = what_would_pass(res)
    line = (
        "wanda at 60 % with blocks 0–1 at 75 %, block 2 at 53 %, blocks 3–5 at 60 %: "
        "passes on selection (validation) and eval"
    )
    assert w == {"text": line, "status": "PASS", "variant": "wanda-s0.50-seed0"}
    out = render_reports(res, ["html", "markdown", "model-card"], {"model-card": {"variant": "wanda-s0.50-seed0"}})
    assert re.search(
        r'id="what-would-pass"><span class="badge PASS">What would pass</span> ' + re.escape(line), out["html"]
    )
    assert f"**What would pass:** {line}" in out["markdown"]
    card = out["model-card"]
    assert "## Sparsity allocation" in card and "This variant's per-block sparsities were chosen" in card
    assert f"What would pass: {line}." in card


@pytest.mark.parametrize(
    ("variant", "passed", "status", "needle"),
    [
        ("magnitude-s0.50-seed0", True, "WARN", "passes on selection (validation), but fails on eval"),
        ("wanda-s0.50-seed0", False, "FAIL", "no allocation at 60 % passed on selection (validation) within 3 of 12 "
         "evaluations; the closest, wanda at 60 % with blocks 0–1 at 75 %, block 2 at 53 %, blocks 3–5 at 60 %, "
         "passes on eval"),
    ],
)  # fmt: skip
def test_what_would_pass_says_where_the_allocation_does_not_pass(
    variant: str, passed: bool, status: str, needle: str
) -> None:
    from reports.views.allocation import what_would_pass

    w = what_would_pass(_with_allocation(variant, passed=passed))
    assert w is not None and (w["status"], w["variant"]) == (status, variant)
    assert needle in w["text"]


def test_no_allocation_no_what_would_pass_line() -> None:
    from results_factory import judged_rich_run

    from reports.writer import render_reports

    out = render_reports(judged_rich_run(), ["html", "markdown", "model-card"])
    assert 'id="what-would-pass"' not in out["html"] and "What would pass" not in out["markdown"]
    assert "## Sparsity allocation" not in out["model-card"]
