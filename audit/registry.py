"""Plugin registries for pruners, suites, stages and reporters.

A plugin is described by a *spec*: a small, torch-free object holding its name, its
pydantic params model, a one-line summary and the ``"module:attr"`` of its
implementation, which is imported only when the plugin is used. That keeps
``prune-audit validate`` and ``prune-audit ls`` free of torch.

Built-ins and third-party plugins are registered the same way: built-ins are listed
in :mod:`audit.builtins`; third parties expose a spec through an entry point in the
group ``prune_audit.pruners``, ``prune_audit.suites``, ``prune_audit.stages`` or
``prune_audit.reporters``::

    [project.entry-points."prune_audit.suites"]
    toxicity = "my_pkg.audit_plugins:TOXICITY_SUITE"

or call :func:`register` at import time.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from audit.errors import PluginError

log = logging.getLogger(__name__)


class PluginParams(BaseModel):
    """Base class of every plugin's params model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(PluginParams):
    """For plugins that take no parameters."""


@dataclass(frozen=True)
class MetricSpec:
    """Declaration of one metric a suite produces.

    A measurement's id is ``<suite>/<dataset>/<name>``; its meaning, range and
    direction come from here, so that policies can check bounds point the right way.
    """

    name: str
    meaning: str
    higher_is_better: bool | None
    range: tuple[float | None, float | None] = (0.0, 1.0)
    unit: str = ""
    citation: str = ""
    reference: float | None = None
    """The value that means "no effect" or "unbiased" (0.5 for a stereotype preference share, 1.0 for a
    ratio, 0.0 for a bias score), drawn as a line in the report's charts; None when there is none."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "meaning": self.meaning,
            "higher_is_better": self.higher_is_better,
            "range": list(self.range),
            "unit": self.unit,
            "citation": self.citation,
            "reference": self.reference,
        }


@dataclass(frozen=True)
class PluginSpec:
    """What the registry knows about a plugin without importing it."""

    name: str
    impl: str
    summary: str
    params: type[PluginParams] = NoParams
    tags: tuple[str, ...] = ()

    def load(self) -> Any:
        """Import and return the implementation named by ``impl``."""
        module_name, _, attr = self.impl.partition(":")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attr) if attr else module
        except Exception as exc:  # noqa: BLE001 - turned into a clear plugin error
            raise PluginError(
                f"plugin {self.name!r} could not be loaded from {self.impl}: {type(exc).__name__}: {exc}"
            ) from exc


@dataclass(frozen=True)
class PrunerSpec(PluginSpec):
    """A pruning method and what it needs and does, declared (read by the runner and the base pruner).

    ``structured``: the method changes shapes (removes units); the others only mask.
    ``needs_calibration`` / ``needs_labels``: it always needs (labelled) calibration data;
    ``calibration_when`` / ``labels_when``: it needs them only for some params (a
    predicate on the validated params, e.g. a criterion that ranks by gradients).
    ``nm``: the params may set an N:M pattern through fields ``n`` and ``m`` (which then
    fixes the sparsity at ``1 - n/m``).
    """

    structured: bool = False
    needs_calibration: bool = False
    needs_labels: bool = False
    calibration_when: Callable[[Any], bool] | None = None
    labels_when: Callable[[Any], bool] | None = None
    nm: bool = False
    criterion: str = ""

    def uses_calibration(self, params: PluginParams) -> bool:
        """Whether the method with these (validated) params needs calibration data."""
        return self.needs_calibration or (self.calibration_when is not None and bool(self.calibration_when(params)))

    def uses_labels(self, params: PluginParams) -> bool:
        """Whether the method with these (validated) params needs labelled calibration data."""
        return self.needs_labels or (self.labels_when is not None and bool(self.labels_when(params)))

    def nm_pattern(self, params: PluginParams) -> tuple[int, int] | None:
        """The (n, m) pattern set by these (validated) params, or None."""
        if not self.nm:
            return None
        n, m = params.n, params.m  # type: ignore[attr-defined]  # a method declared nm has both fields
        return None if n is None or m is None else (int(n), int(m))

    def implied_sparsity(self, params: dict[str, Any]) -> float | None:
        """The sparsity fixed by ``params`` (an N:M pattern: ``1 - n/m``), or None when the sweep level applies."""
        pattern = self.nm_pattern(self.params.model_validate(params))
        return None if pattern is None else 1.0 - pattern[0] / pattern[1]


@dataclass(frozen=True)
class MeasuredSpec(PluginSpec):
    """What a suite and a stage share: the metrics they declare and what reports say about them.

    ``title`` heads the report sections (empty: ``Suite: <name>``). ``not_run`` is the
    limitation a report states when it did not run (empty: none is stated). Sections are
    ordered by ``report_order``, then name; an ``always_reported`` one gets its section
    even when it did not run, marked as such. ``kind`` says which registry holds it.
    """

    kind: ClassVar[str] = ""
    metrics: tuple[MetricSpec, ...] = ()
    title: str = ""
    not_run: str = ""
    report_order: int = 100
    always_reported: bool = False

    def metric(self, name: str) -> MetricSpec | None:
        for m in self.metrics:
            if m.name == name:
                return m
        return None

    def find_metric(self, name: str) -> MetricSpec | None:
        """The declaration of metric ``name`` for any configuration (a stage's names may follow its config)."""
        return self.metric(name)

    def run_metrics(self, config: Any) -> tuple[MetricSpec, ...]:
        """The metrics a run with ``config`` (an :class:`audit.config.AuditConfig`) records."""
        return self.metrics


@dataclass(frozen=True)
class SuiteSpec(MeasuredSpec):
    """An evaluation suite, configured under ``suites:``, run on the dense model and every variant.

    ``model_kinds``: the kinds of audited model it can measure; the runner refuses it for
    any other before any work.
    """

    kind: ClassVar[str] = "suite"
    model_kinds: tuple[str, ...] = ("classifier",)
    """The model kinds (:data:`audit.models.adapter.MODEL_KINDS`) the suite can measure."""
    task_formats: Callable[[Any], list[str]] | None = None
    """Given the suite's validated params, one line per task format it scores (e.g. a prompt template
    with its choices, "CrowS-Pairs sentence pairs"), named by the model card and the report."""
    predictions: bool = False
    """The suite gives its per-example predictions and references (:meth:`audit.suite.Suite.prediction_sets`),
    so a config may add ``extra_metrics`` (local ``evaluate`` modules, :mod:`audit.extra_metrics`) to it."""


@dataclass(frozen=True)
class StageSpec(MeasuredSpec):
    """A step every pruned variant goes through before its suites (deployment), measured like a suite.

    Its numbers are ``<stage>/<dataset>/<metric>`` measurements that policies gate and
    reports show like a suite's; it is not configured under ``suites:``. A variant whose
    stage failed is not audited (every rule on it is an ERROR). ``record`` names the
    :class:`~audit.results.VariantResult` field that holds the stage's record: a variant
    with it set ran the stage. ``metrics_of`` gives the metrics of a run's config when their
    names follow it (``speedup_b<batch>``); ``lookup`` finds a metric name for any config.
    """

    kind: ClassVar[str] = "stage"
    record: str = ""
    metrics_of: Callable[[Any], tuple[MetricSpec, ...]] | None = None
    lookup: Callable[[str], MetricSpec | None] | None = None

    def find_metric(self, name: str) -> MetricSpec | None:
        return self.lookup(name) if self.lookup is not None else self.metric(name)

    def run_metrics(self, config: Any) -> tuple[MetricSpec, ...]:
        return self.metrics_of(config) if self.metrics_of is not None else self.metrics

    def ran_on(self, variant: Any) -> bool:
        """Whether ``variant`` (a :class:`~audit.results.VariantResult`) went through this stage."""
        if self.record:
            return getattr(variant, self.record, None) is not None
        return any(m.suite == self.name for m in variant.measurements)


@dataclass(frozen=True)
class ReporterSpec(PluginSpec):
    """A renderer of a finished run (html, json, junit, markdown, ...)."""

    filename: str = ""


S = TypeVar("S", bound=PluginSpec)


@dataclass
class Registry(Generic[S]):
    """Name → spec, filled from built-ins and entry points on first use."""

    kind: str
    group: str
    spec_type: type[S]
    _specs: dict[str, S] = field(default_factory=dict)
    _loaded: bool = False

    def register(self, spec: S, *, replace: bool = False) -> S:
        """Add ``spec``; a duplicate name is an error unless ``replace``."""
        if not isinstance(spec, self.spec_type):
            raise PluginError(
                f"a {self.kind} must be registered with a {self.spec_type.__name__}, got {type(spec).__name__}"
            )
        if spec.name in self._specs and not replace and self._specs[spec.name] is not spec:
            raise PluginError(f"{self.kind} {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        return spec

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        import audit.builtins  # noqa: F401 - registers the built-in specs

        try:
            eps = metadata.entry_points(group=self.group)
        except Exception:  # noqa: BLE001
            eps = []
        for ep in eps:
            if ep.name in self._specs:
                continue
            try:
                spec = ep.load()
            except Exception as exc:  # noqa: BLE001
                log.warning("skipping %s plugin %r from %s: %s", self.kind, ep.name, ep.value, exc)
                continue
            try:
                self.register(spec)
            except PluginError as exc:
                log.warning("skipping %s plugin %r: %s", self.kind, ep.name, exc)

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._specs)

    def __iter__(self) -> Iterator[S]:
        self._ensure_loaded()
        return iter([self._specs[n] for n in sorted(self._specs)])

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._specs

    def get(self, name: str) -> S:
        """Return the spec for ``name`` or raise a :class:`PluginError` with a suggestion."""
        self._ensure_loaded()
        try:
            return self._specs[name]
        except KeyError:
            raise PluginError(self.unknown_message(name), hint=self.suggest(name)) from None

    def unknown_message(self, name: str) -> str:
        return f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}"

    def suggest(self, name: str) -> str | None:
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        return f"did you mean {close[0]!r}?" if close else None


