"""One run's session: the torch-free pre-flight, then everything prepared once and shared by its points.

:func:`preflight` checks everything the config names (policy, model directory, data files,
layer overrides, every sweep point's params) before any import of torch and computes the
sweep plan, once; :func:`prepare` loads the model, data, pruners, calibration and suites
into a :class:`Session`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit import provenance
from audit.config import AuditConfig
from audit.data import EvalSet, read_split
from audit.datafiles import check_data_paths
from audit.env import configure_offline
from audit.errors import UsageError
from audit.model_io import check_gguf_file, check_model_dir, model_location
from audit.plan import SweepPoint, plan
from audit.policy import Policy, load_policy
from audit.registry import PRUNERS, SUITES
from audit.runpaths import RunPaths
from audit.store import StoreKeys

STORE_DIR = ".prune-audit-store"
"""The result store's folder inside the output directory."""


@dataclass(frozen=True)
class Preflight:
    """What the torch-free pre-flight found: the loaded policy and the sweep plan (computed once per run)."""

    policy: Policy | None
    policy_label: str | None
    points: list[SweepPoint]
    paths: RunPaths
    """The run's paths, resolved once when the config was loaded."""


def preflight(config: AuditConfig, *, points: list[SweepPoint] | None = None) -> Preflight:
    """Torch-free checks of everything named in the config; returns the loaded policy and the plan.

    ``points``: the plan, when it was already computed (a Ray worker gets the driver's).
    """
    from audit.pruning.specs import validate_point_params

    paths = config.paths
    policy = label = None
    if paths.policy is not None:
        from audit.policy_metrics import check_rule_metrics

        policy, label = load_policy(paths.policy, paths.base_dir)
        # a typo'd metric, or a bound against an extra metric's direction: before any work
        extra = _extra_catalog(config)
        check_rule_metrics(policy, paths.policy, base_dir=paths.base_dir, catalog=extra)
        if extra:
            from audit.policy import check_against_catalog
            from audit.policy_metrics import locate_rule

            check_against_catalog(
                policy,
                extra,
                where=label,
                source="the config's extra_metrics",
                locate=lambda i: locate_rule(paths.policy, paths.base_dir, i),
            )
    check_attribution_rules(config, policy)
    check_allocation(config, policy)
    kind = config.model.declared_kind
    if config.model.gguf_file is not None:
        check_gguf_file(config.model, model_location(config))
    elif paths.model_dir is not None:
        check_model_dir(config.model, paths.model_dir)
        kind = _dir_kind(config, paths.model_dir)
    check_suite_kinds(config, kind)
    check_label_column(config, kind)
    check_data_paths(config.data, paths.data_files)
    from audit.pruning.base import check_overrides

    check_overrides(config.sweep.layers)
    points = plan(config) if points is None else points
    for point in points[1:]:
        validate_point_params(point)
    return Preflight(policy=policy, policy_label=label, points=points, paths=paths)


def check_allocation(config: AuditConfig, policy: Policy | None) -> None:
    """``sweep.allocate``: its policy loads and names at least one suite of the run (torch-free)."""
    alloc = config.sweep.allocate
    if alloc is None:
        return
    from audit.allocation import policy_names_suite

    if alloc.policy is not None:
        from audit.policy_metrics import check_rule_metrics

        policy, _ = load_policy(alloc.policy, config.paths.base_dir)
        check_rule_metrics(policy, alloc.policy, base_dir=config.paths.base_dir)
    assert policy is not None  # the config refuses an allocation without any policy
    if not any(policy_names_suite(policy, s.name) for s in config.suites):
        raise UsageError(
            f"sweep.allocate judges policy {policy.name!r}, whose rules name no suite of this run "
            f"({', '.join(s.name for s in config.suites)})",
            where="sweep.allocate.policy",
            hint="run the suites the policy's rules are about, or allocate under another policy",
        )


