"""``AuditConfig``: what to audit and how, loaded from YAML and validated by pydantic.

Example (``prune-audit schema`` prints the full JSON Schema)::

    model:
      path: ./my-finetuned-bert          # local Hugging Face checkpoint directory
    data:
      files: {train: data/train.csv, test: data/test.csv}
      columns: {text: sentence, label: label, groups: [gender, dialect]}
      splits: {eval: test, calibration: train}
    sweep:
      methods: [magnitude]
      sparsities: [0.3, 0.5, 0.7]
      seeds: [0]
    suites: {performance: {}}
    policy: default
    output_dir: audit-out

Relative paths are resolved against the directory of the config file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from audit.deploy.formats import DEFAULT_FORMATS, DENSE, FORMATS, is_known
from audit.errors import ConfigError
from audit.registry import PRUNERS, SUITES, PluginParams
from audit.runpaths import RunPaths
from audit.yamlio import YamlDocument, load_yaml, parse_yaml, validation_to_config_error

DATA_FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "txt")


def _err(kind: str, message: str, hint: str | None = None) -> PydanticCustomError:
    ctx: dict[str, Any] = {"hint": hint} if hint else {}
    return PydanticCustomError(kind, message, ctx)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelConfig(StrictModel):
    """Which classifier to audit: a local checkpoint directory, or a hub id when online."""

    path: str | None = Field(None, description="Local Hugging Face checkpoint directory.")
    hub_id: str | None = Field(None, description="Hub repository id; needs `offline: false` and network access.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Allow custom modelling code shipped with the checkpoint.")
    allow_pickle: bool = Field(False, description="Allow pickle (.bin) weights; only safetensors are loaded otherwise.")
    max_length: int = Field(128, ge=8, le=8192, description="Tokenizer truncation length.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.path is None) == (self.hub_id is None):
            raise _err(
                "model_source",
                "set exactly one of model.path (local directory) or model.hub_id",
                "use `path:` for a local checkpoint",
            )
        return self


class HubDataset(StrictModel):
    """A dataset on the Hugging Face hub (only used when online)."""

    name: str
    subset: str | None = None
    revision: str | None = None


class ColumnMap(StrictModel):
    """Which dataset columns hold the text, the label and the sensitive groups."""

    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    groups: list[str] = Field(default_factory=list, description="Sensitive-feature columns.")
    id: str | None = Field(None, description="Optional stable example id column.")


class SplitMap(StrictModel):
    """Which split is evaluated and which feeds calibration-based pruning."""

    eval: str = "test"
    calibration: str | None = "train"


def _label_map_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).lower() if isinstance(k, bool) else str(k): v for k, v in value.items()}
    return value


class TableSource(StrictModel):
    """Settings shared by every dataset reference: format and column layout."""

    format: Literal["csv", "tsv", "json", "jsonl", "parquet"] | None = Field(
        None, description="File format; inferred from the extension when omitted."
    )
    column_names: list[str] | None = Field(
        None, description="For files without a header row: the names of their columns."
    )
    quoting: Literal["csv", "none"] = Field(
        "csv",
        description='csv/tsv quoting. csv (default, as a CSV reader reads them): a field may be enclosed in " '
        '(and then hold tabs, commas and newlines), with "" for a quote inside it. none: quote characters are '
        "ordinary text (a warning counts fields that look quoted).",
    )
    columns: ColumnMap = Field(default_factory=ColumnMap)
    label_map: dict[str, int] | None = Field(
        None, description="Raw label value -> class index, when labels are not the model's."
    )

    @field_validator("label_map", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        return _label_map_keys(value)


class DatasetRef(TableSource):
    """One extra evaluation set (used by suites): a local file or a hub split.

    ```yaml
    - name: yelp
      path: ../shared/data/yelp.csv
      columns: {text: text, label: label}
    ```
    """

    name: str = Field(description="Short id used in metric ids, e.g. `yelp`.", pattern=r"^[A-Za-z0-9_.\-]+$")
    path: str | None = None
    hub: HubDataset | None = None
    split: str = "test"
    max_examples: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> DatasetRef:
        if (self.path is None) == (self.hub is None):
            raise _err("data_source", f"dataset {self.name!r}: set exactly one of path or hub")
        return self


class DataConfig(TableSource):
    """The in-distribution dataset: local files per split, or a hub dataset."""

    files: dict[str, str] | None = Field(None, description="split name -> local file (csv, tsv, json/jsonl, parquet).")
    hub: HubDataset | None = None
    splits: SplitMap = Field(default_factory=SplitMap)
    max_eval_examples: int | None = Field(None, ge=1)
    name: str | None = Field(
        None,
        description="Short id of the dataset (default: the eval split name).",
        pattern=r"^[A-Za-z0-9_.\-]+$",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.files is None) == (self.hub is None):
            raise _err("data_source", "set exactly one of data.files or data.hub")
        if self.files is not None:
            if not self.files:
                raise _err("data_files", "data.files is empty; map split names to files")
            if self.splits.eval not in self.files:
                raise _err(
                    "data_split",
                    f"data.splits.eval is {self.splits.eval!r} but data.files has {sorted(self.files)}",
                    "name a split that is listed under data.files",
                )
            if (
                self.splits.calibration is not None
                and self.splits.calibration not in self.files
                and "calibration" not in self.splits.model_fields_set
            ):
                # the default ("train") only applies when there is such a split
                object.__setattr__(self, "splits", self.splits.model_copy(update={"calibration": None}))
            if self.splits.calibration is not None and self.splits.calibration not in self.files:
                raise _err(
                    "data_split",
                    f"data.splits.calibration is {self.splits.calibration!r} but data.files has {sorted(self.files)}",
                    "set splits.calibration to a listed split, or to null",
                )
        return self


class MethodConfig(StrictModel):
    """One pruning method of the sweep with its params."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        return value

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in PRUNERS:
            raise _err("unknown_method", PRUNERS.unknown_message(name), PRUNERS.suggest(name))
        return name

    @model_validator(mode="after")
    def _params(self) -> MethodConfig:
        spec = PRUNERS.get(self.name)
        try:
            parsed = spec.params.model_validate(self.params)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise _err(
                "method_params",
                f"invalid params for method {self.name!r}: {where}: {first['msg']}",
                f"allowed params: {', '.join(spec.params.model_fields) or '(none)'}",
            ) from None
        object.__setattr__(self, "params", parsed.model_dump(mode="json"))
        return self

    def typed_params(self) -> PluginParams:
        return PRUNERS.get(self.name).params.model_validate(self.params)


