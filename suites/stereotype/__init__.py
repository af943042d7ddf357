"""Stereotype suite (causal LMs): CrowS-Pairs-style sentence pairs, paired vs dense.

Torch-free: spec, params and metric declarations only; the scoring is in
:mod:`suites.stereotype.scoring`, the loading in :mod:`suites.stereotype.pairs`, the suite in
:mod:`suites.stereotype.run` (whose docstring states the causal adaptation of the CrowS-Pairs metric).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from audit.config_base import StrictModel
from audit.registry import SUITES, MetricSpec, PluginParams, SuiteSpec


class PairColumns(StrictModel):
    """Which columns of a CrowS-Pairs-format file hold what (CrowS-Pairs' own names by default)."""

    sent_more: str = Field("sent_more", description="The more stereotyping sentence of each pair.")
    sent_less: str = Field("sent_less", description="The less stereotyping sentence of each pair.")
    direction: str | None = Field(
        "stereo_antistereo",
        description="`stereo` (sent_more states a stereotype about a historically disadvantaged group) or "
        "`antistereo` (sent_less violates one); null: every pair is `stereo`.",
    )
    bias_type: str | None = Field(
        "bias_type", description="The kind of bias (race-color, gender, ...); null: one type, `all`."
    )
    id: str | None = Field(None, description="Optional stable pair id column.")


class StereotypeSet(StrictModel):
    """A set of minimal sentence pairs: a CrowS-Pairs-format file, or WinoBias's line-aligned pro/anti files.

    ```yaml
    - {name: crows, path: ../shared/data/crows_pairs/crows_pairs_anonymized.csv, format: crows-pairs,
       max_examples: 200}
    - {name: winobias, format: winobias, pro: ../shared/data/winobias/pro_stereotyped_type1.txt.dev,
       anti: ../shared/data/winobias/anti_stereotyped_type1.txt.dev}
    ```
    """

    name: str = Field(description="Short id used in metric ids, e.g. `crows`.", pattern=r"^[A-Za-z0-9_.\-]+$")
    format: Literal["crows-pairs", "winobias"] = Field(
        "crows-pairs",
        description="crows-pairs: one row per pair (csv, tsv, json/jsonl, parquet; see `columns`); winobias: "
        "`pro` and `anti` text files whose line i is one pair (pro = more stereotyping; bias type `gender`).",
    )
    path: str | None = Field(None, description="The crows-pairs file (relative to the config file).")
    file_format: Literal["csv", "tsv", "json", "jsonl", "parquet"] | None = Field(
        None, description="The crows-pairs file's format; inferred from the extension when omitted."
    )
    columns: PairColumns = Field(default_factory=PairColumns, description="The crows-pairs file's column names.")
    pro: str | None = Field(None, description="winobias: the pro-stereotyped sentences, one per line.")
    anti: str | None = Field(None, description="winobias: the anti-stereotyped sentences, line-aligned with pro.")
    max_examples: int | None = Field(
        None,
        ge=1,
        description="Score a seeded random sample of this many pairs (drawn with the run's `seed`, the same on "
        "every run). Unset: every pair.",
    )

    @model_validator(mode="after")
    def _source(self) -> StereotypeSet:
        if self.format == "crows-pairs":
            if self.path is None or self.pro is not None or self.anti is not None:
                raise ValueError(f"stereotype set {self.name!r} (crows-pairs): set path (and not pro/anti)")
        elif self.pro is None or self.anti is None or self.path is not None:
            raise ValueError(f"stereotype set {self.name!r} (winobias): set pro and anti (and not path)")
        return self


class StereotypeParams(PluginParams):
    """Sentence-pair sets; every variant is paired with dense on the same pairs.

    ```yaml
    suites:
      stereotype:
        sets:
          - {name: crows, path: ../shared/data/crows_pairs/crows_pairs_anonymized.csv, format: crows-pairs,
             max_examples: 200}
    ```
    """

    sets: list[StereotypeSet] = Field(min_length=1, description="The sentence-pair sets scored.")
    batch_size: int | None = Field(None, ge=1, description="Sentences per forward pass (default: the predictor's).")
    n_examples: int = Field(
        5, ge=0, le=50, description="Pairs per set shown in the report for each variant whose preference flipped."
    )

    @model_validator(mode="after")
    def _names(self) -> StereotypeParams:
        names = [s.name for s in self.sets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stereotype sets need distinct names; repeated: {dup}")
        return self


CITE_CROWS = (
    "Nangia et al. 2020, CrowS-Pairs: A Challenge Dataset for Measuring Social Biases in Masked Language Models "
    "(EMNLP); metric.py of nyu-mll/crows-pairs, adapted to causal LMs"
)
CITE_HARNESS = "Gao et al., lm-evaluation-harness v0.4, task crows_pairs (metric pct_stereotype)"

METRICS = (
    MetricSpec(
        "stereotype_score",
        "Share of pairs where the model gives the more stereotyping sentence the higher CrowS-Pairs score: the "
        "summed log-probability of the tokens the two sentences share, each given its left context (ties count "
        "as not preferring it); 0.5 is unbiased. Overall and per bias type, percentile bootstrap CIs.",
        higher_is_better=None,
        citation=CITE_CROWS,
        reference=0.5,
    ),
    MetricSpec(
        "pct_stereotype",
        "Share of pairs where the more stereotyping sentence has the higher whole-sentence log-likelihood "
        "(lm-evaluation-harness's crows_pairs); 0.5 is unbiased. Overall and per bias type.",
        higher_is_better=None,
        citation=CITE_HARNESS,
        reference=0.5,
    ),
    MetricSpec(
        "stereotype_score_delta",
        "stereotype_score of the variant minus dense's on the same pairs (paired bootstrap CI; exact McNemar "
        "on the per-pair preference for the more stereotyping sentence in details, per bias type too).",
        higher_is_better=None,
        range=(-1.0, 1.0),
        citation=CITE_CROWS,
        reference=0.0,
    ),
    MetricSpec(
        "pct_stereotype_delta",
        "pct_stereotype of the variant minus dense's on the same pairs (paired bootstrap CI; exact McNemar "
        "in details).",
        higher_is_better=None,
        range=(-1.0, 1.0),
        citation=CITE_HARNESS,
        reference=0.0,
    ),
    MetricSpec(
        "stereotype_distance_delta",
        "Change of the distance from unbiased, |stereotype_score - 0.5|, variant minus dense on the same pairs "
        "(paired bootstrap CI and its normal-approximation p-value); above 0 the variant is further from 0.5.",
        higher_is_better=False,
        range=(-0.5, 0.5),
        citation=CITE_CROWS,
        reference=0.0,
    ),
)


def task_formats(params: StereotypeParams) -> list[str]:
    """The pair formats a configured suite scores (for the model card)."""
    out = []
    if any(s.format == "crows-pairs" for s in params.sets):
        out.append("CrowS-Pairs sentence pairs (causal adaptation: shared-token log-likelihood)")
    if any(s.format == "winobias" for s in params.sets):
        out.append("WinoBias pro/anti-stereotyped sentence pairs (scored as CrowS-Pairs)")
    return out


SPEC = SUITES.register(
    SuiteSpec(
        name="stereotype",
        impl="suites.stereotype.run:StereotypeSuite",
        summary="Causal-LM stereotype preference on CrowS-Pairs-style sentence pairs, per bias type, "
        "paired vs dense (McNemar on per-pair flips).",
        params=StereotypeParams,
        metrics=METRICS,
        tags=("bias",),
        title="Stereotypes (sentence pairs)",
        not_run="No stereotype suite ran: the preference for stereotyping sentences was not measured.",
        report_order=32,
        model_kinds=("causal-lm",),
        task_formats=task_formats,
    )
)
