"""Deployment of a pruned causal LM: decoder Linear layers sparse, the LM head dense, equivalence on
next-token logits and on greedy continuations, prefill and decode speed with CIs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_helpers import TEXTS, tiny_llama, tiny_tokenizer
from pruning_helpers import ctx, pruner

from audit.config import DeployConfig
from audit.data import EvalSet
from audit.deploy.convert import Converter
from audit.deploy.lm import prompts_of, reference_generation
from audit.deploy.modules import DeployedLinear
from audit.deploy.pipeline import DeployContext, deploy_variant
from audit.deploy.spec import measurements_of
from audit.deploy.speed_cache import SpeedCache  # noqa: F401 - the cache is off here (speed_cache=None)
from audit.models import adapter_of
from audit.models.decoders import prunable_linears


@pytest.fixture(scope="module")
def lm() -> tuple:
    tok = tiny_tokenizer()
    model = tiny_llama(tok)
    adapter = adapter_of(model)
    predictor = adapter.predictor(tok, max_length=32, batch_size=4)
    es = EvalSet(name="probe", texts=list(TEXTS), labels=np.full(len(TEXTS), -1))
    return tok, model, adapter, predictor, es


def _context(tmp_path: Path, lm: tuple, dense: torch.nn.Module, *, measure_speed: bool = True) -> DeployContext:
    from audit.deploy.choose import TimingCache

    tok, _, adapter, predictor, es = lm
    cfg = DeployConfig(choose_tokens=[16], timing_min_s=0.001, max_block_density=1.0, force_format="csr")
    return DeployContext(
        converter=Converter(cfg, TimingCache(tmp_path / "t.json")),  # type: ignore[arg-type]
        probe=adapter.probe_batches(es, predictor, 8),
        dense=dense,
        measure_speed=measure_speed,
        speed_min_time=0.001,
        speed_rounds=3,
        speed_seq_len=32,
        adapter=adapter,
        tokenizer=tok,
        prompts=prompts_of(es.texts),
    )


def _pruned(model: torch.nn.Module) -> torch.nn.Module:
    variant = copy.deepcopy(model)
    p = pruner("magnitude")
    c = ctx(0.5)
    p.validate(variant, c)
    p.prune(variant, c)
    return variant


def test_probe_outputs_are_next_token_logits_of_every_real_token(lm) -> None:
    tok, model, adapter, predictor, es = lm
    batches = adapter.probe_batches(es, predictor, 5)
    out = adapter.probe_outputs(model, batches)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    assert out.dtype == np.float64 and out.shape == (tokens, len(tok))
    first = batches[0]
    with torch.no_grad():
        row0 = model(input_ids=first["input_ids"][:1, :1]).logits[0, 0].double().numpy()
    assert np.allclose(out[0], row0, atol=1e-5)  # a causal model: row 0 needs only token 0


def test_a_deployed_llama_is_equivalent_on_logits_and_generation_and_timed(lm, tmp_path: Path) -> None:
    _, model, _, _, _ = lm
    variant = _pruned(model)
    block_linears = {n for n, _ in prunable_linears(variant)}
    out = deploy_variant(variant, None, _context(tmp_path, lm, model))
    rec = out.record
    assert out.passed and rec.equivalence.passed and rec.generation.passed
    assert rec.generation.prompts == 5 and rec.generation.token_agreement == 1.0
    sparse = {n for n, m in variant.named_modules() if isinstance(m, DeployedLinear)}
    assert sparse == block_linears and len(sparse) == 14  # 2 blocks x 7 Linear layers
    assert isinstance(variant.lm_head, torch.nn.Linear) and not isinstance(variant.lm_head, DeployedLinear)
    sp = rec.speed
    assert sp.identical is False and sp.batch_size == 1 and sp.seq_len == 32
    assert sp.speedup_b1 > 0 and sp.speedup_b1_ci is not None and len(sp.speedup_b1_ci) == 2
    assert sp.decode_speedup > 0 and sp.decode_speedup_ci is not None and sp.decode_tps_deployed > 0
    assert sp.decode_new_tokens == 48 and sp.decode_prompt_tokens == 16  # capped by 64 positions
    assert len(sp.per_round["decode_speedup"]) == 3
    names = {(m.dataset, m.metric) for m in measurements_of(rec)}
    assert {("seq32", "prefill_speedup"), ("decode48", "decode_speedup"), ("decode48", "decode_tokens_per_s"),
            ("prompts", "generation_agreement")} <= names  # fmt: skip


def test_an_identical_deployment_is_one_untimed(lm, tmp_path: Path) -> None:
    _, model, _, _, _ = lm
    same = copy.deepcopy(model)  # no zeros: every layer stays dense
    out = deploy_variant(same, None, _context(tmp_path, lm, model))
    sp = out.record.speed
    assert sp.identical and sp.speedup_b1 == 1.0 and sp.decode_speedup == 1.0 and sp.decode_speedup_ci == [1.0, 1.0]
    assert sp.rounds == 0 and sp.decode_tps_deployed is None


def test_a_corrupted_deployment_fails_on_logits_and_on_generation(lm, tmp_path: Path) -> None:
    tok, model, _, _, _ = lm
    variant = _pruned(model)
    context = _context(tmp_path, lm, model)
    convert = context.converter.convert

    def corrupt(m, keep_dense=()):
        conv = convert(m, keep_dense=keep_dense)
        with torch.no_grad():  # each next-token distribution shifted by one: argmax moves, always
            m.lm_head.weight.copy_(m.lm_head.weight.roll(1, dims=0))
        return conv

    context.converter.convert = corrupt  # type: ignore[method-assign]
    ref = reference_generation(variant, tok, context.prompts)
    assert all(float(mg[0]) > 1e-3 for mg in ref.margins)  # no first step is a near-tie
    out = deploy_variant(variant, None, context)
    rec = out.record
    assert not out.passed and not rec.equivalence.passed
    assert not rec.generation.passed and rec.generation.diverged_beyond_tie == rec.generation.prompts == 5
    assert rec.speed is None and "failed its equivalence check" in rec.notes[-1]