class CalibrationConfig(StrictModel):
    """Calibration examples for data-aware pruners (Wanda, SparseGPT, gradient)."""

    split: str | None = Field(None, description="Split to draw from (default: data.splits.calibration).")
    n: int = Field(128, ge=1, le=100_000)
    seed: int = Field(0, ge=0)


class LayerSelection(StrictModel):
    """Which Linear layers are pruned; regexes match module names."""

    include: list[str] | None = Field(
        None,
        description="Regexes; a Linear layer is pruned if its name matches one. Unset: the model adapter's default "
        "(a classifier's: every Linear layer inside the encoder blocks).",
    )
    exclude: list[str] = Field(default_factory=list)
    overrides: dict[str, float] = Field(
        default_factory=dict,
        description="Regex -> sparsity for matching layers (overrides the sweep level).",
    )


class SweepConfig(StrictModel):
    """Methods × sparsities × seeds; the dense model is always the baseline."""

    methods: list[MethodConfig] = Field(default_factory=lambda: [MethodConfig(name="magnitude")])
    sparsities: list[float] = Field(default_factory=lambda: [0.5])
    seeds: list[int] = Field(default_factory=lambda: [0])
    layers: LayerSelection = Field(default_factory=LayerSelection)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)

    @field_validator("sparsities")
    @classmethod
    def _range(cls, values: list[float]) -> list[float]:
        if not values:
            raise _err("sweep_empty", "sweep.sparsities is empty; list at least one level")
        for v in values:
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v < 1.0):
                raise _err(
                    "sparsity_range",
                    f"sparsity must be in [0, 1), found {v!r}",
                    "0.5 means half of the weights are zero",
                )
        if len(set(values)) != len(values):
            raise _err("sparsity_dup", f"sweep.sparsities has duplicates: {values}")
        return values

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, values: list[int]) -> list[int]:
        if not values:
            raise _err("sweep_empty", "sweep.seeds is empty; list at least one seed")
        if any(v < 0 for v in values):
            raise _err("seed_range", f"seeds must be non-negative, found {values}")
        if len(set(values)) != len(values):
            raise _err("seed_dup", f"sweep.seeds has duplicates: {values}")
        return values

    @field_validator("methods")
    @classmethod
    def _methods(cls, values: list[MethodConfig]) -> list[MethodConfig]:
        if not values:
            raise _err("sweep_empty", "sweep.methods is empty; list at least one method")
        return values


