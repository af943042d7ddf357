"""The causal-LM adapter: decoder-only Hugging Face ``*ForCausalLM`` / ``*LMHeadModel`` checkpoints.

Loading: a local Hugging Face directory through ``AutoModelForCausalLM`` (safetensors
unless pickle is allowed, ``trust_remote_code`` always off, local files only), or a GGUF
file (``model.gguf_file``) through :func:`audit.models.gguf.load_gguf` (dequantized by
transformers' GGUF loader, cached as safetensors keyed by the file's sha256, which is then
the model's fingerprint; the identity records that the weights were quantized upstream
and the GGUF file type). GPT-2's ``Conv1D`` layers become ``nn.Linear`` at load
(:func:`audit.models.decoders.convert_conv1d`, the same arithmetic), so every pruning
method and deploy format applies. A tokenizer without a pad token pads with EOS.

Layout (:mod:`audit.models.decoders`): the decoder blocks' Linear layers are the
prunable ones; the LM head and the embeddings never are. Structured pruning
(:mod:`audit.models.decoder_prune`): a unit is a key-value group with the query heads
that read it (one head under multi-head attention), so the GQA ratio is kept; an FFN
neuron is a row of gate and up (or fc_in) with the matching column of down. Saved and
reloaded with our own code (:func:`~audit.pruning.structured.save_pruned`, which records the
per-block widths, and :func:`~audit.models.decoder_prune.load_decoder`), never ``prune_heads``.

The predictor (:class:`LMPredictor`) is what suites for causal LMs get as
``ctx.predictor``: ``tokenizer``, ``max_length``, ``batch_size`` and ``device``, plus the
tokenize-once ``encode`` of :class:`audit.inference.Predictor` (calibration and the probe
use it). With ``model.zero_shot`` it is a zero-shot classifier: its class logits are the
choices' log-likelihoods after the filled-in template (:meth:`LMPredictor.logits`), so the
classifier suites (performance, ood, bias, adversarial) run on it unchanged; without it
they refuse a causal LM before any work. Deployment compares next-token logits on every real token
of the probe texts (:meth:`CausalLMAdapter.probe_outputs`, at most
:data:`PROBE_TOKENS` rows in all).
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from audit import timing
from audit.errors import ModelError, UsageError
from audit.fingerprint import dir_sha256, short
from audit.inference import Predictor, _key
from audit.models.adapter import ModelAdapter, UnitGroups

log = logging.getLogger(__name__)

SAFE_FILES = ("model.safetensors", "model.safetensors.index.json")
PROBE_TOKENS = 256
"""Real-token rows the equivalence probe compares in all (each row is a vocabulary of logits)."""
PROBE_TEXTS = 8
"""Probe texts at most (``deploy.probe_size`` caps it lower)."""


class LMPredictor(Predictor):
    """The causal-LM predictor: the tokenizer and run settings suites need, tokenizing once per set.

    Contract for LM suites: ``tokenizer`` (a Hugging Face tokenizer with a pad token),
    ``max_length`` (``model.max_length``), ``batch_size`` (``runtime.batch_size``),
    ``device`` (a ``torch.device``); pass them to :mod:`audit.models.lm_scoring`. ``encode`` pads
    on the right with an attention mask.

    Class logits exist only with ``zero_shot`` (a :class:`audit.config.ZeroShotConfig`): row ``i``
    holds, per choice, the summed log-likelihood of ``delimiter + choice`` after the template
    filled with ``texts[i]`` (and ``pairs[i]``), scored as lm-evaluation-harness scores multiple
    choice (:func:`audit.models.lm_scoring.score_choices`; inputs longer than ``max_length``
    tokens are cut on the left), divided by the choice's length in characters with
    ``normalize: chars``. ``proba`` is their softmax over the choices. Scores are kept per model
    object and texts (``score_cache`` sets, least recently used first out), so the suites that
    score the eval set score it once per model; a model must not be changed in place between
    calls (the runner never does: every variant is its own copy).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_length: int = 128,
        batch_size: int = 32,
        device: str = "cpu",
        cache_size: int = 64,
        zero_shot: Any = None,
        score_cache: int = 32,
    ) -> None:
        super().__init__(tokenizer, max_length=max_length, batch_size=batch_size, device=device, cache_size=cache_size)
        self.zero_shot = zero_shot
        self._scores: OrderedDict[tuple[int, str], tuple[Any, np.ndarray, float]] = OrderedDict()
        self._score_cache = score_cache

    def derive(self, *, batch_size: int, cache_size: int = 1) -> LMPredictor:
        """The same scoring with another batch size and caches (the adversarial suite's, which memoises itself)."""
        return LMPredictor(
            self.tokenizer,
            max_length=self.max_length,
            batch_size=batch_size,
            device=str(self.device),
            cache_size=cache_size,
            zero_shot=self.zero_shot,
            score_cache=0,
        )

    def prompts(self, texts: list[str], pairs: list[str] | None = None) -> list[str]:
        """The zero-shot template filled in with each text (and its pair)."""
        zs = self._zero_shot()
        if zs.uses_pairs and pairs is None:
            raise UsageError(
                "model.zero_shot.template uses {text_pair}, but these texts come without pairs",
                where="model.zero_shot.template",
                hint="drop {text_pair} from the template, or name the pair column (columns.text_pair) of every set",
            )
        if pairs is not None and not zs.uses_pairs:
            raise UsageError(
                "these texts come with text pairs, but model.zero_shot.template has no {text_pair}: the second text "
                "would never reach the model",
                where="model.zero_shot.template",
                hint="put {text_pair} into the template",
            )
        if pairs is not None:
            return [zs.template.format(text=t, text_pair=p) for t, p in zip(texts, pairs, strict=True)]
        return [zs.template.format(text=t) for t in texts]

    def _zero_shot(self) -> Any:
        if self.zero_shot is None:
            raise UsageError(
                "a causal LM has class logits only as a zero-shot classifier, and model.zero_shot is not set",
                where="model.zero_shot",
                hint="set model.zero_shot (a prompt template with {text} and one choice per class)",
            )
        return self.zero_shot

    def logits(
        self, model: Any, texts: list[str], pairs: list[str] | None = None, batch_size: int | None = None
    ) -> Any:
        """Per text, each choice's (normalised) log-likelihood: ``[n, choices]`` float64, in the order of ``texts``."""
        from audit.models.lm_scoring import score_choices

        zs = self._zero_shot()
        contexts = self.prompts(list(texts), list(pairs) if pairs is not None else None)
        key = (id(model), _key(contexts, None, self.max_length, 0))
        hit = self._scores.get(key)
        if hit is not None and hit[0]() is model:
            self._scores.move_to_end(key)
            timing.credit_reused(hit[2])  # the scoring forwards this suite did not run again
            return hit[1].copy()
        if not contexts:
            return np.zeros((0, len(zs.choices)), dtype=np.float64)
        f0 = timing.forward_seconds()
        scores = score_choices(
            model,
            self.tokenizer,
            contexts,
            list(zs.choices),
            delimiter=zs.delimiter,
            batch_size=batch_size or self.batch_size,
            max_length=self.max_length,
        )
        out = scores.loglik / scores.char_len if zs.normalize == "chars" else scores.loglik
        out = np.asarray(out, dtype=np.float64)
        self.forward_calls += 1
        self.examples_seen += len(contexts)
        if self._score_cache > 0:
            f1 = timing.forward_seconds()
            self._scores[key] = (weakref.ref(model), out, 0.0 if f0 is None or f1 is None else f1 - f0)
            while len(self._scores) > self._score_cache:
                self._scores.popitem(last=False)
        return out.copy()


