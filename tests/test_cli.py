"""The real CLI, run as a subprocess the way users and CI run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_config

from audit.results import load_results

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "audit", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


@pytest.mark.slow
def test_run_then_check_then_report(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir)
    out = tmp_path / "out"
    r = cli("run", "--config", str(cfg))
    assert (out / "results.json").is_file(), r.stderr  # its exit code is checked against the verdict below
    assert f"html: {out / 'report.html'}" in r.stdout
    assert "[3/3] magnitude-s0.90-seed0" in r.stderr  # progress goes to stderr
    res = load_results(out / "results.json")
    assert res.schema_version == "1.0"
    assert r.returncode == res.verdict.exit_code
    html = (out / "report.html").read_text()
    assert "<h2>Verdict at a glance</h2>" in html and res.verdict.status in html and "magnitude-s0.90-seed0" in html
    assert "http://" not in html and "https://" not in html  # self-contained

    # re-gating needs no model: works on a copy of results.json alone
    alone = tmp_path / "alone" / "results.json"
    alone.parent.mkdir()
    alone.write_bytes((out / "results.json").read_bytes())
    lenient = tmp_path / "lenient.yaml"
    lenient.write_text("name: lenient\nrules:\n  - {id: floor, metric: performance/*/accuracy, min: 0.0}\n")
    r2 = cli("check", str(alone), "--policy", str(lenient))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "verdict: PASS under policy lenient" in r2.stdout
    strict = tmp_path / "strict.yaml"
    strict.write_text("name: strict\nrules:\n  - {id: no-loss, metric: performance/*/accuracy_delta, min: 0.0}\n")
    r3 = cli("check", str(alone), "--policy", str(strict))
    assert r3.returncode == 1 and "FAIL  no-loss [magnitude-s0.90-seed0]" in r3.stdout
    r4 = cli("report", str(alone), "--output-dir", str(tmp_path / "re"), "--format", "html")
    assert r4.returncode == 0 and (tmp_path / "re" / "report.html").is_file()


def test_config_errors_exit_4_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {path: m}\ndata: {files: {test: t.csv}}\nsweep:\n  sparsities: [0.5, 1.5]\n")
    for cmd in (["validate", str(bad)], ["run", "--config", str(bad)]):
        r = cli(*cmd)
        assert r.returncode == 4
        assert f"{bad}:4:" in r.stderr and "sparsity must be in [0, 1)" in r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "audit-out").exists()


def test_missing_model_and_missing_columns_exit_4(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "a.yaml", tmp_path / "nowhere", tiny_data_dir)
    r = cli("run", "-c", str(cfg))
    assert r.returncode == 4 and "no model directory" in r.stderr and "model.path=" in r.stderr
    cfg2 = write_config(
        tmp_path / "b.yaml",
        tiny_model_dir,
        tiny_data_dir,
        data=f"data:\n  files: {{test: {tiny_data_dir / 'test.jsonl'}}}\n  columns: {{text: review}}\n",
    )
    r2 = cli("run", "-c", str(cfg2))
    assert r2.returncode == 4 and "column 'review' (columns.text) not found" in r2.stderr
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_4_and_version() -> None:
    assert cli("run").returncode == 4  # missing --config
    assert cli("no-such-command").returncode == 4
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("prune-audit ")


def test_validate_schema_ls_check_diff_do_not_import_torch(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("model: {path: m}\ndata: {files: {test: t.csv}}\n")
    from results_factory import judged_rich_run

    results = tmp_path / "results.json"
    results.write_text(judged_rich_run().to_json(), encoding="utf-8")
    out = tmp_path / "regated"
    code = (
        "import sys\n"
        "from audit.cli import main\n"
        f"rc = [main(['validate', {str(cfg)!r}]), main(['schema', 'policy']), main(['ls', 'metrics']),"
        " main(['ls', 'policies']), main(['validate', 'policies/default.yaml']),"
        f" main(['check', {str(results)!r}, '--policy', 'strict', '-o', {str(out)!r}, '-f', 'all']),"
        f" main(['diff', {str(results)!r}, {str(out / 'results.json')!r},"
        f" '--json', {str(tmp_path / 'diff.json')!r}])]\n"
        "assert rc == [0, 0, 0, 0, 0, 1, 1], rc\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'textattack') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout
    assert "valid config; 1 sweep points + dense baseline" in r.stdout
    assert "verdict: FAIL under policy strict" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "junit.xml",
        "model-card.md",
        "report.html",
        "results.json",
        "results.sarif",
        "summary.md",
    ]


def test_schema_commands_print_json() -> None:
    for kind in ("config", "policy", "results"):
        r = cli("schema", kind)
        assert r.returncode == 0
        assert json.loads(r.stdout)["$schema"].startswith("https://json-schema.org/")


def test_check_on_garbage_results_exit_4(tmp_path: Path) -> None:
    p = tmp_path / "results.json"
    p.write_text("{not json")
    r = cli("check", str(p))
    assert r.returncode == 4 and "invalid JSON" in r.stderr
    p.write_text(json.dumps({"schema_version": "9.0"}))
    r = cli("check", str(p))
    assert r.returncode == 4 and "schema_version 9.0" in r.stderr


def test_output_dir_that_is_a_file_exits_4_before_the_model_loads(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a directory\n")
    for out, said in ((taken, "output_dir is"), (taken / "sub", f"output_dir would be inside {taken}, which is")):
        cfg = write_config(tmp_path / "a.yaml", tiny_model_dir, tiny_data_dir, output_dir=f"output_dir: {out}\n")
        r = cli("run", "-c", str(cfg))
        assert r.returncode == 4, r.stderr[-2000:]
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        hint = "(hint: set output_dir (or --output-dir) to a directory)"
        assert errors == [f"error: {out}: {said} a file, not a directory {hint}"]
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr
        assert "loading" not in r.stderr.lower()  # the pre-flight stops it before the model loads
        assert taken.read_text() == "not a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "taken"]


def test_a_policy_rule_on_no_known_metric_is_a_config_error_with_its_line(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "typo.yaml"
    policy.write_text(
        "name: typo\nrules:\n"
        "  - {id: floor, metric: performance/*/accuracy, min: 0.0}\n"
        "  - {id: speed, metric: deployment/*/speedup_b1, min: 0.5, severity: warn}\n"
        "  - {id: ood-floor, metric: ood/*/accuracy_delta, min: -0.5}\n"  # installed, not in this run: SKIP
        "  - id: typo\n"
        "    metric: nosuch/*/thing\n"
        "    min: 0\n"
    )
    cfg = write_config(tmp_path / "a.yaml", tiny_model_dir, tiny_data_dir, policy=f"policy: {policy}\n")
    out = tmp_path / "out"
    want = f"error: {policy}:7:13: rule 'typo': metric 'nosuch/*/thing' matches no metric"
    for cmd in (["run", "-c", str(cfg)], ["validate", str(policy)]):
        r = cli(*cmd)
        assert r.returncode == 4, r.stderr[-2000:]
        assert r.stderr.strip().splitlines()[-1].startswith(want), r.stderr[-2000:]
        assert "Traceback" not in r.stderr
    assert not out.exists()  # found before any work: nothing written

    # a near miss gets a suggestion
    policy.write_text("name: near\nrules:\n  - {id: floor, metric: performance/*/acuracy, min: 0.0}\n")
    r = cli("validate", str(policy))
    assert r.returncode == 4 and f"{policy}:3:" in r.stderr and "did you mean 'performance/*/accuracy'?" in r.stderr


def test_check_refuses_a_rule_on_no_known_metric_and_accepts_the_results_own_catalog(tmp_path: Path) -> None:
    from results_factory import m, run

    res = run([m("accuracy", 0.9), m("score", 0.7, suite="thirdparty")], [], suites=("performance", "thirdparty"))
    res.metrics["thirdparty/score"] = res.metrics["performance/accuracy"].model_copy(
        update={"suite": "thirdparty", "name": "score"}
    )
    path = tmp_path / "results.json"
    path.write_text(res.model_dump_json())
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "name: p\nrules:\n  - {id: plugin, metric: thirdparty/*/score, min: 0.5, applies_to: {baseline: true}}\n"
    )
    ok = cli("check", str(path), "--policy", str(policy))  # a suite not installed here, known from the results
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verdict: PASS under policy p" in ok.stdout
    policy.write_text("name: p\nrules:\n  - {id: nope, metric: thirdparty/*/scroe, min: 0.0}\n")
    r = cli("check", str(path), "--policy", str(policy), "--output-dir", str(tmp_path / "re"))
    assert r.returncode == 4
    assert f"error: {policy}:3:" in r.stderr and "rule 'nope': metric 'thirdparty/*/scroe'" in r.stderr
    assert "did you mean 'thirdparty/*/score'?" in r.stderr
    assert not (tmp_path / "re").exists()


def test_log_records_go_to_the_current_stderr_after_an_in_process_run_closed_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io
    import logging

    from audit.cli import _setup_logging

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # restored afterwards with the root's level
    monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)
    monkeypatch.setattr(logging, "raiseExceptions", True)
    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)  # what CliRunner does for an in-process run
    _setup_logging(0)
    swapped.close()  # ... and closes when it is done
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("audit.test").info("after the run")
    assert later.getvalue().endswith("after the run\n")
