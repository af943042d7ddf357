"""What a report says about each suite, read from its spec: no suite is named here.

A suite's :class:`~audit.registry.SuiteSpec` carries its ``title``, its ``not_run``
limitation, its ``report_order`` and whether it is ``always_reported``; a stage of every
pruned variant (deployment), a :class:`~audit.registry.StageSpec`, declares the same. A
suite that is not registered where the report is rendered (a plugin since uninstalled)
keeps its sections, headed by its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from audit.registry import SUITES, MeasuredSpec, measured_spec

DEFAULT_ORDER: int = MeasuredSpec.__dataclass_fields__["report_order"].default


@dataclass(frozen=True)
class SuiteText:
    """The report-facing declarations of one suite or stage."""

    name: str
    title: str = ""
    not_run: str = ""
    order: int = DEFAULT_ORDER
    always: bool = False

    @property
    def heading(self) -> str:
        """The section heading: the declared title, else ``Suite: <name>``."""
        return self.title or f"Suite: {self.name}"

    @property
    def absent_text(self) -> str:
        """What the suite's section says when it did not run."""
        return self.not_run or f"The {self.name} suite did not run."


def suite_text(name: str) -> SuiteText:
    """The declarations of suite or stage ``name``; defaults for one no spec declares."""
    spec = measured_spec(name)
    if spec is None:
        return SuiteText(name)
    return SuiteText(name, spec.title, spec.not_run, spec.report_order, spec.always_reported)


def registered_suites(kind: str | None = None) -> list[SuiteText]:
    """Every registered suite's declarations, in report order; with ``kind``, only the suites that
    measure models of that kind (``SuiteSpec.model_kinds``): an LM suite is no limitation of a classifier's run.
    """
    specs = [s for s in SUITES if kind is None or kind in s.model_kinds]
    return sorted((suite_text(s.name) for s in specs), key=lambda t: (t.order, t.name))


def model_kind(result: Any) -> str:
    """The audited model's kind as a run records it (``causal-lm``; unset means a classifier)."""
    return getattr(result.model, "kind", None) or "classifier"


def suite_order(names: set[str]) -> list[str]:
    """``names`` in report order: by declared ``report_order``, then by name."""
    return sorted(names, key=lambda n: (suite_text(n).order, n))
