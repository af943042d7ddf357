"""Seeded synthetic shifts of the in-distribution texts (torch-free).

Each corruption changes a text at a per-unit ``rate`` (per word, per punctuation mark,
per gap between words) with a random generator seeded by ``(seed, row)``: the same
row is corrupted the same way whatever else is in the set, and a run is reproducible.

* ``typo``: a keyboard slip in a word of 3+ letters: swap two neighbouring letters,
  drop one, double one, or hit a neighbouring QWERTY key.
* ``casing``: a word flips case style (``good`` -> ``GOOD``, ``Good`` -> ``good``).
* ``punctuation``: a punctuation mark is dropped, or a mark (``,`` ``.`` ``!`` ``?`` ``...``)
  is inserted after a word.
* ``whitespace``: a space is dropped (words run together) or doubled, or a word of
  6+ letters is split in two.
* ``contraction``: contracted forms are expanded and expandable ones contracted
  (``do not`` <-> ``don't``, ``it is`` <-> ``it's``); the tokenized style of SST-2
  (``does n't``) is understood.
* ``synonym``: a content word in its base form is replaced by a WordNet synonym of its
  most common part of speech (NLTK's WordNet reader over the offline WordNet 3.0 that
  :mod:`audit.resources` provisions; nothing is downloaded).

Why not TextAttack's augmenters: they draw from the global ``random`` state (no
per-row seeding), re-tokenize the text (changing its spacing), and cost ~10 s to
import; the operations themselves are a few lines each. WordNet look-ups do go
through NLTK.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import numpy as np

KINDS = ("typo", "casing", "punctuation", "whitespace", "contraction", "synonym")
DEFAULT_RATES = {
    "typo": 0.1,
    "casing": 0.2,
    "punctuation": 0.3,
    "whitespace": 0.1,
    "contraction": 1.0,
    "synonym": 0.2,
}

_WORD = re.compile(r"[A-Za-z]+")
_KIND_CODE = {k: i for i, k in enumerate(KINDS)}

_QWERTY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _qwerty_neighbors() -> dict[str, str]:
    pos = {ch: (r, c) for r, row in enumerate(_QWERTY_ROWS) for c, ch in enumerate(row)}
    out = {}
    for ch, (r, c) in pos.items():
        near = []
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if (dr, dc) == (0, 0):
                    continue
                rr, cc = r + dr, c + dc
                if 0 <= rr < 3 and 0 <= cc < len(_QWERTY_ROWS[rr]):
                    near.append(_QWERTY_ROWS[rr][cc])
        out[ch] = "".join(near)
    return out


QWERTY = _qwerty_neighbors()


def _rng(seed: int, row: int, kind: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(row), _KIND_CODE[kind]])


def _match_case(src: str, new: str) -> str:
    if src.isupper() and len(src) > 1:
        return new.upper()
    if src[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


# -- the corruptions ------------------------------------------------------------------------------


def typo(text: str, rate: float, rng: np.random.Generator) -> str:
    def one(m: re.Match[str]) -> str:
        w = m.group(0)
        if len(w) < 3 or rng.random() >= rate:
            return w
        i = int(rng.integers(1, len(w) - 1)) if len(w) > 3 else 1  # keep the first letter
        op = int(rng.integers(0, 4))
        if op == 0:
            return w[:i] + w[i + 1] + w[i] + w[i + 2 :]
        if op == 1:
            return w[:i] + w[i + 1 :]
        if op == 2:
            return w[: i + 1] + w[i] + w[i + 1 :]
        near = QWERTY.get(w[i].lower(), "")
        if not near:
            return w[:i] + w[i + 1 :]
        ch = near[int(rng.integers(0, len(near)))]
        return w[:i] + (ch.upper() if w[i].isupper() else ch) + w[i + 1 :]

    return _WORD.sub(one, text)


def casing(text: str, rate: float, rng: np.random.Generator) -> str:
    def one(m: re.Match[str]) -> str:
        w = m.group(0)
        if rng.random() >= rate:
            return w
        return w.upper() if w.islower() else w.lower()

    return _WORD.sub(one, text)


_PUNCT = re.compile(r"[,.;:!?\"()]")
_INSERTS = (",", ".", "!", "?", "...")


def punctuation(text: str, rate: float, rng: np.random.Generator) -> str:
    dropped = _PUNCT.sub(lambda m: "" if rng.random() < rate else m.group(0), text)

    def add(m: re.Match[str]) -> str:
        w = m.group(0)
        if rng.random() < rate / 3:
            return w + _INSERTS[int(rng.integers(0, len(_INSERTS)))]
        return w

    return _WORD.sub(add, dropped)


def whitespace(text: str, rate: float, rng: np.random.Generator) -> str:
    def gap(m: re.Match[str]) -> str:
        r = rng.random()
        if r < rate / 2:
            return ""
        if r < rate:
            return m.group(0) + " "
        return m.group(0)

    def split(m: re.Match[str]) -> str:
        w = m.group(0)
        if len(w) >= 6 and rng.random() < rate / 2:
            i = int(rng.integers(2, len(w) - 2))
            return w[:i] + " " + w[i:]
        return w

    return _WORD.sub(split, re.sub(r"(?<=\S) (?=\S)", gap, text))


_NEGATABLE = "do|does|did|is|are|was|were|has|have|had|would|could|should|must|need|might"
_EXPAND = [
    (re.compile(r"\b(ca)\s?n't\b", re.I), lambda m: _match_case(m.group(1), "cannot")),
    (re.compile(r"\b(wo)\s?n't\b", re.I), lambda m: _match_case(m.group(1), "will not")),
    (re.compile(r"\b(ai)\s?n't\b", re.I), lambda m: _match_case(m.group(1), "is not")),
    (re.compile(rf"\b({_NEGATABLE})\s?n't\b", re.I), lambda m: m.group(1) + " not"),
    (re.compile(r"\b(i)\s?'m\b", re.I), lambda m: m.group(1) + " am"),
    (re.compile(r"\b(you|we|they|who)\s?'re\b", re.I), lambda m: m.group(1) + " are"),
    (re.compile(r"\b(i|you|we|they|who|would|should|could)\s?'ve\b", re.I), lambda m: m.group(1) + " have"),
    (re.compile(r"\b(i|you|he|she|it|we|they|that|there|who)\s?'ll\b", re.I), lambda m: m.group(1) + " will"),
    (re.compile(r"\b(i|you|he|she|we|they)\s?'d\b", re.I), lambda m: m.group(1) + " would"),
    (re.compile(r"\b(it|he|she|that|there|what|here|who|where)\s?'s\b", re.I), lambda m: m.group(1) + " is"),
    (re.compile(r"\b(let)\s?'s\b", re.I), lambda m: m.group(1) + " us"),
]
_CONTRACT = [
    (re.compile(r"\b(can)not\b", re.I), lambda m: m.group(1) + "'t"),
    (re.compile(r"\b(w)ill not\b", re.I), lambda m: m.group(1) + "on't"),
    (re.compile(rf"\b({_NEGATABLE}) not\b", re.I), lambda m: m.group(1) + "n't"),
    # "it is" -> "it's" only before another word: "it is what it is." keeps its last "is"
    (re.compile(r"\b(i) am\b(?=\s+[A-Za-z])", re.I), lambda m: m.group(1) + "'m"),
    (re.compile(r"\b(you|we|they) are\b(?=\s+[A-Za-z])", re.I), lambda m: m.group(1) + "'re"),
    (re.compile(r"\b(i|you|we|they) have\b(?=\s+[A-Za-z])", re.I), lambda m: m.group(1) + "'ve"),
    (re.compile(r"\b(i|you|he|she|it|we|they) will\b(?=\s+[A-Za-z])", re.I), lambda m: m.group(1) + "'ll"),
    (re.compile(r"\b(it|that|there|what|here) is\b(?=\s+[A-Za-z])", re.I), lambda m: m.group(1) + "'s"),
    (re.compile(r"\b(let) us\b", re.I), lambda m: m.group(1) + "'s"),
]


def contraction(text: str, rate: float, rng: np.random.Generator) -> str:
    def maybe(fn: Callable[[re.Match[str]], str]) -> Callable[[re.Match[str]], str]:
        return lambda m: fn(m) if rng.random() < rate else m.group(0)

    # one pass over the original text: expansions and contractions never chain
    spans: list[tuple[int, int, str]] = []
    taken = np.zeros(len(text) + 1, dtype=bool)
    for pattern, fn in (*_EXPAND, *_CONTRACT):
        for m in pattern.finditer(text):
            if taken[m.start() : m.end()].any():
                continue
            taken[m.start() : m.end()] = True
            spans.append((m.start(), m.end(), maybe(fn)(m)))
    out = text
    for start, end, new in sorted(spans, reverse=True):
        out = out[:start] + new + out[end:]
    return out


@functools.lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) | {"not", "no", "nor", "never", "very", "too"}


@functools.lru_cache(maxsize=20_000)
def wordnet_synonyms(word: str) -> tuple[str, ...]:
    """Single-word WordNet synonyms of ``word`` (lower case) in its most common part of speech.

    Only words in their base form are swapped (so inflection stays right). Candidates
    are the other lemmas of the word's main senses in that part of speech (by WordNet's
    sense-tagged counts; for head adjectives also their "similar to" satellites),
    preferring lemmas that occur in the tagged corpus.
    """
    from nltk.corpus import wordnet as wn

    synsets = wn.synsets(word)
    if not synsets:
        return ()
    # the most common part of speech: sense-tagged counts, then number of senses
    score: dict[str, tuple[int, int]] = {}
    for s in synsets:
        pos = "a" if s.pos() == "s" else s.pos()
        count = sum(lm.count() for lm in s.lemmas() if lm.name().lower() == word)
        c, k = score.get(pos, (0, 0))
        score[pos] = (c + count, k + 1)
    best_pos = max(score, key=lambda p: score[p])
    if (wn.morphy(word, best_pos) or word) != word:
        return ()

    def own_count(s: object) -> int:
        return sum(lm.count() for lm in s.lemmas() if lm.name().lower() == word)  # type: ignore[attr-defined]

    senses = [s for s in synsets if ("a" if s.pos() == "s" else s.pos()) == best_pos]
    counts = [own_count(s) for s in senses]
    top = max(counts)
    # the word's main senses: the most frequent ones (at least a quarter of the top count),
    # or its first sense when WordNet has no counts for it
    main = [s for s, c in zip(senses, counts, strict=True) if top > 0 and 4 * c >= top] or senses[:1]
    pool = []
    for s in main[:3]:
        pool += list(s.lemmas())
        if s.pos() == "a":  # head adjectives list their near-synonyms as "similar to" satellites
            # NLTK keeps a synset's pointers in a set: without sorting, their order (and so the synonym
            # drawn) follows the process's string hash seed, and two runs would corrupt differently
            pool += [t.lemmas()[0] for t in sorted(s.similar_tos(), key=lambda t: t.name())]
    common: list[str] = []
    rare: list[str] = []
    for lm in pool:
        name = lm.name().lower()
        if name != word and name.isalpha() and name not in common and name not in rare:
            (common if lm.count() > 0 else rare).append(name)
    return tuple(common or rare)


def synonym(text: str, rate: float, rng: np.random.Generator) -> str:
    stop = _stopwords()

    def one(m: re.Match[str]) -> str:
        w = m.group(0)
        if len(w) < 3 or w.lower() in stop or rng.random() >= rate:
            return w
        syns = wordnet_synonyms(w.lower())
        if not syns:
            return w
        return _match_case(w, syns[int(rng.integers(0, len(syns)))])

    return _WORD.sub(one, text)


CORRUPTIONS: dict[str, Callable[[str, float, np.random.Generator], str]] = {
    "typo": typo,
    "casing": casing,
    "punctuation": punctuation,
    "whitespace": whitespace,
    "contraction": contraction,
    "synonym": synonym,
}


def corrupt(texts: list[str], kind: str, *, rate: float, seed: int) -> list[str]:
    """Corrupt every text with ``kind`` at ``rate`` (row ``i`` seeded by ``(seed, i)``)."""
    if kind == "synonym":
        from audit import resources

        resources.require("wordnet")
    fn = CORRUPTIONS[kind]
    return [fn(t, rate, _rng(seed, i, kind)) for i, t in enumerate(texts)]