def check_attribution_rules(config: AuditConfig, policy: Policy | None) -> None:
    """``attribution.rules``, when a list, names rules of the run's policy."""
    att = config.attribution
    if not att.enabled or att.rules == "all":
        return
    if policy is None:
        raise UsageError(
            "attribution.rules names policy rules, but the run has no policy",
            where="attribution.rules",
            hint="set a policy, or write `rules: all`",
        )
    known = [r.id for r in policy.rules]
    unknown = [r for r in att.rules if r not in known]
    if unknown:
        raise UsageError(
            f"attribution.rules names {', '.join(repr(r) for r in unknown)}, not a rule of policy {policy.name!r}",
            where="attribution.rules",
            hint=f"its rules: {', '.join(known) or '(none)'}",
        )


def _extra_catalog(config: AuditConfig) -> dict[str, Any]:
    if not any(s.extra_metrics for s in config.suites):
        return {}
    from audit.extra_metrics import extra_catalog

    return extra_catalog(config)


def _dir_kind(config: AuditConfig, model_dir: Path) -> str | None:
    """The model kind of a local checkpoint, read torch-free from its config.json (None: not decidable here).

    A checkpoint no adapter serves is reported when it is loaded, with the loader's reason.
    """
    from audit.model_io import model_kind
    from audit.models import adapter_spec_for, read_dir_config

    hf = read_dir_config(model_dir)
    if not hf:
        return None
    try:
        return adapter_spec_for(hf, kind=model_kind(config.model)).kind
    except UsageError:
        return None


def check_suite_kinds(config: AuditConfig, kind: str | None) -> None:
    """Every configured suite must measure models of ``kind`` (its spec's ``model_kinds``).

    A suite that measures classifiers measures a causal LM only as a zero-shot classifier
    (its class logits are the choices' log-likelihoods): for a causal LM it needs
    ``model.zero_shot``, and ``model.zero_shot`` is refused for a classifier.
    """
    if kind is None:
        return
    zero_shot = config.model.zero_shot
    if kind == "classifier" and zero_shot is not None:
        raise UsageError(
            "model.zero_shot is for a causal LM, but the audited model is a classifier (it has its own classes)",
            where="model.zero_shot",
            hint="remove model.zero_shot",
        )
    for i, s in enumerate(config.suites):
        spec = SUITES.get(s.name)
        if kind not in spec.model_kinds:
            raise UsageError(
                f"suite {s.name!r} measures {', '.join(spec.model_kinds)} models; the audited model is a {kind}",
                where=f"suites[{i}]",
                hint=f"remove it from suites, or use suites for {kind} models",
            )
        if kind == "causal-lm" and "classifier" in spec.model_kinds and zero_shot is None:
            raise UsageError(
                f"suite {s.name!r} measures a causal LM as a zero-shot classifier, and model.zero_shot is not set",
                where="model.zero_shot",
                hint=f"set model.zero_shot (a prompt template with {{text}} and one choice per class), or remove "
                f"{s.name} from suites",
            )


def check_label_column(config: AuditConfig, kind: str | None) -> None:
    """A classifier needs ``data.columns.label``; only a causal LM runs without labels."""
    if kind == "classifier" and config.data.columns.label is None:
        raise UsageError(
            "data.columns.label is null, but the audited model is a classifier and needs gold labels",
            where="data.columns.label",
            hint="name the label column (only a causal LM runs without one)",
        )


def _calibration(
    config: AuditConfig, paths: RunPaths, predictor: Any, id2label: dict[int, str], *, need_label: bool = True
) -> Any:
    """A :class:`~audit.pruning.calibration.CalibrationSampler` over the configured split (or None).

    The split is loaded here, before any pruning, so that a bad split fails early;
    each sweep seed gets its own sample (see :mod:`audit.pruning.calibration`).
    """
    from audit.pruning.calibration import CalibrationSampler

    calib_cfg = config.sweep.calibration
    split = calib_cfg.split or config.data.splits.calibration
    if split is None:
        return None
    es = read_split(
        config.data, paths.data_files, split, id2label, seed=config.seed, offline=config.offline, need_label=need_label
    )
    return CalibrationSampler(
        es, predictor, n=calib_cfg.n, seed=calib_cfg.seed, dataset=config.data.name or split, split=split
    )


