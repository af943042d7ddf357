"""audit.models.shared_context: scoring choices from one cached pass of the context equals the unshared path."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lm_helpers import tiny_llama, tiny_tokenizer  # noqa: E402

from audit.models.lm_scoring import encode_pair, score_choices  # noqa: E402
from audit.models.shared_context import count_forward_tokens  # noqa: E402

CONTEXTS = [
    "the movie was",
    "Paris is the capital of France and Rome",
    "a",
    "Review: the book was boring. Sentiment:",
]
CHOICES = [
    ["great and the food", "good", "bad service and a rude waiter"],
    ["is", "the capital of Italy"],
    ["b", "c"],
    ["negative", "positive", "neutral ok"],
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def llama(tok):
    return tiny_llama(tok)


def _reference(model, tok, contexts, choices, limit):
    """One sequence at a time, no batching, no cache: sum of log p(continuation token | everything before)."""
    out = np.full((len(contexts), max(len(c) for c in choices)), np.nan)
    for i, (ctx, opts) in enumerate(zip(contexts, choices, strict=True)):
        for j, choice in enumerate(opts):
            c_ids, k_ids = encode_pair(tok, ctx, " " + choice)
            seq = (c_ids + k_ids)[-(limit + 1) :]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([seq[:-1]])).logits[0].double(), -1)
            lp = lp.gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]
            out[i, j] = float(lp[-len(k_ids) :].sum())
    return out


def test_shared_context_equals_the_unshared_path_and_a_plain_reference(llama, tok):
    shared = score_choices(llama, tok, CONTEXTS, CHOICES, batch_size=8)
    unshared = score_choices(llama, tok, CONTEXTS, CHOICES, batch_size=8, share_context=False)
    reference = _reference(llama, tok, CONTEXTS, CHOICES, 64)
    assert np.isnan(shared.loglik[1, 2]) and np.isnan(shared.loglik[2, 2])
    np.testing.assert_allclose(shared.loglik, unshared.loglik, atol=1e-5)
    np.testing.assert_allclose(shared.loglik, reference, atol=1e-5)
    np.testing.assert_array_equal(shared.n_tokens, unshared.n_tokens)


def test_one_example_at_a_time_and_a_tight_token_budget_give_the_same_scores(llama, tok):
    reference = _reference(llama, tok, CONTEXTS, CHOICES, 64)
    for kwargs in ({"batch_size": 1}, {"batch_size": 8, "max_batch_tokens": 12}):
        got = score_choices(llama, tok, CONTEXTS, CHOICES, **kwargs)
        np.testing.assert_allclose(got.loglik, reference, atol=1e-5)


def test_left_cut_examples_still_equal_the_reference(llama, tok):
    limit = 8  # example 1's context (and a long answer elsewhere) is cut, the others fit
    lens = [len(encode_pair(tok, c, " " + ch)[0]) for c, opts in zip(CONTEXTS, CHOICES, strict=True) for ch in opts]
    assert max(lens) > limit + 1
    got = score_choices(llama, tok, CONTEXTS, CHOICES, max_length=limit)
    np.testing.assert_allclose(got.loglik, _reference(llama, tok, CONTEXTS, CHOICES, limit), atol=1e-5)


def test_shared_context_runs_fewer_tokens_through_the_model(llama, tok):
    counts = {}
    for share in (False, True):
        c, handle = count_forward_tokens(llama)
        score_choices(llama, tok, CONTEXTS, CHOICES, share_context=share)
        handle.remove()
        counts[share] = c
    # shared: one context pass and one continuation pass; unshared: one pass over every context + choice
    assert counts[True]["calls"] == 2
    assert counts[True]["tokens"] < counts[False]["tokens"]
