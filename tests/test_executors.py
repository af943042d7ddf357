"""Executors: the local one streams points with bounded memory; Ray gives the same results."""

from __future__ import annotations

import gc
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import FAST_DEPLOY, write_config
from test_resume import differences, normalized

from audit.config import load_config
from audit.progress import Progress
from audit.registry import SUITES, MetricSpec, SuiteSpec
from audit.results import Measurement
from audit.runner import run_audit
from audit.suite import Suite, SuiteContext, SuiteOutput, Variant

SWEEP = "sweep:\n  methods: [magnitude, wanda]\n  sparsities: [0.5, 0.9]\n  seeds: [0]\n  calibration: {n: 32}\n"
RAY_SWEEP = "sweep:\n  methods: [magnitude, wanda]\n  sparsities: [0.9]\n  seeds: [0]\n  calibration: {n: 32}\n"


class LiveModels(Suite):
    """A third-party style suite that counts the transformer models alive while it runs."""

    def run(self, variant: Variant, ctx: SuiteContext) -> SuiteOutput:
        from transformers import PreTrainedModel

        gc.collect()
        # whole models (a BertForSequenceClassification holds a BertModel, itself a PreTrainedModel);
        # isinstance() on every object touches torch's deprecated module attributes, hence the filter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            live = sum(1 for o in gc.get_objects() if isinstance(o, PreTrainedModel) and o.base_model is not o)
        return SuiteOutput(
            measurements=[Measurement(suite="live", dataset="process", metric="models", value=live, n=1)]
        )


@pytest.fixture
def live_suite() -> Iterator[SuiteSpec]:
    spec = SuiteSpec(
        name="live",
        impl=f"{__name__}:LiveModels",
        summary="counts live models",
        metrics=(MetricSpec("models", "transformer models alive in the process", higher_is_better=False),),
    )
    SUITES.register(spec)
    yield spec
    SUITES._specs.pop("live", None)


def test_local_executor_keeps_only_the_dense_model_and_one_variant_alive(
    live_suite: SuiteSpec, tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    cfg = load_config(
        write_config(
            tmp_path / "a.yaml",
            tiny_model_dir,
            tiny_data_dir,
            sweep=SWEEP,
            suites="suites:\n  performance: {}\n  live: {}\n",
        )
    )
    lines = io.StringIO()
    outcome = run_audit(cfg, formats=["json"], progress=Progress(lines, live=False, interval=0))
    counts = [v.measurement("live/process/models").value for v in outcome.result.all_variants()]
    assert counts == [1, 2, 2, 2, 2]  # dense alone, then dense + the one variant being audited
    # one plain progress line per point (interval 0), each with the point and its ETA until the last
    text = lines.getvalue()
    assert "\r" not in text and text.count("\n") == 2 + 5
    assert "sweep: 2/5" in text and "ETA" in text and "wanda-s0.90-seed0" in text


def test_ray_executor_gives_the_local_results(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray", reason="the [ray] extra is installed by `make test`")
    import torch

    threads = torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    suites = "suites:\n  performance: {}\n  bias:\n    counterfactual: {categories: [gender]}\n"
    # a forced format (the format choice is timed) and one thread in both (float sums in the same order)
    deploy_fixed = FAST_DEPLOY + "  force_format: kernel\n"
    runtime = "runtime:\n  n_boot: 50\n  batch_size: 64\n  threads: 1\n"
    common = {"sweep": RAY_SWEEP, "suites": suites, "deploy": deploy_fixed, "runtime": runtime}
    local = run_audit(
        load_config(write_config(tmp_path / "l.yaml", tiny_model_dir, tiny_data_dir, **common)),
        formats=["json"],
    )
    ray_cfg = write_config(
        tmp_path / "r.yaml",
        tiny_model_dir,
        tiny_data_dir,
        **common,
        output_dir=f"output_dir: {tmp_path / 'ray-out'}\n",
        executor="executor: {kind: ray, num_cpus: 2, num_cpus_per_task: 1}\n",
    )
    remote = run_audit(load_config(ray_cfg), formats=["json"])
    assert [v.id for v in remote.result.variants] == [v.id for v in local.result.variants]
    a = normalized(local.output_dir / "results.json")
    b = normalized(remote.output_dir / "results.json")
    for r in (a, b):  # output_dir and executor differ
        r.pop("config"), r["provenance"].pop("config_fingerprint")
    diff = differences(a, b)
    assert not diff, "\n".join(diff[:20])
    assert remote.result.run_id == local.result.run_id
    # the driver stored every unit, so a resumed Ray run reuses them all
    from audit.store import ResultStore

    assert ResultStore(remote.output_dir / ".prune-audit-store").entries() == 2 + 2 * 3
