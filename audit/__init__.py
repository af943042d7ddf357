"""prune-audit: fairness and robustness audits of pruned transformer models.

The public API is torch-free to import; heavy modules load when a run starts::

    from audit import load_config, plan, load_policy, evaluate_policy, load_results

    cfg = load_config("audit.yaml")
    for point in plan(cfg):
        print(point.id)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AuditConfig",
    "ExitCode",
    "Policy",
    "RunResult",
    "SweepPoint",
    "__version__",
    "evaluate_policy",
    "load_config",
    "load_policy",
    "load_results",
    "plan",
    "run_audit",
]

_LAZY = {
    "AuditConfig": "audit.config",
    "load_config": "audit.config",
    "ExitCode": "audit.errors",
    "Policy": "audit.policy",
    "load_policy": "audit.policy",
    "evaluate_policy": "audit.policy",
    "RunResult": "audit.results",
    "load_results": "audit.results",
    "SweepPoint": "audit.plan",
    "plan": "audit.plan",
    "run_audit": "audit.runner",
}

if TYPE_CHECKING:  # pragma: no cover
    from audit.config import AuditConfig, load_config
    from audit.errors import ExitCode
    from audit.plan import SweepPoint, plan
    from audit.policy import Policy, evaluate_policy, load_policy
    from audit.results import RunResult, load_results
    from audit.runner import run_audit


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'audit' has no attribute {name!r}")
