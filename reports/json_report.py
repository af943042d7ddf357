"""The JSON reporter: the run result itself, in its versioned schema."""

from __future__ import annotations

from audit.results import RunResult


def render(result: RunResult) -> str:
    return result.to_json()
