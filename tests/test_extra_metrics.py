"""``extra_metrics``: local ``evaluate`` modules computed by the performance and bias suites (issue 18)."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from helpers import write_config
from test_cli import cli

from audit.config import load_config

BALANCED = textwrap.dedent(
    '''
    """Balanced accuracy (mean per-class recall), scaled: a test module."""
    import datasets
    import evaluate
    import numpy as np


    class BalancedAccuracy(evaluate.Metric):
        def _info(self):
            return evaluate.MetricInfo(
                description="mean recall over the classes present in the references",
                citation="",
                inputs_description="predictions, references: class ids",
                features=datasets.Features(
                    {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
                ),
            )

        def _compute(self, predictions, references, scale=1.0):
            p, r = np.asarray(predictions), np.asarray(references)
            recalls = [float((p[r == c] == c).mean()) for c in np.unique(r)]
            return {"balanced_accuracy": scale * float(np.mean(recalls)), "n": len(r)}
    '''
)


def _module(directory: Path, name: str = "balanced.py", text: str = BALANCED) -> Path:
    path = directory / "metrics" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


EXTRA = (
    "    extra_metrics:\n"
    "      - {path: metrics/balanced.py, key: balanced_accuracy, name: bal_acc, higher_is_better: true,\n"
    "         range: [0, 100], kwargs: {scale: 100}}\n"
)


def _gated_config(tmp_path: Path, model_dir: Path, data_dir: Path, rules: str) -> Path:
    """A one-variant (magnitude 90 %) audit of the performance suite with ``EXTRA``, gated by ``rules``."""
    policy = tmp_path / "gate.yaml"
    policy.write_text("name: gate\nrules:\n" + rules)
    return write_config(
        tmp_path / "audit.yaml",
        model_dir,
        data_dir,
        sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.9]\n  seeds: [0]\n",
        suites="suites:\n  performance:\n" + EXTRA,
        policy=f"policy: {policy}\n",
        deploy="deploy: {enabled: false}\n",
    )


def test_extra_metric_matches_sklearn_for_dense_groups_and_the_paired_delta(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.metrics import balanced_accuracy_score

    from audit.policy import evaluate_policy, policy_from_text
    from audit.runner import run_audit
    from suites.performance.run import PerformanceSuite

    module = _module(tmp_path)
    seen: list[Any] = []
    original = PerformanceSuite.prediction_sets

    def spy(self: Any, artifacts: dict[str, Any], ctx: Any) -> Any:
        sets = original(self, artifacts, ctx)
        seen.append(sets[0])
        return sets

    monkeypatch.setattr(PerformanceSuite, "prediction_sets", spy)
    cfg = _gated_config(
        tmp_path, tiny_model_dir, tiny_data_dir, "  - {id: bal, metric: performance/*/bal_acc_delta, min: -100}\n"
    )
    res = run_audit(load_config(cfg), write=False).result
    dense, variant = res.baseline, res.variants[0]
    # calls: dense; then the variant and, from ctx.baseline, dense again
    dense_set, var_set, dense_again = seen
    assert np.array_equal(dense_set.predictions, dense_again.predictions)
    labels = dense_set.references
    acc = dense.measurement("performance/test/accuracy").value
    assert float((dense_set.predictions == labels).mean()) == pytest.approx(acc)  # the suite's own predictions

    want_dense = 100 * balanced_accuracy_score(labels, dense_set.predictions)
    want_var = 100 * balanced_accuracy_score(labels, var_set.predictions)
    m = dense.measurement("performance/test/bal_acc")
    assert m.value == pytest.approx(want_dense)
    assert m.ci_low <= m.value <= m.ci_high
    gender = dense_set.groups["gender"]
    for g, gv in m.groups["gender"].items():
        members = gender == g
        assert gv.value == pytest.approx(100 * balanced_accuracy_score(labels[members], dense_set.predictions[members]))
        assert gv.n == int(members.sum())
    assert set(m.groups) == {"gender", "identity", "gender&identity"}

    d = variant.measurement("performance/test/bal_acc_delta")
    assert d.value == pytest.approx(want_var - want_dense)
    assert d.details["paired"]["baseline"] == pytest.approx(want_dense)
    assert d.ci_low is not None and d.ci_low <= d.value <= d.ci_high
    g0 = sorted(d.groups["gender"])[0]
    members = gender == g0
    assert d.groups["gender"][g0].value == pytest.approx(
        100 * balanced_accuracy_score(labels[members], var_set.predictions[members])
        - 100 * balanced_accuracy_score(labels[members], dense_set.predictions[members])
    )
    assert variant.measurement("performance/test/bal_acc").value == pytest.approx(want_var)

    info = res.metrics["performance/bal_acc"]
    assert info.higher_is_better is True and info.range == [0.0, 100.0]
    import hashlib

    assert info.module == {"path": "metrics/balanced.py", "sha256": hashlib.sha256(module.read_bytes()).hexdigest()}
    assert res.metrics["performance/bal_acc_delta"].range == [-100.0, 100.0]
    from reports.views.common import catalog
    from reports.views.protocol import protocol

    row = next(r for r in protocol(res, catalog(res))["metrics"] if r["id"] == "performance/bal_acc")
    assert row["citation"] == f"evaluate module metrics/balanced.py (sha256 {info.module['sha256'][:16]})"

    # a policy rule on the extra metric judges as its threshold says
    for bound, status in ((d.value - 0.01, "PASS"), (d.value + 0.01, "FAIL")):
        pol = policy_from_text(f"name: p\nrules:\n  - {{id: bal, metric: performance/*/bal_acc_delta, min: {bound}}}\n")
        rules = [r for r in evaluate_policy(pol, res).rules if r.variant == variant.id]
        assert [r.status for r in rules] == [status]


def test_the_bias_suite_computes_extra_metrics_per_sensitive_group(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    from audit.runner import run_audit

    _module(tmp_path)
    cfg = write_config(
        tmp_path / "audit.yaml",
        tiny_model_dir,
        tiny_data_dir,
        sweep="sweep:\n  methods: [magnitude]\n  sparsities: [0.9]\n  seeds: [0]\n",
        suites="suites:\n  bias:\n    counterfactual: {enabled: false}\n    sensitive_columns: [gender]\n" + EXTRA,
        policy="policy: null\n",
        deploy="deploy: {enabled: false}\n",
    )
    res = run_audit(load_config(cfg), write=False).result
    m = res.baseline.measurement("bias/test/bal_acc")
    assert set(m.groups) == {"gender"}
    # with one group per sensitive value, the groups' sizes add up to the set
    assert sum(gv.n for gv in m.groups["gender"].values()) == m.n
    fnr = res.baseline.measurement("bias/test/fnr")
    fpr = res.baseline.measurement("bias/test/fpr")
    # binary balanced accuracy is the mean of the two recalls: 1 - (FNR + FPR) / 2, from the suite's own rates
    assert m.value == pytest.approx(100 * (1 - (fnr.value + fpr.value) / 2))
    assert res.variants[0].measurement("bias/test/bal_acc_delta") is not None


def test_loading_a_local_module_never_touches_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audit.config import ExtraMetricConfig
    from audit.extra_metrics import load_module

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network is switched off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    path = _module(tmp_path)
    em = ExtraMetricConfig(path=str(path), higher_is_better=True)
    lm = load_module("performance", 0, em, path)
    got = lm.module.compute(predictions=[0, 1, 1, 1], references=[0, 0, 1, 1])
    assert got == {"balanced_accuracy": 0.75, "n": 4}
    assert lm.name == "balanced"  # default name: the module's file stem


def test_a_missing_module_path_exits_4_with_the_config_line_and_writes_nothing(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir, suites="suites:\n  performance:\n" + EXTRA
    )
    line = cfg.read_text().splitlines().index("    extra_metrics:") + 2  # the entry's line, 1-based
    r = cli("run", "-c", str(cfg))
    assert r.returncode == 4, r.stderr[-2000:]
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {cfg}:{line}:")
    assert f"no metric module at {tmp_path / 'metrics' / 'balanced.py'}" in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_module_that_raises_on_import_exits_4_in_one_line_and_writes_nothing(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from audit.cli import main

    _module(tmp_path, text="raise RuntimeError('broken metric module')\n")
    cfg = write_config(
        tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir, suites="suites:\n  performance:\n" + EXTRA
    )
    code = main(["run", "-c", str(cfg)])  # the CLI in-process (evaluate's import is paid once per test session)
    stderr = capsys.readouterr().err
    assert code == 4, stderr[-2000:]
    errors = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr
    assert errors[0].startswith("error: suites.performance.extra_metrics[0]: metric module ")
    assert "RuntimeError: broken metric module" in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_module_that_raises_in_compute_is_an_error_verdict_naming_it_and_the_suite(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    from audit.runner import run_audit

    _module(
        tmp_path,
        text=BALANCED.replace("p, r = np.asarray", "raise ValueError('cannot score')\n        p, r = np.asarray"),
    )
    cfg = _gated_config(
        tmp_path,
        tiny_model_dir,
        tiny_data_dir,
        "  - {id: bal, metric: performance/*/bal_acc, min: 0}\n  - {id: acc, metric: performance/*/accuracy, min: 0}\n",
    )
    outcome = run_audit(load_config(cfg), write=False)
    dense = outcome.result.baseline
    assert dense.measurement("performance/test/accuracy") is not None  # the suite's own metrics stand
    assert dense.measurement("performance/test/bal_acc") is None
    (err,) = dense.errors
    assert err.suite == "performance" and err.message.startswith(
        "extra metric 'bal_acc' of suite 'performance' (metrics/balanced.py) raised in compute: "
        "ValueError: cannot score"
    )
    variant = outcome.result.variants[0].id  # rules judge the pruned variants
    by_rule = {(r.rule, r.variant): r for r in outcome.verdict.rules}
    assert by_rule[("bal", variant)].status == "ERROR" and "cannot score" in by_rule[("bal", variant)].message
    assert by_rule[("acc", variant)].status == "PASS"
    assert outcome.exit_code == 1


def test_extra_metrics_on_a_suite_without_predictions_is_a_config_error(tmp_path: Path) -> None:
    from audit.config import config_from_text
    from audit.errors import ConfigError

    text = (
        "model: {path: m}\ndata: {files: {test: t.csv}}\nsuites:\n  ood:\n"
        "    extra_metrics: [{path: x.py, higher_is_better: true}]\n"
    )
    with pytest.raises(ConfigError, match="suite 'ood' gives no per-example predictions"):
        config_from_text(text)


def test_the_bbq_suite_computes_extra_metrics_on_its_answers_per_category(tmp_path: Path) -> None:
    from sklearn.metrics import balanced_accuracy_score
    from test_bbq import DENSE, HAND, VARIANT, _ctx, _write

    from audit.config import ExtraMetricConfig
    from audit.extra_metrics import extra_measurements, load_module
    from audit.registry import SUITES
    from audit.suite import Variant

    data = _write(tmp_path / "hand.jsonl", HAND)
    spec = SUITES.get("bbq")
    suite = spec.load()(spec, spec.params.model_validate({"sets": [{"name": "hand", "path": str(data)}]}))
    ctx = _ctx(None, n_boot=20)
    suite.setup(ctx)
    path = _module(tmp_path)
    lm = load_module("bbq", 0, ExtraMetricConfig(path=str(path), name="bal", higher_is_better=True, n_boot=7), path)
    got, base = [], None
    for i, preds in enumerate((DENSE, VARIANT)):
        suite.predict = lambda s, v, c, p=preds: np.array(p, dtype=np.int64)
        v = Variant(point=SimpleNamespace(id=f"v{i}", is_baseline=i == 0), model=None)  # type: ignore[arg-type]
        vctx = ctx.for_suite(base)
        out = suite.run(v, vctx)
        base = out.artifacts if i == 0 else base
        got.append({m.metric: m for m in extra_measurements(suite, [lm], out.artifacts, vctx)})
    labels = np.array([r["label"] for r in HAND])
    cats = np.array([r["category"] for r in HAND])
    assert got[0]["bal"].value == pytest.approx(balanced_accuracy_score(labels, DENSE))
    age = cats == "Age"
    want = balanced_accuracy_score(labels[age], np.array(VARIANT)[age]) - balanced_accuracy_score(
        labels[age], np.array(DENSE)[age]
    )
    assert got[1]["bal_delta"].groups["category"]["Age"].value == pytest.approx(want)
    assert got[1]["bal_delta"].value == pytest.approx(
        balanced_accuracy_score(labels, VARIANT) - balanced_accuracy_score(labels, DENSE)
    )
    assert set(got[0]["bal"].groups) == {"category", "condition"}
    # the metric's own n_boot (7) replaces runtime.n_boot (20) for its CIs
    assert got[0]["bal"].ci_method == "percentile bootstrap, 7 resamples, 95%"
    assert got[1]["bal_delta"].ci_method == "paired bootstrap, 7 resamples, 95%"


def test_the_pre_flight_knows_a_declared_extra_metric_and_its_direction(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    from audit.errors import ConfigError
    from audit.run.session import preflight

    _module(tmp_path)
    policy = tmp_path / "gate.yaml"

    def check(rule: str, extra: str) -> None:
        policy.write_text(f"name: gate\nrules:\n  - {rule}\n")
        cfg = write_config(
            tmp_path / "audit.yaml",
            tiny_model_dir,
            tiny_data_dir,
            suites="suites:\n  performance:\n" + extra,
            policy=f"policy: {policy}\n",
        )
        preflight(load_config(cfg))

    check("{id: bal, metric: performance/*/bal_acc_delta, min: -2}", EXTRA)  # declared: passes
    with pytest.raises(ConfigError, match="metric 'performance/\\*/bal_acc_delta' matches no metric"):
        check("{id: bal, metric: performance/*/bal_acc_delta, min: -2}", "    intersections: true\n")
    with pytest.raises(
        ConfigError, match="higher-is-better, so a max bound .* \\(as declared in the config's extra"
    ) as wrong_way:
        check("{id: bal, metric: performance/*/bal_acc, max: 90}", EXTRA)
    assert (wrong_way.value.file, wrong_way.value.line) == (str(policy), 3)  # the rule's line in the policy file


def test_editing_the_module_changes_the_suites_store_key(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    from audit.store import StoreKeys

    module = _module(tmp_path)
    suites = "suites:\n  performance:\n" + EXTRA
    cfg = write_config(tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir, suites=suites)

    def key() -> str:
        c = load_config(cfg)
        return StoreKeys.create(c, c.paths, "model", None).suite_params["performance"]

    before = key()
    assert key() == before  # the same inputs: the same key (a resumed run reuses the unit)
    module.write_text(BALANCED.replace("scale * float", "0.5 * scale * float"), encoding="utf-8")
    assert key() != before


def test_an_invalid_entry_in_the_mapping_form_is_located_at_its_line(tmp_path: Path) -> None:
    from audit.errors import ConfigError

    (tmp_path / "m.py").write_text("")
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(
        "model: {path: m}\ndata: {files: {test: t.csv}}\nsuites:\n  bias: {}\n  performance:\n"
        "    extra_metrics:\n      - {path: m.py}\n"
    )
    with pytest.raises(ConfigError) as got:
        load_config(cfg)
    assert got.value.format() == (
        f"{cfg}:7:9: suites.performance.extra_metrics[0].higher_is_better: required setting is missing"
    )


def test_the_list_form_of_suites_declares_the_same_extra_metric_as_the_mapping_form(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    _module(tmp_path)
    mapping = write_config(
        tmp_path / "mapping.yaml", tiny_model_dir, tiny_data_dir, suites="suites:\n  performance:\n" + EXTRA
    )
    listed = write_config(
        tmp_path / "listed.yaml",
        tiny_model_dir,
        tiny_data_dir,
        suites="suites:\n  - name: performance\n" + EXTRA,
    )
    want = load_config(mapping).suites[0].extra_metrics
    assert [m.name for m in want] == ["bal_acc"]
    assert load_config(listed).suites[0].extra_metrics == want


def test_the_shipped_example_module_is_balanced_accuracy() -> None:
    from sklearn.metrics import balanced_accuracy_score

    from audit.config import ExtraMetricConfig
    from audit.extra_metrics import load_module

    path = Path(__file__).resolve().parents[1] / "examples" / "metrics" / "balanced_accuracy.py"
    em = ExtraMetricConfig(path=str(path), key="balanced_accuracy", higher_is_better=True)
    loaded = load_module("performance", 0, em, path)
    refs, preds = [0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0]
    got = loaded.module.compute(predictions=preds, references=refs)["balanced_accuracy"]
    assert got == pytest.approx(balanced_accuracy_score(refs, preds)) and got == pytest.approx((3 / 4 + 1 / 2) / 2)
