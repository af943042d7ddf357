"""``model.zero_shot``: a causal LM scored as a zero-shot classifier (the model section of :mod:`audit.config`)."""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import Field, model_validator

from audit.config_base import StrictModel, _err

__all__ = ["ZERO_SHOT_FIELDS", "ZeroShotConfig", "describe_zero_shot", "template_fields"]

ZERO_SHOT_FIELDS = ("text", "text_pair")
"""The fields a zero-shot template may use: the example's text and, for sentence pairs, its second text."""


def template_fields(template: str) -> list[str]:
    """The ``{field}`` names a prompt template uses, in order (``{{`` / ``}}`` are literal braces)."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"template {template!r} is not a valid format string: {exc}") from None


class ZeroShotConfig(StrictModel):
    r"""A causal LM used as a zero-shot classifier, so the classifier suites audit it unchanged.

    ```yaml
    model:
      path: ./SmolLM2-135M
      zero_shot:
        template: "Review: {text}\nSentiment:"
        choices: [" negative", " positive"]
    ```

    Class ``i`` is choice ``i``: its logit is the summed log-likelihood of ``delimiter + choice``
    after the filled-in template (lm-evaluation-harness multiple-choice scoring), divided by the
    choice's length in characters with ``normalize: chars`` (the harness's ``acc_norm``); the
    class probabilities are their softmax. The eval data's label column holds the choice's index
    or its text (stripped, case-insensitive); ``data.label_map`` maps other values.
    """

    template: str = Field(
        description="Prompt with `{text}` (the example's text) and, for sentence pairs, `{text_pair}`."
    )
    choices: list[str] = Field(
        description="The continuations scored after the prompt, one per class in class order, each with its "
        "leading space; at least two, distinct after stripping spaces (ignoring case)."
    )
    delimiter: str = Field("", description="Put between prompt and each choice (the harness's target_delimiter).")
    normalize: Literal["none", "chars"] = Field(
        "none",
        description="none: a choice's logit is its summed log-likelihood (the harness's acc); chars: divided by the "
        "choice's length in characters (acc_norm).",
    )

    @model_validator(mode="after")
    def _check(self) -> ZeroShotConfig:
        try:
            fields = template_fields(self.template)
        except ValueError as exc:
            raise _err("zero_shot_template", str(exc)) from None
        bad = sorted({f"{{{f}}}" for f in fields if f not in ZERO_SHOT_FIELDS})
        if bad:
            raise _err(
                "zero_shot_template",
                f"model.zero_shot.template may use {{text}} and {{text_pair}} only, found {', '.join(bad)}",
                "write literal braces as {{ and }}",
            )
        if "text" not in fields:
            raise _err(
                "zero_shot_template",
                f"model.zero_shot.template {self.template!r} must contain {{text}}, where each example's text goes",
            )
        if len(self.choices) < 2:
            raise _err(
                "zero_shot_choices",
                f"model.zero_shot.choices needs at least two choices (one per class), found {len(self.choices)}",
            )
        stripped = [c.strip().lower() for c in self.choices]
        if len(set(stripped)) != len(stripped) or not all(stripped):
            raise _err(
                "zero_shot_choices",
                f"model.zero_shot.choices must be distinct and non-empty (after stripping spaces, ignoring case): "
                f"{self.choices}",
            )
        return self

    @property
    def uses_pairs(self) -> bool:
        return "text_pair" in template_fields(self.template)

    @property
    def id2label(self) -> dict[int, str]:
        """Class index -> choice text (stripped): what the label column is matched against."""
        return {i: c.strip() for i, c in enumerate(self.choices)}

    def describe(self) -> str:
        """One line for reports: the template, the choices and the scoring."""
        norm = "summed log-likelihood per character" if self.normalize == "chars" else "summed log-likelihood"
        choices = " / ".join(repr(self.delimiter + c) for c in self.choices)
        return f"zero-shot classifier: prompt {self.template!r}, choices {choices} ({norm}, softmax over choices)"


def describe_zero_shot(config: Any) -> str:
    """The :meth:`ZeroShotConfig.describe` line of a run's recorded config (a dict), or ``""`` without one."""
    model = config.get("model") if isinstance(config, dict) else None
    zs = model.get("zero_shot") if isinstance(model, dict) else None
    if not zs:
        return ""
    try:
        return ZeroShotConfig.model_validate(zs).describe()
    except ValueError:  # a recorded config of another version: name what it says, unjudged
        return f"zero-shot classifier: {zs}"
