from __future__ import annotations

import re

import numpy as np
import pytest

from suites.ood import DEFAULT_RATES
from suites.ood import corruptions as C

TEXTS = [
    "The food was not good, and I don't think I will come back! It is what it is.",
    "it 's a charming and often affecting journey . ",
    "the film does n't work , but it can not be faulted .",
    "My friend Emily and I watched this. The acting was brilliant and the script was clever.",
] * 5


def test_every_kind_is_seeded_per_row_and_changes_text() -> None:
    for kind in C.KINDS:
        a = C.corrupt(TEXTS, kind, rate=DEFAULT_RATES[kind], seed=3)
        assert a == C.corrupt(TEXTS, kind, rate=DEFAULT_RATES[kind], seed=3), kind
        # row i depends only on (seed, i): a prefix of the set is corrupted identically
        assert C.corrupt(TEXTS[:3], kind, rate=DEFAULT_RATES[kind], seed=3) == a[:3], kind
        assert sum(x != y for x, y in zip(a, TEXTS, strict=True)) > 0, kind
    assert C.corrupt(TEXTS, "typo", rate=0.3, seed=1) != C.corrupt(TEXTS, "typo", rate=0.3, seed=2)
    assert set(C.KINDS) == set(DEFAULT_RATES) == set(C.DEFAULT_RATES)


def test_typo_rate_is_per_word_and_keeps_first_letter() -> None:
    words = ["wonderful"] * 4000
    text = " ".join(words)
    out = C.typo(text, 0.1, np.random.default_rng(0)).split(" ")
    changed = [w for w in out if w != "wonderful"]
    assert 0.08 < len(changed) / len(words) < 0.12
    assert all(w[0] == "w" for w in out)
    # every slip is one edit away: swap, drop, double or a neighbouring key
    assert all(abs(len(w) - len("wonderful")) <= 1 for w in changed)
    neighbour = [w for w in changed if len(w) == 9 and sorted(w) != sorted("wonderful")]
    for w in neighbour:
        i = next(k for k in range(9) if w[k] != "wonderful"[k])
        assert w[i] in C.QWERTY["wonderful"[i]]


def test_casing_punctuation_whitespace() -> None:
    rng = np.random.default_rng(0)
    assert C.casing("good movie", 1.0, rng) == "GOOD MOVIE"
    assert C.casing("Good MOVIE", 1.0, rng) == "good movie"
    text = "Great, fun, sharp! Yes. " * 50
    marks = C.punctuation(text, 0.3, np.random.default_rng(0))
    assert marks != text
    assert re.sub(r"[^\w\s]", "", marks).split() == re.sub(r"[^\w\s]", "", text).split()  # only marks change
    n_orig = len(re.findall(r"[,.!?]", text))
    assert len(re.findall(r"[,.!?]", C.punctuation(text, 1.0, np.random.default_rng(0)))) < n_orig
    ws = C.whitespace("the acting was wonderful and the plot was clever " * 20, 0.5, np.random.default_rng(1))
    assert ws.replace(" ", "") == ("the acting was wonderful and the plot was clever " * 20).replace(" ", "")
    assert ws != "the acting was wonderful and the plot was clever " * 20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I don't like it.", "I do not like it."),
        ("the film does n't work .", "the film does not work ."),
        ("I can't and won't.", "I cannot and will not."),
        ("It is a mess and I am sad.", "It's a mess and I'm sad."),
        ("It is what it is.", "It's what it is."),  # no contraction at the end of a clause
        ("We do not care.", "We don't care."),
    ],
)
def test_contractions_both_ways(text: str, expected: str) -> None:
    assert C.contraction(text, 1.0, np.random.default_rng(0)) == expected


def test_synonym_uses_wordnet_and_keeps_case_and_inflection() -> None:
    syn = C.wordnet_synonyms("movie")
    assert "film" in syn
    assert C.wordnet_synonyms("movies") == ()  # only base forms are swapped
    assert "dull" in C.wordnet_synonyms("boring")
    out = C.corrupt(["Boring movie."] * 30, "synonym", rate=1.0, seed=0)
    for o in out:
        first, second = o.rstrip(".").split(" ", 1)
        assert first[0].isupper() and first[1:].islower()
        assert first.lower() in C.wordnet_synonyms("boring")
        assert second in C.wordnet_synonyms("movie")
    # stop words and negations are never swapped
    assert C.corrupt(["not the"], "synonym", rate=1.0, seed=0) == ["not the"]


def test_synonyms_do_not_depend_on_the_order_nltk_gives_similar_tos(monkeypatch: pytest.MonkeyPatch) -> None:
    # NLTK keeps a synset's "similar to" pointers in a set: their order follows the string hash seed
    from nltk.corpus.reader.wordnet import Synset

    from audit import resources

    resources.require("wordnet")
    words = ("fast", "cold", "bad", "last", "all", "quick", "hot")
    C.wordnet_synonyms.cache_clear()
    given = {w: C.wordnet_synonyms(w) for w in words}
    assert sum(len(v) for v in given.values()) > len(words)  # real candidate lists were compared
    original = Synset.similar_tos
    monkeypatch.setattr(Synset, "similar_tos", lambda self: list(reversed(original(self))))
    C.wordnet_synonyms.cache_clear()
    try:
        assert {w: C.wordnet_synonyms(w) for w in words} == given
    finally:
        C.wordnet_synonyms.cache_clear()
