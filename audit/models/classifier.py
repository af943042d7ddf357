"""The sequence-classifier adapter: Hugging Face ``*ForSequenceClassification`` checkpoints.

Everything the audit knows about classifiers' layout lives here: loading through
``AutoModelForSequenceClassification`` (safetensors unless pickle is allowed, the
classification head checked), the BERT-family block layout structured pruning removes
heads and FFN neurons from (``model_type`` ``bert`` — MiniLM included — and
``roberta``), the :class:`~audit.inference.Predictor` (class logits), the probe batches
and logits deployment verifies on, and the evaluated data's identity (its truncation
at ``model.max_length`` recorded).

Heads are removed by our own code (transformers 5 has no head pruning): the heads' rows
of ``query``/``key``/``value`` (weights and biases) go, with the matching input columns
of ``attention.output.dense``, and the attention module's ``num_attention_heads`` and
``all_head_size`` (what its forward reads) follow; the head size never changes. The
original ids of the heads each block keeps are recorded in ``config.prune_audit_heads``
(their count is the block's head count), so heads are named by their original index
however often a model is pruned. FFN neurons go by shrinking ``intermediate.dense``
(rows) and ``output.dense`` (columns). HF's ``BertConfig`` has a single
``intermediate_size``, so the width of every block's FFN is also written to
``config.prune_audit_ffn_widths``; when all blocks end up with the same width,
``intermediate_size`` is patched too. The row/column slicing is
:mod:`audit.models.decoder_prune`'s.

:meth:`ClassifierAdapter.load_pruned` builds the dense architecture from the config,
cuts each block down to its recorded heads and FFN width and loads the weights; the
audit's own loading (:meth:`ClassifierAdapter.load`) sends pruned checkpoints there.
Checkpoints written by earlier versions, which recorded heads in HF's
``config.pruned_heads``, are converted on loading: that record becomes the kept heads
and is cleared, so transformers never applies it.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from audit.errors import ModelError, UsageError
from audit.fingerprint import dir_sha256, short
from audit.models.adapter import ModelAdapter, UnitGroups
from audit.models.decoder_prune import head_rows, keep_index, slice_linear

log = logging.getLogger(__name__)

STRUCTURED_MODEL_TYPES = ("bert", "roberta")
FFN_WIDTHS_KEY = "prune_audit_ffn_widths"
HEADS_KEY = "prune_audit_heads"
LEGACY_HEADS_KEY = "pruned_heads"  # earlier versions' record (HF's), converted on loading
ATTN_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
FFN_LINEARS = ("intermediate.dense", "output.dense")
SAFE_FILES = ("model.safetensors", "model.safetensors.index.json")


class ClassifierAdapter(ModelAdapter):
    """Sequence classifiers: one logit per class and text."""

    # -- loading ---------------------------------------------------------------
    def load(self, spec: Any, local: Path | None, *, offline: bool, hf_config: Any = None, common: Any = None) -> Any:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from audit.model_io import LoadedModel, first_line, read_hf_config
        from audit.results import ModelIdentity

        source = str(local) if local is not None else str(spec.hub_id)
        where = f"model.path={spec.path}" if local is not None else f"model.hub_id={spec.hub_id}"
        if hf_config is None or common is None:
            hf_config, common = read_hf_config(spec, local, offline=offline)
        use_safetensors = not spec.allow_pickle or (
            local is not None and any((local / f).is_file() for f in SAFE_FILES)
        )
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **common)
            if local is not None and is_pruned_config(hf_config):  # per-block shapes: our own loader
                model, info = self.load_pruned(local, hf_config), {}
            else:
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    source,
                    config=hf_config,
                    use_safetensors=use_safetensors,
                    output_loading_info=True,
                    **common,
                )
        except (ModelError, UsageError):
            raise
        except ValueError as exc:
            raise ModelError(f"not a sequence-classification checkpoint: {first_line(exc)}", where=where) from None
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"cannot load the model: {first_line(exc)}", where=where) from None
        missing = [k for k in info.get("missing_keys", []) if "classifier" in k or "score" in k]
        if missing:
            raise ModelError(
                f"the checkpoint has no trained classification head (missing {', '.join(missing[:3])})",
                where=where,
                hint="audit a fine-tuned classifier; a bare encoder would get a random head",
            )
        model.eval()
        if local is not None:
            fingerprint = dir_sha256(local)
        else:
            fingerprint = f"hub:{spec.hub_id}@{getattr(hf_config, '_commit_hash', None) or spec.revision}"
        n_params = sum(p.numel() for p in model.parameters())
        identity = ModelIdentity(
            source=source,
            revision=spec.revision or getattr(hf_config, "_commit_hash", None),
            fingerprint=fingerprint,
            architecture=(hf_config.architectures or [type(model).__name__])[0],
            num_labels=int(hf_config.num_labels),
            labels={str(k): str(v) for k, v in hf_config.id2label.items()},
            params_total=int(n_params),
        )
        log.info(
            "loaded %s (%s, %.1fM params, fingerprint %s)",
            source,
            identity.architecture,
            n_params / 1e6,
            short(fingerprint),
        )
        return LoadedModel(model=model, tokenizer=tokenizer, identity=identity, source_dir=local, adapter=self)

    # -- pruning ---------------------------------------------------------------
    def loss(self, model: Any, batch: dict[str, Any], labels: Any, reduction: str = "mean") -> Any:
        import torch.nn.functional as F

        logits, target = self.training_rows(model, batch, labels)
        return F.cross_entropy(logits, target, reduction=reduction)

    def training_rows(self, model: Any, batch: dict[str, Any], labels: Any) -> tuple[Any, Any]:
        """One row per example: its class logits and its label."""
        out = model(**batch)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits.float(), labels.to(logits.device)

    def layer_kind(self, model: Any, suffix: str) -> str:
        """BERT-family blocks: ``attention.*`` is attention, the rest (``intermediate``/``output``) the FFN.

        Other encoders are split by name too: a layer under a module named like ``attention``
        or ``attn`` (DistilBERT's ``attention.q_lin``, DeBERTa's ``attention.self.query_proj``)
        is attention, every other Linear of the block its feed-forward network.
        """
        first = suffix.split(".", 1)[0].lower()
        return "attention" if "attention" in first or "attn" in first else "ffn"

    def unit_groups(self, model: Any, *, where: str = "method 'structured'") -> list[UnitGroups]:
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        arch = type(model).__name__
        if model_type not in STRUCTURED_MODEL_TYPES:
            raise UsageError(
                f"structured pruning supports BERT-family encoders ({', '.join(STRUCTURED_MODEL_TYPES)}); "
                f"this model is {arch} (model_type {model_type!r})",
                where=where,
                hint="use an unstructured or N:M method for this architecture",
            )
        base = model.base_model
        prefix = getattr(model, "base_model_prefix", "")
        try:
            layers = base.encoder.layer
            groups = [
                self._groups(i, f"{prefix}.encoder.layer.{i}" if prefix else f"encoder.layer.{i}", b)
                for i, b in enumerate(layers)
            ]
            for g in groups:
                for suffix in ATTN_LINEARS + FFN_LINEARS:
                    g.linear(suffix)
        except AttributeError as exc:
            raise UsageError(
                f"{arch} does not have the BERT block layout structured pruning needs ({exc})", where=where
            ) from None
        return groups

    @staticmethod
    def _groups(index: int, name: str, block: Any) -> UnitGroups:
        heads = int(block.attention.self.num_attention_heads)
        d = int(block.attention.self.attention_head_size)
        return UnitGroups(
            index=index,
            name=name,
            module=block,
            heads=heads,
            head_rows=dict.fromkeys(ATTN_LINEARS[:3], d),
            head_out=(ATTN_LINEARS[3], d),
            ffn_width=int(block.intermediate.dense.out_features),
            ffn_in=(FFN_LINEARS[0],),
            ffn_out=FFN_LINEARS[1],
        )

    def head_ids(self, model: Any, block: UnitGroups) -> list[int]:
        """Original head index of each current head of ``block`` (from :data:`HEADS_KEY`)."""
        kept = kept_heads(model.config, block.index + 1)
        return list(range(block.heads)) if kept is None else list(kept[block.index])

    def remove_heads(self, model: Any, heads: dict[int, list[int]]) -> None:
        """Remove heads (original ids, as :meth:`head_ids` gives them) of each block; record the rest."""
        if not heads:
            return
        groups = self.unit_groups(model)
        kept = kept_heads(model.config, len(groups)) or [list(range(g.heads)) for g in groups]
        plan: dict[int, set[int]] = {}
        for i, ids in heads.items():  # check every block before cutting any
            if not 0 <= int(i) < len(groups):
                raise UsageError(f"block {i} does not exist (the model has {len(groups)} blocks)", where="remove_heads")
            current, drop = kept[int(i)], {int(h) for h in ids}
            if not drop <= set(current):
                raise UsageError(
                    f"{groups[int(i)].name} has heads {current}; cannot remove {sorted(drop - set(current))}",
                    where="remove_heads",
                )
            if len(drop) >= len(current):
                raise UsageError(
                    f"removing all {len(current)} heads would empty {groups[int(i)].name}", where="remove_heads"
                )
            plan[int(i)] = drop
        for i, drop in plan.items():
            cut_heads(groups[i], [j for j, h in enumerate(kept[i]) if h in drop])
            kept[i] = [h for h in kept[i] if h not in drop]
        record_heads(model.config, kept)

    def remove_neurons(self, model: Any, block: UnitGroups, drop: list[int]) -> None:
        if not drop:
            return
        keep = keep_index(block.ffn_width, drop)
        block.module.intermediate.dense = slice_linear(block.module.intermediate.dense, keep, 0)
        block.module.output.dense = slice_linear(block.module.output.dense, keep, 1)
        block.ffn_width = len(keep)

    def finish_structured(self, model: Any) -> list[str]:
        """Write each block's kept heads and FFN width to the config; patch ``intermediate_size`` when uniform."""
        groups = self.unit_groups(model)
        record_heads(model.config, kept_heads(model.config, len(groups)) or [list(range(g.heads)) for g in groups])
        widths = [int(g.module.intermediate.dense.out_features) for g in groups]
        setattr(model.config, FFN_WIDTHS_KEY, widths)
        if len(set(widths)) == 1:
            model.config.intermediate_size = widths[0]
        return [
            f"config patched: {HEADS_KEY} (heads per block {[g.heads for g in groups]}), {FFN_WIDTHS_KEY}={widths}"
            + (", intermediate_size" if len(set(widths)) == 1 else " (non-uniform)")
            + "; reload with load_pruned"
        ]

    def load_pruned(self, directory: Path, config: Any) -> Any:
        """Build the dense architecture, cut each block to its recorded heads and FFN width, load the weights."""
        from safetensors.torch import load_file
        from transformers import AutoModelForSequenceClassification
        from transformers.modeling_utils import load_sharded_checkpoint

        d = Path(directory)
        where = str(d / "config.json")
        if config.model_type not in STRUCTURED_MODEL_TYPES:
            raise UsageError(
                f"load_pruned supports {', '.join(STRUCTURED_MODEL_TYPES)}; {d} holds model_type {config.model_type!r}",
                where="load_pruned",
            )
        config = copy.deepcopy(config)
        n_blocks = int(config.num_hidden_layers)
        if getattr(config, HEADS_KEY, None) is None and getattr(config, LEGACY_HEADS_KEY, None):
            log.info("%s: converting the earlier %s record to %s", where, LEGACY_HEADS_KEY, HEADS_KEY)
        try:
            kept = kept_heads(config, n_blocks)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"unreadable {HEADS_KEY}: {exc}", where=where) from None
        if getattr(config, LEGACY_HEADS_KEY, None):
            setattr(config, LEGACY_HEADS_KEY, {})  # never let transformers apply it
        widths = getattr(config, FFN_WIDTHS_KEY, None)
        model = AutoModelForSequenceClassification.from_config(config)
        groups = self.unit_groups(model)
        if kept is not None:
            if len(kept) != len(groups):
                raise ModelError(f"{HEADS_KEY} lists {len(kept)} blocks but the model has {len(groups)}", where=where)
            for g, ids in zip(groups, kept, strict=True):
                if not ids or len(set(ids)) != len(ids) or not set(ids) <= set(range(g.heads)):
                    raise ModelError(
                        f"{HEADS_KEY} keeps heads {ids} of block {g.index}, which has heads 0..{g.heads - 1}",
                        where=where,
                    )
                cut_heads(g, [h for h in range(g.heads) if h not in set(ids)])
            record_heads(model.config, kept)
        if widths is not None:
            if len(widths) != len(groups):
                raise ModelError(
                    f"{FFN_WIDTHS_KEY} lists {len(widths)} widths but the model has {len(groups)} blocks", where=where
                )
            for g, w in zip(groups, widths, strict=True):
                if not 0 < int(w) <= g.ffn_width:
                    raise ModelError(f"{FFN_WIDTHS_KEY} gives block {g.index} width {w} of {g.ffn_width}", where=where)
                self.remove_neurons(model, g, list(range(int(w), g.ffn_width)))
        try:
            if (d / "model.safetensors").is_file():
                missing, unexpected = model.load_state_dict(load_file(str(d / "model.safetensors")), strict=False)
                if missing or unexpected:
                    raise RuntimeError(f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")
            elif (d / "model.safetensors.index.json").is_file():
                load_sharded_checkpoint(model, d, strict=True)
            else:
                raise ModelError(f"{d} has no model.safetensors", where="load_pruned")
        except RuntimeError as exc:
            raise ModelError(f"the weights in {d} do not fit the pruned shapes: {exc}", where="load_pruned") from None
        model.eval()
        return model

    # -- inference ---------------------------------------------------------------
    def predictor(self, tokenizer: Any, *, max_length: int, batch_size: int, device: str = "cpu") -> Any:
        from audit.inference import Predictor

        return Predictor(tokenizer, max_length=max_length, batch_size=batch_size, device=device)

    # -- deployment ----------------------------------------------------------------
    def probe_batches(self, eval_set: Any, predictor: Any, k: int) -> list[dict[str, Any]]:
        import numpy as np

        probe = eval_set.subset(np.arange(min(k, len(eval_set))), name=eval_set.name)
        return predictor.encode(probe.texts, probe.text_pairs).batches

    def probe_outputs(self, model: Any, batches: list[dict[str, Any]]) -> Any:
        from audit.deploy.verify import probe_logits

        return probe_logits(model, batches)

    # -- data --------------------------------------------------------------------
    def data_identity(self, eval_set: Any, predictor: Any) -> Any:
        """The eval set's identity, with its truncation at ``model.max_length`` recorded."""
        from audit.data import record_truncation

        record_truncation(eval_set, predictor)  # the encoding is cached: the suites reuse it
        return eval_set.identity


# -- heads: our own removal and record -----------------------------------------------
def is_pruned_config(config: Any) -> bool:
    """Whether a checkpoint's config records structured pruning (ours, or an earlier version's)."""
    return any(getattr(config, k, None) for k in (HEADS_KEY, FFN_WIDTHS_KEY, LEGACY_HEADS_KEY))


def kept_heads(config: Any, n_blocks: int) -> list[list[int]] | None:
    """Per block, the original ids of the heads kept; None when no block lost a head.

    Read from :data:`HEADS_KEY`; a config of an earlier version, with HF's
    ``pruned_heads`` (block -> removed ids; JSON keys are strings) instead, is converted.
    """
    record = getattr(config, HEADS_KEY, None)
    if record is not None:
        return [[int(h) for h in ids] for ids in record]
    legacy = getattr(config, LEGACY_HEADS_KEY, None) or {}
    if not legacy:
        return None
    gone = {int(k): {int(h) for h in v} for k, v in dict(legacy).items()}
    total = int(config.num_attention_heads)
    return [[h for h in range(total) if h not in gone.get(i, set())] for i in range(n_blocks)]


def record_heads(config: Any, kept: list[list[int]]) -> None:
    """Write the kept heads to :data:`HEADS_KEY` (HF's ``pruned_heads``, if any, is cleared: it is converted)."""
    setattr(config, HEADS_KEY, [sorted(int(h) for h in ids) for ids in kept])
    if getattr(config, LEGACY_HEADS_KEY, None):
        setattr(config, LEGACY_HEADS_KEY, {})


def cut_heads(block: UnitGroups, drop: list[int]) -> None:
    """Remove heads ``drop`` (positions among the block's current heads) of one BERT-family block.

    Their rows of query/key/value (weights and biases) and their input columns of
    ``attention.output.dense`` go; ``num_attention_heads`` and ``all_head_size``, which
    the attention's forward reads, follow. The head size is unchanged.
    """
    drop = sorted({int(j) for j in drop})
    if not drop:
        return
    attn = block.module.attention
    sa = attn.self
    n, d = int(sa.num_attention_heads), int(sa.attention_head_size)
    if drop[0] < 0 or drop[-1] >= n:
        raise UsageError(f"{block.name} has {n} heads; cannot remove positions {drop}", where="structured pruning")
    if len(drop) >= n:
        raise UsageError(f"removing all {n} heads would empty {block.name}", where="structured pruning")
    keep = keep_index(n * d, head_rows(drop, d))
    for name in ("query", "key", "value"):
        setattr(sa, name, slice_linear(getattr(sa, name), keep, 0))
    attn.output.dense = slice_linear(attn.output.dense, keep, 1)
    sa.num_attention_heads = n - len(drop)
    sa.all_head_size = sa.num_attention_heads * d
    block.heads = sa.num_attention_heads
