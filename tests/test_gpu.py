"""GPU checks, skipped without CUDA: the HF engine on CUDA, a short training run, bf16 loading, and the vLLM engine
(skipped without vllm) with its in-place weight sync. Self-contained: models are built offline under tmp dirs.

Run on a GPU machine with ``python -m pytest tests/test_gpu.py -m gpu -p no:cacheprovider``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from mo_rl.models.policy import Policy
from mo_rl.config import ModelConfig, compose
from mo_rl.models import load_policy
from mo_rl.rollout import SamplingParams, make_engine
from mo_rl.train.loss import completion_logprobs
from mo_rl.train.loop import run_train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
PROMPTS = ["a>", "xyz=", "q>"]


def _train_logprobs(model, batch, temperature, impl="auto"):
    with torch.no_grad():
        return completion_logprobs(Policy(model, impl=impl), batch, temperature)


def test_hf_engine_on_cuda_matches_the_training_forward(tiny_model_path):
    model, tok = load_policy(str(tiny_model_path), device="cuda")
    b = make_engine("hf", Policy(model, tok)).generate(PROMPTS, 4, SamplingParams(max_new_tokens=10, temperature=0.9, seed=3))
    assert b.completion_ids.is_cuda and b.completion_ids.shape[0] == 12
    assert (b.logprobs[b.completion_mask == 1] < 0).all() and (b.logprobs[b.completion_mask == 0] == 0).all()
    torch.testing.assert_close(_train_logprobs(model, b, 0.9), b.logprobs, atol=1e-3, rtol=0)


def test_bf16_loading_on_cuda(tiny_model_path):
    model, tok = load_policy(str(tiny_model_path), "bfloat16", "cuda")
    assert next(model.parameters()).dtype == torch.bfloat16
    b = make_engine("hf", Policy(model, tok)).generate(PROMPTS, 2, SamplingParams(max_new_tokens=8, seed=1))
    lp = _train_logprobs(model, b, 1.0)
    m = b.completion_mask == 1
    assert torch.isfinite(lp).all() and (lp[m] - b.logprobs[m]).abs().mean() < 0.05  # bf16 rounding only


def test_three_step_run_on_cuda(tmp_path, tiny_model_path):
    path = run_train(compose([f"output_dir={tmp_path}", "run_name=r", "trainer.device=cuda", "trainer.steps=3",
                              "trainer.batch_prompts=4", "trainer.group_size=4"]))
    rows = [json.loads(line) for line in open(path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(math.isfinite(r["loss/total"]) and math.isfinite(r["reward/weighted/mean"]) for r in rows)
    assert json.loads((path / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lean_forward_on_cuda_matches_transformers(tiny_model_path, dtype):
    """The lean forward (model.impl=auto) against transformers' on CUDA: log-probs and sampled tokens."""
    model, tok = load_policy(str(tiny_model_path), dtype, "cuda")
    b = make_engine("hf", Policy(model, tok)).generate(PROMPTS, 4, SamplingParams(max_new_tokens=10, seed=5))
    lean_lp = _train_logprobs(model, b, 1.0)
    hf_lp = _train_logprobs(model, b, 1.0, impl="hf")
    m = b.completion_mask == 1
    tol = 1e-4 if dtype == "float32" else 0.05
    assert (lean_lp[m] - hf_lp[m]).abs().max() < tol
    b_hf = make_engine("hf", Policy(model, tok, impl="hf")).generate(PROMPTS, 4, SamplingParams(max_new_tokens=10, seed=5))
    if dtype == "float32":
        assert torch.equal(b.completion_ids, b_hf.completion_ids)


# ------------------------------------------------------------------------------------------------------- vllm

@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory):
    """A tiny Llama with head size 64 (vLLM's attention kernels do not all take the embedded model's 16)."""
    pytest.importorskip("vllm")
    from mo_rl.models.embedded import RECIPE, build_tiny

    return build_tiny(tmp_path_factory.mktemp("vllm") / "tiny64", ["aligned"], 30,
                      {**RECIPE, "hidden": 128, "heads": 2, "warmup_batch": 16})


@pytest.fixture(scope="module")
def vllm_engine(vllm_model_dir):
    model, tok = load_policy(ModelConfig(path=str(vllm_model_dir), dtype="bfloat16"), device="cuda")
    engine = make_engine("vllm", Policy(model, tok), gpu_memory_utilization=0.2, enforce_eager=True, max_model_len=256)
    yield model, tok, engine
    del engine
    try:  # let a later vLLM engine in this process start clean (present in recent vLLM versions)
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except ImportError:
        pass


def _close(model, batch, temperature):
    m = batch.completion_mask == 1
    return (_train_logprobs(model, batch, temperature)[m] - batch.logprobs[m]).abs().mean()


def test_vllm_generate_order_and_logprobs(vllm_engine):
    model, tok, engine = vllm_engine
    b = engine.generate(PROMPTS, 4, SamplingParams(max_new_tokens=10, temperature=0.9, seed=3))
    assert b.completion_ids.shape[0] == 12 and len(b.texts) == 12 and b.n == 4 and b.completion_ids.is_cuda
    assert all(tok.decode(b.prompt_ids[i], skip_special_tokens=True) == "xyz=" for i in range(4, 8))
    assert (b.logprobs[b.completion_mask == 0] == 0).all() and (b.logprobs[b.completion_mask == 1] < 0).all()
    assert _close(model, b, 0.9) < 0.05  # same distribution, bf16 kernels apart
    again = engine.generate(PROMPTS, 4, SamplingParams(max_new_tokens=10, temperature=0.9, seed=3))
    assert again.texts == b.texts  # seeded


def test_vllm_sync_weights_in_place(vllm_engine):
    model, tok, engine = vllm_engine
    assert engine.in_place, "in-place load path not found: the slow rebuild fallback would run"
    params = SamplingParams(max_new_tokens=10, seed=5)
    before = engine.generate(PROMPTS, 4, params)
    with torch.no_grad():  # a large update, so stale weights could not pass for fresh ones
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    engine.sync_weights(engine.policy)
    after = engine.generate(PROMPTS, 4, params)
    assert _close(model, after, 1.0) < 0.05
    assert after.texts != before.texts


def test_vllm_run_train_two_steps(tmp_path, vllm_model_dir):
    path = run_train(compose([f"output_dir={tmp_path}", "run_name=r", "trainer.device=cuda", "trainer.steps=2",
                              f"model.path={vllm_model_dir}", "model.dtype=bfloat16", "rollout=vllm",
                              "rollout.gpu_memory_utilization=0.2", "trainer.batch_prompts=4", "trainer.group_size=4"]))
    rows = [json.loads(line) for line in open(path / "metrics.jsonl")]
    assert len(rows) == 2 and all(math.isfinite(r["loss/total"]) for r in rows)
    # ratio ~1 on the first epoch: vLLM's sampling log-probs agree with the trainer's forward
    assert abs(rows[0]["loss/ratio_mean"] - 1.0) < 0.05
