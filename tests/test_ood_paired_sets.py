"""Paired shifted sets (issue 15 item 4): a set names its counterpart, the suite compares them pair by pair."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import write_config
from pydantic import ValidationError
from suite_ctx import TinyAudit, tiny_audit

from audit.config import load_config
from audit.data import load_ref
from audit.errors import ConfigError, DataError
from audit.paired import RECORD_KEYS
from suites.ood import OodParams, ShiftedDataset

COLUMNS = {"text": "text", "label": "label", "id": "id"}


def _ref(name: str, path: Path, **extra: object) -> dict[str, object]:
    return {"name": name, "path": str(path), "columns": COLUMNS, **extra}


def _rows(data_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "ood.jsonl").read_text().splitlines()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def audit(tiny_model_dir: Path, tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyAudit:
    return tiny_audit(tiny_model_dir, tiny_data_dir, tmp_path_factory.mktemp("ood-pairs"))


@pytest.fixture(scope="module")
def contrast(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ood rows with every third label flipped and its text marked: a stand-in contrast set."""
    rows = _rows(tiny_data_dir)
    for k, r in enumerate(rows):
        if k % 3 == 0:
            r["label"] = 1 - int(r["label"])
            r["text"] = "not really: " + r["text"]
    return _write(tmp_path_factory.mktemp("contrast") / "contrast.jsonl", rows)


def test_paired_with_must_name_another_shifted_set(tiny_data_dir: Path) -> None:
    ood = tiny_data_dir / "ood.jsonl"
    with pytest.raises(ValidationError) as e:
        OodParams.model_validate({"shifted": [_ref("a", ood), _ref("b", ood, paired_with="nope")]})
    (err,) = e.value.errors()
    assert err["loc"] == ("shifted", 1, "paired_with") and "'nope': it names no shifted set" in err["msg"]
    with pytest.raises(ValidationError, match="cannot be paired with itself"):
        OodParams.model_validate({"shifted": [_ref("a", ood, paired_with="a")]})
    ok = OodParams.model_validate({"shifted": [_ref("a", ood, paired_with="b"), _ref("b", ood)]})
    assert isinstance(ok.shifted[0], ShiftedDataset) and ok.shifted[0].paired_with == "b"


def test_an_unknown_counterpart_is_a_located_config_error(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    ood = tiny_data_dir / "ood.jsonl"
    suites = f"suites:\n  ood:\n    shifted: [{{name: a, path: {ood}, paired_with: orig}}]\n"
    path = write_config(tmp_path / "audit.yaml", tiny_model_dir, tiny_data_dir, suites=suites)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "shifted.0.paired_with" in str(e.value) and "'orig'" in str(e.value)
    assert e.value.line is not None and str(path) in str(e.value.where)
    assert e.value.exit_code == 4


def test_counterparts_of_another_length_or_order_stop_setup(
    audit: TinyAudit, tiny_data_dir: Path, tmp_path: Path
) -> None:
    rows = _rows(tiny_data_dir)
    ood = tiny_data_dir / "ood.jsonl"
    short = _write(tmp_path / "short.jsonl", rows[:100])
    suite = audit.suite("ood", {"shifted": [_ref("a", short, paired_with="b"), _ref("b", ood)], "corruptions": []})
    with pytest.raises(DataError, match="'a' has 100 rows but its counterpart 'b' has 160") as e:
        suite.setup(audit.ctx)
    assert e.value.where == "suites.ood.shifted[a].paired_with"
    swapped = _write(tmp_path / "swapped.jsonl", [rows[1], rows[0], *rows[2:]])
    suite = audit.suite("ood", {"shifted": [_ref("a", swapped, paired_with="b"), _ref("b", ood)], "corruptions": []})
    with pytest.raises(DataError, match="not in the same order: row 1 has id"):
        suite.setup(audit.ctx)


def test_the_gap_between_paired_sets_and_its_change_under_pruning(
    audit: TinyAudit, tiny_data_dir: Path, contrast: Path
) -> None:
    ood = tiny_data_dir / "ood.jsonl"
    params = {"shifted": [_ref("contrast", contrast, paired_with="orig"), _ref("orig", ood)], "corruptions": []}
    suite = audit.suite("ood", params)
    dense, pruned = audit.run(suite)
    ctx = audit.ctx
    sets = {s.name: s.es for s in suite.sets}
    gaps = []
    for v, out in zip(audit.variants, (dense, pruned), strict=True):
        ok = {n: ctx.predictor.proba(v.model, es.texts).argmax(axis=1) == es.labels for n, es in sets.items()}
        expected = float((ok["contrast"].astype(float) - ok["orig"].astype(float)).mean())
        (gap,) = [m for m in out.measurements if m.metric == "paired_set_gap"]
        assert gap.id == "ood/contrast/paired_set_gap" and gap.n == len(sets["orig"])
        assert gap.value == pytest.approx(expected)
        assert gap.details["accuracy"] == pytest.approx(ok["contrast"].mean())
        assert gap.details["counterpart_accuracy"] == pytest.approx(ok["orig"].mean())
        assert gap.details["only_this_right"] == int((ok["contrast"] & ~ok["orig"]).sum())
        assert gap.ci_low <= gap.value <= gap.ci_high
        gaps.append(gap)
    assert "paired" not in gaps[0].details  # the dense model has nothing to be compared with
    rec = gaps[1].details["paired"]
    assert tuple(rec) == RECORD_KEYS
    assert rec["baseline"] == pytest.approx(gaps[0].value)
    assert rec["delta"] == pytest.approx(gaps[1].value - gaps[0].value)
    assert rec["n"] == len(sets["orig"]) and rec["test"].startswith("paired bootstrap over example pairs")
    assert rec["ci_low"] <= rec["delta"] <= rec["ci_high"]
    # the two files really are the same rows: the counterpart loads as the eval set's ood rows
    orig = load_ref(suite.params.shifted[1], ctx.config, ctx.id2label)
    assert orig.ids == sets["contrast"].ids
    assert np.any(orig.labels != sets["contrast"].labels)  # the stand-in contrast set flipped labels
