"""audit.models.lm_scoring: per-document NLL, harness-style multiple choice, greedy agreement."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lm_helpers import tiny_llama, tiny_tokenizer  # noqa: E402

from audit.models.lm_scoring import (  # noqa: E402
    document_nll,
    encode_pair,
    generation_agreement,
    greedy_continuations,
    score_choices,
)


class ControlledLM(torch.nn.Module):
    """A causal 'LM' whose next-token logits we set: ``table[current token]`` (a bigram model).

    A 1-row table makes the logits independent of the input (a unigram model).
    """

    def __init__(self, table: torch.Tensor, max_positions: int = 64) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.float())
        self.config = SimpleNamespace(max_position_embeddings=max_positions)

    def forward(self, input_ids, attention_mask=None, use_cache=None):  # noqa: ARG002
        rows = self.table[input_ids] if self.table.shape[0] > 1 else self.table[0].expand(*input_ids.shape, -1)
        return SimpleNamespace(logits=rows)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def llama(tok):
    return tiny_llama(tok)


DOCS = [
    "the movie was great",
    "a terrible hotel with bad service and a rude waiter, the food was good and the movie was great",
    "Paris",
    "Rome is the capital of Italy",
]


def test_padding_does_not_change_document_nll(llama, tok):
    batched = document_nll(llama, tok, DOCS, batch_size=4)
    single = [document_nll(llama, tok, [d], batch_size=1) for d in DOCS]
    np.testing.assert_allclose(batched.nll, [s.nll[0] for s in single], rtol=1e-5)
    np.testing.assert_array_equal(batched.tokens, [s.tokens[0] for s in single])
    # every token of each document is scored once (after the BOS prefix)
    np.testing.assert_array_equal(batched.tokens, [len(tok(d, add_special_tokens=False).input_ids) for d in DOCS])


def test_document_nll_is_the_sum_of_the_tokens_log_probs(llama, tok):
    doc = DOCS[1]
    ids = [tok.bos_token_id, *tok(doc, add_special_tokens=False).input_ids]
    with torch.no_grad():
        lp = torch.log_softmax(llama(torch.tensor([ids])).logits[0, :-1], -1)
    expected = -lp.gather(-1, torch.tensor(ids[1:])[:, None]).sum().item()
    assert document_nll(llama, tok, [doc]).nll[0] == pytest.approx(expected, rel=1e-5)


def test_long_documents_are_windowed_with_every_token_scored_once(tok):
    # a bigram model: each token's probability depends only on the previous token, so any
    # windowing that scores every token exactly once gives the full-context NLL
    gen = torch.Generator().manual_seed(0)
    lm = ControlledLM(torch.randn(len(tok), len(tok), generator=gen) * 3, max_positions=512)
    long_doc = " ".join(DOCS * 3)
    n = len(tok(long_doc, add_special_tokens=False).input_ids)
    assert n > 40
    full = document_nll(lm, tok, [long_doc], max_length=512)
    for length, stride in ((16, 8), (16, 15), (9, 1)):
        windowed = document_nll(lm, tok, [long_doc], max_length=length, stride=stride)
        assert windowed.tokens[0] == n
        assert windowed.nll[0] == pytest.approx(full.nll[0], rel=1e-9)


def test_windowed_context_changes_a_real_models_nll(llama, tok):
    # with attention, a window shorter than the document really cuts context away
    long_doc = " ".join(DOCS * 2)
    full = document_nll(llama, tok, [long_doc], max_length=64)
    short = document_nll(llama, tok, [long_doc], max_length=8, stride=4)
    assert short.tokens[0] == full.tokens[0]
    assert abs(short.nll[0] - full.nll[0]) > 1e-3


def test_bad_window_settings_are_rejected(llama, tok):
    with pytest.raises(ValueError, match="stride"):
        document_nll(llama, tok, DOCS, max_length=8, stride=8)


def test_encode_pair_moves_the_contexts_trailing_space_to_the_continuation(tok):
    ctx, cont = encode_pair(tok, "Review: the movie was great. Sentiment: ", "positive")
    ctx2, cont2 = encode_pair(tok, "Review: the movie was great. Sentiment:", " positive")
    assert (ctx, cont) == (ctx2, cont2)
    whole = tok("Review: the movie was great. Sentiment: positive", add_special_tokens=False).input_ids
    assert ctx + cont == whole


def test_multiple_choice_picks_the_choice_the_model_is_built_to_prefer(tok):
    contexts = ["Review: the movie was great. Sentiment:", "Review: a terrible hotel. Sentiment:", "Paris is"]
    choices = ["positive", "negative"]
    logits = torch.zeros(1, len(tok))
    for t in tok(" negative", add_special_tokens=False).input_ids:
        logits[0, t] = 10.0
    scores = score_choices(ControlledLM(logits), tok, contexts, choices)
    np.testing.assert_array_equal(scores.pred, [1, 1, 1])
    np.testing.assert_array_equal(scores.acc([1, 0, 1]), [1, 0, 1])


def test_choice_log_likelihood_counts_only_the_continuation_tokens(tok):
    # a uniform model: every token costs log V, so a choice scores -n_tokens * log V
    lm = ControlledLM(torch.zeros(1, len(tok)))
    scores = score_choices(lm, tok, ["the movie was great and the food was"] * 2, ["good", "zqxvjk"])
    n_tok = [len(encode_pair(tok, "the movie was great and the food was", " " + c)[1]) for c in ("good", "zqxvjk")]
    np.testing.assert_array_equal(scores.n_tokens[0], n_tok)
    np.testing.assert_allclose(scores.loglik[0], -np.array(n_tok) * math.log(len(tok)), rtol=1e-6)


def test_acc_and_acc_norm_differ_when_length_normalisation_flips_the_choice(tok):
    # uniform model: "q" is one token and one character; "the movie was great" has more tokens
    # (lower summed log-likelihood, so acc prefers "q") but far fewer tokens per character
    # (acc_norm divides by characters, as the harness does, and prefers it)
    lm = ControlledLM(torch.zeros(1, len(tok)))
    choices = ["the movie was great", "q"]
    scores = score_choices(lm, tok, ["Review:"], choices)
    n0, n1 = scores.n_tokens[0]
    assert n0 > n1 and n0 / len(choices[0]) < n1 / len(choices[1])  # the construction holds
    np.testing.assert_array_equal(scores.char_len[0], [19.0, 1.0])
    assert scores.pred[0] == 1
    assert scores.pred_norm[0] == 0
    np.testing.assert_array_equal(scores.acc([0]), [0])
    np.testing.assert_array_equal(scores.acc_norm([0]), [1])


def test_multiple_choice_batched_equals_one_by_one_and_per_example_choices(llama, tok):
    contexts = ["Review: the movie was great. Sentiment:", "Paris is the capital of", "a"]
    choices = [["positive", "negative"], ["France", "Italy", "the movie"], ["b"]]
    batched = score_choices(llama, tok, contexts, choices, batch_size=8)
    assert batched.loglik.shape == (3, 3)
    assert np.isnan(batched.loglik[0, 2]) and np.isnan(batched.loglik[2, 1])
    for i, (ctx, opts) in enumerate(zip(contexts, choices, strict=True)):
        one = score_choices(llama, tok, [ctx], [opts], batch_size=1)
        np.testing.assert_allclose(batched.loglik[i, : len(opts)], one.loglik[0, : len(opts)], rtol=1e-5)
    assert batched.pred[2] == 0


def test_identical_models_agree_on_every_greedy_token(llama, tok):
    prompts = ["the movie was", "Paris is the capital of", "a terrible"]
    ref = greedy_continuations(llama, tok, prompts, max_new_tokens=8)
    same = greedy_continuations(llama, tok, prompts, max_new_tokens=8)
    agree = generation_agreement(ref, same)
    np.testing.assert_array_equal(agree.token, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(agree.prefix, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(agree.exact, [1, 1, 1])
    assert all(0 < len(r) <= 8 for r in ref)


def test_batched_greedy_equals_a_plain_greedy_loop(llama, tok):
    prompts = ["the movie was", "Paris is the capital of Italy and"]
    got = greedy_continuations(llama, tok, prompts, max_new_tokens=6, batch_size=2)
    for prompt, cont in zip(prompts, got, strict=True):
        ids = tok(prompt, add_special_tokens=False).input_ids
        out = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(llama(torch.tensor([ids + out])).logits[0, -1].argmax())
                out.append(nxt)
                if nxt == tok.eos_token_id:
                    break
        np.testing.assert_array_equal(cont, out)


def test_generation_agreement_counts_positions_and_prefix():
    ref = [np.array([1, 2, 3, 4]), np.array([5, 6, 7, 8]), np.array([9, 9])]
    var = [np.array([1, 2, 0, 4]), np.array([5, 6]), np.array([9, 9])]
    agree = generation_agreement(ref, var)
    np.testing.assert_allclose(agree.token, [0.75, 0.5, 1.0])
    np.testing.assert_allclose(agree.prefix, [0.5, 0.5, 1.0])
    np.testing.assert_array_equal(agree.exact, [0, 0, 1])
    with pytest.raises(ValueError, match="reference"):
        generation_agreement(ref, var[:2])


def test_batches_respect_the_row_and_token_budgets():
    from audit.models.lm_scoring import _batches

    assert _batches([10, 5, 5, 3, 3, 3], batch_size=8, max_tokens=10) == [[0], [1, 2], [3, 4, 5]]
    assert _batches([2, 2, 2], batch_size=2, max_tokens=100) == [[0, 1], [2]]
    assert _batches([50], batch_size=4, max_tokens=10) == [[0]]  # too long for the budget: alone


def test_a_small_token_budget_gives_the_same_scores(llama, tok):
    big = document_nll(llama, tok, DOCS, batch_size=8)
    small = document_nll(llama, tok, DOCS, batch_size=8, max_batch_tokens=16)
    np.testing.assert_allclose(small.nll, big.nll, rtol=1e-5)


def test_one_token_choices_share_one_pass_of_the_context_and_score_as_full_sequences(llama, tok):
    # each choice is one token after the context, so score_choices runs the context once for all of them;
    # the scores must equal the log-prob of that token at the end of a plain forward pass of context + choice
    contexts = ["the movie was", "Paris is the capital of"]
    choices = ["a", "b", "the"]
    for ctx in contexts:
        assert all(len(encode_pair(tok, ctx, " " + c)[1]) == 1 for c in choices)  # the construction holds
    scores = score_choices(llama, tok, contexts, choices, batch_size=8)
    for i, ctx in enumerate(contexts):
        for j, c in enumerate(choices):
            ctx_ids, cont_ids = encode_pair(tok, ctx, " " + c)
            with torch.inference_mode():
                logits = llama(input_ids=torch.tensor([ctx_ids + cont_ids])).logits[0]
            expected = torch.log_softmax(logits[len(ctx_ids) - 1].double(), dim=-1)[cont_ids[0]].item()
            assert scores.loglik[i, j] == pytest.approx(expected, abs=1e-5)
