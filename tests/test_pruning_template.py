"""The pruner template: a method writes only ``apply``; what it needs is declared on its spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from audit.config import LayerSelection
from audit.errors import UsageError
from audit.pruning.base import Applied, CalibrationData, PruneContext, Pruner, Selection, apply_mask
from audit.pruning.specs import NMParams, StructuredParams, WandaParams
from audit.registry import PRUNERS, PluginParams, PrunerSpec
from audit.results import CalibrationRecord


class _Pattern(PluginParams):
    n: int | None = None
    m: int | None = None

    def implied_sparsity(self) -> float:  # a method on the params is not a declaration
        return 0.5

    def uses_calibration(self) -> bool:
        return True


class FirstColumnPruner(Pruner):
    """Zeroes input column 0 of every active layer: the whole method is this ``apply``."""

    def apply(self, model: nn.Module, selection: Selection, ctx: PruneContext) -> Applied:
        for _name, module in selection.active():
            keep = torch.ones_like(module.weight, dtype=torch.bool)
            keep[:, 0] = False
            apply_mask(module, keep)
        return Applied(notes=["first column"])


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))


def _calibration() -> CalibrationData:
    record = CalibrationRecord(dataset="d", split="s", n=2, seed=0, point_seed=0, fingerprint="f" * 64)
    return CalibrationData(["a", "b"], np.array([0, 1]), [{"x": torch.zeros(2, 8)}], [torch.tensor([0, 1])], record)


def _spec(**caps: object) -> PrunerSpec:
    return PrunerSpec(name="first-column", impl="x:y", summary="test", params=_Pattern, **caps)  # type: ignore[arg-type]


def _ctx(calibration: CalibrationData | None = None, **layers: object) -> PruneContext:
    return PruneContext(
        sparsity=0.25, seed=0, layers=LayerSelection(include=[r"^\d$"], **layers), calibration=calibration
    )


def test_a_method_that_writes_only_apply_gets_a_record_counted_on_the_tensors() -> None:
    model = _model()
    rec = FirstColumnPruner(_spec(), _Pattern()).prune(model, _ctx(overrides={"^2$": 0.0}))
    assert [r.name for r in rec.layers] == ["0", "2"]
    first, last = rec.layers
    assert (first.nonzero, first.total, first.target_sparsity) == (6 * 7, 48, 0.25)
    assert (last.nonzero, last.target_sparsity) == (24, 0.0)  # an override of 0 keeps the layer dense
    assert rec.prunable_nonzero == 42 + 24 and rec.notes == ["first column"] and rec.method == "first-column"
    assert rec.calibration is None  # nothing declared: the calibration data is not recorded as used


def test_calibration_is_recorded_and_required_only_where_the_spec_declares_it() -> None:
    calib = _calibration()
    declared = FirstColumnPruner(_spec(needs_calibration=True), _Pattern())
    assert declared.prune(_model(), _ctx(calib)).calibration == calib.record
    with pytest.raises(UsageError, match="needs calibration data but none is configured"):
        declared.prune(_model(), _ctx())
    # the params' own uses_calibration() is not a declaration
    assert FirstColumnPruner(_spec(), _Pattern()).prune(_model(), _ctx(calib)).calibration is None


def test_conditional_capabilities_are_predicates_on_the_spec() -> None:
    spec = PRUNERS.get("structured")
    assert spec.uses_calibration(StructuredParams(criterion="importance"))
    assert spec.uses_labels(StructuredParams(criterion="importance"))
    assert not spec.uses_calibration(StructuredParams(criterion="l2"))
    assert not spec.uses_labels(StructuredParams(criterion="l1"))
    wanda = PRUNERS.get("wanda")
    assert wanda.uses_calibration(WandaParams()) and not wanda.uses_labels(WandaParams())


def test_an_nm_pattern_counts_only_where_the_spec_declares_nm() -> None:
    assert PRUNERS.get("nm").implied_sparsity({"n": 2, "m": 8}) == 0.75
    assert PRUNERS.get("nm").nm_pattern(NMParams(n=4, m=8)) == (4, 8)
    assert PRUNERS.get("wanda").implied_sparsity({}) is None  # nm declared, no pattern set
    assert _spec().implied_sparsity({"n": 2, "m": 4}) is None  # fields named n/m, nm not declared
    assert _spec(nm=True).implied_sparsity({"n": 2, "m": 4}) == 0.5


def test_the_base_validate_checks_a_declared_nm_pattern_against_the_shapes() -> None:
    model = _model()  # input widths 8 and 6
    ctx = PruneContext(sparsity=0.5, seed=0, layers=LayerSelection(include=[r"^\d$"]))
    with pytest.raises(UsageError, match="2 has 6 inputs"):
        FirstColumnPruner(_spec(nm=True), _Pattern(n=2, m=4)).validate(model, ctx)
    FirstColumnPruner(_spec(), _Pattern(n=2, m=4)).validate(model, ctx)  # not declared: no N:M check
    FirstColumnPruner(_spec(nm=True), _Pattern(n=1, m=2)).validate(model, ctx)  # 2 divides 8 and 6
