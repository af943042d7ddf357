"""``attribution:``: which significant regressions to trace back to pruning decisions, and the search budget.

The engine is :mod:`audit.attribution`; this is its config section of :mod:`audit.config`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from audit.config_base import StrictModel, _err

__all__ = ["GRANULARITIES", "AttributionConfig"]

GRANULARITIES = ("block", "type", "layer")
"""How far the search refines: whole blocks; then attention vs FFN inside a block; then single layers."""


class AttributionConfig(StrictModel):
    """Regression attribution: restore groups of layers to their dense weights and re-measure.

    ```yaml
    attribution:
      enabled: true
      rules: all                  # or a list of policy rule ids
      metrics: ["performance/*"]  # globs over the regression's metric id
      max_regressions: 3
      budget_forward_passes: 20000
      granularity: layer          # block | type | layer
      holdout: 0.5                # share of the defining examples the search does not see
    ```

    For each significant regression of the run (``statistics.regressions``: q at most the
    run's FDR level, change for the worse), up to ``max_regressions`` of them (smallest q
    first), the variant is pruned again, and groups of its Linear layers are given back their
    dense weights one group at a time: every block, then its attention and its feed-forward
    layers, then single layers, the groups that explain most first, while the budget lasts.
    Each restored model is re-measured on the examples that define the regression. Off by
    default: a config without this section runs, dumps and fingerprints as before.
    """

    enabled: bool = Field(False, description="Attribute regressions after the run is judged.")
    rules: Literal["all"] | list[str] = Field(
        "all",
        description="`all`: every significant regression; a list of policy rule ids: only regressions on a variant "
        "where one of these rules failed or warned on a metric of the same suite and dataset.",
    )
    metrics: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Globs over the regression's metric id (`suite/dataset/metric`); others are not attributed.",
    )
    max_regressions: int = Field(3, ge=1, le=1000, description="At most this many regressions, smallest q first.")
    budget_forward_passes: int = Field(
        20000,
        ge=1,
        description="Per regression: the most example forward passes the search may spend (examples x "
        "evaluations; the variant and dense evaluations included). What the budget did not reach is recorded.",
    )
    granularity: Literal["block", "type", "layer"] = Field(
        "layer",
        description="The finest groups the search restores: block (whole blocks), type (attention vs FFN per block), "
        "layer (single Linear layers).",
    )
    n_boot: int | None = Field(
        None,
        ge=0,
        le=100_000,
        description="Paired bootstrap resamples of the shares' CIs (default: runtime.n_boot).",
    )
    holdout: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="Fraction of each regression's defining examples held out of the search (a seeded draw); the "
        "group that explained most at each level is re-measured on them, so its reported held-out share was not "
        "chosen on the examples it is measured on. 0: the search uses every example and nothing is checked.",
    )
    diagnostics: bool = Field(
        True,
        description="Also record Tran et al. (2022)'s per-group gradient norm and margin, dense vs variant "
        "(classifiers; the gradient passes are counted apart from the budget).",
    )

    @field_validator("rules")
    @classmethod
    def _rules(cls, value: Literal["all"] | list[str]) -> Literal["all"] | list[str]:
        if isinstance(value, list):
            if not value:
                raise _err("attribution_rules", "attribution.rules is an empty list", "write `all`, or name rules")
            if len(set(value)) != len(value):
                raise _err("attribution_rules", f"attribution.rules lists a rule twice: {value}")
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        if not value:
            raise _err("attribution_metrics", "attribution.metrics is an empty list", 'write ["*"] for every metric')
        return value
