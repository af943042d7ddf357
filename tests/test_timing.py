"""The audit's time split: recorded per variant, parts add up, hooks removed, stored and reported."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import write_config
from results_factory import judged_rich_run

from audit.config import load_config
from audit.registry import SUITES, MetricSpec, SuiteSpec
from audit.results import Measurement, SuiteTiming, VariantTiming, load_results
from audit.runner import run_audit
from audit.suite import Suite, SuiteContext, SuiteOutput, Variant
from audit.timing import attack_section
from reports.html import render

MODELS: list[Any] = []


class IdleSuite(Suite):
    """Never calls the model."""

    def run(self, variant: Variant, ctx: SuiteContext) -> SuiteOutput:
        MODELS.append(variant.model)
        return SuiteOutput(measurements=[Measurement(suite="idle", dataset="none", metric="one", value=1.0)])


class FakeAttackSuite(Suite):
    """Queries the model inside an attack section."""

    def run(self, variant: Variant, ctx: SuiteContext) -> SuiteOutput:
        with attack_section():
            p = ctx.proba(variant, ctx.eval_set.texts[:8])
        return SuiteOutput(
            measurements=[Measurement(suite="fakeattack", dataset="x", metric="p", value=float(p[0, 0]))]
        )


def _spec(name: str, cls: type) -> SuiteSpec:
    return SuiteSpec(
        name=name,
        impl=f"{__name__}:{cls.__name__}",
        summary="test-only",
        metrics=(MetricSpec("one" if name == "idle" else "p", "test", higher_is_better=None),),
    )


@pytest.fixture
def stub_suites(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    SUITES._ensure_loaded()
    monkeypatch.setitem(SUITES._specs, "idle", _spec("idle", IdleSuite))
    monkeypatch.setitem(SUITES._specs, "fakeattack", _spec("fakeattack", FakeAttackSuite))
    MODELS.clear()
    yield
    MODELS.clear()  # the models seen must not outlive the test (test_executors counts live models)


def _parts(t: VariantTiming) -> float:
    parts = [t.prune_s, t.deploy_s] if "prune" not in t.reused else []
    return sum(parts) + sum(s.total_s for n, s in t.suites.items() if n not in t.reused) + t.overhead_s


def test_time_split_recorded_adds_up_and_survives_the_store(
    stub_suites: None, tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    path = write_config(
        tmp_path / "audit.yaml",
        tiny_model_dir,
        tiny_data_dir,
        sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.5]\n  seeds: [0]\n",
        suites="suites:\n  performance: {}\n  idle: {}\n  fakeattack: {}\n",
    )
    first = run_audit(load_config(path), command="test", formats=["json"]).result
    for v in first.all_variants():
        t = v.timing
        assert t is not None and t.total_s == v.wall_time_s and t.reused == []
        assert min(t.prune_s, t.deploy_s, t.overhead_s) >= 0
        assert _parts(t) == pytest.approx(t.total_s, abs=1e-9)
        assert t.suites_forward_ratio == pytest.approx(
            (t.suites["performance"].total_s + t.suites["idle"].total_s) / t.suites["performance"].inference_s
        )
        perf, idle, attack = t.suites["performance"], t.suites["idle"], t.suites["fakeattack"]
        assert perf.inference_s > 0 and perf.forward_calls > 0 and perf.forward_ratio >= 1.0
        assert idle.inference_s == 0 and idle.forward_calls == 0 and idle.forward_ratio is None
        assert 0 < attack.attack_inference_s <= attack.inference_s and attack.forward_ratio is None
        for s in t.suites.values():
            search = (s.attack_s or 0.0) - (s.attack_inference_s or 0.0)
            assert s.inference_s + search + s.statistics_s == pytest.approx(s.total_s, abs=1e-9)
    assert first.baseline.timing.prune_s == 0 and first.variants[0].timing.prune_s > 0
    assert first.variants[0].timing.deploy_s > 0
    # the hooks are gone once each suite has run
    assert MODELS and all(not m._forward_hooks and not m._forward_pre_hooks for m in MODELS)
    out = load_config(path).output_path()
    assert load_results(out / "results.json").variants[0].timing == first.variants[0].timing
    again = run_audit(load_config(path), command="test", formats=["json"], resume=True).result
    t0, t1 = first.variants[0].timing, again.variants[0].timing
    assert sorted(t1.reused) == ["deploy", "fakeattack", "idle", "performance", "prune"]
    assert t1.suites == t0.suites and (t1.prune_s, t1.deploy_s) == (
        first.variants[0].timing.prune_s,
        first.variants[0].timing.deploy_s,
    )
    assert t1.overhead_s == pytest.approx(t1.total_s, abs=1e-9)


def test_report_protocol_shows_the_time_split() -> None:
    res = judged_rich_run()
    v = res.variants[0]
    v.timing = VariantTiming(
        total_s=10.0,
        prune_s=1.25,
        deploy_s=2.5,
        suites={
            "performance": SuiteTiming(total_s=4.4, inference_s=4.0, statistics_s=0.4, forward_ratio=1.1),
            "bias": SuiteTiming(
                total_s=0.6, inference_s=0.1, statistics_s=0.5, reused_inference_s=0.4, forward_ratio=1.2
            ),
        },
        overhead_s=1.85,
        suites_forward_ratio=1.22,
    )
    html = render(res)
    section = html[html.index('<section id="protocol">') :]
    section = section[: section.index("</section>")]
    assert "<h3>Time split</h3>" in section and f"<code>{v.id}</code>" in section
    assert '<td>performance</td><td class="num">4.40</td><td class="num">4.00</td>' in section
    assert "1.10×" in section and '<td>overhead</td><td class="num">1.85</td>' in section
    assert '<td>suites without an attack</td><td class="num"></td>' in section and "1.22×" in section
    assert "largest 1.20× (bias on " in section and "0.40 s of forwards shared by an earlier suite" in section


def test_a_suite_served_shared_logits_is_credited_their_forward_time(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from audit.inference import Predictor
    from audit.timing import measure_suite

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    pred = Predictor(AutoTokenizer.from_pretrained(tiny_model_dir), max_length=32, batch_size=4)
    texts = [f"review number {i} was {'good' if i % 2 else 'bad'}" for i in range(10)]
    with pred.shared_logits(model):
        with measure_suite(model) as first:
            a = pred.logits(model, texts)
        with measure_suite(model) as second:
            b = pred.logits(model, texts)
            c = pred.logits(model, texts[:3])  # not shared: scored here
    one, two = first[0], second[0]
    assert (a == b).all() and one.reused_inference_s == 0.0 and one.forward_calls == 3
    assert two.forward_calls == 1 and two.reused_inference_s == one.inference_s > 0
    assert two.forward_ratio == pytest.approx(two.total_s / (two.inference_s + one.inference_s), rel=1e-12)
    assert c.shape == (3, model.config.num_labels)
    with measure_suite(model) as outside:  # outside the shared scope nothing is kept or credited
        pred.logits(model, texts)
    assert outside[0].reused_inference_s == 0.0 and outside[0].forward_calls == 3
