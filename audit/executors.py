"""Where sweep points run: in process (default) or as Ray tasks.

Both executors run the dense baseline first (every variant's paired statistics need its
artifacts), then the variants, and both put every finished unit of work into the same
:class:`~audit.store.ResultStore` as it finishes, so that ``--resume`` works whichever
ran the interrupted sweep.

* :class:`LocalExecutor` streams the points one at a time in this process: never more
  than the dense model and one variant are alive.
* :class:`RayExecutor` (``pip install 'prune-audit[ray]'``, ``executor: {kind: ray}``)
  makes each point a Ray task. ``executor.address`` or ``RAY_ADDRESS`` names an existing
  cluster; otherwise a local Ray instance is started. Each worker prepares the run once
  (model, data, suites) and keeps it for the points it is given; results and store
  entries come back to the driver, which writes them, so workers need no shared disk
  (except for ``deploy.save_variants``: each worker saves the variants it deployed).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.errors import UsageError

if TYPE_CHECKING:
    from audit.config import AuditConfig
    from audit.plan import SweepPoint
    from audit.run.point import PointOutcome
    from audit.run.session import Session
    from audit.store import ResultStore

log = logging.getLogger(__name__)


def get_executor(config: AuditConfig) -> LocalExecutor | RayExecutor:
    """The executor the config asks for."""
    if config.executor.kind == "ray":
        return RayExecutor(config)
    return LocalExecutor()


def _lookup(store: ResultStore | None, resume: bool) -> Any:
    return store.get if (store is not None and resume) else None


def _saver(store: ResultStore | None) -> Any:
    if store is None:
        return None

    def save(key: Any, payload: dict[str, Any], arrays: dict[str, Any]) -> None:
        store.put(key, payload, arrays)

    return save


class LocalExecutor:
    """In-process, one point at a time."""

    name = "local"

    def run(self, session: Session, *, store: ResultStore | None, resume: bool, progress: Any) -> list[PointOutcome]:
        from audit.run.point import point_summary, run_point

        points = session.points
        outcomes: list[PointOutcome] = []
        baseline: dict[str, dict[str, Any]] | None = None
        with progress.stage("sweep", len(points), warmup=1) as stage:  # the dense point: not in the ETA
            for i, point in enumerate(points, start=1):
                label = f"[{i}/{len(points)}] {point.id}"
                out = run_point(
                    session, point, baseline, lookup=_lookup(store, resume), save=_saver(store), label=label
                )
                out.entries.clear()  # already in the store; keep memory bounded
                if point.is_baseline:
                    baseline = session.baseline_artifacts = out.artifacts
                    out.artifacts = {}
                outcomes.append(out)
                summary = point_summary(out.result)
                reused = f", {out.reused} unit(s) reused" if out.reused else ""
                log.info("%s: %s (%.1fs%s)", label, summary, out.result.wall_time_s, reused)
                stage.advance(f"{point.id}: {summary}")
        return outcomes


# -- Ray ---------------------------------------------------------------------------------------

_WORKER_SESSIONS: dict[str, Any] = {}
"""Per worker process: prepared sessions by config fingerprint (a worker reuses its session)."""


def _worker_session(config: AuditConfig, points: list[SweepPoint], threads: int) -> Session:
    from audit.fingerprint import canonical_json, sha256_text
    from audit.run.session import preflight, prepare

    key = sha256_text(canonical_json(config.model_dump(mode="json")))
    if key not in _WORKER_SESSIONS:
        import torch

        torch.set_num_threads(threads)
        _WORKER_SESSIONS.clear()  # one run at a time per worker: bounded memory
        session = prepare(config, preflighted=preflight(config, points=points))  # the driver's plan
        # the driver writes the store and the reports; a worker writes only the deployed variants
        # it made (deploy.save_variants), which on a multi-node cluster needs a shared output_dir
        _WORKER_SESSIONS[key] = session
    return _WORKER_SESSIONS[key]


def _ray_point(
    config: AuditConfig,
    points: list[SweepPoint],
    index: int,
    baseline: dict[str, dict[str, Any]] | None,
    stored: dict[str, Any],
    threads: int,
) -> PointOutcome:
    """Body of one Ray task: run sweep point ``index`` of the driver's plan (reusing the units in ``stored``)."""
    from audit.run.point import run_point

    session = _worker_session(config, points, threads)
    point = session.points[index]

    def lookup(key: Any) -> Any:
        return stored.get(key.digest())

    return run_point(session, point, baseline, lookup=lookup, label=f"[ray] {point.id}")