class SuiteConfig(StrictModel):
    """One suite to run with its params."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in SUITES:
            raise _err("unknown_suite", SUITES.unknown_message(name), SUITES.suggest(name))
        return name

    @model_validator(mode="after")
    def _params(self) -> SuiteConfig:
        spec = SUITES.get(self.name)
        try:
            parsed = spec.params.model_validate(self.params)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise _err(
                "suite_params",
                f"invalid params for suite {self.name!r}: {where}: {first['msg']}",
                f"allowed params: {', '.join(spec.params.model_fields) or '(none)'}",
            ) from None
        object.__setattr__(self, "params", parsed.model_dump(mode="json"))
        return self

    def typed_params(self) -> PluginParams:
        return SUITES.get(self.name).params.model_validate(self.params)


class RuntimeConfig(StrictModel):
    """How inference runs."""

    batch_size: int = Field(32, ge=1, le=4096)
    threads: int | None = Field(None, ge=1, description="torch threads (default: all cores).")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    n_boot: int = Field(
        1000,
        ge=0,
        le=100_000,
        description="Bootstrap resamples for CIs (0: no CIs; rules that judge a CI end then cannot judge).",
    )
    ci_level: float = Field(0.95, gt=0.5, lt=1.0)


class ExecutorConfig(StrictModel):
    """Where sweep points run."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(
        None, description="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance is started)."
    )
    num_cpus_per_task: float = Field(1.0, gt=0, description="CPUs each sweep-point task reserves (its torch threads).")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance (default: all).")


class ReportConfig(StrictModel):
    """Which reporters render the finished run."""

    formats: list[str] = Field(default_factory=lambda: ["json", "html", "junit", "markdown", "model-card"])
    title: str | None = None

    @field_validator("formats")
    @classmethod
    def _known(cls, values: list[str]) -> list[str]:
        from audit.registry import REPORTERS

        for v in values:
            if v not in REPORTERS:
                raise _err("unknown_reporter", REPORTERS.unknown_message(v), REPORTERS.suggest(v))
        return values


