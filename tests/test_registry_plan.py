from __future__ import annotations

import pytest

from audit.config import config_from_text
from audit.errors import PluginError
from audit.plan import plan
from audit.registry import PRUNERS, SUITES, PluginParams, PrunerSpec, Registry, SuiteSpec, register

CFG = """\
model: {path: m}
data: {files: {train: a.csv, test: b.csv}}
sweep:
  methods: [magnitude, {name: magnitude, params: {scope: global}}]
  sparsities: [0.5, 0.3]
  seeds: [0, 1]
"""


def test_plan_is_dense_first_then_methods_by_sparsity_by_seed() -> None:
    points = plan(config_from_text(CFG))
    assert points[0].id == "dense" and points[0].is_baseline
    ids = [p.id for p in points[1:]]
    assert ids == [
        "magnitude-s0.50-seed0",
        "magnitude-s0.50-seed1",
        "magnitude-s0.30-seed0",
        "magnitude-s0.30-seed1",
        "magnitude[scope=global]-s0.50-seed0",
        "magnitude[scope=global]-s0.50-seed1",
        "magnitude[scope=global]-s0.30-seed0",
        "magnitude[scope=global]-s0.30-seed1",
    ]
    assert len({p.key for p in points}) == len(points)
    # pure and deterministic
    assert [p.key for p in plan(config_from_text(CFG))] == [p.key for p in points]


def test_point_key_depends_on_everything_that_defines_it() -> None:
    a = plan(config_from_text(CFG))[1]
    b = plan(config_from_text(CFG.replace("seeds: [0, 1]", "seeds: [0, 1]\n  calibration: {n: 64}")))[1]
    assert a.id == b.id and a.key != b.key


def test_registry_did_you_mean_and_duplicates() -> None:
    with pytest.raises(PluginError) as exc:
        PRUNERS.get("magnitud")
    assert exc.value.hint == "did you mean 'magnitude'?"
    with pytest.raises(PluginError, match="already registered"):
        PRUNERS.register(PrunerSpec(name="magnitude", impl="x:y", summary="dup"))


def test_third_party_plugins_register_like_builtins() -> None:
    class Params(PluginParams):
        k: int = 3

    reg: Registry[SuiteSpec] = Registry("suite", "prune_audit.test_only", SuiteSpec)
    spec = reg.register(SuiteSpec(name="toy", impl="json:dumps", summary="toy", params=Params))
    assert reg.get("toy") is spec and "toy" in reg.names()
    assert reg.get("toy").load()({"a": 1}) == '{"a": 1}'
    with pytest.raises(PluginError, match="could not be loaded"):
        SuiteSpec(name="broken", impl="no_such_module:thing", summary="").load()
    with pytest.raises(PluginError):
        register(object())  # type: ignore[arg-type]


def test_builtin_suite_specs_declare_metric_directions() -> None:
    perf = SUITES.get("performance")
    assert perf.metric("accuracy").higher_is_better is True
    for spec in SUITES:
        for m in spec.metrics:
            assert m.meaning and m.higher_is_better in (True, False, None)
