"""Re-running an unchanged audit re-gates the same speed figure: this machine's measurement of
the same deployment (same weights, formats and settings) is reused, and anything that changes the
deployment is measured afresh."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from test_deploy_model import TEXTS, context, magnitude  # noqa: F401 - fixtures and helpers

from audit.config import DeployConfig
from audit.deploy import pipeline
from audit.deploy.pipeline import DeployContext, deploy_variant
from audit.deploy.speed_cache import SpeedCache, weights_fingerprint


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    return model, [dict(tok(TEXTS, padding=True, return_tensors="pt"))]


def _ctx(tmp_path: Path, dense: torch.nn.Module, probe: list, cache: SpeedCache | None) -> DeployContext:
    return dataclasses.replace(context(tmp_path, dense, probe, force_format="kernel"), speed_cache=cache)


def _variant(dense: torch.nn.Module, sparsity: float) -> torch.nn.Module:
    model = copy.deepcopy(dense)
    magnitude(model, sparsity)
    return model


def test_an_unchanged_deployment_reuses_the_measured_speed(tiny, tmp_path: Path, monkeypatch) -> None:
    dense, probe = tiny
    cache_path = tmp_path / "speed.json"
    first = deploy_variant(_variant(dense, 0.9), None, _ctx(tmp_path, dense, probe, SpeedCache(cache_path)))
    assert first.record.speed is not None and first.record.speed.cached is False and first.record.speed.rounds == 3

    def no_timing(*a: object, **k: object) -> None:
        raise AssertionError("an unchanged deployment was timed again")

    monkeypatch.setattr(pipeline, "measure_speed", no_timing)
    # a new process would read the file: so does a fresh cache object
    again = deploy_variant(_variant(dense, 0.9), None, _ctx(tmp_path, dense, probe, SpeedCache(cache_path)))
    s1, s2 = first.record.speed, again.record.speed
    assert s2.cached is True and "deploy.speed_cache: false measures again" in s2.note
    assert (s2.speedup_b1, s2.speedup_b1_ci, s2.per_round) == (s1.speedup_b1, s1.speedup_b1_ci, s1.per_round)
    assert [m.value for m in again.measurements] == [m.value for m in first.measurements]


def test_a_changed_deployment_or_a_disabled_cache_is_timed(tiny, tmp_path: Path, monkeypatch) -> None:
    dense, probe = tiny
    cache = SpeedCache(tmp_path / "speed.json")
    deploy_variant(_variant(dense, 0.9), None, _ctx(tmp_path, dense, probe, cache))
    timed: list[int] = []
    real = pipeline.measure_speed

    def counting(*a: object, **k: object):
        timed.append(1)
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "measure_speed", counting)
    other = deploy_variant(_variant(dense, 0.8), None, _ctx(tmp_path, dense, probe, cache))  # other weights
    assert timed == [1] and other.record.speed.cached is False
    deploy_variant(_variant(dense, 0.9), None, _ctx(tmp_path, dense, probe, None))  # cache off
    assert timed == [1, 1]
    assert DeployContext.create(DeployConfig(speed_cache=False), probe, dense).speed_cache is None
    assert DeployContext.create(DeployConfig(), probe, dense).speed_cache is not None


def test_the_fingerprint_sees_every_weight(tiny) -> None:
    dense, _ = tiny
    model = copy.deepcopy(dense)
    before = weights_fingerprint(model)
    assert weights_fingerprint(copy.deepcopy(dense)) == before
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "classifier" in n).view(-1)[0] += 1e-6
    assert weights_fingerprint(model) != before
