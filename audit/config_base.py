"""What every section of :class:`audit.config.AuditConfig` shares: strict models and their errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError


def _err(kind: str, message: str, hint: str | None = None) -> PydanticCustomError:
    ctx: dict[str, Any] = {"hint": hint} if hint else {}
    return PydanticCustomError(kind, message, ctx)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def plugin_params(registry: Any, what: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` validated by plugin ``name``'s params model in ``registry``, as plain JSON values.

    ``what`` ("method", "suite") names the section in the error, which gives the first
    invalid param and the params the plugin allows.
    """
    spec = registry.get(name)
    try:
        parsed = spec.params.model_validate(params)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _err(
            f"{what}_params",
            f"invalid params for {what} {name!r}: {where}: {first['msg']}",
            f"allowed params: {', '.join(spec.params.model_fields) or '(none)'}",
        ) from None
    return parsed.model_dump(mode="json")
