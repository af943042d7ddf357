"""Torch-free declarations of what deployment measures (``deployment/<dataset>/<metric>``).

These metrics are recorded on every pruned variant, so a policy can gate on them like on
any suite's metrics, e.g.::

    - id: deployed-speedup
      metric: deployment/*/speedup_b1
      min: 1.5
    - id: deployed-size
      metric: deployment/weights/size_ratio
      max: 0.6
"""

from __future__ import annotations

from audit.registry import MetricSpec

SUITE = "deployment"

METRICS = (
    MetricSpec(
        "max_abs_logit_diff",
        "Largest absolute difference between the deployed model's logits and its masked-dense reference "
        "on the probe batch (dataset `probe`).",
        higher_is_better=False,
        range=(0.0, None),
    ),
    MetricSpec(
        "prediction_agreement",
        "Share of probe examples on which the deployed model predicts what its masked-dense reference predicts.",
        higher_is_better=True,
    ),
    MetricSpec(
        "speedup_b1",
        "Dense batch-1 latency / deployed batch-1 latency at the dataset's sequence length (`seq<L>`).",
        higher_is_better=True,
        range=(0.0, None),
        unit="x",
    ),
    MetricSpec(
        "speedup_b32",
        "Deployed / dense throughput at the configured batch size and sequence length (`seq<L>`).",
        higher_is_better=True,
        range=(0.0, None),
        unit="x",
    ),
    MetricSpec(
        "latency_b1_ms",
        "Deployed model's batch-1 latency (median) at the dataset's sequence length.",
        higher_is_better=False,
        range=(0.0, None),
        unit="ms",
    ),
    MetricSpec(
        "throughput_b32",
        "Deployed model's throughput (sequences per second) at the configured batch size.",
        higher_is_better=True,
        range=(0.0, None),
        unit="seq/s",
    ),
    MetricSpec(
        "size_ratio",
        "Bytes of every stored tensor of the deployed model / the same for the dense model (dataset `weights`).",
        higher_is_better=False,
        range=(0.0, None),
    ),
    MetricSpec(
        "linear_size_ratio",
        "Bytes of the Linear layers' weights as deployed / stored densely (the memory-traffic limit of the "
        "speed-up is its inverse).",
        higher_is_better=False,
        range=(0.0, None),
    ),
    MetricSpec(
        "weight_bytes",
        "Bytes of every stored tensor of the deployed model.",
        higher_is_better=False,
        range=(0.0, None),
        unit="bytes",
    ),
)
