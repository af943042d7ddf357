"""What a report says about each suite, read from its spec: no suite is named here.

A suite's :class:`~audit.registry.SuiteSpec` carries its ``title``, its ``not_run``
limitation, its ``report_order`` and whether it is ``always_reported``. Deployment, a
stage of every pruned variant rather than a configured suite, declares the same in
:mod:`audit.deploy.spec`. A suite that is not registered where the report is rendered
(a plugin since uninstalled) keeps its sections, headed by its name.
"""

from __future__ import annotations

from dataclasses import dataclass

from audit.deploy import spec as deploy_spec
from audit.registry import SUITES, SuiteSpec

DEFAULT_ORDER: int = SuiteSpec.__dataclass_fields__["report_order"].default


@dataclass(frozen=True)
class SuiteText:
    """The report-facing declarations of one suite (or of deployment)."""

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
    """The declarations of suite ``name``; defaults for a suite no spec declares."""
    if name == deploy_spec.SUITE:
        return SuiteText(name, deploy_spec.TITLE, deploy_spec.NOT_RUN, deploy_spec.REPORT_ORDER)
    if name in SUITES:
        spec = SUITES.get(name)
        return SuiteText(name, spec.title, spec.not_run, spec.report_order, spec.always_reported)
    return SuiteText(name)


def registered_suites() -> list[SuiteText]:
    """Every registered suite's declarations, in report order."""
    return sorted((suite_text(s.name) for s in SUITES), key=lambda t: (t.order, t.name))


def suite_order(names: set[str]) -> list[str]:
    """``names`` in report order: by declared ``report_order``, then by name."""
    return sorted(names, key=lambda n: (suite_text(n).order, n))


def deployment_text() -> SuiteText:
    """The declarations of the deployment stage (its record, not a configured suite)."""
    return suite_text(deploy_spec.SUITE)
