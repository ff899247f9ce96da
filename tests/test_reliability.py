"""Reliability: failing reward functions are recorded (errors.json) or stop the run cleanly (fail_fast); bad input
is one line with exit 2; micro-batch accumulation equals the full batch; the loss stays finite on degenerate input."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mo_rl.models.policy import Policy, Reference
from mo_rl.cli import app
from mo_rl.config import LOSS_AGGS
from mo_rl.rollout import SamplingParams
from mo_rl.rollout.hf import HFEngine
from mo_rl.train.loop import run_train
from mo_rl.train.loss import backward_loss, policy_loss
from tests.conftest import compose_run

SMALL = ["trainer.batch_prompts=2", "trainer.group_size=4", "trainer.device=cpu"]


def flaky(prompts, completions, step, **_):
    """A reward function that raises on every completion of even length (from step 1 on)."""
    for c in completions:
        if step >= 1 and len(c) % 2 == 0:
            raise ValueError(f"even length {len(c)}")
    return [float(len(c)) for c in completions]


FLAKY = "objectives.names=[match,tests.test_reliability:flaky]"


def _rows(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


def test_failing_reward_is_counted_and_its_first_message_kept(tmp_path, tiny_model_path):
    path = run_train(compose_run(tmp_path, FLAKY, "trainer.steps=3", *SMALL))
    rows = _rows(path)
    assert json.loads((path / "summary.json").read_text())["status"] == "completed"
    counts = [r.get("reward_fail/tests.test_reliability:flaky", 0) for r in rows]
    assert counts[0] == 0 and sum(counts) > 0  # step 0 never fails; later steps do
    assert all(r["loss/total"] is not None and abs(r["loss/total"]) < 1e3 for r in rows)  # null would be NaN
    errors = json.loads((path / "errors.json").read_text())
    entry = errors["tests.test_reliability:flaky"]
    assert entry["first_error"].startswith("ValueError: even length ") and entry["count"] == sum(counts)
    assert entry["first_step"] == next(i for i, c in enumerate(counts) if c)


def test_fail_fast_stops_with_one_line_and_keeps_what_was_done(tmp_path, tiny_model_path):
    out = subprocess.run([sys.executable, "-m", "mo_rl", "train", FLAKY, "trainer.fail_fast=true",
                          "trainer.steps=5", *SMALL, f"output_dir={tmp_path}", "run_name=ff"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert lines == [lines[0]] and lines[0].startswith(
        "error: objective 'tests.test_reliability:flaky' failed: ValueError: even length")
    path = tmp_path / "default" / "ff"
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps_done"] >= 1
    assert [r["step"] for r in _rows(path)] == list(range(summary["steps_done"]))
    entry = json.loads((path / "errors.json").read_text())["tests.test_reliability:flaky"]
    assert entry["first_step"] == summary["steps_done"] and entry["count"] == 1


@pytest.mark.parametrize("args, expected", [
    (["task=math", "+task.options.foo=1"],
     "error: unknown option task.options.foo for task 'math'; allowed: path, max_chars, max_operand"),
    (["trainer.micro_batch_size=3"], "error: trainer.micro_batch_size=3 must divide trainer.batch_prompts * "
                                     "trainer.group_size = 8 * 8 = 64 (or be 0: sized by trainer.micro_batch_tokens)"),
    (["trainer.resume=maybe"], "error: unknown trainer.resume 'maybe'; allowed: auto, never"),
    (["trainer.micro_batch_tokens=-1"], "error: trainer.micro_batch_tokens=-1 must be >= 0 (0 = no token limit)"),
    (["model.impl=fast"], "error: unknown model.impl 'fast'; allowed: auto, lean, hf"),
    (["model.path=/nonexistent/model"], "error: model.path='/nonexistent/model' is not a directory"),
])
def test_bad_input_is_one_line_exit_2(args, expected):
    out = CliRunner().invoke(app, ["train", *args])
    assert out.exit_code == 2 and out.stdout == ""
    assert out.stderr.strip() == expected or out.stderr.startswith(expected), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_unwritable_output_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where a directory must go: unwritable even for root
    out = CliRunner().invoke(app, ["train", f"output_dir={blocker}", "run_name=r"])
    assert out.exit_code == 2
    assert out.stderr == (f"error: output directory '{blocker}/default/r' is not writable (Not a directory); "
                          "set output_dir=<a writable directory>\n")


def test_debug_shows_the_traceback():
    out = subprocess.run([sys.executable, "-m", "mo_rl", "--debug", "train", "trainer.micro_batch_size=3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "Traceback" in out.stderr
    assert "MoRLError: trainer.micro_batch_size=3 must divide" in out.stderr


def test_micro_batch_rows_from_a_token_budget():
    from mo_rl.train.loss import micro_batch_rows

    assert micro_batch_rows(64, 19, 8, 4096) == 64  # the tiny bench batch fits one pass
    assert micro_batch_rows(64, 67, 8, 4096) == 32  # 61 rows fit: 32 is the largest whole-group divisor of 64
    assert micro_batch_rows(64, 67, 8, 0) == 64  # 0 = no limit
    assert micro_batch_rows(12, 10, 4, 50) == 4  # 5 rows fit: 4 (a whole group, divides 12)
    assert micro_batch_rows(12, 10, 8, 50) == 4  # no whole-group divisor fits: the largest divisor of N
    assert micro_batch_rows(12, 10, 4, 5) == 1  # not even one row fits: one row per pass


def _grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_micro_batches_give_the_full_batch_loss_and_gradients(tiny_policy, loss_agg):
    """A real batch of 2 prompts x 4 rollouts, off-policy (moved sampling log-probs) and with KL to a reference."""
    model, tok = copy.deepcopy(tiny_policy.module), tiny_policy.tokenizer
    policy = Policy(model, tok)
    batch = HFEngine(policy).generate(["ab>", "c>"], 4, SamplingParams(8, 1.0, 1.0, seed=3))
    g = torch.Generator().manual_seed(0)
    batch.logprobs = batch.logprobs + 0.3 * torch.randn(batch.logprobs.shape, generator=g) * batch.completion_mask
    adv = torch.randn(8, generator=g)
    ref = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():  # a reference that differs from the policy, so the KL term is not zero
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    kw = dict(clip_eps=0.2, kl_coef=0.1, loss_agg=loss_agg, max_tokens=8)
    results = {}
    L = batch.prompt_ids.shape[1] + batch.completion_ids.shape[1]
    # micro-batch sizes given directly, and set by a token budget: 4 rows (a whole group), then 3 -> 2 rows
    for micro, tokens in ((0, 0), (1, 0), (2, 0), (4, 0), ("t4", 4 * L), ("t3", 3 * L)):
        model.zero_grad(set_to_none=True)
        loss, stats = backward_loss(policy, Reference(Policy(ref, tok)), batch, adv, micro_batch_size=0 if isinstance(micro, str) else micro,
                                    micro_batch_tokens=tokens, **kw)
        results[micro] = (loss, stats, _grads(model))
    full_loss, full_stats, full_grads = results[0]
    assert full_stats["loss/clip_frac"] > 0 and full_stats["loss/kl"] > 0  # both terms are exercised
    for micro in (1, 2, 4, "t4", "t3"):
        loss, stats, grads = results[micro]
        # float32 sums in a different order: equal to ~1e-6 relative, not bit for bit
        assert loss == pytest.approx(full_loss, rel=1e-5, abs=1e-7)
        for k in full_stats:
            assert stats[k] == pytest.approx(full_stats[k], rel=1e-5, abs=1e-7), k
        for a, b in zip(grads, full_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@st.composite
def degenerate_batch(draw):
    """Shapes down to empty completions; masks all zero or random; log-prob gaps up to 1e4 nats; zero advantages."""
    n, t = draw(st.integers(1, 4)), draw(st.integers(0, 5))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([0.0, 1.0, 50.0, 1e4]))
    logp = -torch.rand(n, t, generator=g) * scale
    old = -torch.rand(n, t, generator=g) * draw(st.sampled_from([0.0, 1.0, 50.0, 1e4]))
    mask = draw(st.sampled_from(["zero", "ones", "random"]))
    m = {"zero": torch.zeros(n, t), "ones": torch.ones(n, t),
         "random": (torch.rand(n, t, generator=g) > 0.5).float()}[mask]
    adv = torch.zeros(n) if draw(st.booleans()) else torch.randn(n, generator=g) * draw(st.sampled_from([1.0, 1e3]))
    return logp, old, adv, m


@settings(max_examples=150, deadline=None, derandomize=True)
@given(degenerate_batch(), st.sampled_from(LOSS_AGGS), st.booleans())
def test_loss_and_grads_stay_finite_on_degenerate_batches(data, loss_agg, with_kl):
    logp, old, adv, mask = data
    logp = logp.clone().requires_grad_(True)
    ref = old.flip(0) if with_kl else None
    loss, stats = policy_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=0.1 if with_kl else 0.0,
                              loss_agg=loss_agg, max_tokens=5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert all(v == v and abs(v) != float("inf") for v in stats.values()), stats
    if not mask.any() or not adv.any() and not with_kl:
        assert loss.item() == 0.0  # nothing to learn from: exactly zero, not NaN
