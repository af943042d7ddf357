"""Torch-free declarations of what deployment measures (``deployment/<dataset>/<metric>``).

These metrics are recorded on every pruned variant, so a policy can gate on them like on
any suite's metrics, e.g.::

    - id: deployed-speedup
      metric: deployment/*/speedup_b1
      use: ci_lower            # speed-ups carry a CI over the timing rounds: judge its cautious end
      min: 1.5
    - id: deployed-size
      metric: deployment/weights/size_ratio
      max: 0.6
"""

from __future__ import annotations

import re
from typing import Any

from audit.deploy.formats import DENSE
from audit.registry import STAGES, MetricSpec, StageSpec
from audit.results import DeploymentRecord, Measurement

SUITE = "deployment"
TITLE = "Deployment: speed, size and kernel equivalence"
"""Heading of the deployment's report sections (the stage's ``title``)."""
NOT_RUN = (
    "No deployment record: the kernel format, equivalence with the masked model, speed and size were not measured."
)
"""The report's limitation when no variant carries a deployment record (the stage's ``not_run``)."""
REPORT_ORDER = 50
"""Its sections come after the built-in suites' (the stage's ``report_order``)."""
DEFAULT_BATCH = 32
"""``deploy.speed_batch_size``'s default: the throughput metrics are named ``*_b<batch size>``."""


def _metrics(batch: int) -> tuple[MetricSpec, ...]:
    specs = (
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
            "Dense batch-1 latency / deployed batch-1 latency at the dataset's sequence length (`seq<L>`): median "
            "of the per-round ratios of interleaved timing rounds, with a CI (n = rounds); exactly 1.0, untimed, "
            "for a deployment with no sparse layer.",
            higher_is_better=True,
            range=(0.0, None),
            unit="x",
        ),
        MetricSpec(
            f"speedup_b{batch}",
            f"Deployed / dense throughput at batch size {batch} (`deploy.speed_batch_size`) and the dataset's "
            "sequence length (`seq<L>`); median of interleaved rounds, with a CI.",
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
            f"throughput_b{batch}",
            f"Deployed model's throughput (sequences per second) at batch size {batch} (`deploy.speed_batch_size`).",
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
        MetricSpec(
            "sparse_layers",
            "Linear layers that run a sparse format (dataset `layers`; details: layers per format, and why the "
            "others stayed dense).",
            higher_is_better=None,
            range=(0.0, None),
            unit="layers",
        ),
        MetricSpec(
            "dense_layers",
            "Linear layers that run dense (`nn.Linear`) in the deployed model (dataset `layers`).",
            higher_is_better=None,
            range=(0.0, None),
            unit="layers",
        ),
    )
    specs += (
        MetricSpec(
            "prefill_speedup",
            "Causal LMs: dense / deployed prefill latency at batch 1 and the dataset's prompt length (`seq<L>`); "
            "median of interleaved rounds, with a CI; 1.0, untimed, for a deployment with no sparse layer.",
            higher_is_better=True,
            range=(0.0, None),
            unit="x",
        ),
        MetricSpec(
            "decode_speedup",
            "Causal LMs: dense / deployed time of greedy decoding at batch 1 with the KV cache (dataset "
            "`decode<N>`: N new tokens); median of interleaved rounds, with a CI; 1.0, untimed, when identical.",
            higher_is_better=True,
            range=(0.0, None),
            unit="x",
        ),
        MetricSpec(
            "decode_tokens_per_s",
            "Causal LMs: the deployed model's greedy decode speed at batch 1 with the KV cache (median).",
            higher_is_better=True,
            range=(0.0, None),
            unit="tokens/s",
        ),
        MetricSpec(
            "generation_agreement",
            "Causal LMs: mean share of the masked model's greedy tokens the deployed model reproduces at the same "
            "position (dataset `prompts`).",
            higher_is_better=True,
        ),
    )
    out: dict[str, MetricSpec] = {}
    for spec in specs:  # batch size 1: the batch speed-up is speedup_b1
        out.setdefault(spec.name, spec)
    return tuple(out.values())


METRICS = _metrics(DEFAULT_BATCH)
"""The declarations for the default batch size; :func:`metrics_for` gives them for another."""


def metrics_for(batch_size: int) -> tuple[MetricSpec, ...]:
    """The deployment metrics of a run whose ``deploy.speed_batch_size`` is ``batch_size``."""
    return _metrics(int(batch_size))


_BATCH_NAME = re.compile(r"^(speedup|throughput)_b([0-9]+)$")


def find(name: str) -> MetricSpec | None:
    """The declaration of a deployment metric name, for any batch size (``throughput_b8``)."""
    m = _BATCH_NAME.match(name)
    specs = metrics_for(int(m.group(2))) if m and m.group(2) != "1" else METRICS
    return next((s for s in specs if s.name == name), None)


