"""What every section of :class:`audit.config.AuditConfig` shares: strict models and their errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


def _err(kind: str, message: str, hint: str | None = None) -> PydanticCustomError:
    ctx: dict[str, Any] = {"hint": hint} if hint else {}
    return PydanticCustomError(kind, message, ctx)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
