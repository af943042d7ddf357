"""The audit pipeline: plan → prune → deploy → suites → results → verdict → reports.

Bad input is found before any output is written: the policy, model, data, suites'
own datasets and every sweep point are validated first. Outputs are written
atomically at the end.

:func:`run_audit` drives the parts in :mod:`audit.run`: the session and its pre-flight
(:mod:`audit.run.session`), one sweep point (:mod:`audit.run.point`, run by an
:mod:`executor <audit.executors>`), and the finishing (:mod:`audit.run.finish`). Their
public names are importable from here too.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from audit.config import AuditConfig
from audit.run.finish import RunOutcome, finish, write_reports
from audit.run.point import Lookup, PointOutcome, point_summary, run_point
from audit.run.session import STORE_DIR, Preflight, Session, check_output_dir, preflight, prepare
from audit.store import StoreKeys

__all__ = [
    "STORE_DIR",
    "Lookup",
    "PointOutcome",
    "Preflight",
    "RunOutcome",
    "Session",
    "StoreKeys",
    "check_output_dir",
    "finish",
    "point_summary",
    "prepare",
    "preflight",
    "run_audit",
    "run_point",
    "write_reports",
]

log = logging.getLogger(__name__)


def run_audit(
    config: AuditConfig,
    *,
    command: str | None = None,
    write: bool = True,
    formats: list[str] | None = None,
    paths: dict[str, Path] | None = None,
    resume: bool = False,
    progress: Any = None,
    require_stored: bool = False,
) -> RunOutcome:
    """Run the whole audit described by ``config``.

    Finished units of work go to a content-addressed store under the output directory as
    they finish; with ``resume`` the run reuses every unit whose inputs are unchanged. With
    ``require_stored`` (``prune-audit attribute``) every unit must already be in the store: the
    run is only re-finished (judged, attributed, reported), and a missing unit is a
    :class:`UsageError` before any work.
    """
    from audit.executors import get_executor
    from audit.progress import Progress
    from audit.store import ResultStore

    t_run = time.perf_counter()
    preflighted = preflight(config)
    out_dir = preflighted.paths.output_dir
    if write:  # unsafe output paths fail before any work (torch-free)
        from audit.paths import safe_join
        from reports.writer import report_targets

        check_output_dir(out_dir)
        report_targets(out_dir, formats or config.report.formats, paths)
        safe_join(out_dir, STORE_DIR)
        if config.deploy.save_variants:
            for p in preflighted.points[1:]:
                safe_join(out_dir, "variants", p.id)
    progress = progress if progress is not None else Progress()
    session = prepare(config, preflighted=preflighted, setup=False)
    session.write = write
    store = ResultStore(out_dir / STORE_DIR) if write else None
    reading = store is not None and resume
    if config.sweep.allocate is not None:  # the chosen allocation becomes one more point, audited like any
        from audit.allocation import run_allocation

        run_allocation(session, store=store, resume=reading, require_stored=require_stored)
    keys = session.unit_keys()
    stored = sum(store.has(k) for k in keys) if reading else 0
    if require_stored and stored < len(keys):
        from audit.errors import UsageError

        raise UsageError(
            f"no finished run of this config in {out_dir}: {stored} of its {len(keys)} units of work are in the "
            "store (the config, model, data or code differ from the finished run's, or it never finished)",
            where=str(out_dir / STORE_DIR),
            hint="run `prune-audit run` with this config (add --resume to finish an interrupted run) first",
        )
    if reading:
        log.info(
            "resuming: %d finished unit(s) in %s (%d of this run's %d)", store.entries(), store.root, stored, len(keys)
        )
    if stored < len(keys):  # something is computed: set up before any work (bad suite data fails here)
        session.setup()
    executor = get_executor(config)
    outcomes = executor.run(session, store=store, resume=resume, progress=progress)
    outcome = finish(session, outcomes, command=command, write=write, formats=formats, paths=paths)
    outcome.units_total = len(keys)
    outcome.units_reused = sum(o.reused for o in outcomes)
    log.info(
        "audit finished in %.1fs (store: %d of %d units reused, %d computed)",
        time.perf_counter() - t_run,
        outcome.units_reused,
        outcome.units_total,
        outcome.units_total - outcome.units_reused,
    )
    return outcome
