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
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from audit.atomic import atomic_write_text
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
            base.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
            try:
                write_lm_demo_data(tmp, seed=LM_DEMO_SEED)
                meta = {"fingerprint": fp, "splits": LM_SPLITS, "seed": LM_DEMO_SEED}
                atomic_write_text(tmp / "card.json", json.dumps(meta, indent=2) + "\n")
                if root.exists():
                    shutil.rmtree(root)
                os.replace(tmp, root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            log.info("wrote the LM demo data under %s", root)
    return {n: root / f"{n}.jsonl" for n in LM_SPLITS}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
