"""View models: everything a template shows, precomputed from a :class:`~audit.results.RunResult`.

Templates only lay out what is here; they never compute. Every builder works from
the result schema alone (measurements grouped by suite and dataset, per-group values,
examples, pruning and deployment records, statistics), so a suite or record that is
absent only removes its rows; it never breaks a report. What a report says about a
suite (title, "did not run" text, section order) comes from the suite's spec
(:mod:`reports.views.suite_text`); no suite is named in this package.

One module per report section, assembled by three builders:

* :func:`build_view` (:mod:`.page`): the HTML transparency report.
* :func:`build_summary` (:mod:`.summary`): the Markdown summary for CI step summaries and PR comments.
* :func:`build_card` (:mod:`.card`): the model-card fragment of one variant.

Sections: :mod:`.verdict` (verdict, max compliant sparsity, rules × variants),
:mod:`.identity` (model, datasets, provenance), :mod:`.variants` (pruning and
deployment), :mod:`.sweeps` (metric-vs-sparsity curves), :mod:`.groups` (per-group
tables, disparate impact), :mod:`.measurements` (per-suite sections),
:mod:`.regressions`, :mod:`.protocol` and :mod:`.limitations`; :mod:`.charts` computes
chart geometry and :mod:`.common` holds the shared formatting.
"""

from __future__ import annotations

from reports.views.card import build_card, recommended_variant
from reports.views.common import rule_row, sorted_rules
from reports.views.limitations import limitations
from reports.views.page import build_view
from reports.views.summary import build_summary

__all__ = [
    "build_card",
    "build_summary",
    "build_view",
    "limitations",
    "recommended_variant",
    "rule_row",
    "sorted_rules",
]
