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

Relative paths are resolved against the directory of the config file. The ``sweep:`` and
``deploy:`` sections are defined in :mod:`audit.config_sweep` (re-exported here), the shared
base in :mod:`audit.config_base`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from audit.config_attribution import AttributionConfig
from audit.config_base import StrictModel, _err, plugin_params
from audit.config_metrics import ExtraMetricConfig, check_extra_metrics, check_suite_accepts, extra_from_params
from audit.config_sweep import (
    AllocateConfig,
    CalibrationConfig,
    DeployConfig,
    LayerSelection,
    MethodConfig,
    SelectionConfig,
    SweepConfig,
)
from audit.config_zero_shot import ZeroShotConfig
from audit.errors import ConfigError
from audit.registry import SUITES, PluginParams
from audit.runpaths import RunPaths
from audit.yamlio import YamlDocument, load_yaml, parse_yaml, validation_to_config_error

__all__ = [
    "DATA_FORMATS",
    "AttributionConfig",
    "AuditConfig",
    "AllocateConfig",
    "CalibrationConfig",
    "ColumnMap",
    "DataConfig",
    "DatasetRef",
    "DeployConfig",
    "ExecutorConfig",
    "ExtraMetricConfig",
    "HubDataset",
    "LayerSelection",
    "MethodConfig",
    "ModelConfig",
    "ReportConfig",
    "RuntimeConfig",
    "ZeroShotConfig",
    "SplitMap",
    "StrictModel",
    "SuiteConfig",
    "SelectionConfig",
    "SweepConfig",
    "TableSource",
    "config_from_text",
    "config_schema",
    "load_config",
]

DATA_FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "txt")


