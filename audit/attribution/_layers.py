"""The layers attribution can give back their dense weights, and the giving back (see :mod:`audit.attribution`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def _modules(model: Any) -> dict[str, Any]:
    return dict(model.named_modules())


def restorable_layers(dense: Any, variant: Any, adapter: Any) -> tuple[list[str], list[str], str | None]:
    """The prunable Linear layers whose weights differ from dense's, notes, and why none can be restored.

    Returns ``(layers, notes, refusal)``: ``refusal`` is set when a layer changed shape
    (structured pruning) or a layer is missing, since then dense weights cannot be put back.
    """
    import torch

    dmods = _modules(dense)
    layers, notes = [], []
    for name, mod in adapter.prunable_linears(variant):
        ref = dmods.get(name)
        if ref is None:
            return [], [], f"layer {name} of the variant has no dense counterpart"
        if tuple(ref.weight.shape) != tuple(mod.weight.shape):
            return (
                [],
                [],
                (
                    f"layer {name} changed shape ({list(ref.weight.shape)} -> {list(mod.weight.shape)}): structured "
                    "pruning removes units, which cannot be restored layer by layer"
                ),
            )
        same = torch.equal(ref.weight, mod.weight) and (
            (ref.bias is None and mod.bias is None)
            or (ref.bias is not None and mod.bias is not None and torch.equal(ref.bias, mod.bias))
        )
        if not same:
            layers.append(name)
    inside = {f"{n}.weight" for n in layers} | {f"{n}.bias" for n in layers}
    dparams = dict(dense.named_parameters())
    other = [
        n
        for n, p in variant.named_parameters()
        if n not in inside and n in dparams and (p.shape != dparams[n].shape or not torch.equal(p, dparams[n]))
    ]
    if other:
        notes.append(
            f"{len(other)} parameter tensor(s) outside the restorable Linear layers differ from dense "
            f"(e.g. {', '.join(other[:3])}): restoring every group cannot close the part of the gap they hold"
        )
    return layers, notes, None


@contextlib.contextmanager
def restored(dense: Any, variant: Any, layers: list[str] | tuple[str, ...]) -> Iterator[None]:
    """Inside, ``variant``'s ``layers`` hold dense's weights and biases; put back on exit."""
    import torch

    dmods, vmods = _modules(dense), _modules(variant)
    saved = []
    with torch.no_grad():
        for name in layers:
            mod, ref = vmods[name], dmods[name]
            saved.append((mod, mod.weight.detach().clone(), None if mod.bias is None else mod.bias.detach().clone()))
            mod.weight.copy_(ref.weight)
            if mod.bias is not None:
                mod.bias.copy_(ref.bias)
    try:
        yield
    finally:
        with torch.no_grad():
            for mod, w, b in saved:
                mod.weight.copy_(w)
                if b is not None:
                    mod.bias.copy_(b)


def fresh_predictor(predictor: Any) -> Any:
    """A predictor that scores as ``predictor`` does but keeps no model's scores.

    The search changes the variant's weights in place, and a causal LM's predictor keeps scores
    per model object (:class:`audit.models.causal_lm.LMPredictor`): a derived one keeps none.
    """
    return predictor.derive(batch_size=predictor.batch_size, cache_size=4)
