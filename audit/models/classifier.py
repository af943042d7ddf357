"""The sequence-classifier adapter: Hugging Face ``*ForSequenceClassification`` checkpoints.

Everything the audit knows about classifiers' layout lives here: loading through
``AutoModelForSequenceClassification`` (safetensors unless pickle is allowed, the
classification head checked), the BERT-family block layout structured pruning removes
heads and FFN neurons from (``model_type`` ``bert`` — MiniLM included — and
``roberta``), the :class:`~audit.inference.Predictor` (class logits), the probe batches
and logits deployment verifies on, and the evaluated data's identity (its truncation
at ``model.max_length`` recorded).

Heads are removed with the model's own ``prune_heads`` (Hugging Face records them in
``config.pruned_heads`` and re-applies them when the model is loaded); FFN neurons by
shrinking ``intermediate.dense`` (rows) and ``output.dense`` (columns) with
``transformers.pytorch_utils.prune_linear_layer``. HF's ``BertConfig`` has a single
``intermediate_size``, so the width of every block's FFN is also written to
``config.prune_audit_ffn_widths``; when all blocks end up with the same width,
``intermediate_size`` is patched too, so that plain ``from_pretrained`` loads the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from audit.errors import ModelError, UsageError
from audit.fingerprint import dir_sha256, short
from audit.models.adapter import ModelAdapter, UnitGroups

log = logging.getLogger(__name__)

STRUCTURED_MODEL_TYPES = ("bert", "roberta")
FFN_WIDTHS_KEY = "prune_audit_ffn_widths"
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
            model, info = AutoModelForSequenceClassification.from_pretrained(
                source,
                config=hf_config,
                use_safetensors=use_safetensors,
                output_loading_info=True,
                **common,
            )
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

        out = model(**batch)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return F.cross_entropy(logits.float(), labels.to(logits.device), reduction=reduction)

    def unit_groups(self, model: Any, *, where: str = "method 'structured'") -> list[UnitGroups]:
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        arch = type(model).__name__
        if model_type not in STRUCTURED_MODEL_TYPES or not hasattr(model, "prune_heads"):
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
        """Original head index of each current head (HF indexes pruned_heads by the original heads)."""
        total = int(model.config.num_attention_heads)
        gone = set(model.config.pruned_heads.get(block.index, []))
        return [h for h in range(total) if h not in gone]

    def remove_heads(self, model: Any, heads: dict[int, list[int]]) -> None:
        if heads:
            model.prune_heads(heads)  # patches config.pruned_heads

    def remove_neurons(self, model: Any, block: UnitGroups, drop: list[int]) -> None:
        import torch
        from transformers.pytorch_utils import prune_linear_layer

        if not drop:
            return
        gone = set(drop)
        keep = torch.tensor([j for j in range(block.ffn_width) if j not in gone], dtype=torch.long)
        block.module.intermediate.dense = prune_linear_layer(block.module.intermediate.dense, keep, dim=0)
        block.module.output.dense = prune_linear_layer(block.module.output.dense, keep, dim=1)
        block.ffn_width = len(keep)

    def finish_structured(self, model: Any) -> list[str]:
        """Write each block's FFN width to the config; patch ``intermediate_size`` when uniform."""
        widths = [int(g.module.intermediate.dense.out_features) for g in self.unit_groups(model)]
        setattr(model.config, FFN_WIDTHS_KEY, widths)
        if len(set(widths)) == 1:
            model.config.intermediate_size = widths[0]
        return [
            f"config patched: pruned_heads, {FFN_WIDTHS_KEY}={widths}"
            + (", intermediate_size" if len(set(widths)) == 1 else " (non-uniform: reload with load_pruned)")
        ]

    def load_pruned(self, directory: Path, config: Any) -> Any:
        from safetensors.torch import load_file
        from transformers import AutoModelForSequenceClassification
        from transformers.modeling_utils import load_sharded_checkpoint

        d = Path(directory)
        if config.model_type not in STRUCTURED_MODEL_TYPES:
            raise UsageError(
                f"load_pruned supports {', '.join(STRUCTURED_MODEL_TYPES)}; {d} holds model_type {config.model_type!r}",
                where="load_pruned",
            )
        widths = getattr(config, FFN_WIDTHS_KEY, None)
        model = AutoModelForSequenceClassification.from_config(config)  # re-applies config.pruned_heads
        groups = self.unit_groups(model)
        if widths is not None:
            if len(widths) != len(groups):
                raise ModelError(
                    f"{FFN_WIDTHS_KEY} lists {len(widths)} widths but the model has {len(groups)} blocks",
                    where=str(d / "config.json"),
                )
            for g, w in zip(groups, widths, strict=True):
                if w != g.ffn_width:
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
