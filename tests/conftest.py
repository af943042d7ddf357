from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Under pytest-xdist (`make test` runs two workers) each worker gets one core: torch's
# default of one thread per core in every worker would oversubscribe the CPUs (OpenMP threads
# spin). Set before anything imports torch; CLI subprocesses inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

# The suite never touches the network, and never writes to the user's real cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from helpers import build_tiny_model, demo_rows, write_jsonl  # noqa: E402

# ../shared beside the checkout; .ci/run tests a clone elsewhere and names it with PRUNE_AUDIT_SHARED.
SHARED = Path(os.environ.get("PRUNE_AUDIT_SHARED") or ROOT.parent / "shared")


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.mktemp("cache")
    os.environ["PRUNE_AUDIT_CACHE_DIR"] = str(cache / "prune-audit")
    os.environ["HF_DATASETS_CACHE"] = str(cache / "datasets")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny-data")
    write_jsonl(d / "train.jsonl", demo_rows("train", 300, seed=2))
    write_jsonl(d / "test.jsonl", demo_rows("test", 240, seed=2))
    write_jsonl(d / "ood.jsonl", demo_rows("ood", 160, seed=2))
    return d


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip("../shared/data is not available on this machine")
    return SHARED / "data"