@dataclass
class Session:
    """Everything prepared once per run and shared by its sweep points."""

    config: AuditConfig
    policy: Policy | None
    policy_label: str | None
    loaded: Any
    eval_set: EvalSet
    predictor: Any
    dense: Any
    points: list[SweepPoint]
    pruners: dict[str, Any]
    calibration: Any
    suites: list[Any]
    base_ctx: Any
    deploy_ctx: Any
    keys: StoreKeys
    paths: RunPaths
    started_at: str = ""
    write: bool = True
    """Whether outputs (saved variants, reports) are written."""
    extra_metrics: dict[str, list[Any]] = field(default_factory=dict)
    """Suite name -> its loaded extra metric modules (:class:`audit.extra_metrics.LoadedMetric`)."""
    adapter: Any = None
    baseline_artifacts: dict[str, Any] = field(default_factory=dict)
    """Suite name -> the dense model's artifacts, once the executor ran the baseline."""
    variant_artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Variant id -> suite name -> its artifacts, for suites that keep them (:attr:`Suite.keeps_variant_artifacts`)."""
    allocation: Any = None
    """The :class:`~audit.results.AllocationRecord` of ``sweep.allocate``, once its search ran."""
    ready: bool = False
    """Whether :meth:`setup` ran (suites set up, points validated, deploy context made)."""

    def setup(self) -> None:
        """The work only a run that computes something needs, done once, before any unit is computed:
        each suite's setup (its datasets, corruptions, counterfactuals), every point checked against
        the dense model, and the deploy context. A run whose every unit is in the store skips it.
        """
        if self.ready:
            return
        for suite in self.suites:
            suite.setup(self.base_ctx)
        for point in self.points[1:]:  # every point is checked before any work starts
            self.pruners[point.label].validate(self.dense, self.prune_ctx(point))
        if len(self.points) > 1:
            self.deploy_ctx = _deploy_context(self.config, self.eval_set, self.predictor, self.dense, self.adapter)
        self.ready = True

    def unit_keys(self) -> list[Any]:
        """The store keys of every unit of this run: each variant's pruning and deployment, each suite on each point."""
        out = []
        for point in self.points:
            if not point.is_baseline:
                out.append(self.keys.point(point))
            out.extend(self.keys.suite(point, s.name) for s in self.suites)
        return out

    def prune_ctx(self, point: SweepPoint) -> Any:
        from audit.config import LayerSelection
        from audit.pruning.base import PruneContext

        needs = self.calibration is not None and not point.is_baseline and self.pruners[point.label].needs_calibration
        return PruneContext(
            sparsity=point.sparsity,
            seed=point.seed,
            layers=LayerSelection.model_validate(point.layers),
            calibration=self.calibration(point.seed) if needs else None,
        )


