"""Scoring a causal LM: per-document NLL, zero-shot multiple choice by log-likelihood, greedy agreement.

Every function returns per-example arrays (in the order of its inputs), so that a suite can pair
a variant with dense on the same examples and bootstrap or test the pairs.

* :func:`document_nll`: summed token negative log-likelihood (nats) and token count per document.
  Each document is scored after a prefix token (BOS, else EOS: the harness's
  ``prefix_token_id``), so its first token is scored too; a document longer than the model's
  context is scored in strided sliding windows (every token scored once, with at least
  ``max_length - stride`` tokens of context; the scheme of the transformers perplexity guide,
  https://huggingface.co/docs/transformers/perplexity).
* :func:`score_choices`: lm-evaluation-harness's ``multiple_choice`` scoring. The continuation is
  ``delimiter + choice`` (the harness's ``target_delimiter``, default ``" "``); context and
  continuation are tokenized together and the continuation's tokens are the ones after the
  context's (trailing spaces of the context move to the continuation first), as in
  ``HFLM._encode_pair`` (EleutherAI/lm-evaluation-harness, lm_eval/models/huggingface.py, read
  at v0.4.7). ``acc`` takes the argmax of the summed log-probs, ``acc_norm`` the argmax of the sum
  divided by the choice's length in characters (``completion_len = len(choice)``,
  lm_eval/api/task.py, ``ConfigurableTask.process_results`` for ``multiple_choice``, read at
  commit 0004883). Special tokens are not added (the harness's default for causal LMs).
* :func:`greedy_continuations` / :func:`generation_agreement`: greedy decoding with the KV cache,
  and per prompt the fraction of the reference's tokens the variant reproduces at the same
  position (and the common prefix's share).

Padding is on the right with an attention mask, so a causal model's real tokens keep their
positions: batching does not change a score beyond float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DocumentNLL:
    """Per-document negative log-likelihood: ``nll[i]`` nats summed over ``tokens[i]`` scored tokens."""

    nll: np.ndarray
    tokens: np.ndarray

    def perplexity(self) -> float:
        """Corpus perplexity: exp(total NLL / total tokens)."""
        total = int(self.tokens.sum())
        return float(np.exp(self.nll.sum() / total)) if total else float("nan")

    def per_document_perplexity(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.exp(self.nll / self.tokens)


@dataclass(frozen=True)
class ChoiceScores:
    """Per-example, per-choice log-likelihoods of a multiple-choice task (NaN past an example's choices)."""

    loglik: np.ndarray
    """(examples, max choices): summed log-prob of each continuation's tokens given the context."""
    char_len: np.ndarray
    """(examples, max choices): each choice's length in characters (the ``acc_norm`` divisor)."""
    n_tokens: np.ndarray
    """(examples, max choices): number of continuation tokens scored."""

    @property
    def pred(self) -> np.ndarray:
        """The harness's ``acc`` prediction: argmax of the summed log-likelihood."""
        return _nanargmax(self.loglik)

    @property
    def pred_norm(self) -> np.ndarray:
        """The harness's ``acc_norm`` prediction: argmax of log-likelihood / characters."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return _nanargmax(self.loglik / self.char_len)

    def acc(self, gold: Sequence[int] | np.ndarray) -> np.ndarray:
        """Per-example correctness (0/1) of :attr:`pred`."""
        return (self.pred == np.asarray(gold)).astype(np.int64)

    def acc_norm(self, gold: Sequence[int] | np.ndarray) -> np.ndarray:
        """Per-example correctness (0/1) of :attr:`pred_norm`."""
        return (self.pred_norm == np.asarray(gold)).astype(np.int64)


@dataclass(frozen=True)
class Agreement:
    """Per-prompt greedy agreement of a variant with the reference (dense)."""

    token: np.ndarray
    """Fraction of the reference's tokens the variant has at the same position."""
    prefix: np.ndarray
    """Length of the common prefix over the reference's length."""
    exact: np.ndarray
    """1 where the two continuations are identical."""


def document_nll(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    max_batch_tokens: int = 2048,
    max_length: int | None = None,
    stride: int | None = None,
) -> DocumentNLL:
    """Summed token NLL and token count of each text (see the module docstring).

    ``max_length``: the window length in tokens (default: the model's context,
    ``config.max_position_embeddings``, capped at 1024); ``stride``: the new tokens scored per
    window after the first (default ``max_length // 2``). A batch holds at most ``batch_size``
    windows and ``max_batch_tokens`` padded tokens (a longer window goes alone).
    """
    length = max_length or min(int(getattr(model.config, "max_position_embeddings", 1024) or 1024), 1024)
    if length < 2:
        raise ValueError(f"max_length must be at least 2, got {length}")
    step = stride or max(length // 2, 1)
    if not 1 <= step <= length - 1:
        raise ValueError(f"stride must be in [1, max_length - 1] = [1, {length - 1}], got {step}")
    prefix = _prefix_token_id(tokenizer)
    pieces: list[tuple[int, list[int], int]] = []  # (document, window inputs, first scored label index)
    n_tokens = np.zeros(len(texts), dtype=np.int64)
    for doc, text in enumerate(texts):
        seq = [prefix, *_encode(tokenizer, text)]
        n_tokens[doc] = len(seq) - 1
        scored = 1  # seq positions [1, scored) are done
        while scored < len(seq):
            end = min(len(seq), length if scored == 1 else scored + step)
            begin = max(0, end - length)
            pieces.append((doc, seq[begin:end], scored - begin))
            scored = end
    nll = np.zeros(len(texts), dtype=np.float64)
    logprobs = _target_logprobs(model, [p[1] for p in pieces], tokenizer, batch_size, max_batch_tokens)
    for (doc, _ids, first), lp in zip(pieces, logprobs, strict=True):
        # lp[j] = log p(ids[j + 1] | ids[: j + 1]); labels from index `first` on are this window's
        nll[doc] -= float(lp[first - 1 :].sum(dtype=np.float64))
    return DocumentNLL(nll=nll, tokens=n_tokens)


def score_choices(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[str],
    choices: Sequence[str] | Sequence[Sequence[str]],
    *,
    delimiter: str = " ",
    batch_size: int = 8,
    max_batch_tokens: int = 2048,
    max_length: int | None = None,
    share_context: bool = True,
) -> ChoiceScores:
    """Log-likelihood of each ``delimiter + choice`` after each context (lm-evaluation-harness style).

    ``choices``: one list shared by every context (e.g. ``["positive", "negative"]``) or one
    list per context. Inputs longer than ``max_length`` (default: the model's context) are
    cut on the left, as the harness does. ``share_context``: read each uncut example's context
    once and score its choices from the KV cache (:mod:`audit.models.shared_context`; the same
    numbers up to rounding); examples with a cut input, and models without a cache, take the
    one-sequence-per-choice path (``False``: every example does).
    """
    per_example = _choices_per_example(choices, len(contexts))
    limit = max_length or int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    k = max((len(c) for c in per_example), default=0)
    shape = (len(contexts), k)
    loglik = np.full(shape, np.nan)
    char_len = np.full(shape, np.nan)
    n_tok = np.zeros(shape, dtype=np.int64)
    requests: list[tuple[int, int, list[int], int]] = []  # (example, choice, inputs, number of continuation tokens)
    pairs: dict[int, tuple[list[int], list[list[int]]]] = {}  # uncut examples: context ids, continuation ids
    for i, (ctx, options) in enumerate(zip(contexts, per_example, strict=True)):
        for j, choice in enumerate(options):
            ctx_ids, cont_ids = encode_pair(tokenizer, ctx, delimiter + choice)
            if not cont_ids:
                raise ValueError(f"example {i}, choice {j}: the continuation {delimiter + choice!r} has no tokens")
            whole = (ctx_ids + cont_ids)[-(limit + 1) :]
            requests.append((i, j, whole, min(len(cont_ids), len(whole) - 1)))
            char_len[i, j] = float(len(choice))
            n_tok[i, j] = len(cont_ids)
            pairs.setdefault(i, (ctx_ids, []))[1].append(cont_ids)
        if any(len(pairs[i][0]) + len(c) > limit + 1 for c in pairs.get(i, ([], []))[1]):
            del pairs[i]  # cut on the left: each choice sees a different part of the context
    if share_context:
        done = _score_shared(model, tokenizer, pairs, loglik, batch_size, max_batch_tokens)
        requests = [r for r in requests if r[0] not in done]
    # An example whose choices are one token each after the same context needs one forward pass of that
    # context, not one per choice (the harness's one-token-continuation cache): the same log-probs.
    shared: dict[int, list[tuple[int, list[int], int]]] = {}
    for i, j, whole, n_cont in requests:
        shared.setdefault(i, []).append((j, whole, n_cont))
    single = [
        i
        for i, reqs in shared.items()
        if all(n == 1 for _, _, n in reqs) and all(w[:-1] == reqs[0][1][:-1] for _, w, _ in reqs)
    ]
    one_pass = set(single)
    rest = [r for r in requests if r[0] not in one_pass]
    logprobs = _target_logprobs(model, [r[2] for r in rest], tokenizer, batch_size, max_batch_tokens)
    for (i, j, _ids, n_cont), lp in zip(rest, logprobs, strict=True):
        loglik[i, j] = float(lp[-n_cont:].sum(dtype=np.float64))
    contexts = [shared[i][0][1][:-1] for i in single]
    targets = [[w[-1] for _, w, _ in shared[i]] for i in single]
    next_lps = _next_token_logprobs(model, contexts, targets, tokenizer, batch_size, max_batch_tokens)
    for i, lps in zip(single, next_lps, strict=True):
        for (j, _w, _n), lp in zip(shared[i], lps, strict=True):
            loglik[i, j] = float(lp)
    return ChoiceScores(loglik=loglik, char_len=char_len, n_tokens=n_tok)


def _score_shared(
    model: Any,
    tokenizer: Any,
    pairs: dict[int, tuple[list[int], list[list[int]]]],
    loglik: np.ndarray,
    batch_size: int,
    max_tokens: int,
) -> set[int]:
    """Score ``pairs`` (example: context ids, continuation ids) from one cached pass of each context.

    Returns the examples scored: none when the model gives no KV cache.
    """
    from audit.models.shared_context import shared_choice_logprobs

    order = list(pairs)
    lps = shared_choice_logprobs(
        model,
        [pairs[i][0] for i in order],
        [pairs[i][1] for i in order],
        batch_size=batch_size,
        max_tokens=max_tokens,
        pad_id=_pad_id(tokenizer),
    )
    if lps is None:
        return set()
    for i, lp in zip(order, lps, strict=True):
        loglik[i, : len(lp)] = lp
    return set(order)


def token_logprobs(
    model: Any, tokenizer: Any, sequences: Sequence[Sequence[int]], *, batch_size: int = 8, max_batch_tokens: int = 2048
) -> list[np.ndarray]:
    """Per token-id sequence, ``lp[j] = log p(seq[j + 1] | seq[: j + 1])`` (length ``len(seq) - 1``).

    The forward passes of :func:`document_nll` and :func:`score_choices` (right-padded batches of at
    most ``batch_size`` rows and ``max_batch_tokens`` padded tokens), for a caller that picks the
    scored tokens itself (the stereotype suite scores the tokens two sentences share).
    """
    return _target_logprobs(model, [list(s) for s in sequences], tokenizer, batch_size, max_batch_tokens)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The harness's ``_encode_pair``: context and continuation token ids, tokenized together.

    Trailing whitespace of the context moves to the continuation; the whole text is tokenized
    once and the continuation is what follows the context's tokens. An empty context becomes
    the prefix token (BOS, else EOS), as the harness does.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        return [_prefix_token_id(tokenizer)], _encode(tokenizer, continuation)
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context)
    return ctx, whole[len(ctx) :]


def left_cut(tokenizer: Any, contexts: Sequence[str], continuations: Sequence[str], max_length: int | None) -> int:
    """How many ``context + continuation`` inputs :func:`score_choices` cuts on the left at ``max_length``.

    The scorer keeps the last ``max_length + 1`` tokens (the last one is only a target), so an
    input longer than that loses its first tokens: the model never sees them.
    """
    if not max_length:
        return 0
    cut = 0
    for context, continuation in zip(contexts, continuations, strict=True):
        ctx_ids, cont_ids = encode_pair(tokenizer, context, continuation)
        cut += len(ctx_ids) + len(cont_ids) > max_length + 1
    return cut


def greedy_continuations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Greedy continuation token ids of each prompt (KV cache on), cut after the first EOS.

    Prompts are left-padded in a batch (``generate`` derives the positions from the mask);
    prompts are tokenized without special tokens, as in :func:`score_choices`.
    """
    import torch

    pad = _pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    device = _device(model)
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(prompts)
    encoded = [_encode(tokenizer, p) or [_prefix_token_id(tokenizer)] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                pad_token_id=pad,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        new = gen[:, width:].cpu().numpy()
        for row, i in enumerate(idx):
            seq = new[row]
            if eos is not None:
                hits = np.flatnonzero(seq == eos)
                if hits.size:
                    seq = seq[: hits[0] + 1]
            out[i] = seq.astype(np.int64)
    return out


def generation_agreement(reference: Sequence[np.ndarray], variant: Sequence[np.ndarray]) -> Agreement:
    """Per-prompt agreement of ``variant``'s greedy tokens with ``reference``'s (see :class:`Agreement`)."""
    if len(reference) != len(variant):
        raise ValueError(f"{len(reference)} reference continuations but {len(variant)} variant ones")
    token = np.zeros(len(reference))
    prefix = np.zeros(len(reference))
    exact = np.zeros(len(reference), dtype=np.int64)
    for i, (ref, var) in enumerate(zip(reference, variant, strict=True)):
        ref, var = np.asarray(ref), np.asarray(var)
        n = min(len(ref), len(var))
        same = ref[:n] == var[:n]
        exact[i] = int(len(ref) == len(var) and bool(same.all()))
        if len(ref) == 0:
            token[i] = prefix[i] = 1.0 if len(var) == 0 else 0.0
            continue
        token[i] = same.sum() / len(ref)
        first_diff = int(np.argmin(same)) if not same.all() else n
        prefix[i] = first_diff / len(ref)
    return Agreement(token=token, prefix=prefix, exact=exact)


# -- internals -------------------------------------------------------------------------------------


def _batches(lengths: list[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped longest first: at most ``batch_size`` rows and ``max_tokens`` padded tokens a batch.

    The logits of a batch are rows x width x vocabulary floats (49,152 for SmolLM2: 2,048
    tokens are 400 MB), so the token budget, not the row count, bounds the memory.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _target_logprobs(
    model: Any, sequences: list[list[int]], tokenizer: Any, batch_size: int, max_tokens: int
) -> list[np.ndarray]:
    """For each sequence, ``lp[j] = log p(seq[j + 1] | seq[: j + 1])`` (length ``len(seq) - 1``)."""
    import torch

    pad = _pad_id(tokenizer)
    device = _device(model)
    out: list[np.ndarray] = [np.zeros(0)] * len(sequences)
    model.eval()
    for idx in _batches([len(s) - 1 for s in sequences], max(batch_size, 1), max_tokens):
        # the inputs are seq[:-1] (the last token is only a target), right-padded
        width = max(len(sequences[i]) for i in idx) - 1
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(sequences[i]) - 1] = torch.tensor(sequences[i][:-1])
            mask[row, : len(sequences[i]) - 1] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for row, i in enumerate(idx):
                n = len(sequences[i]) - 1
                lp = torch.log_softmax(logits[row, :n].float(), dim=-1)
                target = torch.tensor(sequences[i][1:], device=lp.device)
                out[i] = lp.gather(-1, target[:, None])[:, 0].double().cpu().numpy()
        del logits
    return out


def _next_token_logprobs(
    model: Any, contexts: list[list[int]], targets: list[list[int]], tokenizer: Any, batch_size: int, max_tokens: int
) -> list[np.ndarray]:
    """For each context, ``log p(t | context)`` of each of its ``targets`` tokens (one forward pass per context)."""
    import torch

    pad = _pad_id(tokenizer)
    device = _device(model)
    out: list[np.ndarray] = [np.zeros(0)] * len(contexts)
    model.eval()
    for idx in _batches([len(c) for c in contexts], max(batch_size, 1), max_tokens):
        width = max(len(contexts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # right-padded, as _target_logprobs: real tokens keep their positions
            ids[row, : len(contexts[i])] = torch.tensor(contexts[i])
            mask[row, : len(contexts[i])] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for row, i in enumerate(idx):
                lp = torch.log_softmax(logits[row, len(contexts[i]) - 1].float(), dim=-1)
                out[i] = lp[torch.tensor(targets[i], device=lp.device)].double().cpu().numpy()
        del logits
    return out


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _prefix_token_id(tokenizer: Any) -> int:
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start a document with")
    return int(tid)


def _pad_id(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _choices_per_example(choices: Sequence[str] | Sequence[Sequence[str]], n: int) -> list[list[str]]:
    if len(choices) and all(isinstance(c, str) for c in choices):
        return [list(choices)] * n  # type: ignore[list-item]
    if len(choices) != n:
        raise ValueError(f"{n} contexts but {len(choices)} lists of choices")
    return [list(c) for c in choices]  # type: ignore[arg-type]


def _nanargmax(values: np.ndarray) -> np.ndarray:
    filled = np.where(np.isnan(values), -np.inf, values)
    return np.argmax(filled, axis=1) if filled.size else np.zeros(len(values), dtype=np.int64)
