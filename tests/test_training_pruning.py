"""Pruning while training: movement pruning, IMP with rewinding, distillation from the dense model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pruning_helpers import calibration, run
from torch import nn
from torch.nn.utils import parametrize
from transformers import AutoModelForSequenceClassification

from audit.config import LayerSelection
from audit.pruning.base import select_layers
from audit.pruning.imp import imp_schedule
from audit.pruning.movement import MovementMask, MovementPruner
from audit.pruning.specs import DistillParams
from audit.pruning.training import FineTuner, distillation_loss
from audit.results import PruningRecord


@pytest.fixture(scope="module")
def dense(tiny_model_dir: Path) -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()


@pytest.fixture()
def model(dense: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(dense)


@pytest.fixture(scope="module")
def calib(tiny_model_dir: Path, tiny_data_dir: Path):
    return calibration(tiny_model_dir, tiny_data_dir)


CASES = [
    ("movement", {"steps": 2, "finetune_steps": 2, "final_finetune_steps": 1}, 2 * 2 + 1),
    ("movement", {"steps": 2, "finetune_steps": 2, "final_finetune_steps": 0, "scope": "global"}, 4),
    ("imp", {"rounds": 3, "finetune_steps": 2, "final_finetune_steps": 1}, 3 * 2 + 1),
    ("imp", {"rounds": 2, "finetune_steps": 2, "final_finetune_steps": 2, "scope": "global", "rewind_step": 1}, 6),
]


@pytest.mark.parametrize(("name", "params", "steps"), CASES, ids=lambda v: str(v))
def test_fine_tuning_methods_hit_the_target_and_record_their_training(model, calib, name, params, steps) -> None:
    rec = run(model, name, 0.6, calib, **params)
    layers = dict(select_layers(model, LayerSelection()))
    for r in rec.layers:
        w = layers[r.name].weight
        assert r.nonzero == int(torch.count_nonzero(w))
        if params.get("scope") != "global":
            assert abs(r.achieved_sparsity - 0.6) <= 0.5 / w.numel() + 1e-9, r.name
    assert abs(rec.achieved_sparsity - 0.6) < 1e-3
    assert not any(n.endswith("_orig") or "parametrizations" in n for n, _ in model.named_parameters())
    assert not any(parametrize.is_parametrized(m) for m in layers.values())
    t = rec.training
    assert t is not None and t.procedure == name
    assert t.optimizer_steps == steps and t.examples == rec.calibration.n == 64
    assert t.schedule[-1] == 0.6 and t.teacher is None and t.objective == "cross-entropy on the labels"
    assert all(a < b for a, b in zip(t.schedule, t.schedule[1:], strict=False))


def test_imp_schedule_removes_the_same_fraction_of_survivors_each_round() -> None:
    assert imp_schedule(0.875, 3) == pytest.approx([0.5, 0.75, 0.875])
    assert imp_schedule(0.6, 1) == [0.6]


def test_imp_rewound_to_the_given_weights_keeps_them_exactly(model, dense, calib) -> None:
    """rewind_step 0 and no ticket training: every parameter is the dense one, masked."""
    run(model, "imp", 0.5, calib, rounds=2, finetune_steps=3, final_finetune_steps=0, learning_rate=1e-3)
    d = dict(dense.named_parameters())
    pruned = {f"{n}.weight" for n, _ in select_layers(model, LayerSelection())}
    for n, p in model.named_parameters():
        if n in pruned:
            kept = p != 0
            assert torch.equal(p[kept], d[n][kept]), n
            assert int((~kept).sum()) > 0, n
        else:
            assert torch.equal(p, d[n]), n


def test_imp_one_round_without_training_is_one_shot_magnitude(model, dense, calib) -> None:
    rec = run(model, "imp", 0.5, calib, rounds=1, finetune_steps=0, final_finetune_steps=0)
    mag = copy.deepcopy(dense)
    assert rec.mask_fingerprint == run(mag, "magnitude", 0.5).mask_fingerprint


def test_imp_rewind_step_k_rewinds_to_the_weights_after_k_steps(model, dense, calib) -> None:
    k = 2
    run(model, "imp", 0.5, calib, rounds=1, finetune_steps=4, rewind_step=k, final_finetune_steps=0,
        learning_rate=1e-3)  # fmt: skip
    ref = copy.deepcopy(dense)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the point's seed, as IMPPruner seeds it
        FineTuner(ref, calib, seed=0, learning_rate=1e-3, weight_decay=0.0, distill=None).steps(k)
    r = dict(ref.named_parameters())
    moved = 0
    for n, p in model.named_parameters():
        kept = p != 0
        assert torch.equal(p[kept], r[n][kept]), n
        moved += int(not torch.equal(r[n], dict(dense.named_parameters())[n]))
    assert moved > 0  # the rewind point is not the dense model


def test_movement_score_is_minus_the_gradient_of_the_masked_weight_times_the_weight() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 4, bias=False)
    mm = MovementMask(lin.weight)
    mm.keep = torch.rand(4, 6) > 0.4
    parametrize.register_parametrization(lin, "weight", mm)
    x = torch.randn(5, 6)
    w = lin.parametrizations.weight.original
    (lin(x) ** 2).sum().backward()
    w_masked = (w.detach() * mm.keep).requires_grad_(True)
    ((x @ w_masked.T) ** 2).sum().backward()
    g = w_masked.grad
    assert torch.allclose(mm.scores, -(g * w.detach()), atol=1e-6)
    assert torch.allclose(w.grad, g * mm.keep, atol=1e-6)  # masked weights do not move
    assert bool((mm.scores[~mm.keep] != 0).any())  # ... but their scores do (straight-through)


def test_movement_remask_keeps_top_scores_and_lets_pruned_weights_back() -> None:
    w = torch.ones(2, 4)
    mm = MovementMask(w)
    mm.scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [8.0, 7.0, 6.0, 5.0]])
    layer = [("l", nn.Linear(4, 2))]
    MovementPruner._remask({"l": mm}, [], layer, {"l": 0.5}, 0.5, 1.0)
    assert mm.keep.tolist() == [[False] * 4, [True] * 4]  # the top half of the layer's scores, not per row
    mm.scores[0, 3] = 100.0
    MovementPruner._remask({"l": mm}, [], layer, {"l": 0.5}, 0.5, 1.0)
    assert mm.keep.tolist() == [[False, False, False, True], [True, True, True, False]]
    assert mm.regrown == 1


def test_distillation_loss_matches_its_formula() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(7, 3), torch.randn(7, 3)
    T = 2.5
    p_t = F.softmax(t / T, -1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert distillation_loss(s, t, T).item() == pytest.approx(manual.item(), rel=1e-5)
    assert distillation_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_alone_ignores_the_labels_and_starts_at_zero(model, calib) -> None:
    tuner = FineTuner(model, calib, seed=0, learning_rate=1e-3, weight_decay=0.0, distill=DistillParams(alpha=1.0))
    batch, labels = calib.labelled_batches()[0]
    model.eval()
    with torch.no_grad():
        a = tuner.loss(batch, labels)
        b = tuner.loss(batch, 1 - labels)
    assert a.item() == b.item() == pytest.approx(0.0, abs=1e-6)  # the student is still the teacher
    with torch.no_grad():
        model.classifier.weight.mul_(-1.0)
        assert tuner.loss(batch, labels).item() > 1e-3


def test_mixed_objective_is_the_weighted_sum(model, calib) -> None:
    d = DistillParams(alpha=0.25, temperature=3.0)
    tuner = FineTuner(model, calib, seed=0, learning_rate=1e-3, weight_decay=0.0, distill=d)
    batch, labels = calib.labelled_batches()[0]
    with torch.no_grad():
        teacher_logits = tuner.teacher(**batch).logits
        model.classifier.bias.add_(torch.tensor([1.0, -1.0]))
        model.eval()
        student = model(**batch).logits
        expected = 0.75 * F.cross_entropy(student, labels) + 0.25 * distillation_loss(student, teacher_logits, 3.0)
        assert tuner.loss(batch, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_distilled_gradual_records_its_teacher_and_round_trips(model, calib) -> None:
    rec = run(model, "gradual", 0.5, calib, steps=2, finetune_steps=2, distill={"alpha": 0.5, "temperature": 2.0})
    t = rec.training
    assert t.teacher.startswith("the dense model") and t.alpha == 0.5 and t.temperature == 2.0
    assert "0.5 × cross-entropy" in t.objective and t.optimizer_steps == 4
    back = PruningRecord.model_validate_json(rec.model_dump_json())
    assert back.training == t
    assert "training" not in run(copy.deepcopy(model), "magnitude", 0.5).model_dump()


@pytest.mark.slow
def test_cli_run_records_and_reports_movement_and_distilled_imp(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    import json
    import os
    import subprocess
    import sys

    from helpers import write_config

    sweep = (
        "sweep:\n  methods:\n"
        "    - {name: movement, params: {steps: 2, finetune_steps: 2, final_finetune_steps: 1}}\n"
        "    - {name: imp, params: {rounds: 2, finetune_steps: 2, final_finetune_steps: 1, rewind_step: 1,"
        " distill: {alpha: 0.5, temperature: 2.0}}}\n"
        "  sparsities: [0.5]\n  seeds: [0]\n  calibration: {n: 32}\n"
    )
    cfg = write_config(
        tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir, sweep=sweep, policy="policy: null\n",
        runtime="runtime:\n  n_boot: 0\n  batch_size: 64\n", deploy="deploy:\n  enabled: false\n",
    )  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-m", "audit", "run", "-c", str(cfg), "-f", "json", "-f", "html"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    out = tmp_path / "out"
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    by_method = {v["pruning"]["method"]: v for v in data["variants"] if v.get("pruning")}
    card_run = subprocess.run(
        [sys.executable, "-m", "audit", "report", str(out / "results.json"), "-o", str(tmp_path / "card"),
         "-f", "model-card", "--card-variant", by_method["imp"]["id"]],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert card_run.returncode == 0, card_run.stderr[-2000:]
    mv, imp = by_method["movement"]["pruning"], by_method["imp"]["pruning"]
    assert mv["training"]["procedure"] == "movement" and mv["training"]["optimizer_steps"] == 5
    assert mv["training"]["teacher"] is None
    t = imp["training"]
    assert (t["procedure"], t["optimizer_steps"], t["rewind_step"], t["alpha"]) == ("imp", 5, 1, 0.5)
    assert t["schedule"] == pytest.approx([1 - 0.5**0.5, 0.5], abs=1e-6) and t["teacher"].startswith("the dense")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert '<h3 id="training">Training during pruning</h3>' in html
    assert html.count(f"<td><code>{by_method['movement']['id']}</code></td><td>movement</td>") == 1
    card = (tmp_path / "card" / "model-card.md").read_text(encoding="utf-8")
    assert "| Training during pruning | imp: 5 fine-tuning steps, schedule 0.293, 0.500;" in card
