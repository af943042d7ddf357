"""``plan()``: the sweep as an ordered list of :class:`SweepPoint` (pure, deterministic)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from audit.config import AuditConfig
from audit.fingerprint import canonical_json, sha256_text
from audit.paths import check_name
from audit.registry import PRUNERS
from audit.results import BASELINE_ID, PointRecord


@dataclass(frozen=True)
class SweepPoint:
    """One (method × sparsity × seed) cell; the dense baseline has method ``dense``."""

    method: str
    sparsity: float
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    variant: str = ""
    """Short label of the params that differ from the method's defaults, e.g. ``scope=global``."""
    tag: str = ""
    """Replaces the profile in the label: ``alloc`` for the allocation ``sweep.allocate`` chose (``wanda-alloc``)."""

    @property
    def is_baseline(self) -> bool:
        return self.method == BASELINE_ID

    @property
    def label(self) -> str:
        """Method (``-owl`` under the OWL profile) plus non-default params, e.g. ``magnitude[scope=global]``."""
        if self.tag:
            method = f"{self.method}-{self.tag}"
        elif self.params.get("profile", "uniform") != "uniform":
            method = f"{self.method}-{self.params['profile']}"
        else:
            method = self.method
        return f"{method}[{self.variant}]" if self.variant else method

    @property
    def id(self) -> str:
        """Human-readable stable id, e.g. ``magnitude-s0.50-seed0``."""
        if self.is_baseline:
            return BASELINE_ID
        return f"{self.label}-s{self.sparsity:.2f}-seed{self.seed}"

    @property
    def key(self) -> str:
        """Content hash of everything that defines this point."""
        return sha256_text(
            canonical_json(
                {
                    "method": self.method,
                    "sparsity": round(self.sparsity, 6),
                    "seed": self.seed,
                    "params": self.params,
                    "layers": self.layers,
                    "calibration": self.calibration,
                }
            )
        )

    def record(self) -> PointRecord:
        return PointRecord(
            id=self.id,
            method=self.method,
            label=self.label,
            params=dict(self.params),
            sparsity=self.sparsity,
            seed=self.seed,
            key=self.key,
        )


def plan(config: AuditConfig) -> list[SweepPoint]:
    """Dense baseline first, then methods × sparsities × seeds in config order.

    A method whose params fix its sparsity (an N:M pattern: ``1 - n/m``) gets one point
    per seed at that level instead of one per listed sparsity.

    Raises:
        audit.paths.UnsafePathError: A point id (which names ``variants/<id>/`` and report
            anchors) would hold ``/``, ``..`` or a control character, from a param value.
    """
    sweep = config.sweep
    layers = sweep.layers.model_dump(mode="json")
    calib = sweep.calibration.model_dump(mode="json")
    if calib.get("split") is None:
        calib["split"] = config.data.splits.calibration
    points = [SweepPoint(method=BASELINE_ID, sparsity=0.0, seed=config.seed)]
    seen: set[str] = {BASELINE_ID}
    for i, method in enumerate(sweep.methods):
        variant = _variant_label(method.name, method.params)
        # a method whose params fix the sparsity (an N:M pattern) runs once per seed at that level
        implied = PRUNERS.get(method.name).implied_sparsity(method.params)
        levels = [implied] if implied is not None else sweep.sparsities
        for sparsity in levels:
            for seed in sweep.seeds:
                point = SweepPoint(
                    method=method.name,
                    sparsity=float(sparsity),
                    seed=int(seed),
                    params=dict(method.params),
                    layers=layers,
                    calibration=calib,
                    variant=variant,
                )
                if point.id in seen:
                    continue
                check_name(point.id, what="variant id", where=f"sweep.methods[{i}] ({method.name})")
                seen.add(point.id)
                points.append(point)
    return points


def allocated_point(config: AuditConfig, blocks: dict[str, float]) -> SweepPoint:
    """The sweep point of the allocation ``sweep.allocate`` chose: its method's params with
    ``profile: blocks`` and ``blocks``, at the target, on the first sweep seed, labelled ``<method>-alloc``.
    """
    from audit.config_sweep import alloc_method

    sweep = config.sweep
    alloc = sweep.allocate
    assert alloc is not None
    _, method = alloc_method(sweep)
    params = {k: v for k, v in method.params.items() if k not in ("profile", "owl")}
    params.update(profile="blocks", blocks=dict(blocks))
    params = PRUNERS.get(method.name).params.model_validate(params).model_dump(mode="json")
    calib = sweep.calibration.model_dump(mode="json")
    if calib.get("split") is None:
        calib["split"] = config.data.splits.calibration
    params_no_profile = {k: v for k, v in params.items() if k not in ("profile", "blocks")}
    return SweepPoint(
        method=method.name,
        sparsity=float(alloc.target),
        seed=int(sweep.seeds[0]),
        params=params,
        layers=sweep.layers.model_dump(mode="json"),
        calibration=calib,
        variant=_variant_label(method.name, params_no_profile),
        tag="alloc",
    )


def _variant_label(method: str, params: dict[str, Any]) -> str:
    try:
        defaults = PRUNERS.get(method).params().model_dump(mode="json")
    except Exception:  # noqa: BLE001 - params without defaults: label every param
        defaults = {}
    parts = []
    owl = params.get("owl") if params.get("profile") == "owl" else None
    if owl:  # the profile is in the label's method part; OWL's own settings as M=, lambda= when not the default
        from audit.pruning.specs import OwlParams

        parts += [f"{k}={v:g}" for k, v in owl.items() if OwlParams().model_dump(mode="json").get(k) != v]
    for key in sorted(params):
        if key in ("profile", "owl") or defaults.get(key, object()) == params[key]:
            continue
        value = params[key]
        if isinstance(value, dict) and all(isinstance(v, (str, int, float, bool)) for v in value.values()):
            parts += [f"{key}.{k}={v}" for k, v in sorted(value.items())]  # a hybrid's prune_params: n=2, m=4
            continue
        text = value if isinstance(value, (str, int, float, bool)) else canonical_json(value)
        text = str(text)
        if len(text) > 16:
            text = sha256_text(text)[:8]
        parts.append(f"{key}={text}")
    return ",".join(parts)


def method_display(label: str) -> str:
    """A method label in the user's words: ``wanda[m=4,n=2]`` reads ``wanda 2:4``.

    An N:M pattern (both ``n`` and ``m`` among the label's params) is written ``n:m``
    after the method; other params stay in brackets.
    """
    name, sep, rest = label.partition("[")
    if not sep or not rest.endswith("]"):
        return label
    params = dict(p.partition("=")[::2] for p in rest[:-1].split(",") if p)
    if not (params.get("n") and params.get("m")):
        return label
    pattern = f" {params.pop('n')}:{params.pop('m')}"
    others = ",".join(f"{k}={v}" for k, v in params.items())
    return f"{name}{pattern}" + (f" [{others}]" if others else "")
