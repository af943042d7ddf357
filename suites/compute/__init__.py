"""Compute suite: how much computation each input gets, per group and per dataset.

Built for activation sparsity (``teal``, ``cats``): a gated model reads only the weight columns of
the activations its gates let through, so the work it does depends on the input. This suite
measures, for every variant and the dense model on the same inputs, each input's active fraction
(the share of the gated layers' inputs that are read) and a FLOPs estimate of its Linear layers,
then asks whether some groups' inputs get less computation than others (paired with their
accuracy), whether shifted datasets change the density, and which inputs cost the most (candidate
"sponge" inputs, Shumailov et al. 2021). Torch-free: spec and params; the implementation is in
:mod:`suites.compute.run`.
"""

from __future__ import annotations

from pydantic import Field

from audit.config import DatasetRef
from audit.registry import SUITES, MetricSpec, PluginParams, SuiteSpec


class ComputeParams(PluginParams):
    """Per-input compute on the eval split and on extra (e.g. shifted) datasets.

    ```yaml
    suites:
      compute:
        datasets:
          - {name: other-domains, path: data/ood.jsonl}
        top_k: 10
    ```
    """

    datasets: list[DatasetRef] = Field(
        default_factory=list,
        description="Extra labelled datasets whose density is compared with the eval split's; one with group "
        "columns (columns.groups) also gets its compute_disparity.",
    )
    top_k: int = Field(10, ge=0, le=1000, description="Inputs with the highest compute listed for review.")
    intersections: bool = Field(True, description="Also report the intersection of all group columns.")
    max_examples: int | None = Field(
        None, ge=1, description="At most this many rows per dataset, the first ones (unset: all)."
    )


METRICS = (
    MetricSpec(
        "active_fraction",
        "Mean over inputs of the share of the gated layers' inputs that are non-zero after their gates (what a "
        "kernel that skips zero inputs reads); 1 for a model without gates.",
        higher_is_better=None,
    ),
    MetricSpec(
        "relative_compute",
        "Mean over inputs of the variant's Linear-layer FLOPs on the input divided by the dense model's on the "
        "same input (gated layers: the active inputs; sparse-format layers: their non-zeros); 1 for dense.",
        higher_is_better=False,
        range=(0.0, None),
        reference=1.0,
    ),
    MetricSpec(
        "gflops_per_input",
        "Mean estimated Linear-layer GFLOPs per input (2 x multiply-adds over its tokens).",
        higher_is_better=False,
        range=(0.0, None),
        unit="GFLOPs",
    ),
    MetricSpec(
        "compute_disparity",
        "Largest gap, over the group columns, between the highest and the lowest group mean of relative_compute "
        "(bootstrap CI, resampling within groups); details pair each group's compute with its accuracy.",
        higher_is_better=False,
        range=(0.0, None),
        reference=0.0,
    ),
    MetricSpec(
        "density_shift",
        "active_fraction on this dataset minus on the eval split (bootstrap CI, both resampled).",
        higher_is_better=None,
        range=(-1.0, 1.0),
        reference=0.0,
    ),
)

SPEC = SUITES.register(
    SuiteSpec(
        name="compute",
        impl="suites.compute.run:ComputeSuite",
        summary="Per-input active fraction and FLOPs, per group and dataset; highest-compute inputs listed.",
        params=ComputeParams,
        metrics=METRICS,
        tags=("activation-sparsity", "efficiency"),
        title="Per-input compute",
        report_order=60,
        model_kinds=("classifier", "causal-lm"),
    )
)
