"""The runner audits the deployed model: suites run on the deployed modules, failures are ERRORs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import FAST_DEPLOY, write_config
from torch import nn

from audit.config import load_config
from audit.deploy.io import load_deployed
from audit.deploy.modules import DeployedLinear, KernelLinear
from audit.deploy.verify import probe_logits
from audit.registry import SUITES, MetricSpec, SuiteSpec
from audit.results import Measurement, load_results
from audit.runner import run_audit
from audit.suite import Suite, SuiteContext, SuiteOutput, Variant

SEEN: dict[str, dict[str, Any]] = {}


class ProbeSuite(Suite):
    """Records, for every variant, which modules the suite's forward passes actually ran."""

    def run(self, variant: Variant, ctx: SuiteContext) -> SuiteOutput:
        calls: dict[str, int] = {}
        hooks = []
        for name, module in variant.model.named_modules():
            if isinstance(module, (nn.Linear, DeployedLinear)):

                def hook(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
                    calls[name] = calls.get(name, 0) + 1

                hooks.append(module.register_forward_hook(hook))
        try:
            proba = ctx.proba(variant, ctx.eval_set.texts[:20])
        finally:
            for h in hooks:
                h.remove()
        modules = dict(variant.model.named_modules())
        SEEN[variant.id] = {
            "calls": calls,
            "types": {n: type(modules[n]).__name__ for n in calls},
            "zeros_in_dense_linear": [
                n for n, m in modules.items() if isinstance(m, nn.Linear) and bool((m.weight == 0).any())
            ],
        }
        return SuiteOutput(
            measurements=[Measurement(suite="probe", dataset="test", metric="mean_p", value=float(proba[:, 1].mean()))]
        )


SPEC = SuiteSpec(
    name="probe",
    impl=f"{__name__}:ProbeSuite",
    summary="test-only: which modules run",
    metrics=(MetricSpec("mean_p", "mean probability of class 1", higher_is_better=None),),
)


@pytest.fixture
def probe_suite(monkeypatch: pytest.MonkeyPatch) -> None:
    SUITES._ensure_loaded()
    monkeypatch.setitem(SUITES._specs, "probe", SPEC)
    SEEN.clear()


@pytest.fixture(autouse=True)
def _one_thread():
    """Numerics and records only (never speed): one thread keeps this fast on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_suites_run_on_the_deployed_modules(
    probe_suite: None, tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    cfg = load_config(
        write_config(
            tmp_path / "audit.yaml",
            tiny_model_dir,
            tiny_data_dir,
            sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.9]\n  seeds: [0]\n",
            suites="suites:\n  performance: {}\n  probe: {}\n",
            deploy=FAST_DEPLOY + "  force_format: kernel\n  save_variants: true\n",
        )
    )
    outcome = run_audit(cfg, command="test")
    res = outcome.result
    v = res.variants[0]
    assert not v.errors
    dep = v.deployment
    assert dep is not None and dep.equivalence is not None and dep.equivalence.passed
    assert dep.formats == {"dense": 2, "kernel": 12}
    assert dep.speed is not None and dep.speed.seq_len == 16 and dep.speed.batch_size == 2
    # the pruned layers ran as KernelLinear during the suites; no masked nn.Linear is left
    seen = SEEN[v.id]
    for layer in v.pruning.layers:
        assert layer.format == "kernel" and layer.format_reason
        assert layer.bytes_deployed < layer.bytes_dense
        assert seen["types"][layer.name] == "KernelLinear" and seen["calls"][layer.name] >= 1
    assert seen["zeros_in_dense_linear"] == []
    assert SEEN["dense"]["types"]["bert.encoder.layer.0.intermediate.dense"] == "Linear"
    # deployment numbers are measurements a policy can gate on, with declared directions
    assert v.measurement("deployment/probe/prediction_agreement").value == 1.0
    assert v.measurement("deployment/seq16/speedup_b1").value > 0
    assert 0 < v.measurement("deployment/weights/size_ratio").value < 1
    assert res.metrics["deployment/speedup_b1"].higher_is_better is True
    assert res.metrics["deployment/size_ratio"].higher_is_better is False
    assert res.baseline.deployment is None and res.baseline.measurement("deployment/seq16/speedup_b1") is None
    # the saved variant is the audited one
    out = cfg.output_path()
    assert sorted(p.name for p in out.iterdir()) == [
        ".prune-audit-store",
        "junit.xml",
        "model-card.md",
        "report.html",
        "results.json",
        "summary.md",
        "variants",
    ]
    assert dep.saved_to == f"variants/{v.id}"
    back = load_deployed(out / dep.saved_to)
    assert sum(isinstance(m, KernelLinear) for m in back.modules()) == 12
    again = load_results(out / "results.json")
    assert again.variants[0].deployment == dep
    html = (out / "report.html").read_text()
    assert "kernel × 12" in html and "max |Δlogit|" in html
    # a policy can require a minimum speed-up or a maximum size of the deployed model
    from audit.policy import evaluate_policy, policy_from_text

    gate = policy_from_text(
        "name: ship\nrules:\n"
        "  - {id: small, metric: deployment/weights/size_ratio, max: 0.01}\n"
        "  - {id: fast, metric: deployment/*/speedup_b1, min: 0.0}\n"
    )
    verdict = evaluate_policy(gate, res)
    status = {r.rule: r.status for r in verdict.rules}
    assert status == {"small": "FAIL", "fast": "PASS"}


def test_measured_choice_is_recorded_per_layer(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(
        write_config(
            tmp_path / "audit.yaml",
            tiny_model_dir,
            tiny_data_dir,
            sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.9]\n  seeds: [0]\n",
        )
    )
    res = run_audit(cfg, write=False).result
    v = res.variants[0]
    assert not v.errors and v.deployment.equivalence.passed
    for layer in v.pruning.layers:
        assert layer.format in ("dense", "kernel", "csr") or layer.format.startswith("bsr")
        # the reason cites the measured comparison (or why nothing was timed)
        assert "x at 16 tokens" in layer.format_reason
        if layer.format == "dense":
            assert layer.format_reason.startswith("kept dense") and layer.bytes_deployed == layer.bytes_dense
        else:
            assert layer.format_speedup >= 1.1
    assert sum(v.deployment.formats.values()) == 14
    assert v.deployment.timings_measured + v.deployment.timings_cached > 0


def test_an_unverified_deployment_is_an_error_not_a_result(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = KernelLinear._run
    monkeypatch.setattr(KernelLinear, "_run", lambda self, x: real(self, x) + 0.05)  # a broken kernel
    cfg = load_config(
        write_config(
            tmp_path / "audit.yaml",
            tiny_model_dir,
            tiny_data_dir,
            sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.5]\n  seeds: [0]\n",
            deploy=FAST_DEPLOY + "  force_format: kernel\n",
        )
    )
    outcome = run_audit(cfg)
    v = outcome.result.variants[0]
    assert [e.suite for e in v.errors] == ["deployment"]
    assert v.errors[0].error_type == "EquivalenceError" and "max |Δlogit|" in v.errors[0].message
    assert not v.deployment.equivalence.passed and v.deployment.speed is None
    assert {m.suite for m in v.measurements} == {"deployment"}  # no suite numbers for an unverified model
    assert outcome.verdict.status == "ERROR" and int(outcome.exit_code) == 1
    assert any(r.variant == v.id and r.status == "ERROR" for r in outcome.verdict.rules)
    assert outcome.verdict.max_compliant_sparsity == {"magnitude": None}


def test_deployment_can_be_disabled(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(
        write_config(
            tmp_path / "audit.yaml",
            tiny_model_dir,
            tiny_data_dir,
            sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.5]\n  seeds: [0]\n",
            deploy="deploy:\n  enabled: false\n",
        )
    )
    res = run_audit(cfg, write=False).result
    assert res.variants[0].deployment is None and not any(k.startswith("deployment/") for k in res.metrics)


def test_bad_deploy_config_is_a_config_error(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    from audit.errors import ConfigError

    path = write_config(tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir, deploy="deploy:\n  force_format: coo\n")
    with pytest.raises(ConfigError, match="force_format") as exc:
        load_config(path)
    assert "audit.yaml:" in str(exc.value)
    path2 = write_config(tmp_path / "b.yaml", tiny_model_dir, tiny_data_dir, deploy="deploy:\n  formats: [cusparse]\n")
    with pytest.raises(ConfigError, match="formats"):
        load_config(path2)


def test_probe_logits_are_in_batch_order(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    b1 = dict(tok(["good", "bad"], padding=True, return_tensors="pt"))
    b2 = dict(tok(["fine place"], padding=True, return_tensors="pt"))
    both = probe_logits(model, [b1, b2])
    assert both.shape == (3, 2)
    np.testing.assert_array_equal(both[2], probe_logits(model, [b2])[0])
