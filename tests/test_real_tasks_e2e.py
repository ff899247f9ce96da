"""The real task families end to end on CPU: a tiny model warmed up on their format trains 3 steps on each and
writes finite metrics for the task's objectives; sandbox failures are rewards of 0, not a stopped run; a LoRA run
changes only the adapters."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from mo_rl.config import compose
from mo_rl.models.embedded import RECIPE, build_tiny, build_tokenizer, cache_root
from mo_rl.tasks.base import make_task
from mo_rl.train.loop import run_train, setup, train_step

TASKS = ["math", "code", "toolcall"]
# A token warm-up (the tests check plumbing, not skill): toolcall prompts run to ~700 characters, so each step costs
# ~1 s of CPU; ~8 s on a cold cache, then reused between sessions from MO_RL_CACHE
WARMUP = {"recipe": {**RECIPE, "warmup_batch": 4}, "steps": 8}
FAST = ["trainer.batch_prompts=2", "trainer.group_size=2", "rollout.max_new_tokens=8", "trainer.samples_per_step=2",
        "trainer.device=cpu", "run_name=r"]


@pytest.fixture(scope="session")
def real_model_path():
    key = hashlib.sha256(json.dumps([WARMUP, TASKS], sort_keys=True).encode()).hexdigest()[:12]
    path = cache_root() / "models" / f"test-real-{key}"
    if not (path / "config.json").is_file():
        build_tiny(path, TASKS, WARMUP["steps"], WARMUP["recipe"])
    return path


def _rows(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


def test_char_tokenizer_covers_the_real_tasks():
    import random

    tok = build_tokenizer()
    for name in TASKS:
        rng = random.Random(0)
        for _ in range(20):
            prompt, completion = make_task(name).warmup(rng)
            ids = tok(prompt + completion, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids, (name, prompt + completion)


@pytest.mark.parametrize("task", TASKS)
def test_real_task_trains_three_steps(tmp_path, real_model_path, task):
    path = run_train(compose([f"task={task}", f"model.path={real_model_path}", "trainer.steps=3",
                              f"output_dir={tmp_path}", *FAST]))
    rows = _rows(path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    objectives = make_task(task).objectives
    for r in rows:
        for o in objectives:
            v = r[f"reward/{o}/mean"]
            assert math.isfinite(v) and 0.0 <= v <= 1.0, (o, v)
        assert math.isfinite(r["loss/total"]) and math.isfinite(r["reward/weighted/mean"])
        assert 0.0 <= r["success/rate"] <= 1.0  # logged even when code's success objective is not an objective
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["objectives"] == objectives


def test_sandbox_failures_do_not_stop_a_code_run(tmp_path, real_model_path, monkeypatch):
    """Every sandboxed run times out (a deadline no interpreter can meet): the run still completes, with code
    rewards of 0, and the sandbox's failure counter saw the timeouts."""
    import mo_rl.rewards.real as real

    monkeypatch.setattr(real, "CODE_TIMEOUT_S", 0.001)
    monkeypatch.setattr(real, "_CACHE", type(real._CACHE)())  # no results cached from the other code run
    real.sandbox_failures(reset=True)
    path = run_train(compose(["task=code", f"model.path={real_model_path}", "trainer.steps=2",
                              f"output_dir={tmp_path}", *FAST]))
    rows = _rows(path)
    assert len(rows) == 2 and json.loads((path / "summary.json").read_text())["status"] == "completed"
    tests = [o for o in make_task("code").objectives if o.startswith("code_test_")]
    assert all(r[f"reward/{o}/mean"] == 0.0 for r in rows for o in tests)
    assert sum(real.sandbox_failures().values()) >= 8  # 2 steps x 2 prompts x 2 rollouts, each stopped


def test_lora_run_changes_only_adapters(tmp_path, tiny_model_path):
    """On the synthetic aligned task, where the tiny model's groups differ in reward (the real tasks' rewards are
    all 0 for an untrained model, so their advantages and gradients are 0); with the KL term on, whose reference
    is the same model with its adapters off."""
    pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[lora]'")
    from mo_rl.models import load_policy

    base, _ = load_policy(str(tiny_model_path))
    cfg = compose(["task=aligned", f"model.path={tiny_model_path}", "model.lora_r=4", "trainer.lr=0.05",
                   "trainer.kl_coef=0.1", f"output_dir={tmp_path}", *FAST, "trainer.group_size=4"])
    run = setup(cfg)
    for step in range(2):
        row, _ = train_step(run, step)
        assert math.isfinite(row["loss/total"])
    params = dict(run.policy.module.named_parameters())
    lora_b = [p for n, p in params.items() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: non-zero means it trained
    for name, p in base.named_parameters():
        peft_name = "base_model.model." + name.replace(".weight", ".base_layer.weight") \
            if f"base_model.model.{name}" not in params else f"base_model.model.{name}"
        torch.testing.assert_close(params[peft_name], p, atol=0, rtol=0, msg=name)


def test_lora_run_final_checkpoint_is_a_merged_from_pretrained_dir(tmp_path, tiny_model_path):
    """The final checkpoint of a LoRA run loads with plain from_pretrained and differs from the base model."""
    pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[lora]'")
    from mo_rl.models import load_policy
    from mo_rl.train.loop import run_train

    path = run_train(compose(["task=aligned", f"model.path={tiny_model_path}", "model.lora_r=4", "trainer.lr=0.05",
                              f"output_dir={tmp_path}", *FAST, "trainer.group_size=4", "trainer.steps=2"]))
    final = path / "checkpoints" / "final"
    assert (final / "config.json").is_file() and not (final / "adapter_config.json").exists()
    merged, _ = load_policy(str(final))
    base, _ = load_policy(str(tiny_model_path))
    diffs = [float((a - b).abs().max()) for a, b in zip(merged.parameters(), base.parameters())]
    assert max(diffs) > 0 and not any("lora" in n for n, _ in merged.named_parameters())
