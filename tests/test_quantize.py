"""Quantization methods and hybrids: the grids, the deployed kernels, their verification, the config."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from pruning_helpers import run
from torch import nn

from audit.config import DeployConfig, load_config
from audit.deploy.formats import FORMATS
from audit.deploy.pipeline import DeployContext, deploy_variant
from audit.deploy.quantized import (
    DynamicInt8Linear,
    QuantReferenceLinear,
    TokenInt8Linear,
    WeightInt4Linear,
    WeightInt8Linear,
    bf16_round,
    bf16_ulp,
    fake_quant_dynamic,
    fake_quant_token,
    quantize_per_token,
)
from audit.errors import UsageError
from audit.plan import plan


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pruned_linear(seed: int = 0, out_f: int = 48, in_f: int = 64, bias: bool = True) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        w = torch.randn(out_f, in_f, generator=gen) * 0.1
        w[torch.rand(out_f, in_f, generator=gen) < 0.5] = 0.0
        lin.weight.copy_(w)
    return lin


def _within_kernel_rounding(ref: QuantReferenceLinear, dep: nn.Module, x: torch.Tensor) -> bool:
    """Deployed == reference up to fp32 summation order, plus one bf16 step of the output where it runs in bf16."""
    with torch.inference_mode():
        y = ref(x)
        allowed = torch.full_like(y, 1e-5)
        if ref.bf16:
            allowed = allowed + bf16_ulp(y if ref.bias is None else y - ref.bias)
        return bool(((dep(x) - y).abs() <= allowed).all())


@pytest.mark.parametrize(
    ("scheme", "cls", "activations"),
    [
        ("int8_dynamic", DynamicInt8Linear, "fp32"),
        ("int8_dynamic_token", TokenInt8Linear, "fp32"),
        ("int8_weight", WeightInt8Linear, "bf16"),
        ("int8_weight", WeightInt8Linear, "fp32"),
    ],
)
def test_int8_deployed_kernel_matches_its_reference(scheme: str, cls: type, activations: str) -> None:
    ref = QuantReferenceLinear(_pruned_linear(), scheme, activations=activations)
    dep = ref.deploy()
    assert type(dep) is cls
    assert dep.info == ref.info
    assert _within_kernel_rounding(ref, dep, torch.randn(5, 7, 64, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("activations", ["bf16", "fp32"])
def test_int4_deployed_kernel_matches_its_reference(activations: str) -> None:
    ref = QuantReferenceLinear(_pruned_linear(), "int4_weight", group_size=32, activations=activations)
    dep = ref.deploy()
    assert isinstance(dep, WeightInt4Linear)
    assert _within_kernel_rounding(ref, dep, torch.randn(9, 64, generator=torch.Generator().manual_seed(2)))
    assert torch.equal(dep.dense_weight(), ref.weight.detach())


@pytest.mark.parametrize(("scheme", "group"), [("int8_weight", None), ("int4_weight", 32)])
def test_bf16_reference_rounds_input_and_output_as_its_kernel_does(scheme: str, group: int | None) -> None:
    ref = QuantReferenceLinear(_pruned_linear(seed=6), scheme, group)  # bf16 is the default
    assert ref.bf16 and "bf16" in ref.info.kernel
    assert torch.equal(bf16_round(ref.scales), ref.scales)  # the kernel's bf16 scales, exactly
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = bf16_round(nn.functional.linear(bf16_round(x), ref.weight)) + ref.bias
        assert torch.equal(ref(x), expected)
        fp32 = QuantReferenceLinear(_pruned_linear(seed=6), scheme, group, activations="fp32")
        assert not torch.equal(fp32(x), ref(x))  # fp32 keeps the unrounded product


def test_a_weight_only_layer_saved_without_activations_reloads_on_the_fp32_path() -> None:
    dep = QuantReferenceLinear(_pruned_linear(), "int8_weight").deploy()
    tensors = {k: v for k, v in dep.state_dict().items() if v is not None}
    old = WeightInt8Linear.from_state(64, 48, tensors, {})  # a manifest written before the bf16 path
    assert old.activations == "fp32"
    assert WeightInt8Linear.from_state(64, 48, tensors, dep.meta()).activations == "bf16"


@pytest.mark.parametrize(
    ("scheme", "group"),
    [("int8_dynamic", None), ("int8_dynamic_token", None), ("int8_weight", None), ("int4_weight", 32)],
)
def test_zero_weights_stay_zero_after_quantizing(scheme: str, group: int | None) -> None:
    lin = _pruned_linear(seed=3)
    zeros = lin.weight.detach() == 0
    ref = QuantReferenceLinear(lin, scheme, group)
    assert ref.zeros_kept
    assert bool((ref.weight.detach()[zeros] == 0).all())
    assert bool((ref.deploy().dense_weight()[zeros] == 0).all())


def test_dynamic_reference_quantizes_its_input() -> None:
    ref = QuantReferenceLinear(_pruned_linear(seed=4), "int8_dynamic")
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(5))
    fq = fake_quant_dynamic(x)
    assert not torch.equal(fq, x)
    with torch.inference_mode():
        assert torch.allclose(ref(x), nn.functional.linear(fq, ref.weight, ref.bias), atol=0, rtol=0)


def test_token_reference_quantizes_each_row_of_its_input_on_its_own_grid() -> None:
    ref = QuantReferenceLinear(_pruned_linear(seed=4), "int8_dynamic_token")
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(5))
    q, scales = quantize_per_token(x)
    assert q.dtype == torch.int8 and scales.shape == (6, 1)
    assert torch.equal(scales[:, 0], x.abs().amax(dim=1) / 127)
    with torch.inference_mode():
        y = ref(x)
        # the exact integer model: the deployed kernel's output bit for bit, the dequantized product up to fp32 rounding
        assert torch.equal(y, ref.deploy()(x))
        dequantized = nn.functional.linear(fake_quant_token(x), ref.weight, ref.bias)
        assert not torch.equal(y, dequantized)
        assert torch.allclose(y, dequantized, rtol=0, atol=1e-5)


def test_an_outlier_token_does_not_change_the_other_tokens_outputs_per_token_but_does_per_tensor() -> None:
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(8))
    outlier = torch.cat([x, torch.full((1, 64), 500.0)])
    for scheme, same in (("int8_dynamic_token", True), ("int8_dynamic", False)):
        dep = QuantReferenceLinear(_pruned_linear(seed=9), scheme).deploy()
        with torch.inference_mode():
            alone, beside = dep(x), dep(outlier)[:4]
        assert torch.equal(alone, beside) is same, scheme


def test_int_mm_sums_are_exact_at_the_extremes_of_the_int8_grid() -> None:
    # no 16-bit saturation anywhere: every product at +-127 x +-127 over 4096 inputs, odd widths too
    for k, n in ((4096, 3), (37, 5)):
        q = torch.full((2, k), -127, dtype=torch.int8)
        q[1, ::2] = 127
        w = torch.full((n, k), 127, dtype=torch.int8)
        assert torch.equal(torch._int_mm(q, w.t()).long(), q.long() @ w.long().t())


def test_int8_stores_a_byte_per_weight_plus_a_scale_per_row() -> None:
    dep = QuantReferenceLinear(_pruned_linear(), "int8_weight").deploy()
    assert dep.stored_bytes() == 48 * 64 + 48 * 4


def test_int4_stores_half_a_byte_per_weight_plus_a_scale_and_zero_per_group() -> None:
    dep = QuantReferenceLinear(_pruned_linear(), "int4_weight", 32).deploy()
    assert dep.stored_bytes() == 48 * 64 // 2 + (64 // 32) * 48 * 2 * 4


def _probe(model_dir: Path) -> list[dict[str, torch.Tensor]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = ["the food was great", "awful, never again", "a long book about a quiet hotel", "fine"] * 4
    return [tok(texts[i : i + 8], padding=True, return_tensors="pt") for i in (0, 8)]


def _deploy(dense: nn.Module, model: nn.Module, record, probe):
    cfg = DeployConfig(timing_cache=False, speed_cache=False, measure_speed=False)
    return deploy_variant(model, record, DeployContext.create(cfg, probe, dense))


@pytest.mark.parametrize(
    ("method", "sparsity", "params", "fmt"),
    [
        ("int8_dynamic", 0.0, {}, "int8_dynamic"),
        ("int8_weight", 0.0, {}, "int8_weight"),
        ("int4_weight", 0.0, {"group_size": 32}, "int4_weight"),
        ("int8_dynamic", 0.5, {"prune": "magnitude"}, "int8_dynamic"),
        ("int8_dynamic_token", 0.0, {}, "int8_dynamic_token"),
        ("int8_dynamic_token", 0.5, {"prune": "magnitude"}, "int8_dynamic_token"),
    ],
)
def test_quantized_variant_deploys_on_its_kernel_and_verifies(
    tiny_model_dir: Path, method: str, sparsity: float, params: dict, fmt: str
) -> None:
    from transformers import AutoModelForSequenceClassification

    dense = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    model = copy.deepcopy(dense)
    record = run(model, method, sparsity, **params)
    dep = _deploy(dense, model, record, _probe(tiny_model_dir))
    assert dep.passed
    quantized = [layer for layer in record.layers if layer.quant is not None]
    assert quantized and all(layer.format == fmt for layer in quantized)
    assert all(layer.bytes_deployed < layer.bytes_dense for layer in quantized)
    assert dep.record.formats[fmt] == len(quantized)


def test_hybrid_keeps_the_pruners_mask(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    dense = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    pruned = copy.deepcopy(dense)
    run(pruned, "magnitude", 0.5)
    hybrid = copy.deepcopy(dense)
    record = run(hybrid, "int8_weight", 0.5, prune="magnitude")
    mods = dict(hybrid.named_modules())
    for layer in record.layers:
        mask = dict(pruned.named_modules())[layer.name].weight.detach() == 0
        assert bool((mods[layer.name].weight.detach()[mask] == 0).all())
        assert layer.quant is not None and layer.quant.zeros_kept
        assert layer.quant.zeros_before == int(mask.sum())
    assert record.achieved_sparsity >= 0.5


def test_int4_group_that_does_not_divide_a_layer_is_a_usage_error(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    with pytest.raises(UsageError, match="multiple of 256"):
        run(model, "int4_weight", 0.0, group_size=256)


def _cfg(tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path, sweep: str, deploy: str = "") -> Path:
    from helpers import write_config

    over = {"sweep": sweep}
    if deploy:
        over["deploy"] = deploy
    return write_config(tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir, **over)


def test_plan_runs_plain_quantization_once_at_zero_and_hybrids_at_the_sweep_levels(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    sweep = (
        "sweep:\n  methods: [int8_dynamic, {name: int8_weight, params: {prune: wanda, prune_params: {n: 2, m: 4}}},"
        " {name: int4_weight, params: {prune: magnitude}}]\n  sparsities: [0.5, 0.7]\n  seeds: [0]\n"
    )
    ids = [p.id for p in plan(load_config(_cfg(tmp_path, tiny_model_dir, tiny_data_dir, sweep)))]
    assert ids == [
        "dense",
        "int8_dynamic-s0.00-seed0",
        "int8_weight[prune=wanda,prune_params.m=4,prune_params.n=2]-s0.50-seed0",
        "int4_weight[prune=magnitude]-s0.50-seed0",
        "int4_weight[prune=magnitude]-s0.70-seed0",
    ]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ("{name: int8_weight, params: {prune: structured}}", "removes units"),
        ("{name: int8_weight, params: {prune: int8_dynamic}}", "is itself a quantization method"),
        ("{name: int8_weight, params: {prune: wandaa}}", "wandaa"),
        ("{name: int8_weight, params: {prune_params: {n: 2}}}", "no prune method"),
        ("{name: int8_weight, params: {prune: wanda, prune_params: {n: 2, m: 2}}}", "n < m"),
        ("{name: int4_weight, params: {group_size: 48}}", "group_size"),
        ("{name: int8_weight, params: {activations: fp16}}", "activations"),
    ],
)
def test_bad_quantization_params_are_config_errors_with_where(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path, sweep: str, message: str
) -> None:
    from audit.errors import ConfigError

    text = f"sweep:\n  methods: [{sweep}]\n  sparsities: [0.5]\n  seeds: [0]\n"
    with pytest.raises(ConfigError, match=message) as info:
        load_config(_cfg(tmp_path, tiny_model_dir, tiny_data_dir, text))
    assert "audit.yaml" in str(info.value)


def test_quantized_format_in_deploy_formats_is_a_config_error(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    from audit.errors import ConfigError

    sweep = "sweep:\n  methods: [magnitude]\n  sparsities: [0.5]\n  seeds: [0]\n"
    with pytest.raises(ConfigError, match="quantized format"):
        load_config(_cfg(tmp_path, tiny_model_dir, tiny_data_dir, sweep, "deploy:\n  formats: [kernel, int8_weight]\n"))


def test_a_quantization_method_without_deployment_is_a_config_error(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    from audit.errors import ConfigError

    sweep = "sweep:\n  methods: [magnitude, {name: int8_weight, params: {prune: wanda}}]\n  sparsities: [0.5]\n"
    with pytest.raises(ConfigError, match="'int8_weight', a quantization method, but deploy.enabled is false"):
        load_config(_cfg(tmp_path, tiny_model_dir, tiny_data_dir, sweep, "deploy:\n  enabled: false\n"))
    assert load_config(_cfg(tmp_path, tiny_model_dir, tiny_data_dir, sweep)).deploy.enabled  # deployed: valid


@pytest.mark.slow
def test_cli_run_audits_a_quantized_and_a_hybrid_variant(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    import json
    import os
    import subprocess
    import sys

    from helpers import pass_policy, write_config

    root = Path(__file__).resolve().parents[1]
    sweep = (
        "sweep:\n  methods: [int8_dynamic, {name: int8_weight, params: {prune: wanda}}]\n"
        "  sparsities: [0.5]\n  seeds: [0]\n"
    )
    cfg = write_config(
        tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir, sweep=sweep, policy=pass_policy(tmp_path)
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        [sys.executable, "-m", "audit", "run", "--config", str(cfg)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    variants = {v["id"]: v for v in results["variants"]}
    dyn = variants["int8_dynamic-s0.00-seed0"]
    hyb = variants["int8_weight[prune=wanda]-s0.50-seed0"]
    assert dyn["deployment"]["equivalence"]["passed"] and hyb["deployment"]["equivalence"]["passed"]
    assert {layer["format"] for layer in dyn["pruning"]["layers"]} == {"int8_dynamic"}
    assert {layer["quant"]["kernel"].split(" ")[0] for layer in hyb["pruning"]["layers"]} == {
        "aten::_weight_int8pack_mm"
    }
    assert all(layer["quant"]["zeros_kept"] for layer in hyb["pruning"]["layers"])
    assert hyb["pruning"]["achieved_sparsity"] >= 0.5
    assert dyn["deployment"]["speed"] is not None
    # the report's comparison, from this run's results.json: kind and size as deployed, as recorded
    from audit.results import load_results
    from reports.views import build_view

    rows = {r["id"]: r for r in build_view(load_results(tmp_path / "out" / "results.json"))["comparison"]["rows"]}
    for vid, kind in (("int8_dynamic-s0.00-seed0", "quantized"), ("int8_weight[prune=wanda]-s0.50-seed0", "hybrid")):
        assert rows[vid]["kind"] == kind
        assert rows[vid]["size_bytes"] == f"{variants[vid]['deployment']['weight_bytes_deployed']:,} B"
    assert rows["int8_dynamic-s0.00-seed0"]["weights"].startswith("int8_dynamic int8 × ")
    assert 'id="variant-comparison"' in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_dynamic_tolerance_still_fails_a_kernel_with_wrong_scales(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForSequenceClassification

    dense = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    model = copy.deepcopy(dense)
    record = run(model, "int8_dynamic", 0.0)
    real = QuantReferenceLinear.deploy

    def skewed(self: QuantReferenceLinear) -> nn.Module:
        dep = real(self)
        dep.scales.mul_(1.5)
        return dep

    monkeypatch.setattr(QuantReferenceLinear, "deploy", skewed)
    # the model-level check on its own: the per-layer check (which would raise first) passes everything here
    monkeypatch.setattr("audit.deploy.convert.check_quant_layer", lambda ref, dep, **kw: (0.0, 1.0))
    dep = _deploy(dense, model, record, _probe(tiny_model_dir))
    assert not dep.record.equivalence.passed
    assert "dynamic int8" in (dep.record.equivalence.tolerance_basis or "")
    hint = FORMATS.get("int8_dynamic").equivalence_hint
    assert dep.record.notes[-1] == hint and "int8_dynamic_token" in hint  # the failure points at the per-token scheme


def _scales(dep: nn.Module) -> torch.Tensor:
    """The scales the deployed layer's kernel reads (int4: the scale half of its scale/zero pairs)."""
    return dep.scale_zeros[..., 0] if isinstance(dep, WeightInt4Linear) else dep.scales


