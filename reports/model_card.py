"""The model-card reporter: a fragment for publishing a pruned model on the Hugging Face Hub.

The YAML front matter is the Hub's ``model-index`` (eval results) written by
``huggingface_hub.ModelCardData``; the Markdown body states how the model was pruned,
the audit verdict, its results next to the dense model's, the worst groups and the
limitations. By default the card describes the recommended variant: the method with
the highest max compliant sparsity, at that sparsity (``--card-variant`` picks another).
"""

from __future__ import annotations

from typing import Any

from audit.results import RunResult
from reports.markdown import environment
from reports.views import build_card
from reports.views.suite_text import model_kind

TASK_TYPES: dict[str, tuple[str, str]] = {
    "classifier": ("text-classification", "Text Classification"),
    "causal-lm": ("text-generation", "Text Generation"),
}
"""The Hub's pipeline tag and task name per audited model kind."""


def task_type(result: RunResult) -> tuple[str, str]:
    """(pipeline tag, task name) of the audited model's kind (a classifier when the run does not say)."""
    return TASK_TYPES.get(model_kind(result), TASK_TYPES["classifier"])


def front_matter(result: RunResult, view: dict[str, Any]) -> str:
    """``model-index`` YAML of the card's variant (tags only when no variant is described)."""
    from huggingface_hub import EvalResult, ModelCardData

    tag, task_name = task_type(result)
    variant = view["variant"]
    tags = ["prune-audit", "pruned"]
    if variant is not None:
        tags += [variant["method_key"], f"sparsity-{variant['sparsity']}"]
    eval_results = [
        EvalResult(
            task_type=tag,
            task_name=task_name,
            dataset_type=r["dataset"],
            dataset_name=r["dataset"],
            dataset_split=r["split"],
            metric_type=r["metric"],
            metric_name=f"{r['suite']} {r['metric']}",
            metric_value=r["value"],
            verified=False,
        )
        for r in view["results_meta"]
    ]
    model_cfg = result.config.get("model") if isinstance(result.config.get("model"), dict) else {}
    data = ModelCardData(
        model_name=f"{view['model_name']}-{variant['id']}" if variant is not None else view["model_name"],
        base_model=(model_cfg or {}).get("hub_id") or None,
        library_name="transformers",
        pipeline_tag=tag,
        tags=tags,
        eval_results=eval_results or None,
    )
    return data.to_yaml()


def render(result: RunResult, *, variant: str | None = None, attestation: Any = None) -> str:
    view = build_card(result, variant)
    view["attestation"] = attestation.model_dump() if attestation is not None else None
    body = environment().get_template("model_card.md.j2").render(v=view)
    return f"---\n{front_matter(result, view)}\n---\n\n{body}"
