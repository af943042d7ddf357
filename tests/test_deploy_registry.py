"""Deploy formats are registered classes: names resolve through the registry, a third party can add one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from audit.config import DeployConfig
from audit.deploy.choose import TimingCache, build_module
from audit.deploy.convert import Converter
from audit.deploy.format_classes import BSRFormat, CSRFormat, DeployFormat, format_for, implementation
from audit.deploy.formats import DEFAULT_FORMATS, FORMATS, FormatSpec, is_known, register_format, spec_of
from audit.deploy.modules import TorchCSRLinear, format_of
from audit.errors import PluginError


class RowCSRLinear(TorchCSRLinear):
    """A stand-in third-party layer: torch CSR under another recorded name."""

    format_name = "rowcsr"


class RowCSRFormat(DeployFormat):
    """A third-party format that only applies to weights with at least one all-zero row."""

    name = "rowcsr"
    module = RowCSRLinear

    def applies_to(
        self, weight: torch.Tensor, density: float, config: Any
    ) -> tuple[list[tuple[str, float]], list[str]]:
        if not bool((weight == 0).all(dim=1).any()):
            return [], ["rowcsr: no all-zero row"]
        return super().applies_to(weight, density, config)


@pytest.fixture
def rowcsr() -> Iterator[FormatSpec]:
    spec = register_format(FormatSpec("rowcsr", f"{__name__}:RowCSRFormat", "test format"))
    try:
        yield spec
    finally:
        FORMATS._specs.pop("rowcsr", None)
        from audit.deploy import format_classes

        format_classes._INSTANCES.pop("rowcsr", None)


def _sparse_weight(out_f: int = 16, in_f: int = 32, zero_row: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(out_f, in_f, generator=g) * (torch.rand(out_f, in_f, generator=g) < 0.2)
    if zero_row:
        w[3] = 0
    else:
        w[:, 0] = 1.0  # every row keeps a non-zero
    return w


def test_recorded_names_resolve_to_their_format_class() -> None:
    assert DEFAULT_FORMATS == ("kernel", "csr", "bsr", "semi24")  # bitmap and nm24 are opt-in (decode)
    assert spec_of("bsr16").name == "bsr" and isinstance(format_for("bsr16"), BSRFormat)
    assert isinstance(format_for("csr"), CSRFormat)
    assert format_for("dense").name == "dense"
    assert is_known("bsr4") and is_known("dense")
    assert not is_known("bsr") and not is_known("csr2") and not is_known("bsrx")
    with pytest.raises(PluginError, match="unknown deploy format 'csr9'"):
        format_for("csr9")


def test_config_checks_format_names_against_the_registry() -> None:
    with pytest.raises(
        ValidationError, match="unknown deploy format 'csx'; known: bitmap, bsr, csr, kernel, nm24, semi24"
    ):
        DeployConfig(formats=["csr", "csx"])
    with pytest.raises(ValidationError, match="force_format must be dense or a deploy format's name"):
        DeployConfig(force_format="bsr")
    assert DeployConfig(force_format="bsr16").force_format == "bsr16"
    assert DeployConfig(formats=["csr", "csr", "kernel"]).formats == ["csr", "kernel"]


def test_a_registered_third_party_format_is_configured_chosen_converted_and_rebuilt(
    rowcsr: FormatSpec, tmp_path: Path
) -> None:
    assert DeployConfig(formats=["rowcsr"]).formats == ["rowcsr"]
    conv = Converter(
        DeployConfig(formats=["rowcsr"], force_format="rowcsr", choose_tokens=[16], timing_cache=False),
        TimingCache(None),
    )
    model = nn.Sequential(nn.Linear(32, 16), nn.Linear(32, 16))
    with torch.no_grad():
        model[0].weight.copy_(_sparse_weight(zero_row=True))
        model[1].weight.copy_(_sparse_weight(zero_row=False))
    x = torch.randn(4, 32)
    ref = [model[0](x), model[1](x)]
    res = conv.convert(model)
    assert [layer.format for layer in res.layers] == ["rowcsr", "dense"]
    assert "rowcsr: no all-zero row" in res.layers[1].reason
    assert isinstance(model[0], RowCSRLinear) and format_of(model[0]) == "rowcsr"
    torch.testing.assert_close(model[0](x), ref[0])
    # the manifest's name rebuilds the layer through the same registry (audit.deploy.io.load_deployed)
    mod = model[0]
    back = implementation("rowcsr").load(32, 16, {k: v.clone() for k, v in mod.state_tensors().items()}, mod.meta())
    assert isinstance(back, RowCSRLinear)
    torch.testing.assert_close(back(x), ref[0])
    assert isinstance(build_module("rowcsr", model[1].weight.detach(), None), RowCSRLinear)


def test_a_spec_whose_impl_is_not_a_format_class_is_a_plugin_error() -> None:
    register_format(FormatSpec("notafmt", "audit.deploy.formats:FormatSpec", "broken"))
    try:
        with pytest.raises(PluginError, match="is not a DeployFormat subclass"):
            format_for("notafmt")
    finally:
        FORMATS._specs.pop("notafmt", None)
