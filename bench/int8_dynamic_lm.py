"""Why int8_dynamic fails its equivalence check on SmolLM2-135M-Instruct (issue 21). By hand::

    PRUNE_AUDIT_SHARED_DATA=../shared/data nice -n 19 .venv/bin/python -m bench.int8_dynamic_lm --n 200

``quantized::linear_dynamic`` (fbgemm) rounds each Linear's input to one uint8 grid per tensor,
7 bits wide (``reduce_range``), then multiplies int8 weights. This bench takes the embedded SmolLM2
and, for each of its 210 block Linears:

* the input range on the SST-2 prompts (one prompt at a time, no padding): the per-tensor grid step
  (range / 127), next to the median per-token step (each token's own range / 127), which shows how
  much of the grid one outlier token takes;
* zero-shot SST-2 accuracy (template ``Review: {text}\\nSentiment:``, choices " negative" / " positive",
  each scored by its summed token log-probability) of four models on the same prompts: dense; the
  project's reference (``QuantReferenceLinear``: the int8 weight dequantized, the input fake-quantized
  per tensor as the kernel does); the deployed kernel (``DynamicInt8Linear``); and the same int8
  weights with the input fake-quantized per token (a scheme fbgemm's dynamic kernel does not offer);
* each model's agreement with dense and the reference's with the kernel, and the largest difference
  between the reference's and the kernel's choice scores.

Writes ``bench/results/int8_dynamic_lm.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.common import ROOT, cpu_model, sst2

TEMPLATE = "Review: {text}\nSentiment:"
CHOICES = (" negative", " positive")


class PerTokenFakeQuant(nn.Module):
    """The reference's int8 weight with each token's input on its own 7-bit grid (asymmetric, like the kernel's)."""

    def __init__(self, ref: nn.Linear) -> None:
        super().__init__()
        self.ref = ref

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo = x.amin(dim=-1, keepdim=True).clamp_max(0.0)
        hi = x.amax(dim=-1, keepdim=True).clamp_min(0.0)
        scale = ((hi - lo) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
        zero = torch.round(-lo / scale)
        xq = (torch.clamp(torch.round(x / scale) + zero, 0, 127) - zero) * scale
        return nn.functional.linear(xq, self.ref.weight, self.ref.bias)


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n]


def _swap(model: nn.Module, make: Any) -> nn.Module:
    import copy

    from audit.models.decoders import set_module

    out = copy.deepcopy(model)
    for name, lin in _linears(out):
        set_module(out, name, make(lin))
    return out


def _scores(model: nn.Module, tok: Any, texts: list[str]) -> torch.Tensor:
    """``[n, 2]`` summed log-probabilities of the two choices after each prompt (one prompt per call)."""
    out = torch.empty(len(texts), len(CHOICES), dtype=torch.float64)
    with torch.inference_mode():
        for i, text in enumerate(texts):
            prompt = tok(TEMPLATE.format(text=text), add_special_tokens=False)["input_ids"]
            for j, choice in enumerate(CHOICES):
                ids = tok(choice, add_special_tokens=False)["input_ids"]
                x = torch.tensor([prompt + ids])
                logp = torch.log_softmax(model(input_ids=x).logits[0].double(), dim=-1)
                out[i, j] = sum(logp[len(prompt) - 1 + k, t] for k, t in enumerate(ids))
    return out


def _ranges(model: nn.Module, tok: Any, texts: list[str]) -> dict[str, dict[str, float]]:
    """Per Linear: the largest per-prompt input range / 127 (the per-tensor step) and the median per-token step."""
    steps: dict[str, list[float]] = {}
    token_steps: dict[str, list[float]] = {}
    hooks = []
    for name, lin in _linears(model):

        def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], _o: Any, name: str = name) -> None:
            x = inp[0].detach().float().reshape(-1, inp[0].shape[-1])
            lo, hi = x.min().clamp_max(0.0), x.max().clamp_min(0.0)
            steps.setdefault(name, []).append(float(hi - lo) / 127.0)
            per = (x.amax(dim=1).clamp_min(0.0) - x.amin(dim=1).clamp_max(0.0)) / 127.0
            token_steps.setdefault(name, []).extend(per.tolist())

        hooks.append(lin.register_forward_hook(hook))
    with torch.inference_mode():
        for text in texts:
            ids = tok(TEMPLATE.format(text=text), add_special_tokens=False)["input_ids"]
            model(input_ids=torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return {
        n: {"tensor_step_max": max(steps[n]), "tensor_step_median": statistics.median(steps[n]),
            "token_step_median": statistics.median(token_steps[n])}
        for n in steps
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="SST-2 dev sentences (the first n)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8_dynamic_lm")
    args = ap.parse_args()
    from audit.deploy.quantized import QuantReferenceLinear
    from audit.env import configure_offline
    from audit.models.gguf import embedded_smollm2_path, load_gguf

    configure_offline(True)
    torch.set_num_threads(1)
    rows = sst2("dev")[: args.n]
    texts = [r["text"] for r in rows]
    labels = torch.tensor([int(r["label"]) for r in rows])
    loaded = load_gguf(embedded_smollm2_path())
    dense, tok = loaded.model.eval(), loaded.tokenizer
    t0 = time.perf_counter()
    ranges = _ranges(dense, tok, texts)
    ref = _swap(dense, lambda lin: QuantReferenceLinear(lin, "int8_dynamic"))
    models = {
        "dense": dense,
        "reference (per-tensor fake quant)": ref,
        "kernel (quantized::linear_dynamic)": _swap(ref, lambda r: r.deploy()),
        "per-token fake quant": _swap(ref, PerTokenFakeQuant),
    }
    scores = {k: _scores(m, tok, texts) for k, m in models.items()}
    pred = {k: s.argmax(dim=1) for k, s in scores.items()}
    ref_k, ker_k = "reference (per-tensor fake quant)", "kernel (quantized::linear_dynamic)"
    result: dict[str, Any] = {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "n": len(texts),
        "models": {
            k: {
                "accuracy": float((pred[k] == labels).double().mean()),
                "agreement_with_dense": float((pred[k] == pred["dense"]).double().mean()),
            }
            for k in models
        },
        "reference_vs_kernel": {
            "agreement": float((pred[ref_k] == pred[ker_k]).double().mean()),
            "max_abs_score_diff": float((scores[ref_k] - scores[ker_k]).abs().max()),
        },
        "ranges": ranges,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    worst = sorted(ranges.items(), key=lambda kv: -kv[1]["tensor_step_max"])[:5]
    ratio = [v["tensor_step_median"] / max(v["token_step_median"], 1e-12) for v in ranges.values()]
    result["step_ratio_median"] = statistics.median(ratio)
    result["step_ratio_max"] = max(ratio)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    lines = [
        f"CPU: {result['cpu']}; torch {result['torch']}; SmolLM2-135M-Instruct, zero-shot SST-2 dev n {len(texts)}, "
        f"`python -m bench.int8_dynamic_lm --n {args.n}` ({result['wall_s']:.0f} s)",
        "",
        "| model | accuracy | agreement with dense |",
        "|---|---|---|",
        *(f"| {k} | {v['accuracy']:.3f} | {v['agreement_with_dense']:.3f} |" for k, v in result["models"].items()),
        "",
        f"Reference vs kernel: agreement {result['reference_vs_kernel']['agreement']:.3f}, largest choice-score "
        f"difference {result['reference_vs_kernel']['max_abs_score_diff']:.3g} nats.",
        "",
        f"Input grid step per tensor / per token (medians over prompts), over the 210 Linears: median ratio "
        f"{result['step_ratio_median']:.1f}, largest {result['step_ratio_max']:.1f}. Largest per-tensor steps:",
        "",
        "| Linear | per-tensor step (max) | per-tensor step (median) | per-token step (median) |",
        "|---|---|---|---|",
        *(f"| {n} | {v['tensor_step_max']:.3g} | {v['tensor_step_median']:.3g} | {v['token_step_median']:.3g} |"
          for n, v in worst),
    ]  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
