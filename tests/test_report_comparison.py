"""The HTML report's comparison of pruned, quantized and hybrid variants on one page: each
variant's kind, stored weights (format and bits), size as deployed, speed and headline deltas."""

from __future__ import annotations

from html.parser import HTMLParser

from results_factory import rich_run, rich_variant

from audit.results import LayerRecord, PointRecord, QuantLayerRecord, VariantResult
from reports.views import build_view
from reports.writer import render_reports

INT8_BYTES = 31_234_567
HYBRID_BYTES = 30_123_456


def _quantized(vid: str, method: str, params: dict, s: float, size: int, accuracy_delta: float) -> VariantResult:
    """A variant as a quantization method leaves it: the rich fixture's records with every layer on
    the int8 kernel, a ``quant`` record per layer and the deployed size it was measured at."""
    v = rich_variant("wanda", s, 0).model_copy(deep=True)
    v.id = vid
    v.point = PointRecord(id=vid, method=method, label=method, sparsity=s, seed=0, key=vid, params=params)
    p = v.pruning
    p.method, p.params = method, params
    layers: list[LayerRecord] = []
    for layer in p.layers:
        layer.format, layer.format_reason = method, f"quantized by {method}: 8-bit"
        layer.bytes_dense, layer.bytes_deployed = layer.total * 4, layer.total + 4 * layer.shape[0]
        layer.quant = QuantLayerRecord(
            scheme=method, bits=8, granularity="per output channel, symmetric (zero point 0)",
            activations="fp32 (weight-only)", kernel="aten::_weight_int8pack_mm",
            zeros_before=layer.total - layer.nonzero if params else 0,
        )  # fmt: skip
        layers.append(layer)
    v.deployment.formats = {method: len(layers)}
    v.deployment.weight_bytes_deployed = size
    for m in v.measurements:
        if m.id == "performance/test/accuracy":
            m.value = round(0.91 + accuracy_delta, 4)
    return v


def _result():
    res = rich_run()
    res.variants = [
        rich_variant("magnitude", 0.5, 0),
        _quantized("int8_weight-s0.00-seed0", "int8_weight", {}, 0.0, INT8_BYTES, -0.004),
        _quantized(
            "int8_weight[prune=wanda]-s0.50-seed0", "int8_weight", {"prune": "wanda"}, 0.5, HYBRID_BYTES, -0.021
        ),
    ]
    return res


class _Table(HTMLParser):
    """The text of each cell of the table with the given id, row by row."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.inside, self.rows, self.cell = table_id, False, [], None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table" and ("id", self.table_id) in attrs:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.inside:
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(" ".join(self.cell.split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell += data


def test_the_report_compares_pruned_quantized_and_hybrid_variants_with_kind_and_size() -> None:
    res = _result()
    html = render_reports(res, ["html"])["html"]
    table = _Table("variant-comparison")
    table.feed(html)
    head, *rows = table.rows
    assert head[:6] == [
        "Variant",
        "Kind",
        "Sparsity",
        "Weights (format, bits × layers)",
        "Size as deployed",
        "Speed-up",
    ]
    assert head[6:] == [  # the first metric of each suite
        "performance/test/accuracy",
        "ood/yelp/accuracy",
        "bias/test/demographic_parity_difference",
        "adversarial/pwws/success_rate",
    ]
    by_id = {r[0]: dict(zip(head, r, strict=True)) for r in rows}
    dense = by_id["dense"]
    assert dense["Kind"] == "dense" and dense["Size as deployed"] == "90,000,000 B (1.00×)"
    pruned = by_id["magnitude-s0.50-seed0"]
    pruned_bytes = res.variants[0].deployment.weight_bytes_deployed  # the fixture's, about 0.7 x dense
    assert pruned["Kind"] == "pruned" and pruned["Size as deployed"] == f"{pruned_bytes:,} B (0.70×)"
    quant = by_id["int8_weight-s0.00-seed0"]
    assert quant["Kind"] == "quantized"
    assert quant["Weights (format, bits × layers)"] == "int8_weight int8 × 6"
    assert quant["Size as deployed"] == f"{INT8_BYTES:,} B ({INT8_BYTES / 90e6:.2f}×)"
    hybrid = by_id["int8_weight[prune=wanda]-s0.50-seed0"]
    assert hybrid["Kind"] == "hybrid" and hybrid["Sparsity"] == f"{res.variants[2].pruning.achieved_sparsity:.3f}"
    assert hybrid["Weights (format, bits × layers)"] == "int8_weight int8 × 6"
    assert hybrid["Size as deployed"] == f"{HYBRID_BYTES:,} B ({HYBRID_BYTES / 90e6:.2f}×)"
    assert hybrid["Speed-up"].startswith("b1 1.30×")  # the fixture's measured speed at s=0.5
    accuracy = head.index("performance/test/accuracy")
    assert rows[[r[0] for r in rows].index("int8_weight-s0.00-seed0")][accuracy] == "-0.004"
    assert rows[[r[0] for r in rows].index("int8_weight[prune=wanda]-s0.50-seed0")][accuracy] == "-0.021"


def test_the_comparison_reads_bits_of_unquantized_layers_from_their_recorded_dense_bytes() -> None:
    res = _result()
    for rec in res.variants[0].pruning.layers:
        rec.bytes_dense = rec.total * 2  # a half-precision model: 2 bytes per weight stored densely
    rows = {r["id"]: r for r in build_view(res)["comparison"]["rows"]}
    assert rows["magnitude-s0.50-seed0"]["weights"] == "dense 16-bit float × 6"  # every layer below CSR break-even
    assert rows["dense"]["weights"] == "dense 16-bit float × 6"  # the dense model: from the same records
    assert rows["int8_weight-s0.00-seed0"]["weights"] == "int8_weight int8 × 6"
