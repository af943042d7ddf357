"""Decode speed of the deployed SmolLM2 variants, side by side with dense (part of ``bench.lm_pruning``).

After the audit, each variant saved by the deployment stage (``deploy.save_variants``) is loaded
back as deployed (the formats the chooser picked), and its masked-dense weights are also forced
onto the sparse formats that fit it (``deploy.force_format``, :data:`FORCED`: the compiled
``kernel`` and torch ``csr`` for unstructured variants, the kernel for 2:4 ones; ``semi24``, the
project's 2:4 format, runs on CUDA only and is reported as unavailable on a CPU). Every model is
checked against the variant's masked-dense next-token logits, then decode at batch 1 with the KV
cache (:func:`audit.deploy.lm._decode_seconds`: an untimed prefill of a 16-token prompt, then
single-token greedy steps) is timed for all of them in interleaved rounds (one warm-up pass, then
``rounds`` rounds, the order reversed every other round); each round gives tokens/s per model and
its ratio to dense in the same round.
"""

from __future__ import annotations

import copy
import gc
import logging
import statistics
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.lm_decode")

FORCED = {"unstructured": ("kernel", "bitmap", "csr"), "2:4": ("kernel", "nm24", "bitmap")}
"""Sparse formats each variant is forced onto: 2:4's own format (``semi24``) needs CUDA, so a 2:4 variant
gets the compiled kernel only here (torch CSR, many times slower than the kernel at 1 token, is timed for
the unstructured variants)."""


def _masked_dense(model: Any) -> Any:
    """A copy of a deployed model whose sparse layers are ``nn.Linear`` again (zeros included)."""
    from torch import nn

    from audit.deploy.modules import DeployedLinear, top_level_linears

    out = copy.deepcopy(model)
    for name, module in top_level_linears(out):  # a per-regime layer's own two modules are part of it
        if isinstance(module, DeployedLinear):
            lin = nn.Linear(module.in_features, module.out_features, bias=getattr(module, "bias", None) is not None)
            lin.weight.data = module.dense_weight().float()
            if lin.bias is not None:
                lin.bias.data = module.bias.detach().clone()
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, lin)
    return out.eval()


def _logits(model: Any, ids: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits[0].double()


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def decode_bench(
    out_dir: Path,
    variants: list[dict[str, Any]],
    *,
    new_tokens: int,
    csr_tokens: int,
    rounds: int,
) -> dict[str, Any]:
    """Time decode for dense, each variant as deployed and each forced format (see the module docstring).

    ``variants``: the results' variant records (their ``deployment.saved_to`` is loaded).
    """
    import torch

    from audit.config import DeployConfig
    from audit.deploy.convert import Converter
    from audit.deploy.format_classes import implementation
    from audit.deploy.io import load_deployed
    from audit.deploy.lm import _decode_inputs, _decode_seconds
    from audit.deploy.speed import identical_to_dense, model_bytes
    from audit.models.decoders import protected_modules
    from audit.models.gguf import embedded_smollm2_path, load_gguf

    dense = load_gguf(embedded_smollm2_path()).model.eval()
    ids, prompt, _ = _decode_inputs(dense, 16, new_tokens)
    semi24_note = implementation("semi24").unavailable("cpu", torch.float32)
    entries: list[dict[str, Any]] = [
        {"variant": "dense", "format": "dense", "model": dense, "tokens": new_tokens, "bytes": model_bytes(dense)}
    ]
    for v in variants:
        dep = v.get("deployment") or {}
        saved = dep.get("saved_to")
        label = v["point"].get("label") or v["id"]
        if not saved:
            log.warning("%s: no saved deployed variant, not timed", label)
            continue
        deployed = load_deployed(out_dir / saved)
        masked = _masked_dense(deployed)
        ref = _logits(masked, ids)
        formats = dep.get("formats") or {}
        same = identical_to_dense(dense, deployed)
        entries.append(
            {
                "variant": label,
                "timed": not same,  # the chooser kept every layer dense: dense's computation, not timed again
                "format": "as deployed: " + ", ".join(f"{k} x{n}" for k, n in sorted(formats.items())),
                "formats": formats,
                "identical_to_dense": same,
                "model": deployed,
                "tokens": new_tokens,
                "bytes": model_bytes(deployed),
                "max_abs_logit_diff": float((_logits(deployed, ids) - ref).abs().max()),
            }
        )
        keep = set(protected_modules(masked))
        params = v["point"].get("params") or {}
        family = "2:4" if v["point"]["method"] == "nm" or params.get("n") else "unstructured"
        for fmt in FORCED[family]:
            m = copy.deepcopy(masked)
            conv = Converter(DeployConfig(formats=[fmt], force_format=fmt, timing_cache=False)).convert(
                m, keep_dense=keep
            )
            entries.append(
                {
                    "variant": label,
                    "format": f"{fmt} (forced)",
                    "formats": conv.formats(),
                    "model": m.eval(),
                    "tokens": csr_tokens if fmt == "csr" else new_tokens,
                    "bytes": model_bytes(m),
                    "linear_bytes": sum(layer.bytes_deployed for layer in conv.layers),
                    "max_abs_logit_diff": float((_logits(m, ids) - ref).abs().max()),
                }
            )
        del masked
        gc.collect()
    log.info("decode: %d models, warm-up pass", len(entries))
    timed = [e for e in entries if e.get("timed", True)]
    for e in timed:  # warm-up: lazy inits, kernel load, allocator growth
        _decode_seconds(e["model"], ids, 2)
    for e in entries:
        e["tps"] = []
    for r in range(rounds):
        order = timed if r % 2 == 0 else timed[::-1]
        for e in order:
            e["tps"].append(e["tokens"] / _decode_seconds(e["model"], ids, e["tokens"]))
        log.info("decode round %d/%d: dense %.1f tokens/s", r + 1, rounds, entries[0]["tps"][-1])
    dense_tps = entries[0]["tps"]
    rows = []
    for e in entries:
        if not e.get("timed", True):
            e["tps"] = list(dense_tps)
        ratios = [t / d for t, d in zip(e["tps"], dense_tps, strict=True)]
        row = {k: v for k, v in e.items() if k not in ("model", "tps")}
        row.update(tps=_spread(e["tps"]), tps_rounds=e["tps"], speedup=_spread(ratios), speedup_rounds=ratios)
        rows.append(row)
    for e in entries:
        e.pop("model")
    gc.collect()
    return {
        "prompt_tokens": prompt,
        "new_tokens": new_tokens,
        "csr_tokens": csr_tokens,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "semi24": semi24_note,
        "rows": rows,
    }


def decode_table(dec: dict[str, Any]) -> str:
    head = ["variant", "format", "decode tokens/s, median [min–max]", "× dense, median [min–max]", "stored MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in dec["rows"]:
        t, s = r["tps"], r["speedup"]
        fmt = r["format"]
        if r["tokens"] != dec["new_tokens"]:
            fmt += f", {r['tokens']} tokens"
        if r.get("identical_to_dense"):
            fmt += " (dense's computation: dense's figures, not timed again)"
        lines.append(
            f"| {r['variant']} | {fmt} | {t['median']:.1f} [{t['min']:.1f}–{t['max']:.1f}] | "
            f"{s['median']:.2f} [{s['min']:.2f}–{s['max']:.2f}] | {r['bytes'] / 1e6:.0f} |"
        )
    return "\n".join(lines)
