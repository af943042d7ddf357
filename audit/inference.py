"""Batched inference with tokenization done once per evaluated set.

Every suite runs its forward passes through :class:`Predictor`, which tokenizes a
set of texts once (cached by content), sorts by length for tight padding, and calls
whatever model it is given: the dense baseline or a deployed variant. It is the
sequence-classifier adapter's predictor (:meth:`audit.models.ModelAdapter.predictor`):
its ``logits`` are one row of class logits per text.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from audit import timing

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """Tokenized texts, sorted by length and cut into padded batches."""

    batches: list[dict[str, torch.Tensor]]
    order: np.ndarray  # position in batches -> original index
    n: int
    truncated: int
    """How many texts (with their pairs) had more than ``max_length`` tokens and were cut."""
    lengths: np.ndarray
    truncated_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    """Original indices of the truncated texts."""


def _key(texts: list[str], pairs: list[str] | None, max_length: int, batch_size: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{max_length}:{batch_size}:{len(texts)}".encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    if pairs is not None:
        h.update(b"\x01")
        for t in pairs:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
    return h.hexdigest()


class Predictor:
    """Tokenize once, run any model over the same batches."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_length: int = 128,
        batch_size: int = 32,
        device: str = "cpu",
        cache_size: int = 64,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = torch.device(device)
        self._cache: OrderedDict[str, Encoded] = OrderedDict()
        self._cache_size = cache_size
        self.forward_calls = 0
        self.examples_seen = 0
        self._shared: tuple[Any, dict[str, tuple[np.ndarray, float]]] | None = None

    @contextlib.contextmanager
    def shared_logits(self, model: Any) -> Iterator[None]:
        """Inside, ``model``'s logits on a set of texts are computed once and handed out again.

        The runner opens it around the suites of one point (the model is not changed while they
        run), so the eval set that the performance, ood and bias suites all score is scored once
        per variant. Outside it, and for any other model, nothing is kept. Each kept set carries the
        forward seconds it cost, credited to a later suite that is served it (:func:`audit.timing.credit_reused`).
        """
        previous = self._shared
        self._shared = (model, {})
        try:
            yield
        finally:
            self._shared = previous

    def derive(self, *, batch_size: int, cache_size: int = 1) -> Predictor:
        """A predictor that scores as this one does, with another batch size and encoding cache.

        The adversarial suite's TextAttack wrapper queries through one (it memoises outputs itself);
        a subclass keeps its own scoring (a causal LM's zero-shot choices).
        """
        return Predictor(
            self.tokenizer,
            max_length=self.max_length,
            batch_size=batch_size,
            device=str(self.device),
            cache_size=cache_size,
        )

    def encode(self, texts: list[str], pairs: list[str] | None = None, batch_size: int | None = None) -> Encoded:
        bs = batch_size or self.batch_size
        key = _key(texts, pairs, self.max_length, bs)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        enc = self._encode(texts, pairs, bs)
        self._cache[key] = enc
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return enc

    def _encode(self, texts: list[str], pairs: list[str] | None, bs: int) -> Encoded:
        n = len(texts)
        if n == 0:
            return Encoded([], np.zeros(0, dtype=int), 0, 0, np.zeros(0, dtype=int))
        tok = self.tokenizer(
            list(texts),
            list(pairs) if pairs is not None else None,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_overflowing_tokens=False,
            return_length=True,
        )
        lengths = np.asarray(tok["length"], dtype=int)
        cut = self._truncated(tok, texts, pairs, lengths)
        order = np.argsort(-lengths, kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        has_tt = "token_type_ids" in tok
        batches = []
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            width = int(lengths[idx].max())
            ids = np.full((len(idx), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            tt = np.zeros((len(idx), width), dtype=np.int64) if has_tt else None
            for row, i in enumerate(idx):
                seq = tok["input_ids"][i]
                ids[row, : len(seq)] = seq
                mask[row, : len(seq)] = 1
                if tt is not None:
                    tt[row, : len(seq)] = tok["token_type_ids"][i]
            batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
            if tt is not None:
                batch["token_type_ids"] = torch.from_numpy(tt)
            batches.append(batch)
        if len(cut):
            log.debug("%d of %d texts truncated to %d tokens", len(cut), n, self.max_length)
        return Encoded(batches=batches, order=order, n=n, truncated=int(len(cut)), lengths=lengths, truncated_index=cut)

    def _truncated(self, tok: Any, texts: list[str], pairs: list[str] | None, lengths: np.ndarray) -> np.ndarray:
        """Indices of the texts the tokenizer cut, counted in tokens.

        A fast tokenizer keeps what it cut off as each encoding's ``overflowing``
        encodings (also when they are not returned); a slow one is asked for the
        untruncated lengths. Characters are no bound on tokens (a normaliser can expand
        one character into many tokens; byte-level BPE splits one emoji into several).
        """
        encodings = getattr(tok, "encodings", None)
        if encodings is not None and len(encodings) == len(texts):
            return np.asarray([i for i, e in enumerate(encodings) if e.overflowing], dtype=int)
        full = self.tokenizer(
            list(texts),
            list(pairs) if pairs is not None else None,
            truncation=False,
            return_length=True,
            verbose=False,
        )["length"]
        return np.flatnonzero(np.asarray(full, dtype=int) > lengths).astype(int)

    @torch.inference_mode()
    def logits(
        self, model: Any, texts: list[str], pairs: list[str] | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """Logits ``[n, num_labels]`` in the original order of ``texts``."""
        memo = self._shared[1] if self._shared is not None and self._shared[0] is model else None
        if memo is None:
            return self._logits(model, texts, pairs, batch_size)
        key = _key(texts, pairs, self.max_length, batch_size or self.batch_size)
        if key in memo:
            kept, cost = memo[key]
            timing.credit_reused(cost)  # the forwards this suite did not have to run again
            return kept.copy()
        f0 = timing.forward_seconds()
        result = self._logits(model, texts, pairs, batch_size)
        f1 = timing.forward_seconds()
        memo[key] = (result.copy(), 0.0 if f0 is None or f1 is None else f1 - f0)
        return result

    def _logits(self, model: Any, texts: list[str], pairs: list[str] | None, batch_size: int | None) -> np.ndarray:
        enc = self.encode(texts, pairs, batch_size)
        if enc.n == 0:
            num = int(getattr(getattr(model, "config", None), "num_labels", 2))
            return np.zeros((0, num), dtype=np.float32)
        outs = []
        for batch in enc.batches:
            if self.device.type != "cpu":
                batch = {k: v.to(self.device) for k, v in batch.items()}
            out = model(**batch)
            logits = out.logits if hasattr(out, "logits") else out[0]
            outs.append(logits.float().cpu().numpy())
            self.forward_calls += 1
        self.examples_seen += enc.n
        stacked = np.concatenate(outs, axis=0)
        result = np.empty_like(stacked)
        result[enc.order] = stacked
        return result

    def proba(
        self, model: Any, texts: list[str], pairs: list[str] | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """Softmax probabilities ``[n, num_labels]`` (float64)."""
        return softmax(self.logits(model, texts, pairs, batch_size))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
