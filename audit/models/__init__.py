"""Model families behind one seam (:mod:`audit.models.adapter`); the built-in adapters are registered here.

Torch-free: importing this package registers specs only; an adapter's implementation
is imported when a checkpoint of its family is loaded.
"""

from __future__ import annotations

from audit.models.adapter import (
    ADAPTERS,
    MODEL_KINDS,
    AdapterSpec,
    LayerGroup,
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

CAUSAL_LM = ADAPTERS.register(
    AdapterSpec(
        name="causal-lm",
        impl="audit.models.causal_lm:CausalLMAdapter",
        summary="decoder-only causal LMs (AutoModelForCausalLM, or a GGUF file): next-token logits",
        kind="causal-lm",
        architecture_suffixes=("ForCausalLM", "LMHeadModel"),
        model_types=("llama", "mistral", "qwen2", "gpt2", "gpt_neox", "opt"),
        # the decoder blocks' Linear layers only (never the LM head or the embeddings)
        default_include=(r"^(model\.layers|transformer\.h|gpt_neox\.layers|model\.decoder\.layers)\.\d+\.",),
    )
)

__all__ = [
    "ADAPTERS",
    "CAUSAL_LM",
    "MODEL_KINDS",
    "SEQUENCE_CLASSIFIER",
    "AdapterSpec",
    "LayerGroup",
    "ModelAdapter",
    "UnitGroups",
    "adapter_for",
    "adapter_of",
    "adapter_spec_for",
    "read_dir_config",
]
