"""Per-regime deployment (``deploy.regime_split_tokens``): a decode format and a prefill format per layer,
decided from injected timings, routed by token count, checked in both regimes, saved and reloaded."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from audit.config import DeployConfig
from audit.deploy.choose import DENSE, Decision, LayerTimer, TimingCache, decide_regimes, quantize_density
from audit.deploy.convert import Converter
from audit.deploy.format_classes import DeployFormat, format_for, stored_bytes
from audit.deploy.formats import FORMATS, FormatSpec, regime_format, regime_parts, register_format
from audit.deploy.kernel import kernel_status
from audit.deploy.modules import TorchCSRLinear, format_of, top_level_linears
from audit.deploy.regime import RegimeFormat, RegimeLinear, build_regime, check_regime_layer
from audit.deploy.verify import EquivalenceError

needs_kernel = pytest.mark.skipif(not kernel_status().available, reason="the compiled sparse kernel is unavailable")

TIMINGS = {
    DENSE: {1: 1.0, 128: 4.0, 1024: 30.0},
    "bitmap": {1: 0.5, 128: 12.0, 1024: 90.0},  # 2x at decode, 3x slower than dense at prefill
    "kernel": {1: 1.05, 128: 2.0, 1024: 15.0},  # slower than dense at decode, 2x at prefill
}


def _sparse(shape: tuple[int, int], density: float = 0.4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)


def _linear(weight: torch.Tensor, bias: bool = True) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias:
            lin.bias.copy_(torch.randn(weight.shape[0], generator=torch.Generator().manual_seed(1)))
    return lin.requires_grad_(False)


# -- the decision -------------------------------------------------------------------------


def test_each_regime_gets_its_own_format_where_one_format_for_every_count_would_stay_dense() -> None:
    from audit.deploy.choose import decide

    assert decide(TIMINGS, min_speedup=1.1).format == DENSE  # no format wins at every count
    d = decide_regimes(TIMINGS, split=8, min_speedup=1.1)
    assert d.format == "bitmap|kernel" and d.regimes == ("bitmap", "kernel") and d.split == 8
    assert d.kept_dense is None and d.speedup == pytest.approx(2.0)  # at the first (decode) count


def test_the_reason_gives_both_regimes_measured_ratios() -> None:
    d = decide_regimes(TIMINGS, split=8, min_speedup=1.1)
    decode, _, prefill = d.reason.partition("; prefill (> 8 tokens): ")
    assert decode.startswith("decode (<= 8 tokens): fastest measured: bitmap 2.00x at 1 tokens")
    assert prefill.startswith("fastest measured: kernel 2.00x at 128 tokens") and "2.00x at 1024 tokens" in prefill


def test_a_regime_where_no_format_is_min_speedup_faster_stays_dense() -> None:
    t = copy.deepcopy(TIMINGS)
    t["kernel"].update({128: 3.8, 1024: 28.0})  # 1.05x, 1.07x: within the margin
    d = decide_regimes(t, split=8, min_speedup=1.1)
    assert d.format == "bitmap|dense" and d.regimes == ("bitmap", DENSE)
    assert "prefill (> 8 tokens): kept dense: no sparse format is >= 1.1x faster" in d.reason


def test_the_same_winner_in_both_regimes_is_one_format() -> None:
    t = {DENSE: {1: 1.0, 128: 4.0}, "kernel": {1: 0.8, 128: 2.0}, "bitmap": {1: 0.9, 128: 12.0}}
    d = decide_regimes(t, split=8, min_speedup=1.1)
    assert d.format == "kernel" and d.regimes is None


def test_no_winner_in_either_regime_stays_dense_for_no_speedup() -> None:
    t = {DENSE: {1: 1.0, 128: 4.0}, "kernel": {1: 1.2, 128: 4.1}}
    d = decide_regimes(t, split=8, min_speedup=1.1)
    assert d.format == DENSE and d.regimes is None and d.kept_dense == "no_speedup"


def test_a_split_with_counts_on_one_side_only_is_refused_by_decide() -> None:
    with pytest.raises(ValueError, match="at or below and above 8 tokens"):
        decide_regimes({DENSE: {128: 1.0}, "kernel": {128: 0.5}}, split=8)


# -- the config ---------------------------------------------------------------------------


def test_the_split_must_be_a_positive_token_count() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        DeployConfig(regime_split_tokens=0, choose_tokens=[1, 128])


def test_a_split_without_counts_on_both_sides_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="needs choose_tokens on both sides of it, but none of"):
        DeployConfig(regime_split_tokens=8)  # the default choose_tokens [128, 1024] are all prefill


def test_unset_by_default_and_accepted_with_counts_on_both_sides() -> None:
    assert DeployConfig().regime_split_tokens is None
    assert DeployConfig(regime_split_tokens=8, choose_tokens=[128, 1]).choose_tokens == [1, 128]


# -- the converter --------------------------------------------------------------------------


def _converter(tmp_path: Path, **opts: Any) -> Converter:
    cfg = DeployConfig(
        formats=["kernel", "bitmap"], choose_tokens=[1, 128], regime_split_tokens=8, timing_min_s=0.001, **opts
    )
    return Converter(cfg, TimingCache(tmp_path / "t.json"))


def _inject(conv: Converter, weight: torch.Tensor, timings: dict[str, dict[int, float]]) -> None:
    timer: LayerTimer = conv.timer("cpu")
    shape = (int(weight.shape[0]), int(weight.shape[1]))
    density = quantize_density(int(torch.count_nonzero(weight)) / weight.numel())
    for fmt, by_tokens in timings.items():
        for tokens, s in by_tokens.items():
            conv.cache.data[timer.key(fmt, shape, density, True, tokens)] = s


@needs_kernel
def test_the_converter_deploys_a_dispatching_layer_from_injected_timings(tmp_path: Path) -> None:
    w0, w1 = _sparse((48, 64)), _sparse((64, 48), seed=2)
    model = nn.Sequential(_linear(w0), _linear(w1))
    conv = _converter(tmp_path)
    _inject(conv, w0, TIMINGS)
    prefill_loses = copy.deepcopy(TIMINGS)
    prefill_loses["kernel"].update({128: 4.4, 1024: 33.0})
    _inject(conv, w1, prefill_loses)
    dense1 = model[1]
    result = conv.convert(model)
    assert result.timings_measured == 0  # decided from the injected timings alone
    assert result.formats() == {"bitmap|dense": 1, "bitmap|kernel": 1}
    assert isinstance(model[0], RegimeLinear) and format_of(model[0].prefill) == "kernel"
    assert model[1].prefill is dense1  # the dense side is the original layer, its weight shared
    first, second = result.layers
    assert first.bytes_deployed == stored_bytes(model[0].decode) + stored_bytes(model[0].prefill)
    assert second.bytes_deployed == stored_bytes(model[1].decode) + 64 * 48 * 4  # memory is the price
    assert "decode (<= 8 tokens)" in first.reason and "prefill (> 8 tokens)" in first.reason
    assert result.kept_dense() == {}  # a layer dense in one regime only is not a dense layer
    assert result.notes[0].startswith(
        "2 layers with a format per regime checked against their masked weights at 1, 8, 9, 128"
    )


@needs_kernel
def test_routing_by_token_count_and_both_sides_equal_the_masked_dense_layer() -> None:
    w = _sparse((48, 64))
    lin = _linear(w)
    layer = build_regime("bitmap", "kernel", 8, w, lin.bias.detach(), lin)
    ran: list[str] = []
    for side in ("decode", "prefill"):
        getattr(layer, side).register_forward_hook(lambda m, i, o, side=side: ran.append(side))
    g = torch.Generator().manual_seed(0)
    one, many = torch.randn(1, 1, 64, generator=g), torch.randn(2, 64, 64, generator=g)  # 1 and 128 tokens
    torch.testing.assert_close(layer(one), F.linear(one, w, lin.bias), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer(many), F.linear(many, w, lin.bias), atol=1e-5, rtol=1e-5)
    assert ran == ["decode", "prefill"]


@needs_kernel
def test_the_layer_check_covers_both_regimes_and_catches_a_wrong_side(tmp_path: Path) -> None:
    w = _sparse((48, 64))
    lin = _linear(w)
    layer = build_regime("bitmap", "kernel", 8, w, lin.bias.detach(), lin)
    rows = check_regime_layer(layer, w, lin.bias, [1, 8, 9, 128])
    assert [(n, side) for n, side, _, _ in rows] == [(1, "decode"), (8, "decode"), (9, "prefill"), (128, "prefill")]
    assert all(diff <= tol for _, _, diff, tol in rows)
    with torch.no_grad():
        layer.prefill.values.mul_(1.01)  # the prefill side no longer computes the masked weight
    with pytest.raises(EquivalenceError, match=r"layer fc \(bitmap\|kernel\): its prefill side differs .* at 9 tokens"):
        _converter(tmp_path).check_regimes("fc", layer, w, lin.bias)


# -- saving and loading ---------------------------------------------------------------------


@needs_kernel
def test_save_and_load_round_trips_a_dispatching_layer_exactly(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from audit.deploy.io import load_deployed, read_manifest, save_deployed

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".encoder." in f".{n}."]
    for i, (name, m) in enumerate(layers):
        w = _sparse(tuple(m.weight.shape), seed=i)
        with torch.no_grad():
            m.weight.copy_(w)
        prefill = "kernel" if i % 2 else DENSE
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, build_regime("bitmap", prefill, 8, w, m.bias.detach(), m))
    path = save_deployed(model, tmp_path / "v", tokenizer=tok)
    manifest = read_manifest(path)["layers"]
    assert {manifest[n]["format"] for n, _ in layers} == {"bitmap|kernel", "bitmap|dense"}
    assert not any(n.endswith((".decode", ".prefill")) for n in manifest)  # the sides are saved by their layer
    back = load_deployed(path)
    assert [m.format for _, m in top_level_linears(back) if isinstance(m, RegimeLinear)] == [
        m.format for _, m in top_level_linears(model) if isinstance(m, RegimeLinear)
    ]
    short = dict(tok(["hi"], return_tensors="pt"))  # a few tokens: every layer runs its decode side
    long = dict(tok(["a longer text", "another, longer text to batch"], padding=True, return_tensors="pt"))
    assert short["input_ids"].numel() <= 8 < long["input_ids"].numel()
    with torch.inference_mode():
        for batch in (short, long):
            assert torch.equal(back(**batch).logits, model(**batch).logits)


# -- a third party's format in a regime ----------------------------------------------------


class HalfCSRLinear(TorchCSRLinear):
    """A stand-in third-party layer: torch CSR under another recorded name."""

    format_name = "halfcsr"


class HalfCSRFormat(DeployFormat):
    name = "halfcsr"
    module = HalfCSRLinear


@pytest.fixture
def halfcsr() -> Iterator[None]:
    register_format(FormatSpec("halfcsr", f"{__name__}:HalfCSRFormat", "test format"))
    try:
        yield
    finally:
        FORMATS._specs.pop("halfcsr", None)
        from audit.deploy import format_classes

        format_classes._INSTANCES.pop("halfcsr", None)


def test_a_third_party_format_serves_a_regime_and_reloads_through_the_registry(halfcsr: None, tmp_path: Path) -> None:
    w = _sparse((16, 32), 0.2)
    model = nn.Sequential(_linear(w))
    conv = Converter(
        DeployConfig(formats=["halfcsr", "csr"], choose_tokens=[1, 64], regime_split_tokens=4, timing_min_s=0.001),
        TimingCache(tmp_path / "t.json"),
    )
    _inject(conv, w, {DENSE: {1: 1.0, 64: 3.0}, "halfcsr": {1: 0.5, 64: 3.3}, "csr": {1: 1.2, 64: 1.5}})
    result = conv.convert(model)
    assert result.layers[0].format == "halfcsr|csr" and isinstance(model[0].decode, HalfCSRLinear)
    assert regime_parts(result.layers[0].format) == ("halfcsr", "csr")
    layer = model[0]
    assert isinstance(format_for(layer.format), RegimeFormat)
    back = format_for(layer.format).load(32, 16, {k: v.clone() for k, v in layer.state_tensors().items()}, layer.meta())
    x1, x64 = torch.randn(1, 32), torch.randn(64, 32)
    assert isinstance(back, RegimeLinear) and isinstance(back.decode, HalfCSRLinear)
    assert torch.equal(back(x1), layer(x1)) and torch.equal(back(x64), layer(x64))


def test_an_unknown_side_of_a_per_regime_name_is_a_plugin_error() -> None:
    from audit.errors import PluginError

    assert regime_format("bitmap", DENSE) == "bitmap|dense" and regime_parts("kernel") is None
    with pytest.raises(PluginError, match="unknown deploy format 'nosuch'"):
        format_for("bitmap|nosuch")


# -- the model-level checks of a causal LM ----------------------------------------------------


@needs_kernel
def test_a_causal_lm_with_dispatching_layers_passes_logit_and_generation_checks(tmp_path: Path) -> None:
    import numpy as np
    from lm_helpers import TEXTS, tiny_llama, tiny_tokenizer
    from pruning_helpers import ctx, pruner

    from audit.data import EvalSet
    from audit.deploy.lm import prompts_of
    from audit.deploy.pipeline import DeployContext, deploy_variant
    from audit.models import adapter_of

    tok = tiny_tokenizer()
    dense = tiny_llama(tok)
    variant = copy.deepcopy(dense)
    p, c = pruner("magnitude"), ctx(0.5)
    p.validate(variant, c)
    p.prune(variant, c)
    adapter = adapter_of(dense)
    es = EvalSet(name="probe", texts=list(TEXTS), labels=np.full(len(TEXTS), -1))
    conv = _converter(tmp_path)
    conv.choose = lambda weight, has_bias: (  # type: ignore[method-assign]
        Decision("bitmap|kernel", "injected", 2.0, regimes=("bitmap", "kernel"), split=8),
        float(torch.count_nonzero(weight)) / weight.numel(),
    )
    context = DeployContext(
        converter=conv,
        probe=adapter.probe_batches(es, adapter.predictor(tok, max_length=32, batch_size=4), 8),
        dense=dense,
        measure_speed=False,
        adapter=adapter,
        tokenizer=tok,
        prompts=prompts_of(es.texts),
    )
    sides = {"decode": 0, "prefill": 0}
    convert = conv.convert

    def convert_and_count(model: nn.Module, keep_dense: Any = ()) -> Any:  # count which side each call runs
        conversion = convert(model, keep_dense=keep_dense)
        for _, layer in top_level_linears(model):
            for side in sides if isinstance(layer, RegimeLinear) else ():
                getattr(layer, side).register_forward_hook(lambda *_, s=side: sides.__setitem__(s, sides[s] + 1))
        return conversion

    conv.convert = convert_and_count  # type: ignore[method-assign]
    out = deploy_variant(variant, None, context)
    assert out.record.formats == {"bitmap|kernel": 14, DENSE: 1}  # 2 blocks x 7 layers; the LM head stays dense
    assert out.passed and out.record.equivalence.passed and out.record.generation.passed
    assert sides["decode"] > 0 and sides["prefill"] > 0  # the probe and the generation ran both regimes


def test_the_report_counts_per_regime_layers_as_sparse_and_says_how_many() -> None:
    from audit.results import DeploymentRecord
    from reports.views.variants import ran_text

    record = DeploymentRecord(formats={"bitmap|kernel": 12, "bitmap|dense": 2, DENSE: 1}, kept_dense={"no_zeros": 1})
    text = ran_text(record)
    assert text == "sparse 14 of 15 (14 with a format per regime, decode|prefill) · dense 1 (no zeros 1)"