def worker_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a Ray worker gets: this checkout first on ``PYTHONPATH``, and every
    variable of :data:`audit.cache.RUN_ENV_VARS` that is set here (caches, NLTK data, kernel, compiler, offline).
    """
    from audit.cache import run_environment

    env = dict(os.environ) if environ is None else environ
    root = str(Path(__file__).resolve().parent.parent)
    out = {"PYTHONPATH": os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)}
    out.update(run_environment(env))
    return out


def _get(ray: Any, ref: Any) -> Any:
    """``ray.get`` that re-raises a task's own exception (a UsageError stays exit code 4)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        raise exc.as_instanceof_cause() from None


class RayExecutor:
    """Each sweep point a Ray task; results and store entries gathered by the driver."""

    name = "ray"

    def __init__(self, config: AuditConfig) -> None:
        self.config = config

    def _init(self) -> Any:
        try:
            import ray
        except ImportError:
            raise UsageError(
                "executor.kind is 'ray' but Ray is not installed",
                hint="pip install 'prune-audit[ray]' (with the project's constraints), or set executor: {kind: local}",
            ) from None
        address = self.config.executor.address or os.environ.get("RAY_ADDRESS")
        if ray.is_initialized():
            return ray
        kwargs: dict[str, Any] = {
            "runtime_env": {"env_vars": worker_env()},
            "include_dashboard": False,
            "log_to_driver": True,
            "logging_level": logging.WARNING,
        }
        if address:
            log.info("connecting to the Ray cluster at %s", address)
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=self.config.executor.num_cpus or os.cpu_count(), **kwargs)
        self._started = True
        from audit import interrupt

        if interrupt.installed():  # ray.init replaced the SIGTERM handler with one that exits with code 15
            interrupt.install()
        return ray

    def run(self, session: Session, *, store: ResultStore | None, resume: bool, progress: Any) -> list[PointOutcome]:
        from audit.run.point import point_summary

        ray = self._init()
        try:
            return self._run(ray, session, store=store, resume=resume, progress=progress, summary=point_summary)
        finally:
            if getattr(self, "_started", False):
                ray.shutdown()

    def _run(
        self, ray: Any, session: Session, *, store: ResultStore | None, resume: bool, progress: Any, summary: Any
    ) -> list[PointOutcome]:
        cfg = self.config.executor
        threads = max(1, int(cfg.num_cpus_per_task))
        task = ray.remote(num_cpus=cfg.num_cpus_per_task, max_retries=0)(_ray_point)
        config_ref = ray.put(session.config)
        points_ref = ray.put(session.points)  # the plan, computed once by the driver

        def stored_for(point: Any) -> dict[str, Any]:
            if store is None or not resume:
                return {}
            keys = [session.keys.point(point)] + [session.keys.suite(point, s.name) for s in session.suites]
            out = {}
            for k in keys:
                got = store.get(k)
                if got is not None:
                    out[k.digest()] = got
            return out

        def gathered(out: PointOutcome) -> PointOutcome:
            if store is not None:
                for key, payload, arrays in out.entries:
                    store.put(key, payload, arrays)
            out.entries = []
            return out

        points = session.points
        outcomes = []
        with progress.stage("sweep", len(points), warmup=1) as stage:  # the dense point: not in the ETA
            dense = gathered(_get(ray, task.remote(config_ref, points_ref, 0, None, stored_for(points[0]), threads)))
            baseline_ref = ray.put(dense.artifacts)
            session.baseline_artifacts = dense.artifacts
            dense.artifacts = {}
            outcomes.append(dense)
            stage.advance(f"{points[0].id}: {summary(dense.result)}")
            pending = {
                task.remote(config_ref, points_ref, i, baseline_ref, stored_for(p), threads): p
                for i, p in enumerate(points)
                if i
            }
            try:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    point = pending.pop(done[0])
                    out = gathered(_get(ray, done[0]))
                    outcomes.append(out)
                    log.info("[ray] %s: %s (%.1fs)", point.id, summary(out.result), out.result.wall_time_s)
                    stage.advance(f"{point.id}: {summary(out.result)}")
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep what finished, stop the rest
                self._stop(ray, pending, gathered)
                raise
        return outcomes

    @staticmethod
    def _stop(ray: Any, pending: dict[Any, Any], gathered: Any) -> None:
        """Store the points that finished but were not gathered yet, and cancel the others."""
        if not pending:
            return
        ready, running = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        for ref in ready:
            try:
                gathered(_get(ray, ref))
            except Exception as exc:  # noqa: BLE001 - a failed point has nothing to keep
                log.debug("not keeping %s: %s", pending[ref].id, exc)
        for ref in running:
            ray.cancel(ref, force=True)
        log.info("interrupted: kept %d finished point(s), cancelled %d", len(ready), len(running))
