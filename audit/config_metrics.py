"""``extra_metrics:`` of a suite entry: local ``evaluate`` metric modules computed like the suite's own metrics.

::

    suites:
      performance:
        extra_metrics:
          - {path: ./metrics/error_count.py, key: errors, higher_is_better: false, range: [0, null]}

Each module is loaded once per run with :func:`evaluate.load` from its local file (never the
network) and computed on the suite's per-example predictions for dense and every variant
(:mod:`audit.extra_metrics`). A path that names no file is a config error pointing at its line,
found when the config is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from audit.config_base import StrictModel, _err
from audit.errors import ConfigError
from audit.runpaths import resolve_path


class ExtraMetricConfig(StrictModel):
    """A local `evaluate` metric module computed for dense and every variant on a suite's predictions."""

    path: str = Field(
        description="The module's .py file (an `evaluate.Metric` subclass); relative to the config file. Loaded "
        "offline with `evaluate.load`; its sha256 is recorded in the metric catalog.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments of `compute(predictions=, references=, ...)`."
    )
    key: str | None = Field(
        None, description="The key of `compute`'s result to report (default: its only key, else its first)."
    )
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
        description="Metric name in `<suite>/<dataset>/<name>` (default: `key`, else the module's file stem); the "
        "paired change vs dense is `<name>_delta`.",
    )
    higher_is_better: bool = Field(
        description="The metric's direction (required: a policy bound must know which way is worse)."
    )
    range: tuple[float | None, float | None] | None = Field(
        None, description="`[low, high]` the metric can take (null ends: unbounded); default unbounded."
    )
    meaning: str = Field("", description="What the metric measures, for the metric catalog and the report.")
    n_boot: int | None = Field(
        None,
        ge=0,
        le=100_000,
        description="Bootstrap resamples of this metric's CIs (default: `runtime.n_boot`). Each resample is one "
        "`compute` call per model (a few ms each), so a variant costs 2 x n_boot calls per dataset.",
    )

    @model_validator(mode="after")
    def _check(self) -> ExtraMetricConfig:
        if not self.path.endswith(".py"):
            raise _err(
                "extra_metric_path",
                f"extra metric path {self.path!r} is not a .py file",
                "name the evaluate module's Python file",
            )
        if self.range is not None and None not in self.range and self.range[0] > self.range[1]:  # type: ignore[operator]
            raise _err("extra_metric_range", f"range {list(self.range)} has its low end above its high end")
        return self

    @property
    def metric_name(self) -> str:
        """The measurement name: ``name``, else ``key``, else the module's file stem."""
        return self.name or self.key or Path(self.path).stem

    @property
    def delta_name(self) -> str:
        return f"{self.metric_name}_delta"


def check_extra_metrics(suites: list[Any], doc: Any, base_dir: str | None) -> None:
    """Every ``extra_metrics`` path names a file, and no name is taken twice in a suite.

    Raises :class:`ConfigError` at the entry's line in ``doc`` (the YAML document) otherwise.
    """
    for i, s in enumerate(suites):
        if not s.extra_metrics:
            continue
        taken = {m.name for m in _declared(s.name)}
        for j, em in enumerate(s.extra_metrics):
            file, line, col = _where(doc, i, s.name, j)
            path = resolve_path(em.path, base_dir)
            if not path.is_file():
                raise ConfigError(
                    f"suites.{s.name}.extra_metrics[{j}].path: no metric module at {path}",
                    file=file,
                    line=line,
                    column=col,
                    hint="point path at an evaluate module's .py file (relative to the config file)",
                )
            for name in (em.metric_name, em.delta_name):
                if name in taken:
                    raise ConfigError(
                        f"suites.{s.name}.extra_metrics[{j}]: metric name {name!r} is already taken in suite "
                        f"{s.name!r}",
                        file=file,
                        line=line,
                        column=col,
                        hint="give the metric another name (name:)",
                    )
                taken.add(name)


def _declared(suite: str) -> tuple[Any, ...]:
    from audit.registry import SUITES

    return SUITES.get(suite).metrics


def _where(doc: Any, index: int, name: str, j: int) -> tuple[str | None, int | None, int | None]:
    """(file, line, column) of ``extra_metrics[j].path`` of suite ``name`` (mapping or list form)."""
    if doc is None:
        return None, None, None
    for loc in (
        ["suites", name, "extra_metrics", j, "path"],
        ["suites", index, "extra_metrics", j, "path"],
        ["suites", index, "params", "extra_metrics", j, "path"],
        ["suites", name, "extra_metrics", j],
    ):
        if doc.locate_node(loc) is not None:
            line, col = doc.locate(loc)
            return doc.path, line, col
    return doc.path, None, None


def extra_from_params(value: Any) -> Any:
    """A suite entry with ``extra_metrics`` moved out of its params (the mapping form puts them there)."""
    if isinstance(value, dict) and isinstance(value.get("params"), dict) and "extra_metrics" in value["params"]:
        if "extra_metrics" in value:
            raise _err("extra_metrics_twice", "extra_metrics is given both beside and inside the suite's params")
        params = dict(value["params"])
        value = {**value, "params": params, "extra_metrics": params.pop("extra_metrics")}
    return value


def check_suite_accepts(name: str) -> None:
    """Only a suite that gives per-example predictions (``SuiteSpec.predictions``) takes extra_metrics."""
    from audit.registry import SUITES

    if not SUITES.get(name).predictions:
        accepting = sorted(s.name for s in SUITES if getattr(s, "predictions", False))
        raise _err(
            "extra_metrics_suite",
            f"suite {name!r} gives no per-example predictions, so it cannot compute extra_metrics",
            f"suites that can: {', '.join(accepting)}",
        )
