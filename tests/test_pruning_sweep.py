"""The sweep through the real pipeline: several methods end to end, N:M planning, and
bad input refused before any work starts."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_config
from pruning_helpers import calibration, ctx, pruner
from transformers import AutoModelForSequenceClassification

from audit.config import config_from_text, load_config
from audit.errors import ConfigError, UsageError
from audit.plan import plan
from audit.pruning.base import CalibrationData
from audit.results import load_results
from audit.runner import run_audit

SWEEP = """\
sweep:
  methods:
    - magnitude
    - nm
    - wanda
    - {name: sparsegpt, params: {blocksize: 16}}
    - gradient
    - structured
  sparsities: [0.5]
  seeds: [0, 1]
  calibration: {n: 64, seed: 3}
"""


def test_sweep_of_several_methods_end_to_end(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(
        write_config(
            tmp_path / "audit.yaml",
            tiny_model_dir,
            tiny_data_dir,
            sweep=SWEEP,
            policy="policy: null\n",
            runtime="runtime:\n  n_boot: 0\n  batch_size: 64\n",
        )
    )
    outcome = run_audit(cfg)
    res = outcome.result
    ids = [v.id for v in res.variants]
    assert ids == [
        f"{m}-s0.50-seed{s}"
        for m in ("magnitude", "nm", "wanda", "sparsegpt[blocksize=16]", "gradient", "structured")
        for s in (0, 1)
    ]
    by_id = {v.id: v for v in res.variants}
    for v in res.variants:
        assert not v.errors, v.errors
        assert v.pruning is not None and v.pruning.achieved_sparsity == pytest.approx(0.5, abs=2e-3), v.id
        acc = v.measurement("performance/test/accuracy").value
        assert acc is not None and acc > 0.5
    # data-free methods: no calibration recorded, same mask for every seed
    for m in ("magnitude", "nm", "structured"):
        a, b = by_id[f"{m}-s0.50-seed0"].pruning, by_id[f"{m}-s0.50-seed1"].pruning
        assert a.calibration is None and a.mask_fingerprint == b.mask_fingerprint, m
    # data-aware methods: each seed draws its own calibration sample, recorded
    for m in ("wanda", "sparsegpt[blocksize=16]", "gradient"):
        a, b = by_id[f"{m}-s0.50-seed0"].pruning, by_id[f"{m}-s0.50-seed1"].pruning
        assert (a.calibration.n, a.calibration.seed, a.calibration.point_seed) == (64, 3, 0)
        assert b.calibration.point_seed == 1 and a.calibration.fingerprint != b.calibration.fingerprint
        assert a.mask_fingerprint != b.mask_fingerprint, m
    assert {d.id for d in res.datasets if d.id.startswith("calibration:")} == {
        "calibration:train:seed0",
        "calibration:train:seed1",
    }
    st = by_id["structured-s0.50-seed0"].pruning
    assert st.structured and set(st.heads_removed) == {"bert.encoder.layer.0", "bert.encoder.layer.1"}
    assert by_id["nm-s0.50-seed0"].pruning.params == {"n": 2, "m": 4}
    again = load_results(cfg.output_path() / "results.json")
    assert [v.pruning for v in again.variants] == [v.pruning for v in res.variants]


def test_nm_methods_run_once_per_seed_at_their_implied_sparsity() -> None:
    text = """\
model: {path: m}
data: {files: {train: a.csv, test: b.csv}}
sweep:
  methods: [magnitude, {name: nm, params: {n: 4, m: 8}}, {name: wanda, params: {n: 2, m: 4}}, sparsegpt]
  sparsities: [0.3, 0.5, 0.7]
  seeds: [0]
