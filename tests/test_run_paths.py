"""The run's paths (audit.runpaths.RunPaths): resolved once, at load time; the plan: computed once per run."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_config

from audit.config import config_from_text, load_config
from audit.store import StoreKeys

CFG = """\
model:
  path: ./model
data:
  files: {train: data/train.csv, test: /abs/test.csv}
  columns: {text: sentence, label: label}
suites:
  performance: {}
  ood:
    shifted:
      - {name: yelp, path: ../shared/yelp.csv, columns: {text: text, label: label}}
policy: policies/mine.yaml
output_dir: out
"""


def test_every_path_is_resolved_at_load_time_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "audit.yaml").write_text(CFG, encoding="utf-8")
    cfg = load_config(tmp_path / "audit.yaml")
    paths = cfg.paths
    assert paths is cfg.paths  # one object, made when the config was loaded
    assert paths.base_dir == str(tmp_path)
    assert paths.model_dir == tmp_path / "model"
    assert paths.data_files == {"train": tmp_path / "data" / "train.csv", "test": Path("/abs/test.csv")}
    assert paths.dataset_files == {"../shared/yelp.csv": tmp_path / "../shared/yelp.csv"}
    assert paths.output_dir == tmp_path / "out" == cfg.output_path()
    assert paths.policy == "policies/mine.yaml"  # a name or a path: audit.policy resolves it against base_dir
    with pytest.raises(AttributeError):
        paths.output_dir = tmp_path  # type: ignore[misc]


def test_without_a_config_file_relative_paths_stay_relative() -> None:
    cfg = config_from_text(CFG)
    assert cfg.paths.base_dir is None
    assert cfg.paths.model_dir == Path("model")
    assert cfg.paths.output_dir == Path("out")


def test_a_copy_with_changed_fields_resolves_its_paths_again(tmp_path: Path) -> None:
    (tmp_path / "audit.yaml").write_text(CFG, encoding="utf-8")
    cfg = load_config(tmp_path / "audit.yaml")
    moved = cfg.model_copy(update={"output_dir": "elsewhere"})
    assert moved.output_path() == tmp_path / "elsewhere"  # not the original's cached paths
    assert cfg.output_path() == tmp_path / "out"
    assert cfg.model_copy().paths == cfg.paths


def test_store_keys_follow_the_content_of_a_suite_dataset_named_by_a_relative_path(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "yelp.csv").write_text("text,label\ngood,1\n", encoding="utf-8")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "audit.yaml").write_text(CFG, encoding="utf-8")
    cfg = load_config(conf / "audit.yaml")
    before = StoreKeys.create(cfg, cfg.paths, "model-fp", None).suite_params
    (shared / "yelp.csv").write_text("text,label\nbad,0\n", encoding="utf-8")
    after = StoreKeys.create(cfg, cfg.paths, "model-fp", None).suite_params
    assert before["ood"] != after["ood"]
    assert before["performance"] == after["performance"]


def test_the_sweep_plan_is_computed_once_per_run(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import audit.run.session
    from audit.plan import plan
    from audit.runner import run_audit

    calls = []

    def counted(config: object) -> object:
        calls.append(config)
        return plan(config)  # type: ignore[arg-type]

    monkeypatch.setattr(audit.run.session, "plan", counted)
    sweep = "sweep:\n  methods: [magnitude]\n  sparsities: [0.5]\n  seeds: [0]\n"
    cfg = load_config(write_config(tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir, sweep=sweep))
    outcome = run_audit(cfg, write=False)
    assert [v.id for v in outcome.result.all_variants()] == ["dense", "magnitude-s0.50-seed0"]
    assert len(calls) == 1
