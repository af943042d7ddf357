"""The protocol section's time split: where each variant's audit time went (:class:`audit.results.VariantTiming`).

Every figure is formatted here (seconds, ratios); the template only lays the rows out.
The attack column is the attack's search (its loop less the model forwards it made,
which are in the inference column), so a row's parts add up to its total.
"""

from __future__ import annotations

from typing import Any

from audit.results import RunResult, SuiteTiming, VariantResult


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _suite_row(name: str, t: SuiteTiming, reused: bool) -> dict[str, Any]:
    search = None if t.attack_s is None else max(0.0, t.attack_s - (t.attack_inference_s or 0.0))
    return {
        "part": name,
        "total": _s(t.total_s),
        "inference": _s(t.inference_s),
        "attack": _s(search),
        "statistics": _s(t.statistics_s),
        "ratio": "—" if t.forward_ratio is None else f"{t.forward_ratio:.2f}×",
        "note": ", ".join(
            x
            for x in (
                f"{t.forward_calls} forward call{'s' if t.forward_calls != 1 else ''}",
                f"{t.reused_inference_s:.2f} s of forwards shared by an earlier suite"
                if t.reused_inference_s > 0
                else "",
                f"attack loop {t.attack_s:.2f} s, {t.attack_inference_s or 0.0:.2f} s of it inference"
                if t.attack_s is not None
                else "",
                "reused from the store (seconds of the run that made it)" if reused else "",
            )
            if x
        ),
    }


def _plain(part: str, seconds: float, note: str = "") -> dict[str, Any]:
    return {
        "part": part,
        "total": _s(seconds),
        "inference": "",
        "attack": "",
        "statistics": "",
        "ratio": "",
        "note": note,
    }


def variant_timing(v: VariantResult) -> dict[str, Any] | None:
    """One variant's table, or None when its results hold no time split."""
    t = v.timing
    if t is None:
        return None
    stored = "reused from the store (seconds of the run that made it)"
    rows = []
    if not v.is_baseline:
        rows.append(_plain("prune", t.prune_s, stored if "prune" in t.reused else ""))
        rows.append(
            _plain(
                "deploy",
                t.deploy_s,
                stored if "deploy" in t.reused else "format choice, conversion, equivalence and speed timing",
            )
        )
    rows.extend(_suite_row(name, s, name in t.reused) for name, s in t.suites.items())
    if t.suites_forward_ratio is not None:
        rows.append(
            {
                **_plain("suites without an attack", 0.0),
                "total": "",
                "ratio": f"{t.suites_forward_ratio:.2f}×",
                "note": "together: their time / their own forwards (a set scored once and shared counts once)",
            }
        )
    rows.append(_plain("overhead", t.overhead_s, "model copy, store I/O, saving the variant, ..."))
    rows.append(_plain("total", t.total_s, "this run's wall time for the variant"))
    return {"id": v.id, "rows": rows}


def timing(result: RunResult) -> dict[str, Any]:
    """Per-variant tables and the largest forward ratio of a suite that runs no attack."""
    tables = [t for t in (variant_timing(v) for v in result.all_variants()) if t is not None]
    worst: tuple[float, str, str] | None = None
    for v in result.all_variants():
        for name, s in v.timing.suites.items() if v.timing else ():
            if s.forward_ratio is not None and (worst is None or s.forward_ratio > worst[0]):
                worst = (s.forward_ratio, name, v.id)
    return {
        "tables": tables,
        "worst_ratio": (f"{worst[0]:.2f}× ({worst[1]} on {worst[2]})" if worst is not None else ""),
    }