STAGE = STAGES.register(
    StageSpec(
        name=SUITE,
        impl="audit.deploy.pipeline:deploy_variant",
        summary="Convert each pruned variant to its shipped form; check it against the masked model; time and size it.",
        metrics=METRICS,
        title=TITLE,
        not_run=NOT_RUN,
        report_order=REPORT_ORDER,
        record="deployment",  # VariantResult.deployment
        metrics_of=lambda config: metrics_for(config.deploy.speed_batch_size),
        lookup=find,
    )
)
"""The deployment stage, registered like any stage (:data:`audit.registry.STAGES`)."""


def _speed_ci(value: float | None, ci: list[float] | None) -> dict[str, object]:
    if value is None or ci is None:
        return {}
    return {"ci_low": ci[0], "ci_high": ci[1]}


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
    if record.formats:
        sparse = {f: n for f, n in record.formats.items() if f != DENSE and n}
        details = {"formats": dict(record.formats), "kept_dense": dict(record.kept_dense)}
        out.append(
            Measurement(
                suite=SUITE, dataset="layers", metric="sparse_layers", value=sum(sparse.values()), details=details
            )
        )
        out.append(
            Measurement(
                suite=SUITE,
                dataset="layers",
                metric="dense_layers",
                value=record.formats.get(DENSE, 0),
                details=dict(details),
            )
        )
    sp = record.speed
    if sp is not None:
        ds = f"seq{sp.seq_len}"
        details: dict[str, object] = {
            "threads": sp.threads,
            "batch_size": sp.batch_size,
            "rounds": sp.rounds,
            "identical": sp.identical,
        }
        if sp.note:
            details["note"] = sp.note
        rows: list[tuple[str, float | None, list[float] | None, list[float] | None]] = [
            ("speedup_b1", sp.speedup_b1, sp.speedup_b1_ci, sp.per_round.get("speedup_b1")),
            (f"speedup_b{sp.batch_size}", sp.speedup_batch, sp.speedup_batch_ci, sp.per_round.get("speedup_batch")),
            ("latency_b1_ms", sp.latency_b1_ms_deployed, sp.latency_b1_ms_deployed_ci, None),
            (f"throughput_b{sp.batch_size}", sp.throughput_deployed, sp.throughput_deployed_ci, None),
        ]
        if sp.batch_size == 1:  # the batch speed-up is the batch-1 one
            rows.pop(1)
        if sp.decode_speedup is not None:  # a causal LM: batch-1 latency at seq_len is its prefill
            rows.append(("prefill_speedup", sp.speedup_b1, sp.speedup_b1_ci, sp.per_round.get("speedup_b1")))
        out += _speed_measurements(rows, ds, details, sp)
        if sp.decode_speedup is not None:
            out += _decode_measurements(sp, details)
    gen = record.generation
    if gen is not None:
        out.append(
            Measurement(
                suite=SUITE,
                dataset="prompts",
                metric="generation_agreement",
                value=gen.token_agreement,
                n=gen.prompts,
                details={
                    "new_tokens": gen.new_tokens,
                    "exact": gen.exact,
                    "diverged": gen.diverged,
                    "diverged_beyond_tie": gen.diverged_beyond_tie,
                    "passed": gen.passed,
                },
            )  # fmt: skip
        )
    return out


def _decode_measurements(sp: Any, details: dict[str, object]) -> list[Measurement]:
    ds = f"decode{sp.decode_new_tokens}"
    d = {**details, "prompt_tokens": sp.decode_prompt_tokens, "new_tokens": sp.decode_new_tokens}
    rows = [
        ("decode_speedup", sp.decode_speedup, sp.decode_speedup_ci, sp.per_round.get("decode_speedup")),
        ("decode_tokens_per_s", sp.decode_tps_deployed, sp.decode_tps_deployed_ci, None),
    ]
    return _speed_measurements(rows, ds, d, sp)


def _speed_measurements(
    rows: list[tuple[str, float | None, list[float] | None, list[float] | None]],
    ds: str,
    details: dict[str, object],
    sp: Any,
) -> list[Measurement]:
    """One measurement per timed ``(metric, value, ci, per_round)`` row of the speed record ``sp``."""
    out = []
    for metric, value, ci, per_round in rows:
        if value is None:
            continue
        d = dict(details)
        if per_round:
            d["per_round"] = [round(x, 4) for x in per_round]
        ci_kw = _speed_ci(value, ci)
        out.append(
            Measurement(
                suite=SUITE,
                dataset=ds,
                metric=metric,
                value=value,
                n=sp.rounds,
                ci_method=sp.ci_method if ci_kw else None,
                details=d,
                **ci_kw,  # type: ignore[arg-type]
            )
        )
    return out
