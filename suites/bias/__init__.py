"""Demographic-bias suite: group metrics, counterfactual invariance, identity-subgroup AUCs,
functional test sets, and what pruning does to each group.

Torch-free: spec, params and metric declarations only; the implementation is in
:mod:`suites.bias.run`, the default identity terms in :mod:`suites.bias.terms`.
"""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import Field, field_validator, model_validator

from audit.config import DatasetRef
from audit.registry import SUITES, MetricSpec, PluginParams, SuiteSpec
from audit.stats import SMALL_GROUP_N


def _check_groups(where: str, groups: dict[str, list[str]]) -> None:
    if len(groups) < 2:
        raise ValueError(f"{where} needs at least two groups to swap between, found {sorted(groups)}")
    seen: dict[str, str] = {}
    for group, terms in groups.items():
        if not terms:
            raise ValueError(f"{where}.{group} is empty; list at least one term")
        for t in terms:
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"{where}.{group} has an empty term")
            k = " ".join(t.lower().split())
            if k in seen and seen[k] != group:
                raise ValueError(f"{where}: term {t!r} is in two groups ({seen[k]!r} and {group!r})")
            seen[k] = group


class CounterfactualParams(PluginParams):
    """Identity-term swaps of each eval text; flip rate and probability shift per group pair.

    ```yaml
    counterfactual:
      categories: [gender, race, religion]          # default: every category
      terms:                                        # replaces a default category, or adds one
        religion: {christian: [Christian, Christians], muslim: [Muslim, Muslims]}
      names: {female: {white: [Emily]}, male: {white: [Greg]}}   # replaces the default names
    ```
    """

    enabled: bool = True
    categories: list[str] | None = Field(None, description="Categories to swap (default: all).")
    terms: dict[str, dict[str, list[str]]] = Field(
        default_factory=dict,
        description="category -> group -> index-aligned terms; replaces that default category or adds a new one.",
    )
    names: dict[str, dict[str, list[str]]] | None = Field(
        None, description="gender -> race -> first names (replaces the defaults; {} for no names)."
    )
    strict: bool = Field(
        True, description="Ambiguous terms (black, straight, old, ...) count only in a person context."
    )
    max_per_text: int = Field(
        8, ge=1, description="At most this many counterfactuals per text (a seeded sample when more)."
    )
    max_texts: int | None = Field(None, ge=1, description="Use at most this many eval texts (seeded sample).")
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _valid(self) -> CounterfactualParams:
        from suites.bias.terms import CATEGORIES

        for cat, groups in self.terms.items():
            _check_groups(f"counterfactual.terms.{cat}", groups)
        if self.names:
            for gender, races in self.names.items():
                for race, names in races.items():
                    if not names:
                        raise ValueError(f"counterfactual.names.{gender}.{race} is empty")
        known = set(CATEGORIES) | set(self.terms)
        for cat in self.categories or []:
            if cat not in known:
                close = difflib.get_close_matches(cat, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown counterfactual category {cat!r} (known: {sorted(known)}){hint}")
        return self


class IdentitySetRef(DatasetRef):
    """A labelled toxicity-style set whose identity subgroups get subgroup/BPSN/BNSP AUCs.

    Identity membership comes from the columns named in ``columns.groups``: a boolean
    or numeric column (Jigsaw style, one column per identity: member when true or at
    least ``identity_threshold``) or a categorical column (each value other than
    ``none``/empty is a subgroup); or from the text itself with ``identity_from_text``
    (identity words of the counterfactual lexicon; names are not identities).

    ```yaml
    identity_sets:
      - name: templates
        path: data/en_sentence_templates.csv
        columns: {text: phrase, label: toxicity}
        label_map: {toxic: 1, nontoxic: 0}
        identity_from_text: true
        strict_terms: false
    ```
    """

    identity_from_text: bool = False
    identity_level: Literal["term", "group"] = Field(
        "term", description="Subgroups from text: one per term, or one per category group."
    )
    strict_terms: bool = Field(
        True, description="From text: ambiguous terms need a person context (turn off for templated sets)."
    )
    identity_threshold: float = Field(0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _has_identities(self) -> IdentitySetRef:
        if not self.identity_from_text and not self.columns.groups:
            raise ValueError(
                f"identity set {self.name!r}: name its identity columns in columns.groups, "
                "or set identity_from_text: true"
            )
        return self


class BiasParams(PluginParams):
    """Group metrics over sensitive columns, counterfactual invariance, subgroup AUCs.

    ```yaml
    suites:
      bias:
        sensitive_columns: [gender, race]    # default: data.columns.groups
        positive_label: positive             # the "selected" class for FPR/FNR/selection rate
        min_group_n: 30
        counterfactual: {categories: [gender, race, religion]}
        identity_sets: [...]                 # toxicity-style sets (see IdentitySetRef)
        functional_sets:                     # HateCheck-style: per-target accuracy
          - name: hatecheck
            path: data/hatecheck.csv
            columns: {text: test_case, label: label_gold, groups: [target_ident]}
            label_map: {hateful: 1, non-hateful: 0}
    ```
    """

    sensitive_columns: list[str] | None = Field(
        None, description="Eval-set columns to group by (default: data.columns.groups)."
    )
    intersections: bool = Field(True, description="Also report the intersection of the sensitive columns.")
    positive_label: int | str | None = Field(
        None, description="Class index or name counted as 'selected' (default: 1 for a binary model)."
    )
    min_group_n: int = Field(
        SMALL_GROUP_N, ge=1, description="Smaller groups are reported, warned about and flagged small_n."
    )
    counterfactual: CounterfactualParams = Field(default_factory=CounterfactualParams)
    identity_sets: list[IdentitySetRef] = Field(default_factory=list)
    functional_sets: list[DatasetRef] = Field(
        default_factory=list, description="Labelled sets whose columns.groups name the target (and functionality)."
    )
    n_examples: int = Field(20, ge=0, le=500, description="Pruning-identified exemplars kept for the report.")

    @field_validator("sensitive_columns")
    @classmethod
    def _no_dups(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"sensitive_columns has duplicates: {value}")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> BiasParams:
        names = [d.name for d in self.identity_sets] + [d.name for d in self.functional_sets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"identity_sets and functional_sets need distinct names; repeated: {dup}")
        return self


CITE_BORKAN = "Borkan et al. 2019, Nuanced Metrics for Measuring Unintended Bias with Real Data for Text Classification"
CITE_TRAN = "Tran et al. 2022, Pruning has a disparate impact on model accuracy"
CITE_HOOKER = "Hooker et al. 2019, What Do Compressed Deep Neural Networks Forget?"
CITE_CF = "Garg et al. 2019, Counterfactual Fairness in Text Classification through Robustness"

METRICS = (
    MetricSpec(
        "fpr",
        "False-positive rate: share of examples of the other classes predicted as the positive class.",
        higher_is_better=False,
    ),
    MetricSpec(
        "fnr",
        "False-negative rate: share of positive-class examples predicted as another class.",
        higher_is_better=False,
    ),
    MetricSpec(
        "selection_rate",
        "Share of examples predicted as the positive class (compare it between groups).",
        higher_is_better=None,
    ),
    MetricSpec(
        "demographic_parity_difference",
        "Largest between-group gap in selection rate (fairlearn), the largest over the "
        "sensitive columns; each column and the intersection in details.",
        higher_is_better=False,
    ),
    MetricSpec(
        "equalized_odds_difference",
        "Larger of the between-group gaps in true- and false-positive rate (fairlearn), the "
        "largest over the sensitive columns; each column and the intersection in details.",
        higher_is_better=False,
    ),
    MetricSpec(
        "counterfactual_flip_rate",
        "Share of identity-term swaps (names, pronouns, identity words) that change the "
        "predicted class; per category and group pair in groups.",
        higher_is_better=False,
        citation=CITE_CF,
    ),
    MetricSpec(
        "counterfactual_prob_shift",
        "Mean absolute change of the positive-class probability under identity-term swaps "
        "(half the L1 distance of the probability vectors for multi-class models); signed "
        "mean shift per group pair in details.",
        higher_is_better=False,
        citation=CITE_CF,
    ),
    MetricSpec(
        "pruning_disparate_impact",
        "Largest excess accuracy loss of a group under pruning: (dense − variant accuracy in "
        "the group) − (dense − variant accuracy overall); per group in groups, with exact "
        "McNemar tests per group in details.",
        higher_is_better=False,
        range=(-1.0, 1.0),
        citation=CITE_TRAN,
    ),
    MetricSpec(
        "pie_rate",
        "Share of examples whose prediction changed vs the dense model (pruning-identified "
        "exemplars), per group in groups; a chi-square test of whether the rate depends on "
        "the group in details.",
        higher_is_better=False,
        citation=CITE_HOOKER,
    ),
    MetricSpec("accuracy", "Share of examples classified correctly (per target group).", higher_is_better=True),
    MetricSpec(
        "accuracy_delta",
        "Accuracy of the variant minus the dense model's on the same examples (paired "
        "bootstrap CI; exact McNemar p-value in details).",
        higher_is_better=True,
        range=(-1.0, 1.0),
    ),
    MetricSpec(
        "roc_auc",
        "ROC AUC of the positive-class probability on the whole identity set.",
        higher_is_better=True,
        citation=CITE_BORKAN,
    ),
    MetricSpec(
        "subgroup_auc",
        "ROC AUC within each identity subgroup (per identity in groups); the value is their "
        "generalized mean with p = −5, which is pulled towards the worst subgroup (over subgroups "
        "of at least min_group_n examples when there are any).",
        higher_is_better=True,
        citation=CITE_BORKAN,
    ),
    MetricSpec(
        "bpsn_auc",
        "Background-positive, subgroup-negative AUC: subgroup negatives vs positives outside "
        "it; low when the subgroup's benign texts score as toxic (per identity in groups; "
        "generalized mean p = −5 as value).",
        higher_is_better=True,
        citation=CITE_BORKAN,
    ),
    MetricSpec(
        "bnsp_auc",
        "Background-negative, subgroup-positive AUC: subgroup positives vs negatives outside "
        "it; low when the subgroup's toxic texts score as benign (per identity in groups; "
        "generalized mean p = −5 as value).",
        higher_is_better=True,
        citation=CITE_BORKAN,
    ),
)

SPEC = SUITES.register(
    SuiteSpec(
        name="bias",
        predictions=True,  # extra_metrics: see prediction_sets in run.py
        impl="suites.bias.run:BiasSuite",
        summary="Group FPR/FNR/selection rate with fairlearn, parity differences, counterfactual "
        "identity swaps, subgroup/BPSN/BNSP AUC, per-target accuracy, and pruning's disparate "
        "impact and exemplars per group.",
        params=BiasParams,
        metrics=METRICS,
        tags=("fairness",),
        title="Bias and fairness",
        not_run="No bias suite ran: error-rate parity, counterfactual swaps and subgroup AUCs were not measured.",
        report_order=30,
        always_reported=True,
        model_kinds=("classifier", "causal-lm"),  # a causal LM as a zero-shot classifier (model.zero_shot)
    )
)
