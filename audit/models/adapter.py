"""The model-family seam: one adapter per family knows its checkpoints' layout.

Nothing outside :mod:`audit.models` assumes a model family's module names, head or
output shape. Loading, the transformer blocks pruning walks, the attention-head and
FFN-neuron groups structured pruning removes, the predictor suites run through, the
probe inputs and outputs deployment verifies on, and the identity of the evaluated data
all go through the :class:`ModelAdapter` chosen for the checkpoint by
:func:`adapter_for` from its ``config.architectures`` (or ``model_type``), optionally
restricted to one ``kind``.

An adapter is described, as every plugin is (:mod:`audit.registry`), by a torch-free
:class:`AdapterSpec`: its name, the model ``kind`` it serves (``"classifier"`` or
``"causal-lm"``), the architectures it matches and the ``"module:attr"`` of its
implementation. Suites declare the kinds they accept (``SuiteSpec.model_kinds``), so
the runner refuses a suite that cannot measure the audited model before any work.
Third parties register an adapter with :func:`audit.registry.register`, or through
the entry-point group ``prune_audit.models``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import UsageError
from audit.registry import PluginSpec, Registry

MODEL_KINDS = ("classifier", "causal-lm")
"""What an adapter serves: class logits per text, or next-token log-likelihoods."""


@dataclass(frozen=True)
class AdapterSpec(PluginSpec):
    """A model family: which checkpoints it handles (torch-free; the implementation loads lazily).

    A checkpoint matches when one of its ``config.architectures`` is in
    ``architectures`` or ends with one of ``architecture_suffixes``; when no adapter
    matches its architectures, one whose ``model_types`` lists its ``model_type`` serves
    it (a bare encoder checkpoint goes to the classifier adapter, which then says the
    classification head is missing). ``priority`` breaks
    ties between matching adapters (higher wins; then name).
    """

    kind: str = "classifier"
    architectures: tuple[str, ...] = ()
    architecture_suffixes: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    priority: int = 0
    default_include: tuple[str, ...] = ()
    """``sweep.layers.include`` when the config leaves it unset (empty: every prunable Linear layer)."""

    def matches_architecture(self, architectures: Iterable[str]) -> bool:
        """One of ``architectures`` is listed, or ends with a listed suffix."""
        suffixes = tuple(self.architecture_suffixes)
        return any(a in self.architectures or (suffixes and a.endswith(suffixes)) for a in architectures if a)

    def matches_model_type(self, model_type: str | None) -> bool:
        return model_type is not None and model_type in self.model_types

    def describe(self) -> str:
        """What it matches, for error messages: ``name (kind: A, *B)``."""
        names = [*self.architectures, *(f"*{s}" for s in self.architecture_suffixes)]
        return f"{self.name} ({self.kind}: {', '.join(names) or ', '.join(self.model_types) or 'nothing'})"


ADAPTERS: Registry[AdapterSpec] = Registry("model adapter", "prune_audit.models", AdapterSpec)


def _arch_of(hf_config: Any) -> tuple[list[str], str | None]:
    if isinstance(hf_config, dict):
        archs, model_type = hf_config.get("architectures"), hf_config.get("model_type")
    else:
        archs, model_type = getattr(hf_config, "architectures", None), getattr(hf_config, "model_type", None)
    return [str(a) for a in (archs or [])], (str(model_type) if model_type else None)


def adapter_spec_for(
    hf_config: Any, *, kind: str | None = None, where: str = "model", extra_architectures: Iterable[str] = ()
) -> AdapterSpec:
    """The spec of the adapter that serves ``hf_config`` (a transformers config or a config.json dict).

    ``kind``: ``None``/``"auto"`` picks by architecture; ``"classifier"``/``"causal-lm"``
    considers only adapters of that kind. ``extra_architectures``: names tried when the
    config lists none (a model built in code: its class name).

    Raises:
        UsageError: No registered adapter serves the architecture (the message names
            the ones supported).
    """
    archs, model_type = _arch_of(hf_config)
    if not archs:
        archs = [a for a in extra_architectures if a]
    if kind not in (None, "auto") and kind not in MODEL_KINDS:
        raise UsageError(f"model.kind must be auto or one of {', '.join(MODEL_KINDS)}, found {kind!r}", where=where)
    candidates = [s for s in ADAPTERS if kind in (None, "auto") or s.kind == kind]
    order = lambda s: (-s.priority, s.name)  # noqa: E731
    found = sorted((s for s in candidates if s.matches_architecture(archs)), key=order)
    found = found or sorted((s for s in candidates if s.matches_model_type(model_type)), key=order)
    if found:
        return found[0]
    what = ", ".join(archs) if archs else f"model_type {model_type!r}"
    of_kind = f" of kind {kind}" if kind not in (None, "auto") else ""
    supported = "; ".join(s.describe() for s in candidates) or "(none registered)"
    raise UsageError(f"no model adapter{of_kind} supports {what}; supported: {supported}", where=where)


def adapter_for(hf_config: Any, *, kind: str | None = None, where: str = "model") -> ModelAdapter:
    """The adapter instance for ``hf_config`` (see :func:`adapter_spec_for`)."""
    spec = adapter_spec_for(hf_config, kind=kind, where=where)
    return _instance(spec)


_INSTANCES: dict[str, ModelAdapter] = {}


def _instance(spec: AdapterSpec) -> ModelAdapter:
    inst = _INSTANCES.get(spec.name)
    if inst is None or inst.spec is not spec:
        inst = spec.load()(spec)
        _INSTANCES[spec.name] = inst
    return inst


PLAIN_MODULE = AdapterSpec(
    name="torch-module",
    impl="audit.models.adapter:ModelAdapter",
    summary="a plain torch module without a Hugging Face config: its Linear layers and block list only",
    kind="",
)
"""Serves models built in code without a ``config`` (never chosen for a checkpoint)."""


def adapter_of(model: Any, *, where: str = "model") -> ModelAdapter:
    """The adapter of a loaded (or built-in-code) model, from its config or its class name.

    A plain torch module without a ``config`` gets the base :class:`ModelAdapter`
    (:data:`PLAIN_MODULE`): its Linear layers and block list, nothing family-specific.
    """
    config = getattr(model, "config", None)
    if config is None:
        return _instance(PLAIN_MODULE)
    return _instance(adapter_spec_for(config, where=where, extra_architectures=[type(model).__name__]))


def read_dir_config(path: Path) -> dict[str, Any]:
    """A checkpoint directory's config.json as a dict (torch-free), ``{}`` when unreadable."""
    try:
        data = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class UnitGroups:
    """One transformer block's removable units, as structured pruning sees them.

    ``heads``: attention units (heads; key-value groups with their query heads under
    grouped-query attention). ``head_rows``: each attention in-projection (suffix under
    the block) and how many of its output rows one unit owns, in unit order;
    ``head_out``: the out-projection and how many of its input columns one unit owns.
    ``ffn_in``: the FFN in-projections (one output row per neuron: up, and gate when the
    MLP is gated); ``ffn_out``: the down-projection (one input column per neuron).
    """

    index: int
    name: str
    module: Any
    heads: int
    head_rows: dict[str, int]
    head_out: tuple[str, int]
    ffn_width: int
    ffn_in: tuple[str, ...]
    ffn_out: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def attn_linears(self) -> tuple[str, ...]:
        return (*self.head_rows, self.head_out[0])

    @property
    def ffn_linears(self) -> tuple[str, ...]:
        return (*self.ffn_in, self.ffn_out)

    def linear(self, suffix: str) -> Any:
        mod: Any = self.module
        for part in suffix.split("."):
            mod = getattr(mod, part)
        return mod


