"""Directive feedback (mo_rl/directive): the hints, their containment, the teacher's log-probs, the two losses,
the metrics, and that directive.coef=0 (or no hint at all) leaves training unchanged."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
import torch

from mo_rl.config import compose, validate
from mo_rl.directive import builtin
from mo_rl.directive.feedback import collect
from mo_rl.train.teacher import Guide, HINT_HEADER, score_hinted, teacher_prompt
from mo_rl.errors import MoRLError
from mo_rl.train.loop import run_train
from mo_rl.train.loss import forward_ce, policy_loss
from tests.conftest import compose_run

TINY_RUN = ("trainer.steps=2", "trainer.batch_prompts=2", "trainer.group_size=2", "trainer.checkpoint_every=0")


def no_hint(prompts, completions, **_):
    """A feedback function with nothing to say."""
    return [None] * len(completions)


def _rows(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


def _same_training(a, b):
    """The numbers a run trained on and logged, step by step (timings differ run to run)."""
    keep = [k for k in a[0] if k.startswith(("loss/", "reward/", "adv/", "completion/"))]
    assert keep and [[r[k] for k in keep] for r in a] == [[r[k] for k in keep] for r in b]


# ------------------------------------------------------------------------------------------------ feedback

def test_builtin_hints_name_the_right_answer_and_stay_silent_when_it_is_given():
    assert builtin.math_answer(["q"] * 3, ["<answer>14</answer>", "<answer>13</answer>", "14"], ["14"] * 3) == [
        None, "The correct final answer is <answer>14</answer>.", "The correct final answer is <answer>14</answer>."]
    args = json.dumps({"city": "Paris"})
    right = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    wrong = '{"name": "get_weather", "arguments": {"city": "string"}}'
    assert builtin.tool_call(["q"] * 2, [right, wrong], ["get_weather"] * 2, [args] * 2) == [
        None, 'The correct reply is {"name": "get_weather", "arguments": {"city": "Paris"}}.']
    tests = ["assert double(1) == 2", "assert double(3) == 6"]
    code = ["```python\ndef double(x):\n    return x * 2\n```", "```python\ndef double(x):\n    return x + 1\n```"]
    assert builtin.code_failing_test(["q"] * 2, code, [tests] * 2) == [None, "This test fails: assert double(3) == 6"]
    brief_ok = "It is Paris."  # 3 words, on topic: persona_brief 1
    long_off = " ".join(["Cities have many people living in them."] * 2)  # 14 words, off topic: both 0, index 1
    hints = builtin.persona_wants(["q"] * 2, [brief_ok, long_off], keywords=[["paris"]] * 2, short_words=[12] * 2,
                                  long_words=[30] * 2, index=[0, 1])
    assert hints == [None, "This user wants an explained answer of at least 30 words that stays on topic and names "
                           "'paris'."]


def _raises(prompts, completions, **_):
    raise RuntimeError("boom")


def _short(prompts, completions, **_):
    return ["x"]


def _numbers(prompts, completions, **_):
    return [1.0, "use 2"]


def _sleeps(prompts, completions, **_):
    time.sleep(2)
    return ["late"] * len(completions)


def _fixed(prompts, completions, **_):
    return ["first", None]


def test_failing_feedback_gives_no_hint_and_is_counted():
    got = collect([("raises", _raises), ("short", _short), ("numbers", _numbers), ("fixed", _fixed)],
                  ["p", "p"], ["a", "b"], {}, step=0)
    assert got.text == ["first", "use 2"]
    assert got.failures == {"raises": 2, "short": 2, "numbers": 1}
    assert got.given == {"raises": 0, "short": 0, "numbers": 1, "fixed": 1}
    assert got.first_error["raises"] == "RuntimeError: boom" and "2 completions" in got.first_error["short"]
    t0 = time.perf_counter()
    late = collect([("sleeps", _sleeps)], ["p"], ["a"], {}, step=0, timeout_s=0.2)
    assert late.text == [None] and late.failures == {"sleeps": 1} and time.perf_counter() - t0 < 1.5


def test_hints_of_several_functions_are_joined_in_order():
    got = collect([("fixed", _fixed), ("numbers", _numbers)], ["p", "p"], ["a", "b"], {}, step=0)
    assert got.text == ["first", "use 2"]
    got = collect([("fixed", _fixed), ("fixed2", _fixed)], ["p", "p"], ["a", "b"], {}, step=0)
    assert got.text == ["first\nfirst", None]


def test_teacher_prompt_places_the_hint_in_the_user_turn_or_before_a_raw_prompt():
    assert teacher_prompt("Q?", "h", True) == f"Q?\n\n{HINT_HEADER} h"
    assert teacher_prompt("Q?", "h", False) == f"{HINT_HEADER} h\n\nQ?"


# ------------------------------------------------------------------------------------------------- teacher

def test_teacher_logprobs_equal_a_plain_forward_of_prompt_hint_and_completion(tiny_policy):
    """Two rows of different prompt lengths (left padding) and completion lengths (right padding), at temperature
    0.7: the teacher's log-probs equal transformers' plain forward of each row alone, to 1e-5 (float32)."""
    policy = tiny_policy
    tok = policy.tokenizer
    prompts, hints = ["abc", "a much longer prompt here"], ["the answer is x", "y"]
    comps = ["xyz!", "q"]
    T = max(len(tok(c, add_special_tokens=False)["input_ids"]) for c in comps)
    ids = torch.full((2, T), tok.pad_token_id)
    mask = torch.zeros(2, T)
    for i, c in enumerate(comps):
        cid = tok(c, add_special_tokens=False)["input_ids"]
        ids[i, :len(cid)] = torch.tensor(cid)
        mask[i, :len(cid)] = 1
    lp, top, p = score_hinted(policy, None, prompts, hints, ids, mask, temperature=0.7, top_k=3)
    for i in range(2):
        n = int(mask[i].sum())
        full = tok(teacher_prompt(prompts[i], hints[i], False), return_tensors="pt")["input_ids"]
        x = torch.cat([full, ids[i:i + 1, :n]], 1)
        with torch.no_grad():
            logits = policy.module(input_ids=x).logits[0, full.shape[1] - 1:-1].float() / 0.7
        want = logits.log_softmax(-1).gather(-1, ids[i, :n, None]).squeeze(-1)
        torch.testing.assert_close(lp[i, :n], want, atol=1e-5, rtol=0)
        assert (lp[i, n:] == 0).all()
        q, j = logits.softmax(-1).topk(3, -1)
        torch.testing.assert_close(top[i, :n], j)
        torch.testing.assert_close(p[i, :n], q / q.sum(-1, keepdim=True), atol=1e-6, rtol=0)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, T), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_a_hint_naming_the_answer_raises_its_tokens_on_smollm2():
    """SmolLM2 reads the hint: the answer's tokens gain log-prob under the hinted prompt (the student's prompt is
    the same without the hint)."""
    from mo_rl.config import ModelConfig
    from mo_rl.models import load_policy
    from mo_rl.rollout.base import RolloutBatch
    from mo_rl.tasks.real import MATH_PROMPT

    policy = load_policy(ModelConfig(path="registry:smollm2", chat_template=True))
    prompt = MATH_PROMPT.format(question="What is 17 * 23 + 9?")
    completion = "<answer>400</answer>"
    cid = policy.tokenizer(completion, add_special_tokens=False, return_tensors="pt")["input_ids"]
    mask = torch.ones(cid.shape, dtype=torch.float32)
    teacher, _, _ = score_hinted(policy, None, [prompt], ["The correct final answer is <answer>400</answer>."],
                                 cid, mask)
    enc = policy.encode([prompt])
    with torch.no_grad():
        student = policy.completion_logprobs(RolloutBatch(enc["input_ids"], enc["attention_mask"], cid, mask,
                                                          torch.zeros_like(mask), [completion], 1))
    answer = [i for i, t in enumerate(cid[0].tolist()) if any(ch.isdigit() for ch in policy.tokenizer.decode([t]))]
    assert answer and float(teacher[0, answer].sum()) > float(student[0, answer].sum()) + 1.0, (teacher, student)


# --------------------------------------------------------------------------------------------------- losses

@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_forward_ce_gradient_on_a_two_token_vocabulary(temperature):
    """logits (0, ln 3), teacher (0.6, 0.4): CE = -(0.6 log p0 + 0.4 log p1), dCE/dz = (p - q) / temperature;
    at temperature 1 p = (0.25, 0.75), so the gradient is (-0.35, 0.35)."""
    z = torch.tensor([[[0.0, math.log(3.0)]]], requires_grad=True)
    ids = torch.tensor([[[0, 1]]])
    q = torch.tensor([[[0.6, 0.4]]])
    ce = forward_ce(z, temperature, ids, q)
    s = torch.tensor([0.0, math.log(3.0)]) / temperature
    p = s.exp() / s.exp().sum()
    assert float(ce.detach()) == pytest.approx(-(0.6 * math.log(p[0]) + 0.4 * math.log(p[1])))
    ce.sum().backward()
    want = (p - q[0, 0]) / temperature
    torch.testing.assert_close(z.grad[0, 0], want, atol=1e-6, rtol=0)
    if temperature == 1.0:
        torch.testing.assert_close(z.grad[0, 0], torch.tensor([-0.35, 0.35]), atol=1e-6, rtol=0)


def test_forward_ce_enters_the_loss_with_its_coefficient():
    """On-policy (ratio 1), advantage 0: the loss is coef * CE, token-mean over both tokens; ``loss/distill`` is
    the token mean of CE before the coefficient."""
    lp = torch.log(torch.tensor([[0.5, 0.25]]))
    mask = torch.ones(1, 2)
    distill = torch.tensor([[1.2, 0.0]])  # the second token unhinted
    loss, stats = policy_loss(lp, lp.clone(), torch.zeros(1), mask, distill=distill, distill_coef=0.5)
    assert float(loss) == pytest.approx(0.5 * 1.2 / 2) and stats["loss/distill"] == pytest.approx(0.6)


def test_token_advantages_are_the_sequence_advantage_plus_the_clipped_gap():
    gap = torch.tensor([[0.5, -3.0, 2.0], [0.4, 0.4, 0.0]])
    g = Guide(torch.tensor([True, False]), torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), gap)
    torch.testing.assert_close(g.token_bonus(2.0, 1.0), torch.tensor([[1.0, -2.0, 0.0], [0.0, 0.0, 0.0]]))
    # through the surrogate on-policy: loss = -mean over tokens of (A_seq + bonus)
    lp = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([0.5, -1.0]).unsqueeze(1) + g.token_bonus(2.0, 1.0)
    loss, _ = policy_loss(lp, lp.clone(), adv, mask)
    assert float(loss) == pytest.approx(-((0.5 + 1.0) + (0.5 - 2.0) + (-1.0)) / 3)
    # a (N, T) advantage constant over tokens is the (N,) one
    flat, _ = policy_loss(lp + 0.1, lp, torch.tensor([0.5, -1.0]), mask)
    wide, _ = policy_loss(lp + 0.1, lp, torch.tensor([[0.5] * 3, [-1.0] * 3]), mask)
    assert float(flat) == float(wide)


# ---------------------------------------------------------------------------------------- end to end, tiny

def test_coef_zero_is_training_without_directive(tmp_path, tiny_model_path):
    """directive.coef=0 with every other directive knob set: the same losses, rewards and advantages, step by step,
    as the default, and no directive metric."""
    a = _rows(run_train(compose_run(tmp_path / "a", "task=math", *TINY_RUN)))
    b = _rows(run_train(compose_run(tmp_path / "b", "task=math", *TINY_RUN, "directive=forward_ce",
                                    "directive.coef=0", "directive.teacher=reference")))
    _same_training(a, b)
    assert not [k for k in b[0] if k.startswith("directive/") or k == "loss/distill"]


@pytest.mark.parametrize("loss", ["token_advantage", "forward_ce"])
def test_feedback_with_no_hint_anywhere_changes_nothing(tmp_path, tiny_model_path, loss):
    a = _rows(run_train(compose_run(tmp_path / "a", *TINY_RUN)))
    b = _rows(run_train(compose_run(tmp_path / "b", *TINY_RUN, f"directive={loss}",
                                    "directive.feedback=[tests.test_directive:no_hint]")))
    _same_training(a, b)
    assert b[0]["directive/hint_rate"] == 0.0 and b[0]["directive/hint_rate/tests.test_directive:no_hint"] == 0.0
    assert b[0]["directive/hinted_tokens"] == 0.0


@pytest.mark.parametrize("loss, teacher", [("token_advantage", "current"), ("forward_ce", "reference")])
def test_directive_trains_and_logs_its_metrics(tmp_path, tiny_model_path, loss, teacher):
    """task=math on the tiny model: it never writes the right answer, so every completion is hinted; the update
    differs from the run without directive and its metrics are in metrics.jsonl."""
    base = _rows(run_train(compose_run(tmp_path / "a", "task=math", *TINY_RUN, "trainer.epochs_per_step=2")))
    rows = _rows(run_train(compose_run(tmp_path / "b", "task=math", *TINY_RUN, "trainer.epochs_per_step=2",
                                       f"directive={loss}", f"directive.teacher={teacher}")))
    r = rows[0]
    assert r["directive/hint_rate"] == 1.0 and r["directive/hint_rate/math_answer"] == 1.0
    assert r["directive/feedback_fail/math_answer"] == 0.0
    assert r["directive/hinted_tokens"] == pytest.approx(base[0]["completion/mean_tokens"] * 4)  # 2 x 2 rollouts
    assert 0.0 <= r["directive/gap_pos"] <= 1.0 and math.isfinite(r["directive/gap_mean"])
    assert math.isfinite(r["directive/gap_first"]) and math.isfinite(r["directive/gap_last"])
    assert r["perf/teacher_s"] > 0 and r["perf/feedback_s"] >= 0
    # step 0 samples the same completions; its rewards match the plain run, its loss does not
    assert r["reward/weighted/mean"] == base[0]["reward/weighted/mean"]
    assert r["loss/total"] != base[0]["loss/total"]
    if loss == "forward_ce":
        assert r["loss/distill"] > 0 and "directive/token_adv_mean" not in r
    else:
        assert abs(r["directive/token_adv_mean"]) <= 1.0 and "loss/distill" not in r
        # the current teacher is the sampling policy: with the hint removed, the gap would be 0 (covered by
        # test_teacher_logprobs...), so a nonzero mean is the hint's doing
        assert r["directive/gap_mean"] != 0.0


def test_gap_metrics_by_position_hand_computed():
    """directive/gap_first and gap_last: the gap on each hinted completion's first and last token (its mask is a
    prefix), averaged over hinted completions; unhinted rows count nowhere. Two hinted rows of 3 and 1 tokens."""
    from types import SimpleNamespace

    from mo_rl.directive.feedback import Hints
    from mo_rl.pipeline.parallel import Dist
    from mo_rl.train.teacher import Director

    gap = torch.tensor([[-2.0, 0.5, -1.0, 0.0], [0.3, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    hm = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    guide = Guide(torch.tensor([True, True, False]), hm, gap)
    cfg = SimpleNamespace(coef=1.0, clip=1.0, loss="token_advantage")
    out = Director(cfg, [("f", None)], None, None)._metrics(
        SimpleNamespace(dist=Dist()), Hints(["h", "h", None], {"f": 2}, {"f": 0}), guide, 0.0, 0.0)
    assert out["directive/gap_first"] == pytest.approx((-2.0 + 0.3) / 2)
    assert out["directive/gap_last"] == pytest.approx((-1.0 + 0.3) / 2)
    assert out["directive/gap_mean"] == pytest.approx((-2.0 + 0.5 - 1.0 + 0.3) / 4)
    assert out["directive/gap_pos"] == pytest.approx(2 / 4)
    assert out["directive/token_adv_mean"] == pytest.approx((-1.0 + 0.5 - 1.0 + 0.3) / 4)  # clipped at 1


# -------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("overrides, expected", [
    (["directive.coef=-1"], "directive.coef=-1.0 must be >= 0 (0 = off)"),
    (["directive.loss=reverse_kl"], "unknown directive.loss 'reverse_kl'; allowed: token_advantage, forward_ce"),
    (["directive.teacher=oracle"], "unknown directive.teacher 'oracle'; allowed: current, reference"),
    (["directive.feedback=[nope]"], "unknown directive.feedback 'nope'; allowed: code_failing_test, math_answer"),
    (["directive.feedback=[tests.test_directive:absent]"],
     "directive.feedback 'tests.test_directive:absent': 'tests.test_directive' has no callable 'absent'"),
    (["directive.clip=0"], "directive.clip=0.0 must be > 0"),
    (["directive.top_k=0"], "directive.top_k=0 must be >= 1"),
    (["directive.coef=1"], "directive.coef=1.0 needs feedback functions and task 'aligned' has none of its own"),
    (["task=math", "directive.coef=1", "trainer.strategy=fsdp"],
     "directive.coef > 0 is not supported under trainer.strategy=fsdp"),
])
def test_bad_directive_settings_are_one_line(overrides, expected):
    with pytest.raises(MoRLError) as e:
        validate(compose(overrides))
    assert str(e.value).startswith(expected) and "\n" not in str(e.value), str(e.value)


def test_bad_directive_input_exits_2_before_anything_is_written(tmp_path):
    for args, expected in ((["directive.coef=-0.5"], "error: directive.coef=-0.5 must be >= 0"),
                           (["directive=opd"], "error: unknown directive 'opd'; allowed: default, forward_ce, "
                                                "token_advantage")):
        out = subprocess.run([sys.executable, "-m", "mo_rl", "train", f"output_dir={tmp_path}", *args],
                             capture_output=True, text=True, timeout=300)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected), out.stderr
    assert not any(tmp_path.iterdir())


def test_tasks_lists_the_feedback_functions():
    from typer.testing import CliRunner

    from mo_rl.cli import app

    out = CliRunner().invoke(app, ["tasks"])
    assert out.exit_code == 0
    for name in ("math_answer", "tool_call", "code_failing_test", "persona_wants", "directive.feedback"):
        assert name in out.output


def test_an_earlier_run_without_the_directive_section_resumes(tmp_path):
    """A run started before the directive section existed: its config lacks directive.*, which at their defaults
    is no difference; a directive setting other than the default still is."""
    from omegaconf import OmegaConf

    from mo_rl.train.run_identity import check_existing

    cfg = OmegaConf.to_container(compose([f"output_dir={tmp_path}", "run_name=r"]))
    old = {k: v for k, v in cfg.items() if k != "directive"}
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(old))
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    assert check_existing(tmp_path, cfg, "auto") is True
    cfg["directive"]["coef"] = 0.5
    with pytest.raises(MoRLError, match=r"directive.coef: None -> 0.5"):
        check_existing(tmp_path, cfg, "auto")


def test_preset_real_directive_is_three_arms_on_two_tasks_with_three_seeds():
    """``mo-rl train -m preset=real_directive``: 18 dvao jobs, a (task, seed) sweep of 3, vpo's of 2 (what
    ``scripts/real_directive.sh`` runs one job at a time); each validates (model=smollm2 composes without loading
    it)."""
    from mo_rl.hydra_app import expand_sweep

    jobs = expand_sweep(["preset=real_directive"])
    assert len(jobs) == 2 * 3 * 3
    lane = expand_sweep(["preset=real_directive", "task=math", "trainer.seed=1"])
    assert len(lane) == 3 and {j for job in lane for j in job if j.startswith("directive=")} == {
        "directive=default", "directive=token_advantage", "directive=forward_ce"}
    vpo = expand_sweep(["preset=real_directive", "task=toolcall", "method=vpo", "directive=default,forward_ce",
                        "trainer.seed=0"])
    assert len(vpo) == 2
    for job in (*lane, *vpo):
        c = validate(compose(job))
        assert c.model.path == "registry:smollm2" and c.trainer.steps == 25 and c.rollout.max_new_tokens == 48
    c = validate(compose(vpo[1]))
    assert c.method["name"] == "vpo" and c.directive.loss == "forward_ce" and c.directive.coef == 1.0


def test_torchrun_directive_matches_one_process(tmp_path, tiny_model_path):
    """DDP: each rank hints and teaches its own rows; the global metrics (hint rates, the teacher-student gap, the
    distillation loss) and the update are one process's, to the tolerance of tests/test_distributed.py."""
    import os

    from tests.test_distributed import _assert_same_steps

    run = ["task=math", "method=gdpo", "trainer.steps=2", "trainer.batch_prompts=4", "trainer.group_size=2",
           "trainer.seed=3", "directive=forward_ce", "trainer.micro_batch_size=4"]
    single = _rows(run_train(compose_run(tmp_path / "single", *run)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mo_rl", "train", f"output_dir={tmp_path / 'multi'}", "run_name=r", *run]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    multi = _rows(tmp_path / "multi" / "default" / "r")
    _assert_same_steps(single, multi)
    assert multi[0]["directive/hint_rate"] == 1.0 and multi[0]["loss/distill"] > 0


def test_a_failing_feedback_function_is_counted_and_warned_once(tmp_path, tiny_model_path, capsys):
    rows = _rows(run_train(compose_run(tmp_path, *TINY_RUN, "directive=token_advantage",
                                       "directive.feedback=[tests.test_directive:_raises]")))
    assert [r["directive/feedback_fail/tests.test_directive:_raises"] for r in rows] == [4.0, 4.0]
    assert [r["directive/hint_rate"] for r in rows] == [0.0, 0.0]
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: feedback")]
    assert err == ["warning: feedback 'tests.test_directive:_raises' failed at step 0 (RuntimeError: boom); its "
                   "completions get no hint (directive/feedback_fail/<name> counts them)"]
