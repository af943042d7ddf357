"""Calibration data for data-aware pruners, and the block-by-block engine that feeds
each Linear layer's input activations to a statistic (Wanda's norms, SparseGPT's
Hessian).

Seeds: the calibration sample of a sweep point is drawn with
``numpy.random.default_rng([calibration.seed, point.seed])``, so the seed axis of the
sweep varies the calibration data of Wanda, SparseGPT, gradient and gradual pruning
(and the fine-tuning order of gradual pruning). When ``calibration.n`` is at least
the split's size, every seed sees the same examples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from audit.fingerprint import texts_sha256
from audit.models import adapter_of
from audit.pruning.base import CalibrationData
from audit.results import CalibrationRecord

log = logging.getLogger(__name__)


def draw_calibration(
    eval_set: Any,
    predictor: Any,
    *,
    n: int,
    seed: int,
    point_seed: int,
    dataset: str,
    split: str,
) -> CalibrationData:
    """Draw ``n`` examples of ``eval_set`` (an :class:`audit.data.EvalSet`) and tokenize them.

    Args:
        eval_set: The calibration split, loaded.
        predictor: The run's :class:`audit.inference.Predictor` (tokenizer, batch size).
        n: Examples wanted (capped at the split's size).
        seed: The configured calibration seed.
        point_seed: The sweep point's seed.
        dataset: Id of the dataset, for the record.
        split: Name of the split, for the record.
    """
    rng = np.random.default_rng([int(seed), int(point_seed)])
    n = min(int(n), len(eval_set))
    idx = np.sort(rng.choice(len(eval_set), size=n, replace=False))
    sub = eval_set.subset(idx, name=eval_set.name)
    enc = predictor.encode(sub.texts, sub.text_pairs)
    labels = torch.from_numpy(np.asarray(sub.labels)) if sub.labels is not None else None
    bs = predictor.batch_size
    batch_labels = (
        [labels[torch.from_numpy(enc.order[i : i + bs])] for i in range(0, n, bs)] if labels is not None else []
    )
    record = CalibrationRecord(
        dataset=dataset,
        split=split,
        n=n,
        seed=int(seed),
        point_seed=int(point_seed),
        fingerprint=texts_sha256(sub.texts, sub.labels.tolist() if sub.labels is not None else ()),
        batches=len(enc.batches),
        tokens=int(sum(int(b["attention_mask"].sum()) for b in enc.batches)),
    )
    return CalibrationData(
        texts=sub.texts,
        labels=sub.labels,
        batches=enc.batches,
        batch_labels=batch_labels,
        record=record,
    )


class CalibrationSampler:
    """Draws (once per seed) and caches the calibration sample of each sweep seed."""

    def __init__(self, eval_set: Any, predictor: Any, *, n: int, seed: int, dataset: str, split: str) -> None:
        self.eval_set = eval_set
        self.predictor = predictor
        self.n = n
        self.seed = seed
        self.dataset = dataset
        self.split = split
        self.drawn: dict[int, CalibrationData] = {}

    def __call__(self, point_seed: int) -> CalibrationData:
        if point_seed not in self.drawn:
            self.drawn[point_seed] = draw_calibration(
                self.eval_set,
                self.predictor,
                n=self.n,
                seed=self.seed,
                point_seed=point_seed,
                dataset=self.dataset,
                split=self.split,
            )
        return self.drawn[point_seed]


class InputStat(Protocol):
    """A statistic of one Linear layer's inputs, fed ``[tokens, in_features]`` chunks."""

    def add(self, x: torch.Tensor) -> None: ...


class _Stop(Exception):
    """Raised by a hook to stop a forward pass once the wanted inputs are captured."""


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device) for k, v in batch.items()}


