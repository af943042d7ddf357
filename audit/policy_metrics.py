"""Pre-flight check of a policy's metric patterns: a rule must be able to match *some* metric.

A rule whose ``metric`` glob matches no metric that any installed suite or stage
(:func:`audit.registry.measured`) declares, nor any metric in the results' own catalog, can never judge
anything: it is a typo (``nosuch/*/thing``, ``performance/*/acuracy``), and it is a
config error found before any work, naming the rule and its ``file:line``. A rule for an
installed suite that is not part of the run is fine here (it is SKIPped by the verdict).

Torch-free, like :mod:`audit.policy`.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping
from pathlib import Path

from audit.errors import ConfigError
from audit.policy import Policy, Rule, resolve_policy_path
from audit.results import MetricInfo
from audit.yamlio import load_yaml


def installed_metrics() -> set[tuple[str, str]]:
    """(suite or stage, metric name) of every metric the installed suites and stages declare."""
    from audit.registry import measured

    return {(s.name, m.name) for s in measured() for m in s.metrics}


def rule_matches(rule: Rule, metrics: Iterable[tuple[str, str]]) -> bool:
    """Whether the rule's ``suite/dataset/metric`` glob can match one of ``metrics`` (any dataset)."""
    suite_pat, _, rest = rule.metric.partition("/")
    name_pat = rest.rsplit("/", 1)[-1]
    if any(fnmatch.fnmatchcase(s, suite_pat) and fnmatch.fnmatchcase(n, name_pat) for s, n in metrics):
        return True
    # a stage's names may follow the run's config (deploy.speed_batch_size: speedup_b8): known for any value
    from audit.registry import measured

    return any(fnmatch.fnmatchcase(s.name, suite_pat) and s.find_metric(name_pat) is not None for s in measured())


def check_rule_metrics(
    policy: Policy,
    source: str | None = None,
    *,
    base_dir: str | None = None,
    catalog: Mapping[str, MetricInfo] | None = None,
) -> None:
    """Raise :class:`ConfigError` for the first rule whose metric glob matches no known metric.

    Known metrics: :func:`installed_metrics`, plus ``catalog`` (a results file's own metric
    catalog, when re-gating saved results). ``source`` is the policy's name or path as given to
    :func:`audit.policy.load_policy` (used to point at the rule's line).
    """
    known = installed_metrics()
    if catalog:
        known |= {(info.suite, info.name) for info in catalog.values()}
    for i, rule in enumerate(policy.rules):
        if rule_matches(rule, known):
            continue
        file, line, column = locate_rule(source, base_dir, i)
        choices = sorted({f"{s}/*/{n}" for s, n in known})
        close = difflib.get_close_matches(rule.metric, choices, n=1, cutoff=0.6)
        suites = sorted({s for s, _ in known})
        raise ConfigError(
            f"rule {rule.id!r}: metric {rule.metric!r} matches no metric that any installed suite or stage produces",
            file=file or policy.name,
            line=line,
            column=column,
            hint=f"did you mean {close[0]!r}?"
            if close
            else f"suites: {', '.join(suites)}; `prune-audit ls metrics` lists every metric",
        )


def locate_rule(source: str | None, base_dir: str | None, index: int) -> tuple[str | None, int | None, int | None]:
    """(file, line, column) of ``rules[index].metric`` in the policy file ``source`` names."""
    if source is None:
        return None, None, None
    try:
        path = resolve_policy_path(source, base_dir)
        doc = load_yaml(path, what="policy")
    except (ConfigError, OSError):
        return source, None, None
    line, column = doc.locate(["rules", index, "metric"])
    return str(Path(path)), line, column
