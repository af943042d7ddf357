"""Regression attribution: which pruning decisions a significant regression comes from.

For a significant regression of the run (an entry of ``statistics["regressions"]``: a
dense-vs-variant test with q at most the run's FDR level, changed for the worse), the variant is
pruned again (the same method, params, seed and calibration sample: the same mask, checked
against the recorded ``mask_fingerprint``) and groups of its Linear layers are given back their
dense weights (weight and bias) one group at a time. Each restored model is re-scored on the
examples that define the regression (:meth:`audit.suite.Suite.defining_examples`: the set, or
the group, whose accuracy regressed), and

    share(G) = (acc(variant with G restored) - acc(variant)) / (acc(dense) - acc(variant))

is the share of the gap that restoring G closes: 1 when G alone explains it, 0 when it does not
matter, negative when restoring it makes things worse, and the shares of disjoint groups need not
add up to 1 (layers interact). Its CI is a percentile paired bootstrap over the defining examples:
the same resamples for the variant, dense and every group (:func:`audit.stats.bootstrap_indices`),
so shares are comparable with each other.

The groups come from the model's adapter (:meth:`audit.models.ModelAdapter.layer_groups`: its
blocks, and within a block its attention projections and its feed-forward layers), so nothing
here knows an architecture. The search goes from coarse to fine while its budget lasts:

1. the variant and dense (2 evaluations), then every pruned layer restored at once (``all``: the
   share of the gap the Linear layers hold; exactly 1 when pruning changed nothing else);
2. each block (model order);
3. within each block that has both, its attention and its feed-forward group (blocks that
   explain most first; ``granularity: type`` or ``layer``);
4. within each such group of more than one layer, each layer (groups that explain most first;
   ``granularity: layer``).

An evaluation costs one forward pass per defining example; before each one the search checks that
it fits in ``budget_forward_passes`` (variant and dense included) and otherwise stops, recording
every group it did not reach. Structured variants (changed shapes) cannot be restored layer by
layer and are recorded as not attributable, as are regressions whose suite gives no defining
examples (a metric that is not an accuracy).

**Held out** (``holdout``, default 0.5): the search runs on a seeded draw of the defining
examples (:func:`split_holdout`) and the rest are set aside. Afterwards the group with the largest
share at each level the search reached (block, type, layer) is re-measured on the held-out
examples, together with the variant and dense there (``record.holdout``; its forward passes are
reserved in the budget before the search starts). A share that won a comparison on the selection
examples is biased upwards there; the held-out share took no part in choosing, so it is the
figure to quote for "restoring G recovers this much of the gap".

Tran et al. (2022), "Pruning has a disparate impact on model accuracy" (NeurIPS), explain group
gaps by two quantities, recorded here per group of each group column of the regression's set (and
for all its examples), dense vs variant:

* the gradient norm: ``||grad_W mean_{x in group} CE(f(x), y)||_2`` over the weights of the pruned
  Linear layers (the parameters pruning acts on); for the variant over the weights it keeps (its
  zeros are fixed, so their gradient is left out). One forward and backward pass per example and
  model, counted in ``diagnostic_passes``, apart from the search budget. Classifiers only (a
  zero-shot LM's class logits are not its training loss).
* the margin: mean of the top class probability minus the runner-up (the distance to the decision
  boundary in probability space), from one forward pass per example and model.
"""

from __future__ import annotations

from audit.attribution._diagnostics import CITATION, diagnostics
from audit.attribution._layers import restorable_layers, restored
from audit.attribution._run import run_attribution, select_regressions
from audit.attribution._search import Search, attribute, split_holdout

__all__ = [
    "CITATION",
    "Search",
    "attribute",
    "diagnostics",
    "restorable_layers",
    "restored",
    "run_attribution",
    "select_regressions",
    "split_holdout",
]
