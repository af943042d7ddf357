"""Specs and params of the activation-sparsity methods (``teal``, ``cats``), no torch.

The sweep's sparsity level is, for these methods, the target *activation* sparsity: the share
of the gated activations zeroed on the calibration data. No weight changes.
"""

from __future__ import annotations

from pydantic import Field

from audit.registry import PRUNERS, PluginParams, PrunerSpec


class _ActivationParams(PluginParams):
    max_tokens: int = Field(
        1, ge=1, le=4096,
        description="Calls of at most this many tokens run the skipping kernel (decode: 1); longer calls a GEMM "
        "on the gated input.",
    )  # fmt: skip
    max_calibration_values: int = Field(
        4_000_000, ge=1000, le=100_000_000,
        description="Activations per gate kept for its quantile (an even stride through the calibration tokens).",
    )  # fmt: skip


class TealParams(_ActivationParams):
    """TEAL-style activation sparsity (Liu et al. 2024, arXiv:2408.14690): a magnitude threshold on
    the *input* of every selected Linear layer, calibrated so that the sweep's sparsity level of its
    calibration inputs falls below it; on every input, activations below the threshold are zeroed and
    the deployed kernel skips the weight columns they would multiply. Weights are unchanged. Blocks are
    calibrated in order, each on the outputs of the already gated blocks before it.

    ```yaml
    sweep:
      methods: [teal]
      sparsities: [0.25, 0.4, 0.5]     # target activation sparsity
    ```
    """


class CatsParams(_ActivationParams):
    """CATS-style activation sparsity (Lee et al. 2024, arXiv:2404.08763) on gated MLPs
    (``down(act(gate(x)) * up(x))``, as in Llama): a magnitude threshold on the activation function's
    output, calibrated to the sweep's sparsity level; ``down_proj`` is deployed on the skipping kernel
    (its input is zero wherever the gate closed). Only a selected layer named ``down_proj`` whose parent
    has ``act_fn``, ``gate_proj`` and ``up_proj`` is gated; other selected layers are left alone.

    ```yaml
    sweep:
      methods: [cats]
      sparsities: [0.5]
    ```
    """


def _activation(name: str, params: type[PluginParams], summary: str, criterion: str) -> PrunerSpec:
    return PRUNERS.register(
        PrunerSpec(
            name=name, impl="audit.pruning.activation:ActivationSparsityPruner", params=params,
            tags=("activation-sparsity", "calibration"), needs_calibration=True, summary=summary, criterion=criterion,
        )
    )  # fmt: skip


TEAL = _activation(
    "teal", TealParams,
    "TEAL activation sparsity: per-layer input magnitude thresholds from calibration; weights unchanged.",
    "|x| of each Linear layer's input below a calibrated per-layer threshold (Liu et al. 2024)",
)  # fmt: skip
CATS = _activation(
    "cats", CatsParams,
    "CATS activation sparsity on gated MLPs: the activation output thresholded; down_proj skips its zeros.",
    "|act(gate(x))| below a calibrated per-MLP threshold (Lee et al. 2024)",
)  # fmt: skip