@pytest.mark.parametrize(
    ("method", "params"),
    [("int8_dynamic", {}), ("int8_dynamic_token", {}), ("int8_weight", {}), ("int4_weight", {"group_size": 32})],
)
def test_a_kernel_with_one_scale_one_percent_off_fails_its_layer_check(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, method: str, params: dict
) -> None:
    from transformers import AutoModelForSequenceClassification

    from audit.deploy.verify import EquivalenceError

    dense = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    model = copy.deepcopy(dense)
    record = run(model, method, 0.0, **params)
    last = record.layers[-1].name
    real = QuantReferenceLinear.deploy
    refs = {id(m): n for n, m in model.named_modules()}

    def skewed(self: QuantReferenceLinear) -> nn.Module:
        dep = real(self)
        if refs[id(self)] == last:
            _scales(dep)[0].mul_(1.01)  # one output row of one layer, 1 % off
        return dep

    monkeypatch.setattr(QuantReferenceLinear, "deploy", skewed)
    with pytest.raises(EquivalenceError, match=rf"layer {last} \({method}\): .* differs from its quantized reference"):
        _deploy(dense, model, record, _probe(tiny_model_dir))


@pytest.mark.parametrize(
    ("method", "params"),
    [("int8_dynamic", {}), ("int8_dynamic_token", {}), ("int8_weight", {}), ("int4_weight", {"group_size": 32})],
)
def test_a_deployed_quantized_model_saves_and_reloads_on_the_same_kernel(
    tiny_model_dir: Path, tmp_path: Path, method: str, params: dict
) -> None:
    from transformers import AutoModelForSequenceClassification

    from audit.deploy.io import load_deployed, save_deployed

    dense = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    model = copy.deepcopy(dense)
    record = run(model, method, 0.0, **params)
    probe = _probe(tiny_model_dir)
    assert _deploy(dense, model, record, probe).passed
    save_deployed(model, tmp_path / "v")
    again = load_deployed(tmp_path / "v")
    for layer in record.layers:
        assert type(again.get_submodule(layer.name)) is type(model.get_submodule(layer.name))
    with torch.inference_mode():
        assert torch.equal(again(**probe[0]).logits, model(**probe[0]).logits)


def test_force_format_does_not_move_quantized_layers_and_cannot_name_a_quantized_format(tiny_model_dir: Path) -> None:
    from pydantic import ValidationError
    from transformers import AutoModelForSequenceClassification

    with pytest.raises(ValidationError, match="quantized format"):
        DeployConfig(force_format="int8_weight")
    dense = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    model = copy.deepcopy(dense)
    record = run(model, "int8_weight", 0.0)
    cfg = DeployConfig(timing_cache=False, speed_cache=False, measure_speed=False, force_format="csr")
    dep = deploy_variant(model, record, DeployContext.create(cfg, _probe(tiny_model_dir), dense))
    assert dep.passed
    assert dep.record.formats["int8_weight"] == len(record.layers)  # every quantized layer stays on its kernel
    assert all(layer.format == "int8_weight" for layer in record.layers)
    assert "csr" not in dep.record.formats  # force_format reached no quantized layer