class DeployConfig(StrictModel):
    """How each pruned variant is deployed, proven equivalent and measured.

    Every pruned variant is converted to the form that ships before any suite runs:
    layers without zeros stay dense (structured pruning), other layers get the fastest
    format measured for their shape and density (``kernel``: the compiled sparse kernel;
    ``csr``/``bsr``: torch's CSR/BSR; ``semi24``: 2:4 on CUDA), or stay dense where no
    sparse format is at least ``min_speedup`` times faster. The deployed model must
    match its masked-dense reference on a probe batch within ``tolerance``, else the
    variant is an ERROR.

    ```yaml
    deploy:
      formats: [kernel, csr, bsr]
      speed_seq_len: 128
      save_variants: true     # <output_dir>/variants/<variant id>/ (safetensors + config)
    ```
    """

    enabled: bool = Field(True, description="Deploy, verify and measure every pruned variant.")
    formats: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FORMATS), description="Sparse formats that may be chosen (registered)."
    )
    bsr_blocks: list[int] = Field(default_factory=lambda: [4, 8, 16, 32], description="BSR block sizes to try.")
    force_format: str | None = Field(
        None,
        description="Use this format (dense, kernel, csr, bsr<b>, semi24 or a registered format's name) wherever "
        "it applies, without timing (for inspection; skips the speed guard).",
    )
    min_speedup: float = Field(
        1.1, ge=1.0, description="A sparse format must be this much faster than dense at every timed token count."
    )
    max_density: float = Field(0.5, gt=0.0, le=1.0, description="Denser layers stay dense without timing.")
    max_block_density: float = Field(0.5, gt=0.0, le=1.0, description="BSR is tried up to this block density.")
    choose_tokens: list[int] = Field(
        default_factory=lambda: [128, 1024], description="Token counts (batch x sequence) at which formats are timed."
    )
    timing_min_s: float = Field(0.2, gt=0.0, le=60.0, description="Minimum timing time per format and token count.")
    timing_cache: bool = Field(True, description="Reuse format timings across runs (user cache directory).")
    probe_size: int = Field(64, ge=1, le=100_000, description="Eval examples in the equivalence probe batch.")
    tolerance: float | None = Field(
        None,
        gt=0.0,
        description="A fixed largest allowed |deployed - masked-dense| logit difference; unset (default), it is "
        "scaled to the logits: tolerance_factor x eps(dtype) x max(1, max|logit|) x sqrt(K x D) "
        "(audit/deploy/verify.py).",
    )
    tolerance_factor: float = Field(
        2.0, gt=0.0, le=1e6, description="c of the scaled tolerance (measured worst case: 0.1; see verify.py)."
    )
    measure_speed: bool = Field(True, description="Time batch-1 latency and batch throughput, dense vs deployed.")
    speed_cache: bool = Field(
        True,
        description="Reuse this machine's speed measurement of an unchanged deployed variant (same weights, "
        "formats and settings), so that re-running an audit re-gates the same figure.",
    )
    speed_seq_len: int = Field(128, ge=1, le=8192)
    speed_batch_size: int = Field(32, ge=1, le=4096)
    speed_min_time_s: float = Field(
        0.2, gt=0.0, le=600.0, description="Minimum timing time of each model, batch size and round."
    )
    speed_rounds: int = Field(
        7,
        ge=3,
        le=101,
        description="Interleaved dense/deployed timing rounds after a warm-up; speed-ups are the median "
        "per-round ratio with an order-statistic CI of the median (7 rounds: [min, max], 98.4 %)",
    )
    save_variants: bool = Field(False, description="Save each deployed variant under <output_dir>/variants/<id>/.")

    @field_validator("bsr_blocks")
    @classmethod
    def _blocks(cls, values: list[int]) -> list[int]:
        if not values or any(not (2 <= v <= 256) for v in values):
            raise _err("bsr_blocks", f"bsr_blocks must be block sizes between 2 and 256, found {values}")
        return sorted(set(values))

    @field_validator("choose_tokens")
    @classmethod
    def _tokens(cls, values: list[int]) -> list[int]:
        if not values or any(v < 1 for v in values):
            raise _err("choose_tokens", f"choose_tokens must list positive token counts, found {values}")
        return sorted(set(values))

    @field_validator("formats")
    @classmethod
    def _formats(cls, values: list[str]) -> list[str]:
        bad = next((v for v in values if v not in FORMATS), None)
        if bad is not None:
            raise _err("deploy_format", FORMATS.unknown_message(bad), FORMATS.suggest(bad))
        return list(dict.fromkeys(values))

    @field_validator("force_format")
    @classmethod
    def _force_format(cls, value: str | None) -> str | None:
        if value is not None and not is_known(value):
            raise _err(
                "deploy_format", f"force_format must be {DENSE} or a deploy format's name (bsr<b>), found {value!r}"
            )
        return value