LAYER_KINDS = ("attention", "ffn", "layers", "other")
"""What a :class:`LayerGroup` holds: a block's attention projections, its feed-forward layers, a
block's Linear layers when the family does not tell the two apart (``layers``), or Linear layers
outside the blocks (``other``)."""


@dataclass(frozen=True)
class LayerGroup:
    """Linear layers that regression attribution (:mod:`audit.attribution`) restores together.

    ``block``: the transformer block's index (None outside the blocks); ``kind``: one of
    :data:`LAYER_KINDS`; ``linears``: full module names, in model order.
    """

    block: int | None
    block_name: str
    kind: str
    linears: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.block_name}:{self.kind}"


class ModelAdapter:
    """What the audit asks of a model family (the base class; one subclass per family).

    Loading: :meth:`load`. Pruning: :meth:`blocks`, :meth:`prunable_linears`,
    :meth:`loss` (labelled calibration), and for structured pruning
    :meth:`unit_groups`, :meth:`head_ids`, :meth:`remove_heads`,
    :meth:`remove_neurons`, :meth:`finish_structured`, :meth:`save_pruned`,
    :meth:`load_pruned`. Inference: :meth:`predictor`, :meth:`id2label`. Deployment:
    :meth:`probe_batches`, :meth:`probe_outputs`, :meth:`synthetic_inputs`. Data:
    :meth:`data_identity`. A method a family cannot do raises :class:`UsageError`.
    """

    def __init__(self, spec: AdapterSpec) -> None:
        self.spec = spec

    @property
    def kind(self) -> str:
        return self.spec.kind

    # -- loading ---------------------------------------------------------------
    def load(self, spec: Any, local: Path | None, *, offline: bool, hf_config: Any = None, common: Any = None) -> Any:
        """Load the model ``spec`` (a ``ModelConfig``) names, as a :class:`~audit.model_io.LoadedModel`.

        ``local``: ``spec.path`` resolved (None for a hub id); ``hf_config``/``common``: the
        config already read and the ``from_pretrained`` keywords (:func:`audit.model_io.read_hf_config`).
        """
        raise NotImplementedError

    # -- pruning ---------------------------------------------------------------
    def blocks(self, model: Any) -> tuple[str, Any] | None:
        """(module path, ``ModuleList``) of the transformer blocks, or None.

        The default: the longest ``ModuleList`` of same-type modules holding Linear layers.
        """
        from torch import nn

        best: tuple[str, nn.ModuleList] | None = None
        for name, module in model.named_modules():
            if not isinstance(module, nn.ModuleList) or len(module) == 0:
                continue
            kinds = {type(m) for m in module}
            if len(kinds) != 1 or not any(isinstance(x, nn.Linear) for x in module[0].modules()):
                continue
            if best is None or len(module) > len(best[1]):
                best = (name, module)
        return best

    def prunable_linears(self, model: Any) -> list[tuple[str, Any]]:
        """Every Linear layer ``sweep.layers`` may select from, in model order."""
        from torch import nn

        return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]

    def layer_kind(self, model: Any, suffix: str) -> str:
        """The kind (:data:`LAYER_KINDS`) of the Linear ``suffix`` (its name under its block).

        The base class cannot tell attention from feed-forward layers: ``layers``.
        """
        return "layers"

    def layer_groups(self, model: Any) -> list[LayerGroup]:
        """The prunable Linear layers grouped by block and kind, for regression attribution.

        Each block gives one group per kind of its layers (:meth:`layer_kind`); prunable layers
        outside every block form one ``other`` group. Families override :meth:`layer_kind`.
        """
        found = self.blocks(model)
        linears = [n for n, _ in self.prunable_linears(model)]
        groups: list[LayerGroup] = []
        placed: set[str] = set()
        if found is not None:
            path, blocks = found
            for i in range(len(blocks)):
                prefix = f"{path}.{i}." if path else f"{i}."
                by_kind: dict[str, list[str]] = {}
                for name in linears:
                    if name.startswith(prefix):
                        by_kind.setdefault(self.layer_kind(model, name[len(prefix) :]), []).append(name)
                        placed.add(name)
                for kind in sorted(by_kind, key=lambda k: LAYER_KINDS.index(k) if k in LAYER_KINDS else 99):
                    groups.append(LayerGroup(i, prefix[:-1], kind, tuple(by_kind[kind])))
        rest = tuple(n for n in linears if n not in placed)
        if rest:
            groups.append(LayerGroup(None, "outside blocks", "other", rest))
        return groups

    def loss(self, model: Any, batch: dict[str, Any], labels: Any, reduction: str = "mean") -> Any:
        """The training loss of one calibration batch (on the model's device)."""
        raise UsageError(f"{self.spec.name} models have no labelled loss", where="sweep.calibration")

    def training_rows(self, model: Any, batch: dict[str, Any], labels: Any) -> tuple[Any, Any]:
        """``(logits [rows, classes], targets [rows])`` of one calibration batch: the rows the
        training loss is the mean cross-entropy of (a classifier: one per example; a causal
        LM: one per real next token). Distillation compares student and teacher on these rows.
        """
        raise UsageError(f"{self.spec.name} models have no labelled loss", where="sweep.calibration")

    def unit_groups(self, model: Any, *, where: str = "method 'structured'") -> list[UnitGroups]:
        """Each block's heads and FFN neurons, or a :class:`UsageError` when unsupported."""
        raise UsageError(f"structured pruning does not support {self.spec.name} models", where=where)

    def head_ids(self, model: Any, block: UnitGroups) -> list[int]:
        """The id recorded for each current head of ``block`` (default: its position)."""
        return list(range(block.heads))

    def remove_heads(self, model: Any, heads: dict[int, list[int]]) -> None:
        """Remove the given heads (ids as :meth:`head_ids` gives them) of each block index."""
        raise NotImplementedError

    def remove_neurons(self, model: Any, block: UnitGroups, drop: list[int]) -> None:
        """Shrink ``block``'s FFN to the neurons not in ``drop``."""
        raise NotImplementedError

    def finish_structured(self, model: Any) -> list[str]:
        """Patch the config after removal so it describes the new shapes; notes for the record."""
        return []

    def save_pruned(self, model: Any, directory: Path, tokenizer: Any = None) -> None:
        """Write a (structurally) pruned model to an empty ``directory`` (``load_pruned`` reads it)."""
        model.save_pretrained(directory, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    def load_pruned(self, directory: Path, config: Any) -> Any:
        """Rebuild the pruned model saved in ``directory`` (``config`` already read from it)."""
        raise NotImplementedError

    # -- inference ---------------------------------------------------------------
    def predictor(self, tokenizer: Any, *, max_length: int, batch_size: int, device: str = "cpu") -> Any:
        """The object suites run forward passes through (tokenized once per set).

        A causal LM's takes ``zero_shot`` too (``model.zero_shot``: its class logits are the choices').
        """
        raise NotImplementedError

    def id2label(self, loaded: Any, spec: Any) -> dict[int, str]:
        """Class index -> name of the audited model (``spec``: the ``ModelConfig``); the eval labels map onto it."""
        return loaded.id2label

    # -- deployment ----------------------------------------------------------------
    def probe_batches(self, eval_set: Any, predictor: Any, k: int) -> list[dict[str, Any]]:
        """Tokenized batches of the first ``k`` evaluated examples, for the equivalence check."""
        raise NotImplementedError

    def probe_outputs(self, model: Any, batches: list[dict[str, Any]]) -> Any:
        """The outputs deployment compares (float64 ``[rows, width]``, one row per compared position)."""
        raise NotImplementedError

    def synthetic_inputs(self, model: Any, batch: int, seq_len: int, seed: int = 0) -> dict[str, Any]:
        """Model inputs of a fixed shape for speed measurement (fixed seed)."""
        from audit.deploy.speed import synthetic_inputs

        return synthetic_inputs(model, batch, seq_len, seed)

    # -- data --------------------------------------------------------------------
    def data_identity(self, eval_set: Any, predictor: Any) -> Any:
        """The identity of the evaluated data as this family sees it (enters the store keys)."""
        raise NotImplementedError
