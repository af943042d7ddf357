"""A layer deployed per regime: one format for decode-sized calls, another for prefill-sized ones.

With ``deploy.regime_split_tokens`` set, the per-layer choice (:func:`audit.deploy.choose.decide_regimes`)
decides the decode regime (the ``choose_tokens`` counts at or below the split) and the prefill
regime (the counts above it) separately, each under the ``min_speedup`` guard. Where the two
regimes pick different formats (``bitmap`` for decode, ``kernel`` or ``dense`` for prefill), the
layer becomes a :class:`RegimeLinear`: it holds both deployed modules and routes each call by its
number of tokens (``x.numel() // in_features``): at most ``split`` tokens go to the decode module,
more to the prefill module. Its recorded format is ``<decode>|<prefill>``
(:func:`audit.deploy.formats.regime_format`) and it stores both representations (a dense side is
the original ``nn.Linear``, whose weight it shares with nothing else once converted); its
``stored_bytes`` is their sum. Either side can be any registered format (a third party's
included): each side is built, saved and reloaded by its own :class:`DeployFormat`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from audit.deploy.format_classes import DeployFormat, format_for, stored_bytes
from audit.deploy.formats import DENSE, regime_format
from audit.deploy.modules import DeployedLinear, format_of

SIDES = ("decode", "prefill")


class RegimeLinear(DeployedLinear):
    """Two deployed forms of one layer; calls of at most ``split`` tokens run ``decode``, larger ones ``prefill``."""

    def __init__(self, decode: nn.Module, prefill: nn.Module, split: int) -> None:
        shapes = {(int(m.in_features), int(m.out_features)) for m in (decode, prefill)}  # type: ignore[arg-type]
        if len(shapes) != 1:
            raise ValueError(f"the decode and prefill modules of a layer must have one shape, found {sorted(shapes)}")
        if int(split) < 1:
            raise ValueError(f"the regime split must be a positive token count, found {split}")
        in_f, out_f = shapes.pop()
        super().__init__(in_f, out_f)
        self.decode = decode
        self.prefill = prefill
        self.split = int(split)

    @property
    def bias(self) -> torch.Tensor | None:
        """The decode side's bias (the prefill side holds an equal one)."""
        return self.decode.bias  # type: ignore[return-value]

    @property
    def format(self) -> str:
        return regime_format(format_of(self.decode), format_of(self.prefill))

    def side_for(self, tokens: int) -> nn.Module:
        """The module a call with ``tokens`` tokens runs."""
        return self.decode if tokens <= self.split else self.prefill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.side_for(x.numel() // self.in_features)(x)  # type: ignore[no-any-return]

    def _run(self, x2d: torch.Tensor) -> torch.Tensor:
        return self.side_for(int(x2d.shape[0]))(x2d)  # type: ignore[no-any-return]

    def dense_weight(self) -> torch.Tensor:
        side = self.decode
        return side.weight.detach() if format_of(side) == DENSE else side.dense_weight()  # type: ignore[operator]

    @property
    def nnz(self) -> int:
        return int(torch.count_nonzero(self.dense_weight()))

    def stored_bytes(self) -> int:
        """Both representations: the memory a per-regime layer costs."""
        return stored_bytes(self.decode) + stored_bytes(self.prefill)

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"split": self.split}
        for side in SIDES:
            m = getattr(self, side)
            if isinstance(m, DeployedLinear):
                out[side] = {"format": m.format, "meta": m.meta()}
            else:
                out[side] = {"format": DENSE, "bias": m.bias is not None}
        return out

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for side in SIDES:
            m = getattr(self, side)
            if isinstance(m, DeployedLinear):
                tensors = m.state_tensors()
            else:
                tensors = {"weight": m.weight.detach()}
                if m.bias is not None:
                    tensors["bias"] = m.bias.detach()
            out.update({f"{side}.{k}": t for k, t in tensors.items()})
        return out

    @classmethod
    def from_state(
        cls, in_features: int, out_features: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> RegimeLinear:
        """Each side rebuilt by its own format from the tensors under its prefix."""
        sides: dict[str, nn.Module] = {}
        for side in SIDES:
            spec = meta[side]
            prefix = side + "."
            own = {k[len(prefix) :]: t for k, t in tensors.items() if k.startswith(prefix)}
            if spec["format"] == DENSE:
                sides[side] = format_for(DENSE).convert(DENSE, own["weight"], own.get("bias"))
            else:
                sides[side] = format_for(spec["format"]).load(in_features, out_features, own, spec.get("meta", {}))
        return cls(sides["decode"], sides["prefill"], int(meta["split"]))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, split={self.split}"


class RegimeFormat(DeployFormat):
    """The recorded ``<decode>|<prefill>`` formats: built by the converter, reloaded from the manifest."""

    name = "regime"
    module = RegimeLinear

    def convert(self, recorded: str, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        raise TypeError("a per-regime layer is built by the converter from its two formats (build_regime)")


REGIME_FORMAT = RegimeFormat()


def build_regime(
    decode: str, prefill: str, split: int, weight: torch.Tensor, bias: torch.Tensor | None, dense: nn.Module
) -> RegimeLinear:
    """A :class:`RegimeLinear` of formats ``decode`` and ``prefill``; a dense side is ``dense`` (the original layer)."""

    def side(fmt: str) -> nn.Module:
        return dense if fmt == DENSE else format_for(fmt).convert(fmt, weight, bias)

    return RegimeLinear(side(decode), side(prefill), split)


def check_regime_layer(
    module: RegimeLinear,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    tokens: list[int],
    *,
    factor: float = 2.0,
    seed: int = 0,
) -> list[tuple[int, str, float, float]]:
    """Each routed call against ``F.linear`` with the masked weight: ``(tokens, side, max |Δ|, tolerance)`` per count.

    ``tokens`` should hold counts of both regimes (e.g. 1 and the split for decode, split + 1 and the
    largest timed count for prefill). The tolerance is the per-layer form of
    :func:`audit.deploy.verify.scaled_tolerance`: ``factor x eps x max(1, max|y|) x sqrt(in_features)``.
    """
    import math

    gen = torch.Generator().manual_seed(seed)
    w = weight.detach()
    b = None if bias is None else bias.detach()
    eps = float(torch.finfo(w.dtype).eps) if w.dtype.is_floating_point else float(torch.finfo(torch.float32).eps)
    out = []
    with torch.inference_mode():
        for n in tokens:
            x = torch.randn(n, module.in_features, generator=gen).to(device=w.device, dtype=w.dtype)
            ref = nn.functional.linear(x, w, b)
            y = module(x)
            diff = float((y.double() - ref.double()).abs().max())
            scale = max(1.0, float(ref.abs().max()))
            tol = factor * eps * scale * math.sqrt(module.in_features)
            out.append((n, "decode" if n <= module.split else "prefill", diff, tol))
    return out
