"""Multiple-choice scoring that reads each context once: one KV-cached pass, then every continuation.

:func:`audit.models.lm_scoring.score_choices` scores ``context + delimiter + choice`` for every
choice; run as separate sequences (the lm-evaluation-harness way), a BBQ question re-reads its
~100-token context once per answer. Every choice of an example starts with the same context
ids (``encode_pair`` returns ``encode(context)`` whatever the continuation), so here:

1. the contexts of a batch of examples run once, right-padded, with ``use_cache=True``; the
   logits at each context's last real token give the first continuation token's log-prob;
2. the cache is gathered to one row per (example, choice) whose continuation has more than one
   token (``Cache.batch_select_indices`` with repeated indices), and the continuations (all but
   their last token, which is only a target) run as one right-padded batch on top of it, with
   ``position_ids`` = context length + offset and an attention mask that hides the contexts'
   padding, so every real token sees exactly the keys and positions it has in the unshared
   sequence.

The numbers equal the unshared computation up to float rounding (different matmul shapes).
A model whose forward returns no ``transformers.Cache`` (a custom module) is not handled:
:func:`shared_choice_logprobs` returns ``None`` and the caller scores the sequences one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class _NoCache(Exception):
    """The model's forward returned no reusable KV cache."""


def shared_choice_logprobs(
    model: Any,
    contexts: Sequence[list[int]],
    continuations: Sequence[Sequence[list[int]]],
    *,
    batch_size: int,
    max_tokens: int,
    pad_id: int,
) -> list[np.ndarray] | None:
    """Per example, the summed log-prob of each continuation after its context (``None``: no cache).

    ``contexts[i]``: the context token ids of example ``i`` (non-empty); ``continuations[i]``:
    its choices' continuation token ids (each non-empty). A batch holds at most ``batch_size``
    examples, ``max_tokens`` padded context tokens and ``max_tokens`` padded continuation
    tokens (an example over budget goes alone).
    """
    out: list[np.ndarray] = [np.zeros(0)] * len(contexts)
    model.eval()
    try:
        for idx in _groups(contexts, continuations, max(batch_size, 1), max_tokens):
            lps = _score_group(model, [contexts[i] for i in idx], [continuations[i] for i in idx], pad_id)
            for i, lp in zip(idx, lps, strict=True):
                out[i] = lp
    except _NoCache:
        return None
    return out


def _groups(
    contexts: Sequence[list[int]], continuations: Sequence[Sequence[list[int]]], batch_size: int, max_tokens: int
) -> list[list[int]]:
    """Examples grouped longest context first, within the row and padded-token budgets."""
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
    groups: list[list[int]] = []
    ctx_width = rows = cont_width = 0
    for i in order:
        extra = [len(c) - 1 for c in continuations[i] if len(c) > 1]
        width = max([cont_width, *extra])
        fits = (
            groups
            and len(groups[-1]) < batch_size
            and (len(groups[-1]) + 1) * ctx_width <= max_tokens
            and (rows + len(extra)) * width <= max_tokens
        )
        if fits:
            groups[-1].append(i)
            rows, cont_width = rows + len(extra), width
        else:
            groups.append([i])
            ctx_width, rows, cont_width = len(contexts[i]), len(extra), max(extra, default=0)
    return groups


def _score_group(
    model: Any, contexts: list[list[int]], conts: list[Sequence[list[int]]], pad_id: int
) -> list[np.ndarray]:
    import torch

    device = next(model.parameters()).device
    n, width = len(contexts), max(len(c) for c in contexts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for row, ctx in enumerate(contexts):
        ids[row, : len(ctx)] = torch.tensor(ctx)
        mask[row, : len(ctx)] = 1
    out = [np.zeros(len(c), dtype=np.float64) for c in conts]
    with torch.inference_mode():
        res = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True)
        cache = getattr(res, "past_key_values", None)
        if not _is_cache(cache):
            raise _NoCache
        # the first continuation token of every choice: from the context's last real position
        for row, ctx in enumerate(contexts):
            lp = torch.log_softmax(res.logits[row, len(ctx) - 1].float(), dim=-1)
            first = torch.tensor([c[0] for c in conts[row]], device=lp.device)
            out[row] += lp[first].double().cpu().numpy()
        del res
        # the rest: one row per (example, choice) with more than one token, on the shared cache
        rows = [(r, j) for r, cs in enumerate(conts) for j, c in enumerate(cs) if len(c) > 1]
        if not rows:
            return out
        w = max(len(conts[r][j]) - 1 for r, j in rows)
        c_ids = torch.full((len(rows), w), pad_id, dtype=torch.long)
        c_mask = torch.zeros((len(rows), w), dtype=torch.long)
        pos = torch.zeros((len(rows), w), dtype=torch.long)
        for k, (r, j) in enumerate(rows):
            c = conts[r][j]
            c_ids[k, : len(c) - 1] = torch.tensor(c[:-1])
            c_mask[k, : len(c) - 1] = 1
            pos[k] = len(contexts[r]) + torch.arange(w)
        select = torch.tensor([r for r, _ in rows], device=device)
        cache.batch_select_indices(select)
        full_mask = torch.cat([mask.to(device)[select], c_mask.to(device)], dim=1)
        logits = model(
            input_ids=c_ids.to(device),
            attention_mask=full_mask,
            position_ids=pos.to(device),
            past_key_values=cache,
            use_cache=True,
        ).logits
        for k, (r, j) in enumerate(rows):
            c = conts[r][j]
            lp = torch.log_softmax(logits[k, : len(c) - 1].float(), dim=-1)
            target = torch.tensor(c[1:], device=lp.device)
            out[r][j] += float(lp.gather(-1, target[:, None]).sum(dtype=torch.float64))
        del logits, cache
    return out


def _is_cache(cache: Any) -> bool:
    try:
        from transformers import Cache
    except ImportError:  # pragma: no cover - transformers is a dependency of every causal LM here
        return False
    return isinstance(cache, Cache) and hasattr(cache, "batch_select_indices")


def count_forward_tokens(model: Any) -> tuple[dict[str, int], Any]:
    """A forward hook on ``model`` counting calls and input tokens: ``(counts, handle)`` (for tests and benchmarks)."""
    counts = {"calls": 0, "tokens": 0}

    def hook(_module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        counts["calls"] += 1
        counts["tokens"] += int(ids.numel()) if ids is not None else 0

    return counts, model.register_forward_pre_hook(hook, with_kwargs=True)
