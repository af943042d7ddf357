r"""The causal-LM demo: the embedded SmolLM2-135M-Instruct audited on the project's own review generator.

The review generator (:mod:`audit.demo.data`) serves an LM three ways:

* a zero-shot sentiment task (``sentiment.jsonl``, balanced test split of the training domains):
  the prompt ``"Review: {text}\nSentiment:"`` scored against the choices ``" negative"`` /
  ``" positive"`` by log-likelihood, gold = the ``label`` column (0 negative, 1 positive);
* a perplexity corpus (``corpus.jsonl``: the validation split's review texts);
* a shifted set (``shifted.jsonl``: the held-out hotel and book domains), used both as a
  second perplexity corpus and as the sentiment task on unseen domains;

plus ``calibration.jsonl`` (training-split texts) for the data-aware pruners. Every row keeps the
generator's group columns (``gender``, ``race``, ``identity``) and its ``domain``. Two more
synthetic sets serve the bias suites for LMs: ``stereotypes.csv`` (templated minimal sentence
pairs in CrowS-Pairs format, :mod:`audit.demo.stereotypes`) and ``bbq.jsonl`` (templated
BBQ-style questions with ambiguous and disambiguated contexts, :mod:`audit.demo.bbq`). The
sentiment task also runs as a zero-shot classifier (``model.zero_shot``), so the classifier
suites (ood, bias, adversarial) audit the LM too. The files are cached under
``cache_root()/demo-lm/<fingerprint>``, keyed by the generators' code, versions and seed and the
sizes below, so that a second run reuses them.
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
LM_EXTRA_SETS: dict[str, int] = {"stereotypes.csv": 60, "bbq.jsonl": 24}
"""Synthetic bias sets (file name → rows): CrowS-format stereotype pairs and BBQ-style items."""


def lm_data_fingerprint() -> str:
    """Everything that makes the LM demo data, hashed (the generator's code and version, seed, sizes)."""
    from audit.demo import bbq, stereotypes
    from audit.demo import data as demo_data

    here = Path(__file__).resolve().parent
    parts = {
        "data_code": file_sha256(here / "data.py"),
        "generator_version": demo_data.GENERATOR_VERSION,
        "splits": LM_SPLITS,
        "seed": LM_DEMO_SEED,
        "bias_code": [file_sha256(here / "stereotypes.py"), file_sha256(here / "bbq.py")],
        "bias_versions": [stereotypes.GENERATOR_VERSION, bbq.GENERATOR_VERSION],
        "bias_sets": LM_EXTRA_SETS,
    }
    return sha256_text(canonical_json(parts))


def write_lm_demo_data(directory: Path, *, seed: int) -> dict[str, Path]:
    """Write every LM demo file as JSON lines under ``directory``; returns name → path."""
    from audit.demo.bbq import write_bbq_items
    from audit.demo.data import generate_split
    from audit.demo.stereotypes import write_stereotype_pairs

    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (split, n) in LM_SPLITS.items():
        rows = generate_split(split, n, seed)
        path = directory / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        out[name] = path
    out["stereotypes"] = write_stereotype_pairs(directory / "stereotypes.csv", LM_EXTRA_SETS["stereotypes.csv"], seed)
    out["bbq"] = write_bbq_items(directory / "bbq.jsonl", LM_EXTRA_SETS["bbq.jsonl"], seed)
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
        names = [f"{n}.jsonl" for n in LM_SPLITS] + list(LM_EXTRA_SETS)
        if not (card.is_file() and all((root / n).is_file() for n in names)):
            with atomic_dir(root, prefix=".build-") as tmp:
                write_lm_demo_data(tmp, seed=LM_DEMO_SEED)
                meta = {"fingerprint": fp, "splits": LM_SPLITS, "seed": LM_DEMO_SEED}
                atomic_write_text(tmp / "card.json", json.dumps(meta, indent=2) + "\n")
            log.info("wrote the LM demo data under %s", root)
    files = {n: root / f"{n}.jsonl" for n in LM_SPLITS}
    files.update({Path(n).stem: root / n for n in LM_EXTRA_SETS})
    return files


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


LM_DEMO_SWEEP: list[dict[str, Any]] = [
    {"name": "magnitude"},
    {"name": "wanda"},
    {"name": "wanda", "params": {"n": 2, "m": 4}},
]
"""The LM demo's sweep at 50 %: magnitude and Wanda unstructured, and Wanda 2:4 (one seed)."""
LM_DEMO_BUDGET: dict[str, int] = {
    "sentiment": 60,
    "shifted": 40,
    "corpus": 30,
    "prompts": 4,
    "new_tokens": 12,
    "calibration": 16,
    "counterfactual": 24,
    "attacked": 4,
    "queries": 30,
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
  zero_shot:                    # the sentiment task as a classifier: the ood, bias and adversarial suites use it
    template: {template}
    choices: [{choices}]
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
         max_examples: {b["corpus"]}, corruptions: [{{kind: typo, rate: 0.1}}]}}
      - {{name: other-domains, path: {files["shifted"]}, columns: {{text: text, groups: [domain]}},
         max_examples: {b["corpus"]}}}   # hotel and book reviews: the generator's held-out domains
    ood_detection:           # does the model's likelihood tell the held-out domains from the training ones?
      - {{name: domain-shift, in: reviews, out: other-domains}}
    choice_tasks:
      - name: sentiment
        path: {files["sentiment"]}
        template: {template}
        choices: [{choices}]
        columns: {{text: text, label: label, id: id, groups: [{groups}]}}
        max_examples: {b["sentiment"]}
    generation:
      - {{name: continuations, path: {files["corpus"]}, template: {template}, max_new_tokens: {b["new_tokens"]},
         max_examples: {b["prompts"]}}}
  ood:                       # the zero-shot classifier on shifted and corrupted reviews: accuracy, ECE, AUROC
    shifted:
      - {{name: other-domains, path: {files["shifted"]}, max_examples: {b["shifted"]}}}
    corruptions:
      - {{kind: typo, rate: 0.1}}
  bias:                      # group rates (fairlearn MetricFrame) and counterfactual name/pronoun swaps
    min_group_n: 30
    counterfactual: {{categories: [gender, race], max_texts: {b["counterfactual"]}}}
  adversarial:               # TextAttack against the zero-shot classifier; dense's examples replayed on variants
    recipes: [deepwordbug]
    n_examples: {b["attacked"]}
    query_budget: {b["queries"]}
    attack_variants: false   # the demo attacks dense only and replays its adversarial examples on every variant
  stereotype:                # synthetic CrowS-format pairs (audit/demo/stereotypes.py)
    sets:
      - {{name: demo-pairs, path: {files["stereotypes"]}, format: crows-pairs}}
  bbq:                       # synthetic BBQ-style questions (audit/demo/bbq.py)
    sets:
      - {{name: demo-bbq, path: {files["bbq"]}}}
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
