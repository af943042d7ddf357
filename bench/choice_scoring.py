"""Multiple-choice scoring with and without the shared context cache: SmolLM2-135M on BBQ questions.

:func:`audit.models.lm_scoring.score_choices` with ``share_context=False`` runs every
``context + " " + answer`` as its own sequence; with ``share_context=True`` (the default) each
question's context runs once with the KV cache and its three answers are scored on top of it
(:mod:`audit.models.shared_context`). This times both on the same questions (one thread, the
paths alternated, median of the repeats), counts the forward passes and input tokens (a forward
pre-hook), and reports the largest |Δ log-likelihood| and how many argmax predictions differ.

The model is the embedded SmolLM2-135M-Instruct Q4_1 GGUF through the project's loader
(:func:`audit.models.gguf.load_gguf`, dequantized to fp32). Run by hand from the repository
root (the first load converts the GGUF, ~1 min; later loads read the safetensors cache)::

    PRUNE_AUDIT_SHARED_DATA=../shared/data HOME=/tmp/prefixkv-home \
        nice -n 19 .venv/bin/python -m bench.choice_scoring --n 24

The result goes to ``bench/results/choice_scoring.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from audit.atomic import atomic_write_text
from bench.common import ROOT, SHARED_DATA, cpu_model

TEMPLATE = "{context}\nQuestion: {question}\nAnswer:"  # the bbq suite's default template
CATEGORIES = ["Age", "Disability_status", "Nationality", "Physical_appearance", "Religion", "Sexual_orientation"]


def bbq_questions(n: int) -> tuple[list[str], list[list[str]]]:
    """The first ``ceil(n / 6)`` questions of each BBQ category file, ``n`` in all (file order)."""
    from suites.bbq.data import read_bbq

    per = -(-n // len(CATEGORIES))
    items = []
    for cat in CATEGORIES:
        path = SHARED_DATA / "bbq" / f"{cat}.jsonl"
        items.extend(read_bbq(path, str(path))[:per])
    items = items[:n]
    prompts = [TEMPLATE.format(context=it.context, question=it.question) for it in items]
    return prompts, [list(it.answers) for it in items]


def cpu_name() -> str:
    return cpu_model() or platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=24, help="BBQ questions (default 24)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "choice_scoring.json")
    args = ap.parse_args()

    import torch

    from audit.models.gguf import embedded_smollm2_path, load_gguf
    from audit.models.lm_scoring import score_choices
    from audit.models.shared_context import count_forward_tokens

    torch.set_num_threads(args.threads)
    loaded = load_gguf(embedded_smollm2_path())
    model, tok = loaded.model, loaded.tokenizer
    contexts, choices = bbq_questions(args.n)

    def run(share: bool) -> tuple[float, Any, dict[str, int]]:
        counts, handle = count_forward_tokens(model)
        t0 = time.perf_counter()
        sc = score_choices(model, tok, contexts, choices, batch_size=args.batch_size, share_context=share)
        seconds = time.perf_counter() - t0
        handle.remove()
        return seconds, sc, counts

    run(True)  # warm-up (allocator, first-call overheads)
    times: dict[str, list[float]] = {"unshared": [], "shared": []}
    for _ in range(args.repeats):
        for name, share in (("unshared", False), ("shared", True)):
            seconds, sc, counts = run(share)
            times[name].append(seconds)
            if name == "shared":
                shared, shared_counts = sc, counts
            else:
                unshared, unshared_counts = sc, counts
    delta = np.abs(shared.loglik - unshared.loglik)
    med = {k: statistics.median(v) for k, v in times.items()}
    ctx_tokens = [len(tok(c, add_special_tokens=False).input_ids) for c in contexts]
    result = {
        "what": "score_choices on BBQ questions, share_context=False vs True",
        "command": "PRUNE_AUDIT_SHARED_DATA=../shared/data HOME=/tmp/prefixkv-home nice -n 19 "
        f".venv/bin/python -m bench.choice_scoring --n {args.n} --repeats {args.repeats}",
        "model": Path(loaded.info.path).name,
        "cpu": cpu_name(),
        "machine_note": "shared machine (other jobs running): absolute times are noisy, the ratio less so",
        "torch_threads": args.threads,
        "batch_size": args.batch_size,
        "questions": len(contexts),
        "choices_per_question": 3,
        "context_tokens_mean": float(np.mean(ctx_tokens)),
        "seconds": times,
        "median_seconds": med,
        "seconds_per_question": {k: v / len(contexts) for k, v in med.items()},
        "speedup": med["unshared"] / med["shared"],
        "forward_calls": {"unshared": unshared_counts["calls"], "shared": shared_counts["calls"]},
        "input_tokens": {"unshared": unshared_counts["tokens"], "shared": shared_counts["tokens"]},
        "max_abs_delta_loglik": float(np.nanmax(delta)),
        "argmax_changed": int((shared.pred != unshared.pred).sum()),
        "argmax_norm_changed": int((shared.pred_norm != unshared.pred_norm).sum()),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
