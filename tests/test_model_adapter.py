"""The model-family seam (audit/models): adapters chosen by architecture; pruning and deployment go through them."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from audit.config import DeployConfig, LayerSelection
from audit.errors import ExitCode, UsageError
from audit.models import ADAPTERS, AdapterSpec, ModelAdapter, adapter_for, adapter_of
from audit.pruning.base import PruneContext, select_layers
from audit.pruning.calibration import find_blocks, sequential_calibrate
from audit.registry import PRUNERS

ROOT = Path(__file__).resolve().parents[1]
ARCH = "TinyStackForScoring"


class Cell(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.mix = nn.Linear(width, width)
        self.gate = nn.Linear(width, width)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return hidden + torch.tanh(self.mix(hidden)) * torch.sigmoid(self.gate(hidden))


class TinyStack(nn.Module):
    """Not BERT: blocks at ``trunk.cells``, a longer decoy ModuleList at ``aux``, a ``readout`` head."""

    def __init__(self, width: int = 8, vocab: int = 40) -> None:
        super().__init__()
        self.config = SimpleNamespace(architectures=[ARCH], model_type="tinystack", vocab_size=vocab)
        self.embed = nn.Embedding(vocab, width)
        self.trunk = nn.Module()
        self.trunk.cells = nn.ModuleList([Cell(width) for _ in range(2)])
        self.aux = nn.ModuleList([nn.Sequential(nn.Linear(width, width)) for _ in range(5)])  # unused by forward
        self.readout = nn.Linear(width, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        h = self.embed(input_ids)
        for cell in self.trunk.cells:
            h = cell(h, attention_mask=attention_mask)
        return SimpleNamespace(logits=self.readout(h))  # per token, as a causal LM's


class TinyStackAdapter(ModelAdapter):
    """Blocks where this family keeps them; token-level outputs; probe batches of its own."""

    calls: list[str] = []

    def blocks(self, model: Any) -> tuple[str, Any]:
        return "trunk.cells", model.trunk.cells

    def prunable_linears(self, model: Any) -> list[tuple[str, Any]]:
        return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.startswith("aux.")]

    def probe_batches(self, eval_set: Any, predictor: Any, k: int) -> list[dict[str, Any]]:
        self.calls.append("probe_batches")
        gen = torch.Generator().manual_seed(0)
        return [
            {
                "input_ids": torch.randint(0, 40, (2, w), generator=gen),
                "attention_mask": torch.ones(2, w, dtype=torch.long),
            }
            for w in (5, 3)
        ]

    def probe_outputs(self, model: Any, batches: list[dict[str, Any]]) -> np.ndarray:
        self.calls.append("probe_outputs")
        with torch.inference_mode():
            rows = [model(**b).logits.reshape(-1, 40).double().numpy() for b in batches]
        return np.concatenate(rows)  # one row per token: batches of different widths


@pytest.fixture
def tiny_family():
    spec = AdapterSpec(
        name="test-tinystack",
        impl=f"{__name__}:TinyStackAdapter",
        summary="a test family",
        kind="causal-lm",
        architectures=(ARCH,),
        default_include=(r"^trunk\.",),
    )
    ADAPTERS.register(spec)
    TinyStackAdapter.calls = []
    yield spec
    ADAPTERS._specs.pop(spec.name)


def test_a_registered_adapter_is_picked_from_the_architecture(tiny_family: AdapterSpec) -> None:
    picked = adapter_for({"architectures": [ARCH], "model_type": "tinystack"})
    assert isinstance(picked, TinyStackAdapter) and picked.kind == "causal-lm"
    assert isinstance(adapter_of(TinyStack()), TinyStackAdapter)
    assert adapter_for({"architectures": ["BertForSequenceClassification"]}).spec.name == "sequence-classifier"


def test_pruning_uses_the_adapters_blocks_and_layers(tiny_family: AdapterSpec) -> None:
    torch.manual_seed(0)
    model = TinyStack()
    found = find_blocks(model)
    assert found is not None and found[0] == "trunk.cells"  # not the longer decoy list `aux`
    names = [n for n, _ in select_layers(model, LayerSelection())]  # include unset: the adapter's default
    assert names == ["trunk.cells.0.mix", "trunk.cells.0.gate", "trunk.cells.1.mix", "trunk.cells.1.gate"]
    seen: list[str] = []

    class Count:
        def __init__(self) -> None:
            self.tokens = 0

        def add(self, x: torch.Tensor) -> None:
            self.tokens += x.shape[0]

    calib = SimpleNamespace(batches=[{"input_ids": torch.randint(0, 40, (3, 4))}])
    layers = select_layers(model, LayerSelection())
    notes = sequential_calibrate(
        model, layers, calib, make_stat=lambda n, m: Count(), finish=lambda n, m, s: seen.append(f"{n}:{s.tokens}")
    )
    assert seen == [f"{n}:12" for n in names]
    assert "through trunk.cells (2 blocks)" in notes[0]
    spec = PRUNERS.get("magnitude")
    rec = spec.load()(spec, spec.params.model_validate({})).prune(
        model, PruneContext(sparsity=0.5, seed=0, layers=LayerSelection())
    )
    assert [layer.name for layer in rec.layers] == names
    assert all(layer.achieved_sparsity == pytest.approx(0.5) for layer in rec.layers)
    assert int(torch.count_nonzero(model.aux[0][0].weight)) == 8 * 8  # not the adapter's: untouched
    assert int(torch.count_nonzero(model.readout.weight)) == 40 * 8  # outside default_include: untouched


def test_deployment_probes_and_compares_through_the_adapter(tiny_family: AdapterSpec) -> None:
    from audit.deploy.pipeline import deploy_variant
    from audit.run.session import _deploy_context

    torch.manual_seed(0)
    model = TinyStack().eval()
    spec = PRUNERS.get("magnitude")
    layers = LayerSelection()
    rec = spec.load()(spec, spec.params.model_validate({})).prune(model, PruneContext(0.5, 0, layers))
    adapter = adapter_of(model)
    config = SimpleNamespace(
        deploy=DeployConfig(force_format="csr", measure_speed=False, timing_cache=False),
        runtime=SimpleNamespace(threads=1),
    )
    ctx = _deploy_context(config, None, None, model, adapter)
    assert [tuple(b["input_ids"].shape) for b in ctx.probe] == [(2, 5), (2, 3)]
    deployed = deploy_variant(model, rec, ctx)
    assert TinyStackAdapter.calls == ["probe_batches", "probe_outputs", "probe_outputs"]
    eq = deployed.record.equivalence
    assert eq is not None and eq.passed and eq.n == 2 * 5 + 2 * 3  # one compared row per token
    assert deployed.record.formats.get("csr") == 4


def test_an_unknown_architecture_is_a_one_line_usage_error_naming_the_supported_ones() -> None:
    with pytest.raises(UsageError) as info:
        adapter_for({"architectures": ["WeirdNetForThings"], "model_type": "weird"}, where="model.path=m")
    err = info.value
    assert err.exit_code == ExitCode.USAGE_ERROR == 4
    text = str(err)
    assert "\n" not in text
    assert "no model adapter supports WeirdNetForThings" in text
    assert "sequence-classifier (classifier: *ForSequenceClassification)" in text
    with pytest.raises(UsageError, match="no model adapter of kind causal-lm supports BertForSequenceClassification"):
        adapter_for({"architectures": ["BertForSequenceClassification"]}, kind="causal-lm")
    with pytest.raises(UsageError, match="model.kind must be auto or one of classifier, causal-lm, found 'lm'"):
        adapter_for({"architectures": ["BertForSequenceClassification"]}, kind="lm")


def test_a_suite_for_other_model_kinds_is_refused_before_any_work(tiny_model_dir: Path, tmp_path: Path) -> None:
    from audit.config import config_from_text
    from audit.run.session import check_suite_kinds

    cfg = config_from_text(
        f"model: {{path: {tiny_model_dir}}}\ndata: {{files: {{test: t.csv}}, splits: {{eval: test}}}}\n"
        "suites: [{name: lm, params: {perplexity: [{name: docs, path: d.csv}]}}]\n"
    )
    check_suite_kinds(cfg, "causal-lm")
    with pytest.raises(
        UsageError, match=r"suite 'lm' measures causal-lm models; the audited model is a classifier"
    ) as info:
        check_suite_kinds(cfg, "classifier")
    assert info.value.where == "suites[0]"
    # a classifier suite measures a causal LM only as a zero-shot classifier (model.zero_shot)
    cfg = cfg.model_copy(update={"suites": [cfg.suites[0].model_copy(update={"name": "performance", "params": {}})]})
    check_suite_kinds(cfg, "classifier")
    with pytest.raises(UsageError, match=r"suite 'performance' measures a causal LM as a zero-shot classifier") as info:
        check_suite_kinds(cfg, "causal-lm")
    assert info.value.where == "model.zero_shot"


FAMILY_SPECIFIC = re.compile(r"BertFor|encoder\\?\.layer|\.classifier\.")  # also the regex form encoder\.layer


def test_no_module_outside_the_adapters_names_a_family_layout() -> None:
    """BERT class names, encoder block paths and classifier-head paths live only in audit/models (and the demo)."""
    offenders = []
    for top in ("audit", "suites", "reports"):
        for path in sorted((ROOT / top).rglob("*")):
            rel = path.relative_to(ROOT).as_posix()
            if not path.is_file() or rel.startswith(("audit/models/", "audit/demo/")) or "__pycache__" in rel:
                continue
            if path.suffix not in (".py", ".j2", ".html", ".md", ".yaml", ".json", ".txt"):
                continue
            for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if FAMILY_SPECIFIC.search(line):
                    offenders.append(f"{rel}:{i}: {line.strip()}")
    assert offenders == []


def test_preflight_reads_the_kind_from_the_checkpoint_before_loading_it(
    tiny_family: AdapterSpec, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    from audit.config import config_from_text
    from audit.run.session import preflight

    d = tmp_path / "other-family"
    shutil.copytree(tiny_model_dir, d)
    hf = json.loads((d / "config.json").read_text())
    hf["architectures"] = [ARCH]
    (d / "config.json").write_text(json.dumps(hf))
    cfg = config_from_text(
        f"model: {{path: {d}}}\ndata: {{files: {{test: t.csv}}, splits: {{eval: test}}}}\n"
        "suites: [{name: performance}]\n"
    )
    with pytest.raises(UsageError, match="suite 'performance' measures a causal LM as a zero-shot classifier"):
        preflight(cfg)