PRUNERS: Registry[PrunerSpec] = Registry("pruner", "prune_audit.pruners", PrunerSpec)
SUITES: Registry[SuiteSpec] = Registry("suite", "prune_audit.suites", SuiteSpec)
STAGES: Registry[StageSpec] = Registry("stage", "prune_audit.stages", StageSpec)
REPORTERS: Registry[ReporterSpec] = Registry("reporter", "prune_audit.reporters", ReporterSpec)


def register(spec: PluginSpec, *, replace: bool = False) -> PluginSpec:
    """Register a spec in the registry that matches its type (model adapters: :mod:`audit.models`)."""
    from audit.models.adapter import ADAPTERS

    for reg in (PRUNERS, SUITES, STAGES, REPORTERS, ADAPTERS):
        if isinstance(spec, reg.spec_type):
            return reg.register(spec, replace=replace)  # type: ignore[arg-type]
    raise PluginError(
        f"cannot register {type(spec).__name__}: not a pruner, suite, stage, reporter or model adapter spec"
    )


def measured() -> list[MeasuredSpec]:
    """Every registered suite and stage, by name: what lists metrics, titles, "did not run" texts and
    catalogs iterates, so a new suite or stage needs no edit elsewhere.
    """
    return sorted([*SUITES, *STAGES], key=lambda s: s.name)


def measured_spec(name: str) -> MeasuredSpec | None:
    """The suite or stage called ``name`` (a stage first), or None when neither is registered here."""
    if name in STAGES:
        return STAGES.get(name)
    return SUITES.get(name) if name in SUITES else None


def stage_names() -> set[str]:
    """The names of the registered stages (the ``suite`` part of their measurements' and errors' ids)."""
    return set(STAGES.names())
