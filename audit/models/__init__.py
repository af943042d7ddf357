"""Model families behind one seam (:mod:`audit.models.adapter`); the built-in adapters are registered here.

Torch-free: importing this package registers specs only; an adapter's implementation
is imported when a checkpoint of its family is loaded.
"""

from __future__ import annotations

from audit.models.adapter import (
    ADAPTERS,
    MODEL_KINDS,
    AdapterSpec,
    ModelAdapter,
    UnitGroups,
    adapter_for,
    adapter_of,
    adapter_spec_for,
    read_dir_config,
)

SEQUENCE_CLASSIFIER = ADAPTERS.register(
    AdapterSpec(
        name="sequence-classifier",
        impl="audit.models.classifier:ClassifierAdapter",
        summary="Hugging Face sequence classifiers (AutoModelForSequenceClassification): class logits per text",
        kind="classifier",
        architecture_suffixes=("ForSequenceClassification",),
        default_include=(r"encoder\.layer\.\d+\.",),  # every Linear layer inside the encoder blocks
        # a checkpoint without a classification architecture (a bare encoder) is still a classifier's
        # to refuse, with the reason (no trained head)
        model_types=(
            "albert",
            "bert",
            "camembert",
            "deberta",
            "deberta-v2",
            "distilbert",
            "electra",
            "mpnet",
            "roberta",
            "xlm-roberta",
        ),
    )
)

__all__ = [
    "ADAPTERS",
    "MODEL_KINDS",
    "SEQUENCE_CLASSIFIER",
    "AdapterSpec",
    "ModelAdapter",
    "UnitGroups",
    "adapter_for",
    "adapter_of",
    "adapter_spec_for",
    "read_dir_config",
]