class CausalLMAdapter(ModelAdapter):
    """Decoder-only causal LMs: next-token logits."""

    # -- loading ---------------------------------------------------------------
    def load(self, spec: Any, local: Path | None, *, offline: bool, hf_config: Any = None, common: Any = None) -> Any:
        from audit.model_io import LoadedModel
        from audit.models.decoders import convert_conv1d

        if getattr(spec, "gguf_file", None):
            if local is None:
                raise UsageError("model.gguf_file was not resolved to a path", where="model.gguf_file")
            model, tokenizer, identity = self._load_gguf(spec, local)
            source_dir = None
        else:
            model, tokenizer, identity = self._load_dir(spec, local, offline=offline, hf_config=hf_config)
            source_dir = local
        converted = convert_conv1d(model)
        if converted:
            log.info("converted %d GPT-2 Conv1D layers to nn.Linear", len(converted))
        from audit.models.decoders import decoder_blocks

        decoder_blocks(model)  # an unsupported layout is refused here, before any work
        _pad_with_eos(tokenizer)
        model.eval()
        log.info(
            "loaded %s (%s, %.1fM params, fingerprint %s)",
            identity.source,
            identity.architecture,
            identity.params_total / 1e6,
            short(identity.fingerprint),
        )
        return LoadedModel(model=model, tokenizer=tokenizer, identity=identity, source_dir=source_dir, adapter=self)

    def _load_dir(self, spec: Any, local: Path | None, *, offline: bool, hf_config: Any) -> tuple[Any, Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from audit.model_io import first_line, read_hf_config
        from audit.results import ModelIdentity

        source = str(local) if local is not None else str(spec.hub_id)
        where = f"model.path={spec.path}" if local is not None else f"model.hub_id={spec.hub_id}"
        if hf_config is None:
            hf_config, _ = read_hf_config(spec, local, offline=offline)
        kw: dict[str, Any] = {"trust_remote_code": False, "local_files_only": offline or local is not None}
        if spec.revision and local is None:
            kw["revision"] = spec.revision
        use_safetensors = not spec.allow_pickle or (
            local is not None and any((local / f).is_file() for f in SAFE_FILES)
        )
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kw)
            model = AutoModelForCausalLM.from_pretrained(
                source, config=hf_config, use_safetensors=use_safetensors, **kw
            )
        except ValueError as exc:
            raise ModelError(f"not a causal-LM checkpoint: {first_line(exc)}", where=where) from None
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"cannot load the model: {first_line(exc)}", where=where) from None
        if local is not None:
            fingerprint = dir_sha256(local)
        else:
            fingerprint = f"hub:{spec.hub_id}@{getattr(hf_config, '_commit_hash', None) or spec.revision}"
        identity = ModelIdentity(
            source=source,
            revision=spec.revision or getattr(hf_config, "_commit_hash", None),
            fingerprint=fingerprint,
            architecture=(getattr(hf_config, "architectures", None) or [type(model).__name__])[0],
            params_total=int(sum(p.numel() for p in model.parameters())),
            kind="causal-lm",
            **_class_labels(spec),
        )
        return model, tokenizer, identity

    def _load_gguf(self, spec: Any, path: Path) -> tuple[Any, Any, Any]:
        from audit.models.gguf import load_gguf
        from audit.results import ModelIdentity

        loaded = load_gguf(path)
        model = loaded.model
        identity = ModelIdentity(
            source=str(path),
            fingerprint=loaded.info.sha256,
            architecture=(getattr(model.config, "architectures", None) or [type(model).__name__])[0],
            params_total=int(sum(p.numel() for p in model.parameters())),
            kind="causal-lm",
            gguf=loaded.info.record(),
            **_class_labels(spec),
        )
        return model, loaded.tokenizer, identity

    # -- pruning ---------------------------------------------------------------
    def blocks(self, model: Any) -> tuple[str, Any] | None:
        from audit.models.decoders import decoder_blocks, get_module

        blocks = decoder_blocks(model)
        if not blocks:
            return None
        path = blocks[0].name.rpartition(".")[0]
        return path, get_module(model, path)

    def prunable_linears(self, model: Any) -> list[tuple[str, Any]]:
        from audit.models.decoders import prunable_linears

        return prunable_linears(model)

    def layer_groups(self, model: Any) -> list[Any]:
        """Per decoder block, its attention projections and its MLP layers (from the family's layout)."""
        from audit.models.adapter import LayerGroup
        from audit.models.decoders import decoder_blocks

        out = []
        for b in decoder_blocks(model):
            out.append(LayerGroup(b.index, b.name, "attention", tuple(b.linear_name(r) for r in b.attention_roles)))
            out.append(LayerGroup(b.index, b.name, "ffn", tuple(b.linear_name(r) for r in b.mlp_roles)))
        return out

    def protected_modules(self, model: Any) -> list[str]:
        """The LM head, the embeddings and the final norm: never pruned, never converted by deployment."""
        from audit.models.decoders import protected_modules

        return protected_modules(model)

    def loss(self, model: Any, batch: dict[str, Any], labels: Any, reduction: str = "mean") -> Any:
        """Next-token cross-entropy over the real tokens (``labels`` unused: the text is its own target)."""
        import torch.nn.functional as F

        logits, target = self.training_rows(model, batch, labels)
        return F.cross_entropy(logits, target, reduction=reduction)

    def training_rows(self, model: Any, batch: dict[str, Any], labels: Any) -> tuple[Any, Any]:
        """One row per real next token: the logits at position ``t`` and the token at ``t + 1``
        (padded positions dropped; ``labels`` unused).
        """
        import torch

        out = model(**batch, use_cache=False)
        logits = out.logits[:, :-1].float()
        target = batch["input_ids"][:, 1:].to(logits.device)
        mask = batch.get("attention_mask")
        keep = (mask[:, 1:] != 0).to(logits.device) if mask is not None else torch.ones_like(target, dtype=torch.bool)
        return logits[keep], target[keep]

    def unit_groups(self, model: Any, *, where: str = "method 'structured'") -> list[UnitGroups]:
        from audit.models.decoders import decoder_blocks

        out = []
        for b in decoder_blocks(model):
            lay, d, gs = b.layout, b.head_dim, b.group_size
            if lay.fused:
                # rows per unit in total; GPT-2's [q | k | v] rows of a head are not contiguous, so
                # scores (norm_scores) and removal (remove_heads) go through decoder_prune
                head_rows = {lay.qkv: 3 * d}
            else:
                head_rows = {lay.q: gs * d, lay.k: d, lay.v: d}
            ffn_in = (lay.gate, lay.up) if lay.gated else (lay.fc_in,)
            out.append(
                UnitGroups(
                    index=b.index,
                    name=b.name,
                    module=b.module,
                    heads=b.kv_heads,
                    head_rows=head_rows,  # type: ignore[arg-type]
                    head_out=(lay.o, gs * d),
                    ffn_width=b.ffn,
                    ffn_in=ffn_in,  # type: ignore[arg-type]
                    ffn_out=lay.down,
                    extra={"block": b, "query_heads": b.heads, "group_size": gs},
                )
            )
        return out

    def norm_scores(self, model: Any, blocks: list[UnitGroups], p: int) -> tuple[dict[int, Any], dict[int, Any]]:
        """Weight-norm scores per key-value group and per neuron (fused qkv rows found by their order)."""
        from audit.models.decoder_prune import group_scores, neuron_scores

        return group_scores(model, p), neuron_scores(model, p)

    def remove_heads(self, model: Any, heads: dict[int, list[int]]) -> None:
        """Remove key-value groups (with their query heads), by position, per block index."""
        from audit.models.decoder_prune import remove_kv_groups
        from audit.models.decoders import decoder_blocks

        blocks = {b.index: b for b in decoder_blocks(model)}
        for i, drop in heads.items():
            if drop:
                remove_kv_groups(blocks[i], sorted(drop))

    def remove_neurons(self, model: Any, block: UnitGroups, drop: list[int]) -> None:
        from audit.models.decoder_prune import remove_neurons

        if not drop:
            return
        remove_neurons(block.extra["block"], sorted(drop))
        block.ffn_width -= len(set(drop))

    def finish_structured(self, model: Any) -> list[str]:
        from audit.models.decoder_prune import SHAPES_KEY, patch_decoder_config

        shapes = patch_decoder_config(model)
        return [
            f"config patched: {SHAPES_KEY} (heads {shapes['heads']}, kv_heads {shapes['kv_heads']}, "
            f"ffn {shapes['ffn']}); reload with load_pruned"
        ]

    def save_pruned(self, model: Any, directory: Path, tokenizer: Any = None) -> None:
        from audit.models.decoder_prune import patch_decoder_config

        patch_decoder_config(model)
        model.save_pretrained(directory, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    def load_pruned(self, directory: Path, config: Any) -> Any:
        from audit.models.decoder_prune import load_decoder

        return load_decoder(directory)

    # -- inference ---------------------------------------------------------------
    def predictor(
        self, tokenizer: Any, *, max_length: int, batch_size: int, device: str = "cpu", zero_shot: Any = None
    ) -> Any:
        """An :class:`LMPredictor`; with ``zero_shot`` (``model.zero_shot``) it has class logits, one per choice."""
        _pad_with_eos(tokenizer)
        return LMPredictor(tokenizer, max_length=max_length, batch_size=batch_size, device=device, zero_shot=zero_shot)

    def id2label(self, loaded: Any, spec: Any) -> dict[int, str]:
        """The choices of ``model.zero_shot`` (stripped), or none: a causal LM has no classes of its own."""
        zs = getattr(spec, "zero_shot", None)
        return zs.id2label if zs is not None else {}

    # -- deployment ----------------------------------------------------------------
    def probe_batches(self, eval_set: Any, predictor: Any, k: int) -> list[dict[str, Any]]:
        """The first ``min(k, PROBE_TEXTS)`` texts, right-padded, each cut to ``PROBE_TOKENS // texts`` tokens.

        Fewer, longer texts rather than many short ones: later positions (rotary angles, a
        longer attention span) are compared too, within the :data:`PROBE_TOKENS` budget.
        """
        import numpy as np
        import torch

        n = min(k, len(eval_set), PROBE_TEXTS)
        probe = eval_set.subset(np.arange(n), name=eval_set.name)
        per_text = max(2, PROBE_TOKENS // max(1, n))
        out = []
        for b in predictor.encode(probe.texts).batches:
            width = min(int(b["input_ids"].shape[1]), per_text)
            out.append({key: torch.as_tensor(v)[:, :width].contiguous() for key, v in b.items()})
        return out

    def probe_outputs(self, model: Any, batches: list[dict[str, Any]]) -> Any:
        """Next-token logits at every real token of the probe, ``[rows, vocab]`` float64, in batch order."""
        import numpy as np
        import torch

        device = next(model.parameters()).device
        rows = []
        with torch.inference_mode():
            for batch in batches:
                if device.type != "cpu":
                    batch = {k: v.to(device) for k, v in batch.items()}
                logits = model(**batch, use_cache=False).logits
                mask = batch["attention_mask"].bool()
                rows.append(logits[mask].double().cpu().numpy())
        if not rows:
            return np.zeros((0, 0))
        return np.concatenate(rows, axis=0)

    def synthetic_inputs(self, model: Any, batch: int, seq_len: int, seed: int = 0) -> dict[str, Any]:
        from audit.deploy.speed import synthetic_inputs

        inputs = synthetic_inputs(model, batch, seq_len, seed)
        inputs.pop("token_type_ids", None)
        return inputs

    # -- data --------------------------------------------------------------------
    def data_identity(self, eval_set: Any, predictor: Any) -> Any:
        """The eval set's identity, with its truncation at ``model.max_length`` recorded."""
        from audit.data import record_truncation

        record_truncation(eval_set, predictor)
        return eval_set.identity


def _class_labels(spec: Any) -> dict[str, Any]:
    """The identity's classes of a zero-shot classifier (its choices, stripped); none without ``zero_shot``."""
    zs = getattr(spec, "zero_shot", None)
    if zs is None:
        return {}
    return {"num_labels": len(zs.choices), "labels": {str(i): c for i, c in zs.id2label.items()}}


def _pad_with_eos(tokenizer: Any) -> None:
    """A tokenizer without a pad token pads with EOS (the usual choice for causal LMs)."""
    if tokenizer is not None and getattr(tokenizer, "pad_token", None) is None:
        eos = getattr(tokenizer, "eos_token", None)
        if eos is None:
            raise ModelError("the tokenizer has neither a pad token nor an EOS token to pad with", where="model")
        tokenizer.pad_token = eos
