"""Load time of the embedded SmolLM2 GGUF: first load (dequantize + cache) vs cached load (run by hand).

Each load runs in a fresh subprocess (so nothing stays memoised in this one): ``--repeats``
first loads with ``rebuild=True`` (GGUF → fp32 → safetensors cache) and ``--repeats`` cached
loads, then one greedy generation of "The capital of France is" (chat template) as a sanity
check. The cache lives under a temporary ``PRUNE_AUDIT_CACHE_DIR`` unless ``--cache-dir``.
Load times exclude importing torch and transformers (timed apart). Writes
``bench/results/gguf_load.json`` with the CPU model, torch threads and the machine load.

    .venv/bin/python -m bench.gguf_load [--repeats 2] [--cache-dir DIR [--cached-only]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "gguf_load.json"

CHILD = r"""
import json, sys, time
t = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer  # resolve the lazy modules (generation pulls sklearn)
import_s = time.perf_counter() - t
from audit.models.gguf import embedded_smollm2_path, load_gguf
rebuild, generate = sys.argv[1] == "1", sys.argv[2] == "1"
lm = load_gguf(embedded_smollm2_path(), rebuild=rebuild)
out = {"seconds": lm.load_seconds, "import_s": import_s, "from_cache": lm.from_cache,
       "params": sum(p.numel() for p in lm.model.parameters()), "file_type": lm.info.file_type,
       "tensor_types": lm.info.tensor_types, "dtype": str(next(lm.model.parameters()).dtype),
       "eos": lm.tokenizer.eos_token, "bos": lm.tokenizer.bos_token, "pad": lm.tokenizer.pad_token}
if generate:
    tok = lm.tokenizer
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    chat = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    plain = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        t = time.perf_counter()
        g1 = lm.model.generate(chat, max_new_tokens=12, do_sample=False)
        g2 = lm.model.generate(**plain, max_new_tokens=8, do_sample=False)
        out["generate_seconds"] = time.perf_counter() - t
    out["chat_reply"] = tok.decode(g1[0, chat.shape[1]:], skip_special_tokens=True)
    out["plain_continuation"] = tok.decode(g2[0, plain.input_ids.shape[1]:], skip_special_tokens=True)
    out["plain_first_ids"] = plain.input_ids[0, :3].tolist()
print("RESULT " + json.dumps(out))
"""


def child(rebuild: bool, generate: bool, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "1" if rebuild else "0", "1" if generate else "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--cached-only", action="store_true", help="skip the first loads (needs --cache-dir with an entry)")
    args = ap.parse_args()
    cache = args.cache_dir or tempfile.mkdtemp(prefix="gguf-bench-")
    env = {**os.environ, "PRUNE_AUDIT_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
    load_before = os.getloadavg()
    first = [] if args.cached_only else [child(True, False, env) for _ in range(args.repeats)]
    cached = [child(False, i == args.repeats - 1, env) for i in range(args.repeats)]
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    import torch

    result = {
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "first_load_s": [r["seconds"] for r in first],
        "cached_load_s": [r["seconds"] for r in cached],
        "first_load_median_s": statistics.median(r["seconds"] for r in first) if first else None,
        "import_torch_transformers_s": [r["import_s"] for r in first + cached],
        "cached_load_median_s": statistics.median(r["seconds"] for r in cached),
        "from_cache": [r["from_cache"] for r in first + cached],
        **{k: v for k, v in cached[-1].items() if k not in ("seconds", "from_cache")},
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
