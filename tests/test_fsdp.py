"""Sharded training (``trainer.strategy=fsdp``, ``mo_rl/train/fsdp.py``): 2 gloo processes under FSDP2 train like 1
process on the same global batch, and a checkpoint the 2 ranks wrote resumes on 1.

The comparison is the one ``test_distributed.py`` makes for ddp (same tolerance, same reasons: rewards and
advantages equal exactly, losses to float rounding). Under fsdp the update's forward is transformers' (the lean
forward reads whole weights) while the one-process run uses the lean one; both equal to float rounding
(tests/test_lean.py), so the tolerance is unchanged.
"""

from __future__ import annotations

import json

import pytest
import torch

from mo_rl.errors import MoRLError
from mo_rl.models import load_policy
from mo_rl.train.loop import run_train
from tests.conftest import compose_run
from tests.test_distributed import _assert_same_steps, _rows, gloo_done, gloo_rank

BASE = ["trainer.batch_prompts=4", "trainer.group_size=4", "trainer.seed=3", "trainer.checkpoint_every=1"]
# a batch-level std (gdpo), micro-batches by tokens (equal counts on both ranks), a sharded KL reference
RUN = ["method=gdpo", "trainer.kl_coef=0.05", "trainer.micro_batch_tokens=64", *BASE]
LORA = ["method=dvao", "model.lora_r=4", "trainer.lr=0.05", *BASE]


def _worker(rank: int, rendezvous: str, root: str, overrides: list[str]) -> None:
    gloo_rank(rank, rendezvous)
    run_train(compose_run(root, *overrides))
    gloo_done()


def _two_ranks(root, overrides: list[str]) -> None:
    torch.multiprocessing.spawn(_worker, args=(f"{root}.rdzv", str(root), overrides), nprocs=2)


def test_two_fsdp_ranks_match_one_process_and_resume_on_one(tmp_path, tiny_model_path):
    """2 ranks, 2 steps sharded == 1 process (ddp, the default) step by step; then the 2-rank run's step-2 DCP
    checkpoint continues on 1 process to step 3 and equals an uninterrupted 3-step run."""
    single = _rows(run_train(compose_run(tmp_path / "single", "trainer.steps=3", *RUN)))
    _two_ranks(tmp_path / "multi", ["trainer.steps=2", "trainer.strategy=fsdp", *RUN])
    path = tmp_path / "multi" / "default" / "r"
    worst = _assert_same_steps(single[:2], _rows(path))
    print(f"max relative difference (fsdp 2 ranks vs 1 process, gdpo, KL, micro-batches): {worst:.2e}")
    step2 = path / "checkpoints" / "step-2"
    assert json.loads((step2 / "meta.json").read_text())["world"] == 2
    assert (step2 / "dcp" / ".metadata").is_file() and len(list((step2 / "dcp").glob("*.distcp"))) == 2
    # the final checkpoint is a plain from_pretrained directory holding the 2-step policy
    final, _ = load_policy(str(path / "checkpoints" / "final"))
    assert final.lm_head.weight.data_ptr() == final.model.embed_tokens.weight.data_ptr()  # still tied
    resumed = _rows(run_train(compose_run(tmp_path / "multi", "trainer.steps=3", "trainer.strategy=fsdp", *RUN)))
    _assert_same_steps(single, resumed)
    assert json.loads((path / "summary.json").read_text())["status"] == "completed"


def test_lora_under_fsdp_trains_adapters_of_a_frozen_sharded_base(tmp_path, tiny_model_path):
    """LoRA: 2 sharded ranks == 1 process, and the merged final policy differs from the base (adapters learned)."""
    pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[lora]'")
    single = _rows(run_train(compose_run(tmp_path / "single", "trainer.steps=2", *LORA)))
    _two_ranks(tmp_path / "multi", ["trainer.steps=2", "trainer.strategy=fsdp", *LORA])
    path = tmp_path / "multi" / "default" / "r"
    _assert_same_steps(single, _rows(path))
    base, _ = load_policy("embedded:tiny")
    merged, _ = load_policy(str(path / "checkpoints" / "final"))
    one, _ = load_policy(str(tmp_path / "single" / "default" / "r" / "checkpoints" / "final"))
    q = "model.layers.0.self_attn.q_proj.weight"
    w, w1, w0 = (dict(m.named_parameters())[q] for m in (merged, one, base))
    assert not torch.equal(w, w0)
    torch.testing.assert_close(w, w1, rtol=1e-5, atol=1e-6)


def test_strategy_names_and_lean_are_checked(tmp_path):
    from mo_rl.config import validate

    with pytest.raises(MoRLError, match=r"trainer.strategy.*'zero3'.*ddp, fsdp"):
        validate(compose_run(tmp_path, "trainer.strategy=zero3"))
    with pytest.raises(MoRLError, match=r"model.impl=lean cannot train under trainer.strategy=fsdp"):
        validate(compose_run(tmp_path, "trainer.strategy=fsdp", "model.impl=lean"))


def test_ddp_checkpoint_does_not_resume_as_fsdp(tmp_path, tiny_model_path):
    run_train(compose_run(tmp_path, "trainer.steps=1", *BASE))
    path = tmp_path / "default" / "r"
    cfg = (path / "config.yaml").read_text().replace("strategy: ddp", "strategy: fsdp")
    (path / "config.yaml").write_text(cfg)
    with pytest.raises(MoRLError, match=r"not written with trainer.strategy=fsdp"):
        run_train(compose_run(tmp_path, "trainer.steps=2", "trainer.strategy=fsdp", *BASE))


def _lean_worker(rank: int, rendezvous: str) -> None:
    from mo_rl.train import distributed as dp
    from mo_rl.train import fsdp

    gloo_rank(rank, rendezvous)
    policy = load_policy("embedded:tiny")
    model = policy.module
    fsdp.prepare(dp.Dist(rank, 2), policy, None, torch.device("cpu"))
    assert policy.lean_now() is None  # shards: transformers' forward, whose hooks gather each layer
    with fsdp.full_weights(model):
        assert policy.lean_now() is not None  # gathered for sampling: plain tensors, the lean forward
        assert type(model.model.layers[0].self_attn.q_proj.weight).__name__ == "Parameter"
    assert type(model.model.layers[0].self_attn.q_proj.weight).__name__ == "DTensor"
    gloo_done()


def test_lean_forward_runs_only_on_gathered_weights(tmp_path, tiny_model_path):
    torch.multiprocessing.spawn(_lean_worker, args=(str(tmp_path / "rdzv"),), nprocs=2)
