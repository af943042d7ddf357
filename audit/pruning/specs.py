"""Specs of the built-in pruning methods: params models and metadata, no torch.

Each params model's docstring carries a YAML example of its sweep entry.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from audit.registry import PRUNERS, PluginParams, PrunerSpec


class MagnitudeParams(PluginParams):
    """Unstructured magnitude pruning (L1 of single weights).

    ```yaml
    sweep:
      methods:
        - name: magnitude
          params: {scope: global}   # or layer (default): same sparsity in every layer
    ```
    """

    scope: Literal["layer", "global"] = Field(
        "layer",
        description="layer: each layer pruned to the target; global: one threshold across layers.",
    )


MAGNITUDE = PRUNERS.register(
    PrunerSpec(
        name="magnitude",
        impl="audit.pruning.magnitude:MagnitudePruner",
        summary="Unstructured magnitude pruning (|w|), layer-wise or global; torch.nn.utils.prune.",
        params=MagnitudeParams,
        tags=("unstructured",),
        criterion="|w| (L1 magnitude)",
    )
)


def validate_point_params(point: object) -> None:
    """Re-validate a sweep point's params against its method's params model (torch-free).

    Raises :class:`audit.errors.UsageError` naming the point, before any work starts.
    """
    from pydantic import ValidationError

    from audit.errors import UsageError

    spec = PRUNERS.get(point.method)  # type: ignore[attr-defined]
    try:
        spec.params.model_validate(point.params)  # type: ignore[attr-defined]
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise UsageError(
            f"invalid params for {point.method}: {first['msg']}",  # type: ignore[attr-defined]
            where=f"sweep point {point.id}",  # type: ignore[attr-defined]
        ) from None
