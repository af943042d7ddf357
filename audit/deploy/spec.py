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
from audit.results import DeploymentRecord, Measurement

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


def measurements_of(record: DeploymentRecord) -> list[Measurement]:
    """The deployment's numbers as measurements (``deployment/<dataset>/<metric>``)."""
    out = []
    eq = record.equivalence
    if eq is not None:
        out.append(
            Measurement(suite=SUITE, dataset="probe", metric="max_abs_logit_diff", value=eq.max_abs_logit_diff, n=eq.n)
        )
        out.append(Measurement(suite=SUITE, dataset="probe", metric="prediction_agreement", value=eq.agreement, n=eq.n))
    if record.weight_bytes_dense:
        out.append(
            Measurement(
                suite=SUITE,
                dataset="weights",
                metric="size_ratio",
                value=record.weight_bytes_deployed / record.weight_bytes_dense,
                details={"bytes_dense": record.weight_bytes_dense, "bytes_deployed": record.weight_bytes_deployed},
            )
        )
        out.append(
            Measurement(suite=SUITE, dataset="weights", metric="weight_bytes", value=record.weight_bytes_deployed)
        )
    if record.linear_bytes_dense:
        out.append(
            Measurement(
                suite=SUITE,
                dataset="weights",
                metric="linear_size_ratio",
                value=record.linear_bytes_deployed / record.linear_bytes_dense,
                details={
                    "memory_traffic_limit_speedup": record.linear_bytes_dense / max(1, record.linear_bytes_deployed)
                },
            )
        )
    sp = record.speed
    if sp is not None:
        ds = f"seq{sp.seq_len}"
        details = {"threads": sp.threads, "batch_size": sp.batch_size, "rounds": sp.rounds}
        for metric, value in (
            ("speedup_b1", sp.speedup_b1),
            ("speedup_b32", sp.speedup_b32),
            ("latency_b1_ms", sp.latency_b1_ms_deployed),
            ("throughput_b32", sp.throughput_b32_deployed),
        ):
            if value is not None:
                out.append(Measurement(suite=SUITE, dataset=ds, metric=metric, value=value, details=dict(details)))
    return out
