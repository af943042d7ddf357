"""LM performance suite (causal LMs): perplexity, zero-shot multiple choice, greedy agreement, paired vs dense.

Torch-free: spec, params and metric declarations only; the implementation is in
:mod:`suites.lm.run`, the scoring building blocks in :mod:`audit.models.lm_scoring` (shared with
the zero-shot predictor and the deployment check).
"""

from __future__ import annotations

import json
import string
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from audit.config import DatasetRef
from audit.registry import SUITES, MetricSpec, PluginParams, SuiteSpec
from suites.ood import DEFAULT_RATES, CorruptionKind

_ID = r"^[A-Za-z0-9_.\-]+$"


def template_fields(template: str) -> list[str]:
    """The ``{column}`` names a prompt template uses, in order (``{{`` / ``}}`` are literal braces)."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"template {template!r} is not a valid format string: {exc}") from None


def _check_template(template: str, text_column: str) -> None:
    fields = template_fields(template)
    bad = [f"{{{f}}}" for f in fields if not f or any(c in f for c in ".[]")]
    if bad:
        raise ValueError(f"template {template!r}: every {{...}} must name a column, found {', '.join(bad)}")
    if text_column not in fields:
        raise ValueError(
            f"template {template!r} must contain {{{text_column}}} (the text column, columns.text) "
            "where each example's text goes"
        )


class TextCorruption(PluginParams):
    """A seeded corruption of a perplexity set's documents, scored as a set of its own (the ood suite's kinds).

    ```yaml
    - {kind: typo, rate: 0.1}
    ```

    Every document is corrupted with :func:`suites.ood.corruptions.corrupt` (row ``i`` seeded by
    ``(seed, i)``, as the ood suite does) and the copy is scored like a clean set, under the dataset id
    ``<set>-<kind>`` (or ``name``), paired with dense document by document.
    """

    kind: CorruptionKind = Field(description="One of the ood suite's corruption kinds (suites/ood/corruptions.py).")
    rate: float | None = Field(
        None, gt=0.0, le=1.0, description="Chance per word, mark or gap (default depends on the kind, as in ood)."
    )
    seed: int = Field(0, ge=0, description="Seed of the corruption (the ood suite's default, 0).")
    name: str | None = Field(None, pattern=_ID, description="Dataset id in metric ids (default: <set>-<kind>).")

    @property
    def effective_rate(self) -> float:
        return self.rate if self.rate is not None else DEFAULT_RATES[self.kind]


class PerplexitySet(DatasetRef):
    """A local text set scored document by document (labels not needed).

    ```yaml
    - {name: reviews, path: data/reviews.csv, columns: {text: text, groups: [domain]}, max_examples: 500,
       corruptions: [{kind: typo, rate: 0.1}, {kind: casing}]}
    ```
    """

    corruptions: list[TextCorruption] = Field(
        default_factory=list,
        description="Seeded corruptions of the documents, each scored as its own set (<set>-<kind>) with "
        "perplexity, nll_delta and perplexity_ratio vs dense, plus corruption_perplexity_ratio vs the clean set.",
    )

    def corruption_ids(self) -> list[str]:
        """The dataset id of each corrupted copy, in order."""
        return [c.name or f"{self.name}-{c.kind}" for c in self.corruptions]

    max_length: int | None = Field(
        None,
        ge=2,
        description="Window length in tokens (default: model.max_length); longer documents are scored in "
        "strided sliding windows (every token once, with at least half a window of context).",
    )


class ChoiceTask(DatasetRef):
    r"""A zero-shot multiple-choice task on a local dataset, scored by log-likelihood (lm-evaluation-harness).

    ```yaml
    - name: sentiment
      path: data/reviews.csv
      template: "Review: {text}\nSentiment:"
      choices: [" negative", " positive"]
      columns: {text: text, label: label, groups: [domain]}
    ```

    The gold column (``columns.label``) holds the choice's index or its text (matched after
    stripping spaces, case-insensitive); ``label_map`` maps other values to indices.
    """

    template: str = Field(description="Prompt with {column} placeholders; it must contain the text column's.")
    choices: list[str] = Field(
        min_length=2, description="The continuations scored after the prompt, each with its leading space."
    )
    delimiter: str = Field("", description="Put between prompt and each choice (the harness's target_delimiter).")

    @model_validator(mode="after")
    def _template(self) -> ChoiceTask:
        _check_template(self.template, self.columns.text)
        if self.columns.label is None:
            raise ValueError("a choice task needs its gold column: set columns.label (the choice's index or text)")
        stripped = [c.strip().lower() for c in self.choices]
        if len(set(stripped)) != len(stripped):
            raise ValueError(f"choices must differ (after stripping spaces, ignoring case): {self.choices}")
        if any(not (self.delimiter + c) for c in self.choices):
            raise ValueError("a choice (with the delimiter) must not be empty")
        return self


class PromptSet(DatasetRef):
    r"""Prompts the variant continues greedily, compared token by token with dense's continuation.

    ```yaml
    - {name: prompts, path: data/prompts.jsonl, template: "Q: {text}\nA:", max_new_tokens: 32}
    ```
    """

    template: str = Field("{text}", description="Prompt with {column} placeholders (default: the text itself).")
    max_new_tokens: int = Field(32, ge=1, le=512, description="Greedy tokens generated per prompt.")

    @model_validator(mode="after")
    def _template(self) -> PromptSet:
        _check_template(self.template, self.columns.text)
        return self


class OodDetection(PluginParams):
    """OOD detection from the sequence NLL: how well each model's mean NLL per token separates two sets.

    ```yaml
    - {name: shift, in: reviews, out: other-domains, score: nll}
    ```
    """

    model_config = {**PluginParams.model_config, "populate_by_name": True}

    name: str = Field(pattern=_ID, description="Dataset id of the detection in metric ids.")
    in_: str = Field(alias="in", description="The in-distribution perplexity set (or a corrupted copy's id).")
    out: str = Field(description="The out-of-distribution perplexity set (or a corrupted copy's id).")
    score: Literal["nll"] = Field(
        "nll", description="nll: each document's mean NLL per token, higher meaning out of distribution."
    )


def _key_error(loc: tuple[str | int, ...], value: object, message: str) -> ValidationError:
    """A validation error at ``loc`` (so the config error names the key and its line)."""
    error = PydanticCustomError("lm_params", message)
    return ValidationError.from_exception_data("LmParams", [InitErrorDetails(type=error, loc=loc, input=value)])


class LmParams(PluginParams):
    r"""Perplexity sets (and seeded corruptions), OOD detection, choice tasks and prompt sets; paired with dense.

    ```yaml
    suites:
      lm:
        perplexity:
          - {name: reviews, path: data/reviews.csv, corruptions: [{kind: typo, rate: 0.1}]}
          - {name: news, path: data/news.csv}
        ood_detection: [{name: shift, in: reviews, out: news}]
        choice_tasks:
          - {name: sentiment, path: data/reviews.csv, template: "Review: {text}\nSentiment:",
             choices: [" negative", " positive"]}
        generation: [{name: prompts, path: data/prompts.csv, max_new_tokens: 16}]
    ```
    """

    perplexity: list[PerplexitySet] = Field(default_factory=list, description="Text sets scored for perplexity.")
    choice_tasks: list[ChoiceTask] = Field(default_factory=list, description="Zero-shot multiple-choice tasks.")
    generation: list[PromptSet] = Field(default_factory=list, description="Prompt sets for greedy agreement.")
    ood_detection: list[OodDetection] = Field(
        default_factory=list,
        description="OOD detection from the sequence NLL: AUROC of each document's mean NLL per token for "
        "telling `out` from `in` (two perplexity sets of this suite), and on variants its paired change vs dense "
        "(DeLong).",
    )
    intersections: bool = Field(True, description="Also report accuracy on the intersection of all group columns.")
    batch_size: int | None = Field(None, ge=1, description="Sequences per forward pass (default: the predictor's).")
    n_examples: int = Field(
        5,
        ge=0,
        le=50,
        description="Rows per set shown in the report for each variant: choice examples dense got right and the "
        "variant gets wrong, and the prompts whose greedy continuation departs most from dense's.",
    )

    def perplexity_ids(self) -> list[str]:
        """Dataset ids of the perplexity sets and their corrupted copies."""
        return [i for p in self.perplexity for i in (p.name, *p.corruption_ids())]

    @model_validator(mode="after")
    def _names(self) -> LmParams:
        if not [*self.perplexity, *self.choice_tasks, *self.generation]:
            raise ValueError("set at least one of perplexity, choice_tasks or generation")
        for i, p in enumerate(self.perplexity):
            kinds = [c.kind for c in p.corruptions if not c.name]
            again = sorted({k for k in kinds if kinds.count(k) > 1})
            if again:
                raise _key_error(
                    ("perplexity", i, "corruptions"),
                    again,
                    f"corruptions of the same kind need a `name` each to tell them apart: {again}",
                )
        names = [
            *self.perplexity_ids(),
            *(d.name for d in [*self.choice_tasks, *self.generation, *self.ood_detection]),
        ]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(
                "perplexity sets (and their corrupted copies), choice tasks, prompt sets and ood_detection entries "
                f"need distinct names; repeated: {dup}"
            )
        known = self.perplexity_ids()
        for i, d in enumerate(self.ood_detection):
            for key, value in (("in", d.in_), ("out", d.out)):
                if value not in known:
                    raise _key_error(
                        ("ood_detection", i, key),
                        value,
                        f"{value!r} names no perplexity set of the lm suite (perplexity sets and corrupted copies: "
                        f"{', '.join(known) or 'none'})",
                    )
            if d.in_ == d.out:
                raise _key_error(("ood_detection", i, "out"), d.out, f"in and out are the same set {d.out!r}")
        return self


def task_formats(params: LmParams) -> list[str]:
    r"""One line per set the suite scores, for the model card: each choice task's prompt template and choices,
    each perplexity set, each prompt set's template (JSON-quoted, so a newline shows as ``\n``).
    """

    def q(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    out = []
    for t in params.choice_tasks:
        choices = " / ".join(q(t.delimiter + c) for c in t.choices)
        out.append(
            f"choice task {t.name}: prompt {q(t.template)} + one of {choices}; the answer is the choice with "
            "the highest log-likelihood (acc: summed; acc_norm: per character)"
        )
    for p in params.perplexity:
        window = f"{p.max_length} tokens" if p.max_length else "model.max_length"
        out.append(
            f"perplexity set {p.name}: each document scored after a BOS token (documents longer than {window} "
            "in strided sliding windows)"
        )
    for g in params.generation:
        out.append(
            f"prompt set {g.name}: prompt {q(g.template)}, {g.max_new_tokens} greedy tokens compared with dense's"
        )
    return out


CITE_HARNESS = "Gao et al., A framework for few-shot language model evaluation (lm-evaluation-harness), v0.4"

METRICS = (
    MetricSpec(
        "perplexity",
        "Corpus perplexity exp(total NLL / total tokens) of the set, each document scored after a BOS token "
        "(bootstrap CI over documents).",
        higher_is_better=False,
        range=(1.0, None),
    ),
    MetricSpec(
        "nll_delta",
        "Variant minus dense NLL per token (nats) on the same documents, i.e. the log of the perplexity ratio "
        "(paired bootstrap over documents; its p-value in details).",
        higher_is_better=False,
        range=(None, None),
        unit="nats/token",
        reference=0.0,
    ),
    MetricSpec(
        "perplexity_ratio",
        "Variant perplexity over dense perplexity on the same documents (exp of nll_delta, with its CI); "
        "1.0 is no change.",
        higher_is_better=False,
        range=(0.0, None),
        unit="x",
        reference=1.0,
    ),
    MetricSpec(
        "corruption_perplexity_ratio",
        "Perplexity of a corrupted copy over the same model's perplexity of the clean set, on the same documents "
        "(paired bootstrap over documents): what the corruption alone does to the model; on a variant, "
        "details.paired tests the change of the ratio vs dense's (is the pruned model more fragile?).",
        higher_is_better=False,
        range=(0.0, None),
        unit="x",
        reference=1.0,
    ),
    MetricSpec(
        "ood_auroc",
        "ROC AUC of each document's mean NLL per token for telling the `out` set from the `in` set (higher NLL "
        "meaning out; stratified bootstrap CI); 0.5 means the model's likelihood does not notice the shift.",
        higher_is_better=True,
        reference=0.5,
    ),
    MetricSpec(
        "ood_auroc_delta",
        "ood_auroc of the variant minus dense's on the same documents (DeLong's paired test in details; CI from "
        "the paired stratified bootstrap).",
        higher_is_better=True,
        range=(-1.0, 1.0),
        reference=0.0,
    ),
    MetricSpec(
        "acc",
        "Zero-shot multiple-choice accuracy: the choice with the highest summed log-likelihood after the prompt.",
        higher_is_better=True,
        citation=CITE_HARNESS,
    ),
    MetricSpec(
        "acc_norm",
        "Zero-shot multiple-choice accuracy with each choice's log-likelihood divided by its length in characters.",
        higher_is_better=True,
        citation=CITE_HARNESS,
    ),
    MetricSpec(
        "acc_delta",
        "acc of the variant minus acc of the dense model on the same examples "
        "(paired bootstrap CI; exact McNemar p-value in details).",
        higher_is_better=True,
        range=(-1.0, 1.0),
        reference=0.0,
    ),
    MetricSpec(
        "greedy_agreement",
        "Share of dense's greedy continuation tokens the variant reproduces at the same position, mean over "
        "prompts (bootstrap CI over prompts; exact-match share in details). Dense is 1.0 by construction.",
        higher_is_better=True,
    ),
    MetricSpec(
        "greedy_exact_match",
        "Share of prompts whose greedy continuation is identical to dense's (bootstrap CI over prompts).",
        higher_is_better=True,
    ),
)

SPEC = SUITES.register(
    SuiteSpec(
        name="lm",
        impl="suites.lm.run:LmSuite",
        summary="Causal-LM perplexity (clean and seeded corruptions), OOD detection from the sequence NLL, "
        "zero-shot multiple-choice accuracy per group and greedy agreement, paired vs dense.",
        params=LmParams,
        metrics=METRICS,
        tags=("core",),
        title="Language-model performance",
        not_run="No LM performance suite ran: perplexity and zero-shot accuracy were not measured.",
        report_order=12,
        model_kinds=("causal-lm",),
        task_formats=task_formats,
    )
)