class ModelConfig(StrictModel):
    """Which model to audit: a local checkpoint directory, a GGUF file, or a hub id when online."""

    path: str | None = Field(None, description="Local Hugging Face checkpoint directory.")
    hub_id: str | None = Field(None, description="Hub repository id; needs `offline: false` and network access.")
    gguf_file: str | None = Field(
        None,
        description="A GGUF file (a causal LM, quantized upstream): loaded dequantized through transformers' GGUF "
        "loader and cached as safetensors; its sha256 is the model's fingerprint, and the report records the "
        "GGUF file type.",
    )
    kind: Literal["auto", "classifier", "causal-lm"] = Field(
        "auto",
        description="What the model is: `auto` decides from the checkpoint's architecture (`*ForSequenceClassification`"
        ": classifier; `*ForCausalLM`/`*LMHeadModel`: causal-lm). A causal LM needs no label column (unless "
        "`model.zero_shot` scores it as a classifier): the eval split's texts are its probe and calibration texts.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Allow custom modelling code shipped with the checkpoint.")
    allow_pickle: bool = Field(False, description="Allow pickle (.bin) weights; only safetensors are loaded otherwise.")
    max_length: int = Field(
        128,
        ge=8,
        le=8192,
        description="Tokenizer truncation length in tokens (text and text pair together): longer inputs are cut, "
        "and the report counts how many texts of each dataset were (a truncation note in the limitations).",
    )
    zero_shot: ZeroShotConfig | None = Field(
        None,
        description="Causal LMs only: score the LM as a zero-shot classifier (one class per choice), so the "
        "performance, ood, bias and adversarial suites audit it; without it they refuse a causal LM.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if sum(x is not None for x in (self.path, self.hub_id, self.gguf_file)) != 1:
            raise _err(
                "model_source",
                "set exactly one of model.path (local directory), model.gguf_file or model.hub_id",
                "use `path:` for a local checkpoint",
            )
        if self.gguf_file is not None and self.kind == "classifier":
            raise _err(
                "model_kind",
                "model.gguf_file holds a causal LM, but model.kind is classifier",
                "set model.kind to causal-lm or auto",
            )
        if self.zero_shot is not None and self.kind == "classifier":
            raise _err(
                "model_zero_shot",
                "model.zero_shot is for a causal LM, but model.kind is classifier (a classifier has its own classes)",
                "remove model.zero_shot, or set model.kind to causal-lm or auto",
            )
        return self

    @property
    def declared_kind(self) -> str | None:
        """The kind known without reading the checkpoint (a GGUF file is a causal LM); None: decided at load."""
        if self.kind != "auto":
            return self.kind
        return "causal-lm" if self.gguf_file is not None else None


class HubDataset(StrictModel):
    """A dataset on the Hugging Face hub (only used when online)."""

    name: str = Field(description="Hub dataset id, e.g. `glue`.")
    subset: str | None = Field(None, description="Dataset configuration (subset) name, e.g. `sst2`.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")


class ColumnMap(StrictModel):
    """Which dataset columns hold the text, the label and the sensitive groups."""

    text: str = Field("text", description="Column holding the input text.")
    text_pair: str | None = Field(None, description="Column holding the second text of a sentence pair (NLI, QQP).")
    label: str | None = Field(
        "label",
        description="Column holding the gold label (a class index or a label name). For a causal LM it is the "
        "gold choice of `model.zero_shot` (an index or the choice's text); without zero_shot a causal LM needs no "
        "label, and only there may it be null.",
    )
    groups: list[str] = Field(default_factory=list, description="Sensitive-feature columns.")
    id: str | None = Field(None, description="Optional stable example id column.")


class SplitMap(StrictModel):
    """Which split is evaluated and which feeds calibration-based pruning."""

    eval: str = Field("test", description="Split that is evaluated (a key of `data.files`, or a hub split).")
    calibration: str | None = Field(
        "train", description="Split that calibration-based pruners draw from; null for none."
    )


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
    columns: ColumnMap = Field(default_factory=ColumnMap, description="Which columns hold text, label and groups.")
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
    path: str | None = Field(None, description="Local file (relative to the config file); or set `hub`.")
    hub: HubDataset | None = Field(None, description="A hub dataset instead of a local file (needs `offline: false`).")
    split: str = Field("test", description="Split of the hub dataset (or the name recorded for a local file).")
    max_examples: int | None = Field(
        None,
        ge=1,
        description="Evaluate a seeded random sample of this many rows (drawn with the run's `seed`, the same on "
        "every run), not the first rows: a file sorted by label would otherwise give a one-class sample. "
        "Unset: every row.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetRef:
        if (self.path is None) == (self.hub is None):
            raise _err("data_source", f"dataset {self.name!r}: set exactly one of path or hub")
        return self


class DataConfig(TableSource):
    """The in-distribution dataset: local files per split, or a hub dataset."""

    files: dict[str, str] | None = Field(None, description="split name -> local file (csv, tsv, json/jsonl, parquet).")
    hub: HubDataset | None = Field(None, description="A hub dataset instead of local files (needs `offline: false`).")
    splits: SplitMap = Field(default_factory=SplitMap, description="Which split is evaluated and which calibrates.")
    max_eval_examples: int | None = Field(
        None,
        ge=1,
        description="Evaluate a seeded random sample of this many eval-split rows (drawn with the run's `seed`, "
        "the same on every run), not the first rows: a file sorted by label would otherwise give a one-class "
        "sample. Unset: every row.",
    )
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


class SuiteConfig(StrictModel):
    """One suite to run with its params."""

    name: str = Field(description="A registered suite (`prune-audit ls suites`).")
    params: dict[str, Any] = Field(default_factory=dict, description="The suite's params (see Suite params below).")
    extra_metrics: list[ExtraMetricConfig] = Field(
        default_factory=list,
        exclude_if=lambda v: not v,  # a config without them dumps (and fingerprints) as before
        description="Local `evaluate` metric modules computed on this suite's per-example predictions for dense and "
        "every variant (overall, per group, and paired vs dense as `<name>_delta`). In the mapping form they may sit "
        "among the params (`performance: {extra_metrics: [...]}`).",
    )

    @model_validator(mode="before")
    @classmethod
    def _extra_from_params(cls, value: Any) -> Any:
        return extra_from_params(value)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in SUITES:
            raise _err("unknown_suite", SUITES.unknown_message(name), SUITES.suggest(name))
        return name

    @model_validator(mode="after")
    def _params(self) -> SuiteConfig:
        object.__setattr__(self, "params", plugin_params(SUITES, "suite", self.name, self.params))
        if self.extra_metrics:
            check_suite_accepts(self.name)
        return self

    def typed_params(self) -> PluginParams:
        return SUITES.get(self.name).params.model_validate(self.params)


class RuntimeConfig(StrictModel):
    """How inference runs."""

    batch_size: int = Field(32, ge=1, le=4096, description="Inference batch size of every suite.")
    threads: int | None = Field(None, ge=1, description="torch threads (default: all cores).")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="Where inference runs (auto: cuda if available).")
    n_boot: int = Field(
        1000,
        ge=0,
        le=100_000,
        description="Bootstrap resamples for CIs (0: no CIs; rules that judge a CI end then cannot judge).",
    )
    ci_level: float = Field(
        0.95, gt=0.5, lt=1.0, description="Confidence level of every CI; 1 - ci_level is the FDR level of the q-values."
    )


class ExecutorConfig(StrictModel):
    """Where sweep points run."""

    kind: Literal["local", "ray"] = Field("local", description="local: in this process; ray: one Ray task per point.")
    address: str | None = Field(
        None, description="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance is started)."
    )
    num_cpus_per_task: float = Field(1.0, gt=0, description="CPUs each sweep-point task reserves (its torch threads).")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance (default: all).")


class ReportConfig(StrictModel):
    """Which reporters render the finished run."""

    formats: list[str] = Field(
        default_factory=lambda: ["json", "html", "junit", "markdown", "model-card"],
        description="Registered reporters to render (`prune-audit ls reporters`).",
    )
    title: str | None = Field(None, description="Report title (default: `Pruning audit of <model directory>`).")

    @field_validator("formats")
    @classmethod
    def _known(cls, values: list[str]) -> list[str]:
        from audit.registry import REPORTERS

        for v in values:
            if v not in REPORTERS:
                raise _err("unknown_reporter", REPORTERS.unknown_message(v), REPORTERS.suggest(v))
        return values


class AuditConfig(StrictModel):
    """Everything one audit run needs."""

    model: ModelConfig = Field(description="The fine-tuned classifier to audit.")
    data: DataConfig = Field(description="The in-distribution dataset: evaluated, and drawn from for calibration.")
    sweep: SweepConfig = Field(default_factory=SweepConfig, description="Pruning methods x sparsities x seeds.")
    suites: list[SuiteConfig] = Field(
        default_factory=lambda: [SuiteConfig(name="performance")],
        description="Suites to run: a mapping `name: params`, or a list of names or `{name, params}`.",
    )
    policy: str | None = Field("default", description="Built-in policy name or path to a policy YAML; null for none.")
    output_dir: str = Field(
        "audit-out", description="Where the reports (and saved variants) are written; relative to the config file."
    )
    seed: int = Field(
        0,
        ge=0,
        description="Run seed: draws the `max_eval_examples` / `max_examples` samples and seeds the dense baseline "
        "(pruned points use `sweep.seeds`).",
    )
    offline: bool = Field(True, description="Never touch the network (hub ids are refused).")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="How inference and statistics run.")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="Where sweep points run.")
    report: ReportConfig = Field(default_factory=ReportConfig, description="Which reports are written.")
    deploy: DeployConfig = Field(
        default_factory=DeployConfig, description="How each pruned variant is deployed, verified and measured."
    )
    attribution: AttributionConfig = Field(
        default_factory=AttributionConfig,
        exclude_if=lambda v: v == AttributionConfig(),  # a config without it dumps (and fingerprints) as before
        description="Trace significant regressions back to layer groups by restoring their dense weights.",
    )
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
    def _label_for_classifier(self) -> AuditConfig:
        if self.model.kind == "classifier" and self.data.columns.label is None:
            raise _err(
                "no_label",
                "data.columns.label is null, but a classifier needs a label column",
                "name the gold-label column, or set model.kind: causal-lm for a language model",
            )
        return self

    @model_validator(mode="after")
    def _zero_shot_data(self) -> AuditConfig:
        zs = self.model.zero_shot
        if zs is None:
            return self
        cols = self.data.columns
        if cols.label is None:
            raise _err(
                "zero_shot_label",
                "model.zero_shot scores the LM as a classifier, but data.columns.label is null",
                "name the gold column (each row's choice, by index or text)",
            )
        if zs.uses_pairs and cols.text_pair is None:
            raise _err(
                "zero_shot_pairs",
                "model.zero_shot.template uses {text_pair}, but data.columns.text_pair is not set",
                "name the second-text column in data.columns.text_pair, or drop {text_pair} from the template",
            )
        if cols.text_pair is not None and not zs.uses_pairs:
            raise _err(
                "zero_shot_pairs",
                f"the data has text pairs (data.columns.text_pair: {cols.text_pair}), but model.zero_shot.template "
                "has no {text_pair}: the second text would never reach the model",
                "put {text_pair} into the template",
            )
        return self

    @field_validator("sweep")
    @classmethod
    def _selection_split(cls, sweep: SweepConfig, info: ValidationInfo) -> SweepConfig:
        """``sweep.allocate.selection.split`` is a data split other than the eval split."""
        alloc = sweep.allocate
        data = info.data.get("data")
        if alloc is None or data is None:
            return sweep
        split = alloc.selection.split
        if split == data.splits.eval:
            raise _err(
                "allocate_selection",
                f"sweep.allocate.selection.split is {split!r}, the eval split: the allocation would be chosen on "
                "the examples it is audited on",
                "select on another split (e.g. validation, or the calibration split)",
            )
        if data.files is not None and split not in data.files:
            raise _err(
                "allocate_selection",
                f"sweep.allocate.selection.split is {split!r} but data.files has {sorted(data.files)}",
                "name a split listed under data.files",
            )
        return sweep

    @field_validator("policy")
    @classmethod
    def _allocation_policy(cls, policy: str | None, info: ValidationInfo) -> str | None:
        sweep = info.data.get("sweep")
        if policy is None and sweep is not None and sweep.allocate is not None and sweep.allocate.policy is None:
            raise _err(
                "allocate_policy",
                "sweep.allocate has no policy and the run has none (policy: null)",
                "set sweep.allocate.policy, or the run's policy",
            )
        return policy

    @model_validator(mode="after")
    def _quantization_deploys(self) -> AuditConfig:
        from audit.registry import PRUNERS

        quant = next(
            (m.name for m in self.sweep.methods if m.name in PRUNERS and "quantization" in PRUNERS.get(m.name).tags),
            None,
        )
        if quant is not None and not self.deploy.enabled:
            raise _err(
                "quant_no_deploy",
                f"sweep.methods has {quant!r}, a quantization method, but deploy.enabled is false: its variants "
                "would be audited on the dequantized reference layers, not on the quantized kernels they ship on",
                f"set deploy.enabled: true, or drop {quant!r} from sweep.methods",
            )
        return self

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
    check_extra_metrics(cfg.suites, doc, base_dir)
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