def labelled_loss(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    labels: torch.Tensor,
    device: torch.device,
    reduction: str = "mean",
) -> torch.Tensor:
    """The model's loss on one labelled calibration batch (the adapter's; a classifier: cross-entropy)."""
    adapter = adapter_of(model, where="sweep.calibration")
    return adapter.loss(model, to_device(batch, device), labels.to(device), reduction)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the block; the model's previous mode is restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The transformer blocks (module path, ``ModuleList``), as the model's adapter finds them."""
    return adapter_of(model, where="pruning").blocks(model)


def tokens_of(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``[tokens, features]`` rows of ``x``; padded positions dropped when ``mask`` fits.

    ``x`` is ``[batch, seq, features]``, or ``[batch * seq, features]`` where a block
    flattens its tokens (OPT's MLP does).
    """
    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask]
    if mask is not None and x.dim() == 2 and mask.dim() == 2 and x.shape[0] == mask.numel():
        return x[mask.reshape(-1)]
    return x.reshape(-1, x.shape[-1])


@dataclass
class _State:
    mask: torch.Tensor | None = None


def _hook_inputs(
    modules: list[tuple[str, nn.Module]], stats: dict[str, InputStat], state: _State
) -> list[torch.utils.hooks.RemovableHandle]:
    handles = []
    for name, module in modules:
        stat = stats[name]

        def hook(_mod: nn.Module, inp: tuple[torch.Tensor, ...], _out: Any, stat: InputStat = stat) -> None:
            stat.add(tokens_of(inp[0].detach(), state.mask))

        handles.append(module.register_forward_hook(hook))
    return handles


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


_CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past")


@contextmanager
def _no_kv_cache(model: nn.Module) -> Iterator[None]:
    """``config.use_cache`` off for the forward passes (a decoder would append each block re-run to its KV cache)."""
    config = getattr(model, "config", None)
    had = config is not None and hasattr(config, "use_cache")
    old = getattr(config, "use_cache", None)
    if had:
        config.use_cache = False
    try:
        yield
    finally:
        if had:
            config.use_cache = old


