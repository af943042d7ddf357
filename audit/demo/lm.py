r"""The causal-LM demo: the embedded SmolLM2-135M-Instruct audited on the project's own review generator.

The review generator (:mod:`audit.demo.data`) serves an LM three ways:

* a zero-shot sentiment task (``sentiment.jsonl``, balanced test split of the training domains):
  the prompt ``"Review: {text}\nSentiment:"`` scored against the choices ``" negative"`` /
  ``" positive"`` by log-likelihood, gold = the ``label`` column (0 negative, 1 positive);
* a perplexity corpus (``corpus.jsonl``: the validation split's review texts);
* a shifted set (``shifted.jsonl``: the held-out hotel and book domains), used both as a
  second perplexity corpus and as the sentiment task on unseen domains;

plus ``calibration.jsonl`` (training-split texts) for the data-aware pruners. Every row keeps the
generator's group columns (``gender``, ``race``, ``identity``) and its ``domain``. The files are
cached under ``cache_root()/demo-lm/<fingerprint>``, keyed by the generator's code, version and
seed and the sizes below, so that a second run reuses them.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from audit.atomic import atomic_dir, atomic_write_text
from audit.cache import cache_root, file_lock
from audit.fingerprint import canonical_json, file_sha256, sha256_text

log = logging.getLogger(__name__)

LM_DEMO_SEED = 0
LM_SPLITS: dict[str, tuple[str, int]] = {
    "sentiment": ("test", 1200),
    "corpus": ("validation", 400),
    "shifted": ("ood", 1000),
    "calibration": ("train", 256),
}
"""file name → (generator split, rows). The demo config caps how many of them a run scores."""

SENTIMENT_TEMPLATE = "Review: {text}\nSentiment:"
SENTIMENT_CHOICES = [" negative", " positive"]
"""Index i is the choice for label i (0 negative, 1 positive)."""
GROUP_COLUMNS = ["gender", "race", "identity"]


def lm_data_fingerprint() -> str:
    """Everything that makes the LM demo data, hashed (the generator's code and version, seed, sizes)."""
    from audit.demo import data as demo_data

    here = Path(__file__).resolve().parent
    parts = {
        "data_code": file_sha256(here / "data.py"),
        "generator_version": demo_data.GENERATOR_VERSION,
        "splits": LM_SPLITS,
        "seed": LM_DEMO_SEED,
    }
    return sha256_text(canonical_json(parts))


def write_lm_demo_data(directory: Path, *, seed: int) -> dict[str, Path]:
    """Write every LM demo file as JSON lines under ``directory``; returns name → path."""
    from audit.demo.data import generate_split

    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (split, n) in LM_SPLITS.items():
        rows = generate_split(split, n, seed)
        path = directory / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        out[name] = path
    return out


def ensure_lm_demo_data(*, rebuild: bool = False) -> dict[str, Path]:
    """Paths of the cached LM demo files (name → path), writing them on first use."""
    fp = lm_data_fingerprint()
    base = cache_root() / "demo-lm"
    root = base / fp[:16]
    card = root / "card.json"
    with file_lock(base / ".lock"):
        if rebuild and root.exists():
            shutil.rmtree(root)
        if not (card.is_file() and all((root / f"{n}.jsonl").is_file() for n in LM_SPLITS)):
            with atomic_dir(root, prefix=".build-") as tmp:
                write_lm_demo_data(tmp, seed=LM_DEMO_SEED)
                meta = {"fingerprint": fp, "splits": LM_SPLITS, "seed": LM_DEMO_SEED}
                atomic_write_text(tmp / "card.json", json.dumps(meta, indent=2) + "\n")
            log.info("wrote the LM demo data under %s", root)
    return {n: root / f"{n}.jsonl" for n in LM_SPLITS}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


LM_DEMO_SWEEP: list[dict[str, Any]] = [
    {"name": "magnitude"},
    {"name": "wanda"},
    {"name": "wanda", "params": {"n": 2, "m": 4}},
]
"""The LM demo's sweep at 50 %: magnitude and Wanda unstructured, and Wanda 2:4 (one seed)."""
LM_DEMO_BUDGET: dict[str, int] = {
    "sentiment": 100,
    "shifted": 80,
    "corpus": 80,
    "prompts": 8,
    "new_tokens": 16,
    "calibration": 16,
}
"""Examples per set, chosen so that the first run (GGUF dequantization included) stays under
10 minutes on 2 cores; raise them for a real audit."""
LM_DEMO_MAX_LENGTH = 96


def _methods_yaml(methods: list[dict[str, Any]]) -> str:
    out = []
    for m in methods:
        if m.get("params"):
            params = ", ".join(f"{k}: {v}" for k, v in m["params"].items())
            out.append(f"{{name: {m['name']}, params: {{{params}}}}}")
        else:
            out.append(m["name"])
    return ", ".join(out)


def lm_demo_config_text(gguf_file: Path, files: dict[str, Path]) -> str:
    """The audit config the LM demo runs (also written next to its report)."""
    b = LM_DEMO_BUDGET
    groups = ", ".join(GROUP_COLUMNS)
    choices = ", ".join(json.dumps(c) for c in SENTIMENT_CHOICES)
    template = json.dumps(SENTIMENT_TEMPLATE)
    return f"""# Audit config of `prune-audit demo lm` (generated; edit and re-run with `prune-audit run -c`).
# Budgets are small so that the demo finishes in a few minutes on 2 cores; raise them for a real audit.
model:
  kind: causal-lm
  gguf_file: {gguf_file}        # SmolLM2-135M-Instruct, Q4_1 (dequantized to fp32 and cached on first use)
  max_length: {LM_DEMO_MAX_LENGTH}
data:
  name: demo-reviews
  files:
    sentiment: {files["sentiment"]}
    calibration: {files["calibration"]}
  columns: {{text: text, label: label, id: id, groups: [{groups}]}}
  splits: {{eval: sentiment, calibration: calibration}}
  max_eval_examples: {b["sentiment"]}
sweep:
  methods: [{_methods_yaml(LM_DEMO_SWEEP)}]
  sparsities: [0.5]
  seeds: [0]
  calibration: {{n: {b["calibration"]}, seed: 0}}
suites:
  lm:
    perplexity:
      - {{name: reviews, path: {files["corpus"]}, columns: {{text: text, groups: [domain]}},
         max_examples: {b["corpus"]}}}
      - {{name: other-domains, path: {files["shifted"]}, columns: {{text: text, groups: [domain]}},
         max_examples: {b["corpus"]}}}   # hotel and book reviews: the generator's held-out domains
    choice_tasks:
      - name: sentiment
        path: {files["sentiment"]}
        template: {template}
        choices: [{choices}]
        columns: {{text: text, label: label, id: id, groups: [{groups}]}}
        max_examples: {b["sentiment"]}
      - name: sentiment-other-domains
        path: {files["shifted"]}
        template: {template}
        choices: [{choices}]
        columns: {{text: text, label: label, id: id, groups: [{groups}]}}
        max_examples: {b["shifted"]}
    generation:
      - {{name: continuations, path: {files["corpus"]}, template: {template}, max_new_tokens: {b["new_tokens"]},
         max_examples: {b["prompts"]}}}
policy: lm-default
output_dir: .
seed: 0
runtime:
  n_boot: 500
deploy:                  # each Linear layer runs the format measured fastest for it; timings kept short for the demo
  choose_tokens: [128]
  timing_min_s: 0.1
  speed_min_time_s: 0.05
  speed_rounds: 3
report:
  title: "prune-audit demo: SmolLM2-135M-Instruct (causal LM)"
"""


def run_lm_demo(output_dir: Path, *, rebuild: bool = False, command: str | None = None) -> Any:
    """Write (or reuse) the LM demo data, write its config, audit the embedded SmolLM2."""
    from audit.config import load_config
    from audit.env import configure_offline
    from audit.models.gguf import embedded_smollm2_path
    from audit.runner import run_audit

    configure_offline(True)
    gguf_file = embedded_smollm2_path()
    files = ensure_lm_demo_data(rebuild=rebuild)
    output_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = atomic_write_text(output_dir / "audit.yaml", lm_demo_config_text(gguf_file, files))
    return run_audit(load_config(cfg_path), command=command)
