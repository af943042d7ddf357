"""The pytest plugin: gate a saved audit inside the test run a project already has.

``pytest --prune-audit RESULTS.json [--prune-audit-policy P]`` adds one test item per
rule × variant of the results' verdict, so ``-k``, ``-x``, ``--junitxml`` and the test
views of CI treat audit findings like any other test:

* the node id is ``<results file>::<variant id>::<rule id>`` (``not-run`` stands for a
  rule whose suite was not part of the run, as in the JUnit reporter); a rule that
  matched several metrics on one variant gets one item each, ``<rule id>[<metric id>]``;
* FAIL fails with the finding (bound, observed, dense, evidence) and no traceback,
  ERROR is reported as an error (in setup), SKIP is skipped with the reason, WARN passes
  with a :class:`PruneAuditWarning` (``-W error::audit.pytest_plugin.PruneAuditWarning``
  turns warnings into failures), PASS passes; under a policy with ``fail_on_error: false``
  an ERROR passes with a warning too, so pytest's exit code agrees with ``prune-audit check``;
* with ``--prune-audit-policy`` the stored measurements are re-judged under that policy,
  exactly as ``prune-audit check`` does, instead of using the stored verdict.

The ``prune_audit_results`` fixture gives a user's own tests typed access to the run
(:class:`PruneAuditResults`). A bad results file (missing, not JSON, another schema
version) or policy is a pytest usage error (exit code 4, one line) before anything runs
or is written.

Registered through the ``pytest11`` entry point ``prune_audit`` (``-p no:prune_audit``
disables it). It loads in every pytest run where prune-audit is installed, so it imports
nothing beyond pytest at import time and does nothing unless ``--prune-audit`` is given.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from audit.results import Measurement, RuleResult, RunResult, VariantResult, Verdict

NOT_RUN = "not-run"
"""The variant part of the id of a rule whose suite did not run (the JUnit reporter's name)."""


class PruneAuditWarning(UserWarning):
    """A WARN finding of the audit (the item passes; filter or escalate it with ``-W``)."""


class PruneAuditFailure(Exception):
    """A FAIL finding; :meth:`RuleItem.repr_failure` shows its text instead of a traceback."""


@dataclass(frozen=True)
class PruneAuditResults:
    """What the ``prune_audit_results`` fixture gives: the run and the verdict its items use.

    Attributes:
        run: The loaded results (``run.verdict`` is :attr:`verdict`).
        verdict: The stored verdict, or the re-judged one under ``--prune-audit-policy``.
        path: The results file.
    """

    run: RunResult
    verdict: Verdict
    path: Path

    def variant(self, variant_id: str) -> VariantResult:
        """The variant (``dense`` for the baseline) with this id; ``KeyError`` names the known ids."""
        for v in self.run.all_variants():
            if v.id == variant_id:
                return v
        known = ", ".join(v.id for v in self.run.all_variants())
        raise KeyError(f"no variant {variant_id!r} in {self.path} (variants: {known})")

    def measurement(self, variant_id: str, metric_id: str) -> Measurement:
        """The measurement ``suite/dataset/metric`` of a variant; ``KeyError`` names the variant's metrics."""
        v = self.variant(variant_id)
        found = v.measurement(metric_id)
        if found is None:
            known = ", ".join(m.id for m in v.measurements)
            raise KeyError(f"variant {variant_id!r} has no measurement {metric_id!r} (measured: {known})")
        return found

    def rules(self, status: str | None = None) -> list[RuleResult]:
        """The verdict's rule results, optionally only those of one status (``FAIL``, ``WARN``...)."""
        return [r for r in self.verdict.rules if status is None or r.status == status]


_STATE = pytest.StashKey[PruneAuditResults]()
_EVIDENCE = pytest.StashKey[tuple[Any, Any]]()
"""The measurement index and metric catalog the findings' evidence lines are read from."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("prune-audit", "prune-audit: gate a saved audit as test items")
    group.addoption(
        "--prune-audit",
        dest="prune_audit",
        metavar="RESULTS.json",
        default=None,
        help="add one test per rule × variant of this results.json (written by `prune-audit run`)",
    )
    group.addoption(
        "--prune-audit-policy",
        dest="prune_audit_policy",
        metavar="POLICY",
        default=None,
        help="re-judge the stored measurements under this policy (name or YAML path) instead of the stored verdict",
    )


def _load(results: str, policy: str | None) -> PruneAuditResults:
    """Load and judge; every bad input is an :class:`audit.errors.UsageError`."""
    from audit.errors import UsageError
    from audit.results import load_results

    run = load_results(results)
    if policy is not None:
        from audit.policy import evaluate_policy, load_policy
        from audit.policy_metrics import check_rule_metrics

        pol, label = load_policy(policy)
        check_rule_metrics(pol, policy, catalog=run.metrics)
        run = run.model_copy(update={"verdict": evaluate_policy(pol, run, policy_label=label)})
    if run.verdict is None:
        raise UsageError(
            "results file has no verdict", where=results, hint="pass --prune-audit-policy POLICY to judge it"
        )
    return PruneAuditResults(run=run, verdict=run.verdict, path=Path(results))


def pytest_configure(config: pytest.Config) -> None:
    results = config.getoption("prune_audit", None)
    if results is None:
        if config.getoption("prune_audit_policy", None) is not None:
            raise pytest.UsageError("--prune-audit-policy needs --prune-audit RESULTS.json")
        return
    from audit.errors import AuditError

    try:
        config.stash[_STATE] = _load(results, config.getoption("prune_audit_policy"))
    except AuditError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.addinivalue_line("markers", "prune_audit: a rule × variant of the --prune-audit results (-m prune_audit)")


def pytest_report_header(config: pytest.Config) -> str | None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return None
    counts = ", ".join(f"{k} {n}" for k, n in state.verdict.counts.items() if n)
    return f"prune-audit: {state.path} verdict {state.verdict.status} under policy {state.verdict.policy} ({counts})"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Add the results file as one more top-level collector of the session."""
    report = yield
    state = collector.config.stash.get(_STATE, None)
    if state is not None and isinstance(collector, pytest.Session) and report.passed:
        path = state.path.resolve()
        # relative to the rootdir, as pytest names test files (outside it, with ``..``)
        nodeid = Path(os.path.relpath(path, collector.config.rootpath)).as_posix()
        report.result.append(ResultsFile.from_parent(collector, path=path, nodeid=nodeid))
    return report


class ResultsFile(pytest.File):
    """The results file: one :class:`VariantNode` per variant a rule judged, in the run's order."""

    def collect(self) -> Iterator[VariantNode]:
        state = self.config.stash[_STATE]
        by_variant: dict[str, list[RuleResult]] = {}
        for r in state.verdict.rules:
            by_variant.setdefault(NOT_RUN if r.variant == "*" else r.variant, []).append(r)
        for vid in [v.id for v in state.run.all_variants()] + [NOT_RUN]:
            if vid in by_variant:
                yield VariantNode.from_parent(self, name=vid, rules=by_variant[vid])


class VariantNode(pytest.Collector):
    """One variant: a :class:`RuleItem` per rule result on it."""

    def __init__(self, *, rules: list[RuleResult], **kw: Any) -> None:
        super().__init__(**kw)
        self.rules = rules

    def collect(self) -> Iterator[RuleItem]:
        per_rule = Counter(r.rule for r in self.rules)
        for r in self.rules:
            name = r.rule if per_rule[r.rule] == 1 else f"{r.rule}[{r.metric}]"
            yield RuleItem.from_parent(self, name=name, result=r)


class RuleItem(pytest.Item):
    """One rule on one variant; its outcome is the rule's status."""

    def __init__(self, *, result: RuleResult, **kw: Any) -> None:
        super().__init__(**kw)
        self.result = result
        self.add_marker(pytest.mark.prune_audit)
        self.user_properties.extend([("status", result.status), ("metric", result.metric)])

    def _detail(self) -> str:
        from reports.junit import _detail
        from reports.views.common import catalog
        from reports.views.evidence import measurement_index, rule_evidence

        if _EVIDENCE not in self.config.stash:  # built once per session, on the first finding shown
            run = self.config.stash[_STATE].run
            self.config.stash[_EVIDENCE] = (measurement_index(run), catalog(run))
        index, cat = self.config.stash[_EVIDENCE]
        ev = rule_evidence(index, self.result, cat)
        return f"{self.result.status}: {self.result.message}\n{_detail(self.result, ev)}"

    def setup(self) -> None:
        if self.result.status == "ERROR" and self.config.stash[_STATE].verdict.fail_on_error:
            pytest.fail(self._detail(), pytrace=False)  # an exception in setup is reported as an error

    def runtest(self) -> None:
        status = self.result.status
        if status == "FAIL":
            raise PruneAuditFailure(self._detail())
        if status == "SKIP":
            # reported at the results file (as a skip marker is), not at this line of the plugin
            raise pytest.skip.Exception(self.result.message, _use_item_location=True)
        if status == "WARN" or status == "ERROR":  # an ERROR reaches here only under fail_on_error: false
            import warnings

            warnings.warn_explicit(PruneAuditWarning(self._detail()), PruneAuditWarning, str(self.path), 0)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, PruneAuditFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.parent.name}::{self.name}"


@pytest.fixture(scope="session")
def prune_audit_results(request: pytest.FixtureRequest) -> PruneAuditResults:
    """The ``--prune-audit`` results and their verdict; a test using it without the option errors."""
    state = request.config.stash.get(_STATE, None)
    if state is None:
        pytest.fail("the prune_audit_results fixture needs --prune-audit RESULTS.json", pytrace=False)
    return state