class AuditConfig(StrictModel):
    """Everything one audit run needs."""

    model: ModelConfig
    data: DataConfig
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    suites: list[SuiteConfig] = Field(default_factory=lambda: [SuiteConfig(name="performance")])
    policy: str | None = Field("default", description="Built-in policy name or path to a policy YAML; null for none.")
    output_dir: str = "audit-out"
    seed: int = Field(0, ge=0)
    offline: bool = Field(True, description="Never touch the network (hub ids are refused).")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    _base_dir: str | None = PrivateAttr(None)
    _paths: RunPaths | None = PrivateAttr(None)

    @field_validator("suites", mode="before")
    @classmethod
    def _suite_mapping(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return [{"name": k, "params": v or {}} for k, v in value.items()]
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("suites")
    @classmethod
    def _suites_unique(cls, values: list[SuiteConfig]) -> list[SuiteConfig]:
        names = [s.name for s in values]
        if len(set(names)) != len(names):
            raise _err("suite_dup", f"suites lists a suite twice: {names}")
        return values

    @model_validator(mode="after")
    def _online(self) -> AuditConfig:
        if self.offline and self.model.hub_id is not None:
            raise _err(
                "offline_hub",
                "model.hub_id needs network access but offline is true",
                "download the model and set model.path, or set `offline: false`",
            )
        if self.offline and self.data.hub is not None:
            raise _err(
                "offline_hub",
                "data.hub needs network access but offline is true",
                "point data.files at local copies, or set `offline: false`",
            )
        return self

    # -- path helpers -------------------------------------------------------------
    @property
    def base_dir(self) -> str | None:
        """Directory that relative paths are resolved against (the config file's)."""
        return self._base_dir

    @property
    def paths(self) -> RunPaths:
        """Every path of the run, resolved once (when the config is loaded) against :attr:`base_dir`."""
        if self._paths is None:
            self._paths = RunPaths.of(self)
        return self._paths

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> AuditConfig:
        cfg = super().model_copy(update=update, deep=deep)
        if update:
            cfg._paths = None  # changed fields: resolved again on first use
        return cfg

    def resolve(self, path: str | None) -> Path | None:
        """Resolve a config-relative path (as :attr:`paths` does)."""
        return self.paths.resolve(path)

    def output_path(self) -> Path:
        return self.paths.output_dir


def _validate(doc: YamlDocument, base_dir: str | None, overrides: dict[str, Any] | None) -> AuditConfig:
    data = dict(doc.data)
    if overrides:
        for k, v in overrides.items():
            if v is None:
                continue
            # a mapping override (e.g. executor: {kind: ray}) changes only the keys it names
            data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    try:
        cfg = AuditConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_to_config_error(exc, doc, AuditConfig) from None
    cfg._base_dir = base_dir
    cfg._paths = RunPaths.of(cfg)  # resolved once, here
    return cfg


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> AuditConfig:
    """Load and validate an audit config; errors carry file, line and a hint."""
    doc = load_yaml(path, what="config")
    if "rules" in doc.data and "model" not in doc.data:
        raise ConfigError(
            "this looks like a policy file, not an audit config",
            file=str(path),
            line=1,
            hint="use `prune-audit validate` for either, or pass it with --policy",
        )
    base = str(Path(path).resolve().parent)
    return _validate(doc, base, overrides)


def config_from_text(text: str, name: str = "<config>", base_dir: str | None = None) -> AuditConfig:
    """Validate a config given as YAML text (used by tests and the demo)."""
    return _validate(parse_yaml(text, name, what="config"), base_dir, None)


def config_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`AuditConfig`."""
    schema = AuditConfig.model_json_schema()
    schema.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
    schema["title"] = "prune-audit AuditConfig"
    return schema
