"""Deployment speed figures: warm-up, interleaved rounds, CIs, the 1.0 rule for all-dense
deployments, batch-size names, and the format choice's interleaved timing. Timings are
injected wherever a figure is asserted: no test here depends on this machine's speed."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from audit.deploy import choose as choose_mod
from audit.deploy import spec
from audit.deploy import speed as speed_mod
from audit.deploy.choose import DENSE, LayerTimer, TimingCache, timing_key
from audit.deploy.modules import TorchCSRLinear
from audit.deploy.speed import identical_to_dense, measure_speed, median_ci
from audit.results import DeploymentRecord, SpeedRecord

ROOT = Path(__file__).resolve().parent.parent
EVENTS: list[tuple[str, str, int]] = []


class Toy(nn.Module):
    """A stand-in for a HF classifier: embedding, one Linear, logits; logs every call."""

    def __init__(self, tag: str, hidden: int = 8) -> None:
        super().__init__()
        self.tag = tag
        self.config = type("Cfg", (), {"vocab_size": 50, "max_position_embeddings": 64})()
        self.emb = nn.Embedding(50, 8)
        self.lin = nn.Linear(8, hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        EVENTS.append(("call", self.tag, int(input_ids.shape[0])))
        return self.lin(self.emb(input_ids)).mean(dim=1)


def _fake_timer(seconds: dict[str, list[float]]) -> Any:
    """A time_call that runs the call once (so the log shows who was timed) and returns scripted seconds."""
    feeds = {tag: itertools.cycle(values) for tag, values in seconds.items()}

    def fake(fn: Any, *, min_time: float, threads: int, statistic: str = "median", warmup: bool = True) -> float:
        n = len(EVENTS)
        fn()
        tag, batch = EVENTS[n][1], EVENTS[n][2]
        EVENTS[n] = ("timed", tag, batch)
        return next(feeds[tag])

    return fake


@pytest.fixture(autouse=True)
def _clear() -> None:
    EVENTS.clear()


def test_an_all_dense_deployment_is_one_by_construction_and_never_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    dense = Toy("dense")
    deployed = copy.deepcopy(dense)  # every layer kept dense: the dense model's computation

    def no_timing(*a: Any, **k: Any) -> float:
        raise AssertionError("an identical deployment must not be timed")

    monkeypatch.setattr(speed_mod, "time_call", no_timing)
    sp = measure_speed(dense, deployed, seq_len=8, batch_size=4, rounds=5)
    assert (sp.identical, sp.speedup_b1, sp.speedup_batch, sp.rounds) == (True, 1.0, 1.0, 0)
    assert "1.0 by construction" in (sp.note or "")
    by_id = {m.id: m for m in spec.measurements_of(DeploymentRecord(formats={"dense": 1}, speed=sp))}
    for mid in ("deployment/seq8/speedup_b1", "deployment/seq8/speedup_b4"):
        m = by_id[mid]
        assert (m.value, m.ci_low, m.ci_high) == (1.0, 1.0, 1.0)
        assert m.details["identical"] is True and "not timed" in m.details["note"]
    assert EVENTS == []


def test_a_physically_smaller_dense_model_is_not_identical() -> None:
    """Structured variants keep only dense layers but are smaller: they must be timed."""
    dense, smaller = Toy("dense"), Toy("deployed", hidden=4)
    assert identical_to_dense(dense, copy.deepcopy(dense))
    assert not identical_to_dense(dense, smaller)
    sparse = copy.deepcopy(dense)
    sparse.lin = TorchCSRLinear.from_linear(sparse.lin.weight.detach(), sparse.lin.bias.detach())
    assert not identical_to_dense(dense, sparse)


def test_warm_up_comes_first_and_rounds_interleave(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed_mod, "time_call", _fake_timer({"dense": [1.0], "deployed": [0.5]}))
    measure_speed(Toy("dense"), Toy("deployed", hidden=4), seq_len=8, batch_size=4, rounds=4, min_time=0.0)
    first_timed = next(i for i, e in enumerate(EVENTS) if e[0] == "timed")
    for tag in ("dense", "deployed"):
        for batch in (1, 4):
            untimed = [e for e in EVENTS[:first_timed] if e == ("call", tag, batch)]
            assert len(untimed) >= 3, f"{tag} at batch {batch} was not warmed up before the first timing"
    timed = [(tag, batch) for kind, tag, batch in EVENTS if kind == "timed"]
    assert len(timed) == 4 * 2 * 2  # rounds x batch sizes x models
    for batch in (1, 4):
        order = [tag for tag, b in timed if b == batch]
        rounds = [order[i : i + 2] for i in range(0, len(order), 2)]
        # every round times both models back to back, the order alternating between rounds
        assert rounds == [["dense", "deployed"], ["deployed", "dense"]] * 2


def test_speedup_is_the_median_round_ratio_with_an_order_statistic_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    # a busy phase in round 3 slows both models alike: the ratio of that round is still 2
    dense_s = [0.010, 0.010, 0.030, 0.010, 0.010, 0.011, 0.010]
    dep_s = [0.005, 0.004, 0.015, 0.005, 0.0055, 0.005, 0.010]
    fake = _fake_timer({"dense": dense_s, "deployed": dep_s})
    monkeypatch.setattr(speed_mod, "time_call", fake)
    sp = measure_speed(Toy("dense"), Toy("deployed", hidden=4), seq_len=8, batch_size=1, rounds=7, min_time=0.0)
    # batch size 1: both timings per round come from the same scripted feed, two values per round
    ratios = sp.per_round["speedup_b1"]
    assert len(ratios) == 7 and sp.rounds == 7
    assert sp.speedup_b1 == pytest.approx(sorted(ratios)[3])
    assert sp.speedup_b1_ci == pytest.approx([min(ratios), max(ratios)])  # n = 7: ranks 1 and 7 (98.4 %)
    assert "coverage 98.4%" in (sp.ci_method or "")
    (m,) = [m for m in spec.measurements_of(DeploymentRecord(speed=sp)) if m.metric == "speedup_b1"]
    assert (m.n, m.ci_low, m.ci_high) == (7, sp.speedup_b1_ci[0], sp.speedup_b1_ci[1])
    assert m.ci_method == sp.ci_method and len(m.details["per_round"]) == 7


def test_median_ci_ranks() -> None:
    assert median_ci([3.0])[:2] == (None, None)
    lo, hi, method = median_ci([5.0, 1.0, 4.0])
    assert (lo, hi) == (1.0, 5.0) and "coverage 75.0%" in method
    lo, hi, method = median_ci([float(x) for x in range(9)])  # P(B(9, .5) <= 1) = 1.95 % <= 2.5 %
    assert (lo, hi) == (1.0, 7.0) and "ranks 2 and 8" in method and "96.1%" in method


def test_metric_names_follow_the_batch_size() -> None:
    sp = SpeedRecord(
        seq_len=16, threads=1, speedup_b1=2.0, speedup_batch=1.5, throughput_deployed=40.0, batch_size=8, rounds=3
    )
    ids = {m.id for m in spec.measurements_of(DeploymentRecord(speed=sp))}
    assert {"deployment/seq16/speedup_b8", "deployment/seq16/throughput_b8"} <= ids
    assert not any("_b32" in i for i in ids)
    names = {m.name for m in spec.metrics_for(8)}
    assert {"speedup_b8", "throughput_b8"} <= names and "speedup_b32" not in names
    found = spec.find("throughput_b8")
    assert found is not None and found.higher_is_better is True
    one = spec.measurements_of(DeploymentRecord(speed=sp.model_copy(update={"batch_size": 1})))
    assert [m.metric for m in one].count("speedup_b1") == 1


def test_results_written_with_b32_field_names_still_load() -> None:
    old = {
        "seq_len": 64,
        "threads": 2,
        "throughput_b32_dense": 10.0,
        "throughput_b32_deployed": 20.0,
        "speedup_b32": 2.0,
    }
    sp = SpeedRecord.model_validate(old)
    assert (sp.throughput_dense, sp.throughput_deployed, sp.speedup_batch) == (10.0, 20.0, 2.0)


@pytest.mark.parametrize("path", sorted((ROOT / "policies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_policies_judge_speed_on_the_cautious_end(path: Path) -> None:
    from audit.policy import load_policy

    policy, _ = load_policy(str(path))
    speed_rules = [r for r in policy.rules if r.metric.startswith("deployment/") and "speedup" in r.metric]
    for rule in speed_rules:
        assert rule.use == "ci_lower", f"{path.name}: rule {rule.id} judges speed on {rule.use}"


def test_the_format_choice_times_in_interleaved_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    timer = LayerTimer(TimingCache(None), threads=1, min_time=0.0, rounds=3)
    order: list[str] = []
    # round 2 falls in a slow phase of the machine: both sides slow down alike
    script = {DENSE: iter([1.0, 3.0, 1.0]), "csr": iter([0.5, 1.5, 0.5])}

    def prepare(self: Any, fmt: str, *a: Any, **k: Any) -> str:
        return fmt

    def time(self: Any, call: str) -> float:
        order.append(call)
        return next(script[call])

    monkeypatch.setattr(LayerTimer, "prepare", prepare)
    monkeypatch.setattr(LayerTimer, "time", time)
    out = timer.compare([("csr", 0.1)], (32, 32), True, 16)
    assert order == [DENSE, "csr", "csr", DENSE, DENSE, "csr"]
    assert out[DENSE] == 1.0 and out["csr"] == pytest.approx(0.5)  # median same-round ratio 2.0
    assert timer.cached("csr", (32, 32), 0.1, True, 16) == pytest.approx(0.5)


def test_timings_of_an_earlier_cache_version_are_not_reused(tmp_path: Path) -> None:
    # version 1: single-shot figures; version 2: one-token figures measured with the weights in cache
    path = tmp_path / "timings.json"
    key = timing_key("bitmap", (64, 64), 0.5, True, 1, "env")
    for old in (1, 2):
        path.write_text(json.dumps({"version": old, "timings": {key: 1e-6}}), encoding="utf-8")
        assert TimingCache(path).get(key) is None
    path.write_text(json.dumps({"version": choose_mod.CACHE_VERSION, "timings": {key: 1e-6}}), encoding="utf-8")
    assert TimingCache(path).get(key) == 1e-6


def test_report_counts_layers_per_format_and_why_dense() -> None:
    from reports.views.variants import ran_text

    rec = DeploymentRecord(formats={"dense": 8, "kernel": 30}, kept_dense={"above_max_density": 6, "no_zeros": 2})
    assert ran_text(rec) == "sparse 30 of 38 · dense 8 (above max_density 6, no zeros 2)"
    identical = SpeedRecord(seq_len=8, threads=1, identical=True, speedup_b1=1.0)
    all_dense = DeploymentRecord(
        formats={"dense": 14}, kept_dense={"above_max_density": 12, "no_zeros": 2}, speed=identical
    )
    assert ran_text(all_dense) == (
        "sparse 0 of 14 (the dense model's computation) · dense 14 (above max_density 12, no zeros 2)"
    )
    structured = DeploymentRecord(formats={"dense": 14}, kept_dense={"no_zeros": 14})  # smaller, timed
    assert ran_text(structured) == "sparse 0 of 14 · dense 14 (no zeros 14)"