"""
    ids = [p.id for p in plan(config_from_text(text))[1:]]
    assert ids == [
        "magnitude-s0.30-seed0",
        "magnitude-s0.50-seed0",
        "magnitude-s0.70-seed0",
        "nm[m=8,n=4]-s0.50-seed0",
        "wanda[m=4,n=2]-s0.50-seed0",
        "sparsegpt-s0.30-seed0",
        "sparsegpt-s0.50-seed0",
        "sparsegpt-s0.70-seed0",
    ]


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("{name: nm, params: {n: 4, m: 4}}", "N:M needs n < m"),
        ("{name: wanda, params: {n: 2}}", "set both n and m"),
        ("{name: sparsegpt, params: {n: 2, m: 3, blocksize: 128}}", "multiple of m"),
        ("{name: structured, params: {units: [heads, heads]}}", "lists a unit twice"),
        ("{name: gradual, params: {steps: 0}}", "greater than or equal to 1"),
        ("{name: imp, params: {finetune_steps: 4, rewind_step: 5}}", "past the first round's 4 fine-tuning steps"),
        ("{name: movement, params: {distill: {alpha: 1.5}}}", "less than or equal to 1"),
    ],
)
def test_bad_params_are_config_errors_with_a_line(tmp_path: Path, method: str, message: str) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(
        f"model: {{path: m}}\ndata: {{files: {{train: a.csv, test: b.csv}}}}\nsweep:\n  methods:\n    - {method}\n"
    )
    with pytest.raises(ConfigError, match=message) as exc:
        load_config(path)
    assert exc.value.line == 5


def test_sparsity_outside_the_unit_interval_is_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\), found 1.0"):
        config_from_text("model: {path: m}\ndata: {files: {test: b.csv}}\nsweep: {sparsities: [0.5, 1.0]}\n")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(UsageError, match=r"sparsity must be in \[0, 1\)"):
            pruner("magnitude").validate(model, ctx(bad))
    with pytest.raises(UsageError, match="override sparsity must be in"):
        pruner("wanda").validate(model, ctx(0.5, overrides={"query": 1.0}))


def test_nm_that_does_not_divide_a_layer_is_refused(tiny_model_dir: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    with pytest.raises(UsageError, match=r"3:5 needs every pruned layer's input width to be divisible by 5.*32 inputs"):
        pruner("nm", n=3, m=5).validate(model, ctx(1 - 3 / 5))
    with pytest.raises(UsageError, match="fixes the sparsity at 0.5"):
        pruner("nm").validate(model, ctx(0.7))
    with pytest.raises(UsageError, match="cannot be met by a 2:4 pattern"):
        pruner("nm").validate(model, ctx(0.5, overrides={"query": 0.7}))
    pruner("nm").validate(model, ctx(0.5, overrides={"query": 0.0}))  # 0 keeps a layer dense


def test_methods_needing_calibration_or_labels_say_so(tiny_model_dir: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    for name in ("wanda", "sparsegpt", "gradient", "gradual", "movement", "imp"):
        with pytest.raises(UsageError, match=f"method '{name}' needs calibration data but none is configured"):
            pruner(name).validate(model, ctx(0.5))
    unlabelled = CalibrationData(
        texts=["a"],
        labels=None,
        batches=[{"input_ids": torch.tensor([[2, 3]])}],
        batch_labels=[],
        record=None,  # type: ignore[arg-type]
    )
    for name in ("gradient", "gradual", "movement", "imp"):
        with pytest.raises(UsageError, match="needs labelled calibration data"):
            pruner(name).validate(model, ctx(0.5, unlabelled))
    labelled = CalibrationData(
        texts=["a"],
        labels=np.array([1]),
        batches=unlabelled.batches,
        batch_labels=[torch.tensor([1])],
        record=None,  # type: ignore[arg-type]
    )
    pruner("gradual").validate(model, ctx(0.5, labelled))
    with pytest.raises(UsageError, match="initial_sparsity 0.6 is above the target 0.5"):
        pruner("gradual", initial_sparsity=0.6).validate(model, ctx(0.5, labelled))
    with pytest.raises(UsageError, match="initial_sparsity 0.6 is above the target 0.5"):
        pruner("movement", initial_sparsity=0.6).validate(model, ctx(0.5, labelled))
    with pytest.raises(UsageError, match="movement pruning needs finetune_steps >= 1"):
        pruner("movement", finetune_steps=0).validate(model, ctx(0.5, labelled))


def test_missing_calibration_split_fails_before_the_model_is_loaded(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import audit.model_io

    def no_loading(*_a: object, **_k: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(audit.model_io, "load_checkpoint", no_loading)  # what load_model and the runner call
    data = (
        "data:\n"
        f"  files: {{test: {tiny_data_dir / 'test.jsonl'}}}\n"
        "  columns: {text: text, label: label}\n"
        "  splits: {eval: test, calibration: null}\n"
    )
    sweep = "sweep:\n  methods: [magnitude, wanda]\n  sparsities: [0.5]\n"
    cfg = load_config(write_config(tmp_path / "a.yaml", tiny_model_dir, tiny_data_dir, data=data, sweep=sweep))
    with pytest.raises(UsageError, match="method 'wanda' needs calibration data but no calibration split"):
        run_audit(cfg)
    assert not cfg.output_path().exists()


def test_a_bad_point_stops_the_run_before_any_pruning(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.pruning.magnitude import MagnitudePruner

    calls = []
    monkeypatch.setattr(MagnitudePruner, "prune", lambda self, model, c: calls.append(c))
    sweep = "sweep:\n  methods: [magnitude, structured]\n  sparsities: [0.5, 0.9]\n"
    cfg = load_config(write_config(tmp_path / "a.yaml", tiny_model_dir, tiny_data_dir, sweep=sweep))
    with pytest.raises(UsageError, match="would remove all 4 heads"):
        run_audit(cfg)
    assert calls == [] and not cfg.output_path().exists()
    sweep = "sweep:\n  methods: [magnitude, {name: nm, params: {n: 3, m: 5}}]\n  sparsities: [0.5]\n"
    cfg = load_config(write_config(tmp_path / "b.yaml", tiny_model_dir, tiny_data_dir, sweep=sweep))
    with pytest.raises(UsageError, match="divisible by 5"):
        run_audit(cfg)
    assert calls == [] and not cfg.output_path().exists()


def test_same_config_same_masks(tiny_model_dir: Path, tiny_data_dir: Path) -> None:
    dense = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    c = calibration(tiny_model_dir, tiny_data_dir, n=32)
    fps = [pruner("wanda").prune(copy.deepcopy(dense), ctx(0.6, c)).mask_fingerprint for _ in range(2)]
    assert fps[0] == fps[1]