def _without_cache(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A block call's arguments with any cache object dropped and ``use_cache`` off, so re-running it is pure."""
    from transformers.cache_utils import Cache

    args = tuple(None if isinstance(a, Cache) else a for a in args)
    kwargs = {k: (None if k in _CACHE_KWARGS or isinstance(v, Cache) else v) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return args, kwargs


Captured = list[tuple[tuple[Any, ...], dict[str, Any]]]


@torch.no_grad()
def block_inputs(model: nn.Module, first_block: nn.Module, batches: list[dict[str, torch.Tensor]]) -> Captured:
    """The arguments the model passes to its first block, one ``(args, kwargs)`` per batch.

    They carry what the model computed before the blocks: attention masks in the
    block's own form (a decoder's causal mask), ``position_ids``, rotary
    ``position_embeddings``, ``cache_position``. The forward pass stops at the block;
    the KV cache is off while it runs, and any cache argument is dropped.
    """
    captured: Captured = []

    def catch(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append(_without_cache(args, kwargs))
        raise _Stop

    handle = first_block.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with _no_kv_cache(model):
            for batch in batches:
                try:
                    model(**batch)
                except _Stop:
                    pass
    finally:
        handle.remove()
    if len(captured) != len(batches):
        raise RuntimeError(f"the first block ran for {len(captured)} of {len(batches)} calibration batches")
    return captured


@torch.no_grad()
def block_outputs(block: nn.Module, captured: Captured) -> Captured:
    """Run ``block`` on each captured call; the outputs replace the hidden states for the next block."""
    nxt: Captured = []
    for args, kwargs in captured:
        hidden = _hidden(block(*args, **kwargs))
        if args:
            nxt.append(((hidden, *args[1:]), kwargs))
        else:
            nxt.append(((), {**kwargs, "hidden_states": hidden}))
    return nxt


@torch.no_grad()
def sequential_calibrate(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    calibration: CalibrationData,
    *,
    make_stat: Callable[[str, nn.Module], InputStat],
    finish: Callable[[str, nn.Module, InputStat], None],
    blocks: tuple[str, nn.ModuleList] | None = None,
) -> list[str]:
    """Feed each selected layer's calibration inputs to a statistic, then let ``finish`` prune it.

    Blocks are processed in order, as in the reference SparseGPT and Wanda code: the
    inputs of the first block are captured once; for each block the statistics of all
    its selected layers are collected in one pass over the (still dense) block, the
    layers are pruned, and the pruned block's outputs become the next block's inputs.
    Selected layers outside the blocks (or every layer, when the model has no block
    list) are handled last with full forward passes through the pruned model. Padded
    token positions never enter a statistic.

    Decoders: the block calls keep the model's own causal mask, ``position_ids`` and
    rotary ``position_embeddings`` (captured as keyword arguments); the KV cache is off
    throughout, so re-running a block does not attend to its own earlier run.

    Args:
        model: The model being pruned (in place).
        layers: ``(name, module)`` of the selected Linear layers.
        calibration: The tokenized calibration batches.
        make_stat: Builds the empty statistic of one layer.
        finish: Prunes one layer from its filled statistic.
        blocks: ``(prefix, ModuleList)`` of the transformer blocks; found with
            :func:`find_blocks` when not given (a model adapter knows them).

    Returns:
        Notes for the :class:`~audit.results.PruningRecord`.
    """
    device = model_device(model)
    found = blocks if blocks is not None else find_blocks(model)
    by_block: dict[int, list[tuple[str, nn.Module]]] = {}
    rest: list[tuple[str, nn.Module]] = []
    if found is not None:
        prefix, block_list = found
        for name, module in layers:
            head = f"{prefix}."
            if name.startswith(head):
                by_block.setdefault(int(name[len(head) :].split(".", 1)[0]), []).append((name, module))
            else:
                rest.append((name, module))
    else:
        rest = list(layers)
    notes = []
    state = _State()
    batches = [to_device(b, device) for b in calibration.batches]
    masks = [b["attention_mask"].bool() if "attention_mask" in b else None for b in batches]
    if by_block:
        assert found is not None
        prefix, block_list = found
        captured = block_inputs(model, block_list[0], batches)
        last = max(by_block)
        for i in range(last + 1):
            block = block_list[i]
            chosen = by_block.get(i, [])
            if chosen:
                stats = {name: make_stat(name, module) for name, module in chosen}
                handles = _hook_inputs(chosen, stats, state)
                try:
                    for (args, kwargs), mask in zip(captured, masks, strict=True):
                        state.mask = mask
                        block(*args, **kwargs)
                finally:
                    for h in handles:
                        h.remove()
                for name, module in chosen:
                    finish(name, module, stats.pop(name))
            if i == last:
                break
            captured = block_outputs(block, captured)
        notes.append(
            f"layers pruned block by block through {prefix} ({len(by_block)} blocks); each block's inputs come "
            "from the already pruned blocks before it"
        )
    if rest:
        stats = {name: make_stat(name, module) for name, module in rest}
        handles = _hook_inputs(rest, stats, state)
        try:
            with _no_kv_cache(model):
                for batch, mask in zip(batches, masks, strict=True):
                    state.mask = mask
                    model(**batch)
        finally:
            for h in handles:
                h.remove()
        for name, module in rest:
            finish(name, module, stats.pop(name))
        notes.append(f"{len(rest)} layer(s) outside the transformer blocks calibrated from full forward passes")
    return notes


class SquaredNorm:
    """Per-input-feature sum of squares over calibration tokens (``||X_j||_2^2``)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.sum_sq = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        self.sum_sq += x.double().pow(2).sum(dim=0)
        self.tokens += x.shape[0]

    def norm(self) -> torch.Tensor:
        return self.sum_sq.sqrt()


class Hessian:
    """``H = 2/N sum_t x_t x_t^T`` over calibration tokens, as SparseGPT's ``add_batch``."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.H = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        t = x.shape[0]
        if t == 0:
            return
        self.H *= self.tokens / (self.tokens + t)
        self.tokens += t
        x = x.float()
        self.H += (x.T @ x).double() * (2.0 / self.tokens)