def prepare(config: AuditConfig, *, preflighted: Preflight | None = None, setup: bool = True) -> Session:
    """Load the model, data, pruners, calibration and suites; validate every point before any work.

    ``setup=False`` leaves :meth:`Session.setup` (suite setup, point validation, deploy context)
    to the caller: a resumed run calls it only when some unit is not in the store.
    """
    started_at = provenance.now_iso()
    pre = preflighted if preflighted is not None else preflight(config)
    configure_offline(config.offline)
    extra_metrics = {}
    if any(s.extra_metrics for s in config.suites):  # a module that fails to import: exit 4 before the model loads
        from audit.extra_metrics import load_extra_metrics

        extra_metrics = load_extra_metrics(config)

    import torch

    from audit.model_io import load_checkpoint
    from audit.suite import SuiteContext

    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % (2**32))

    paths = pre.paths
    loaded = load_checkpoint(config.model, model_location(config), offline=config.offline)
    from audit.models import adapter_of

    adapter = loaded.adapter or adapter_of(loaded.model)
    check_suite_kinds(config, adapter.kind)
    check_label_column(config, adapter.kind)
    # a causal LM has no classes and no labels (its eval texts are its probe and calibration texts),
    # unless it is scored as a zero-shot classifier: its classes are then the choices
    calibration_label = adapter.kind != "causal-lm"
    need_label = calibration_label or config.model.zero_shot is not None
    id2label = adapter.id2label(loaded, config.model) if need_label else {}
    eval_set = read_split(
        config.data,
        paths.data_files,
        config.data.splits.eval,
        id2label,
        seed=config.seed,
        offline=config.offline,
        need_label=need_label,
    )
    device = config.runtime.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    zero_shot = {"zero_shot": config.model.zero_shot} if config.model.zero_shot is not None else {}
    predictor = adapter.predictor(
        loaded.tokenizer,
        max_length=config.model.max_length,
        batch_size=config.runtime.batch_size,
        device=device,
        **zero_shot,
    )
    data_identity = adapter.data_identity(eval_set, predictor)
    dense = loaded.model.to(device)
    points = pre.points

    pruners = {}
    for point in points[1:]:
        if point.label not in pruners:
            spec = PRUNERS.get(point.method)
            cls = spec.load()
            pruners[point.label] = cls(spec, spec.params.model_validate(point.params))
    needs_calibration = any(p.needs_calibration for p in pruners.values())
    calibration = (
        _calibration(config, paths, predictor, id2label if calibration_label else {}, need_label=calibration_label)
        if needs_calibration
        else None
    )

    base_ctx = SuiteContext(
        config=config,
        eval_set=eval_set,
        predictor=predictor,
        id2label=id2label,
        seed=config.seed,
        n_boot=config.runtime.n_boot,
        ci_level=config.runtime.ci_level,
    )
    suites = []
    for s in config.suites:
        spec = SUITES.get(s.name)
        suites.append(spec.load()(spec, spec.params.model_validate(s.params)))

    session = Session(
        config=config,
        policy=pre.policy,
        policy_label=pre.policy_label,
        loaded=loaded,
        eval_set=eval_set,
        predictor=predictor,
        dense=dense,
        points=points,
        pruners=pruners,
        calibration=calibration,
        suites=suites,
        base_ctx=base_ctx,
        deploy_ctx=None,
        keys=StoreKeys.create(config, paths, loaded.identity.fingerprint, data_identity),
        paths=paths,
        started_at=started_at,
        extra_metrics=extra_metrics,
        adapter=adapter,
    )
    if setup:
        session.setup()
    return session


def _deploy_context(config: AuditConfig, eval_set: EvalSet, predictor: Any, dense: Any, adapter: Any) -> Any:
    """Probe batch, converter and speed settings shared by every variant (None if disabled).

    The probe inputs, the outputs compared on them and the speed inputs are the model adapter's.
    """
    dc = config.deploy
    if not dc.enabled:
        return None
    from audit.deploy.pipeline import DeployContext

    batches = adapter.probe_batches(eval_set, predictor, dc.probe_size)
    prompts: list[str] = []
    if adapter.kind == "causal-lm" and eval_set is not None:  # equivalence on greedy continuations too
        from audit.deploy.lm import prompts_of

        prompts = prompts_of(eval_set.texts)
    return DeployContext.create(
        dc,
        batches,
        dense,
        threads=config.runtime.threads,
        adapter=adapter,
        tokenizer=getattr(predictor, "tokenizer", None),
        prompts=prompts,
    )


def check_output_dir(out: Path) -> None:
    """The output directory must be a directory, or creatable as one: nothing on its path is a file."""
    p = out
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        what = "is" if p == out else f"would be inside {p}, which is"
        raise UsageError(
            f"output_dir {what} a file, not a directory",
            where=str(out),
            hint="set output_dir (or --output-dir) to a directory",
        )
