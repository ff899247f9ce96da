"""Test-time search metrics on hand-made reward sets, and ``mo-rl eval`` on a trained run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mo_rl.analysis.evaluate import _pass_at_k, search_metrics
from mo_rl.cli import app
from mo_rl.train.loop import run_train
from tests.conftest import compose_run


def test_pass_at_k_unbiased_estimator():
    assert _pass_at_k(4, 0, 2) == 0.0 and _pass_at_k(4, 3, 2) == 1.0
    assert _pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert _pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)


def test_search_metrics_credit_spread_over_middle():
    """Two prompts, n=2 completions of one answer each: corners (1,0),(0,1) vs the middle twice."""
    r = np.array([[[[1.0, 0.0]], [[0.0, 1.0]]], [[[0.5, 0.5]], [[0.5, 0.5]]]])
    valid = np.ones((2, 2, 1), dtype=bool)
    texts = [["ab", "cd"], ["ab", "ab"]]
    lambdas = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    w = np.array([0.5, 0.5])
    k1 = search_metrics(r, valid, texts, w, 1, lambdas, success=(0, 1.0))
    k2 = search_metrics(r, valid, texts, w, 2, lambdas, success=(0, 1.0))
    # k=1: corner (1,0) scores (1 + 0 + .5)/3 = .5; middle .5 -> mean .5. k=2: corners (1 + 1 + .5)/3 -> mean
    assert k1["best_at_k_dirichlet"] == pytest.approx(0.5)
    assert k2["best_at_k_dirichlet"] == pytest.approx((2.5 / 3 + 0.5) / 2)
    assert k1["best_at_k_weighted"] == k2["best_at_k_weighted"] == pytest.approx(0.5)
    assert search_metrics(r, valid, texts, w, 2, lambdas, hv_ref=[0, 0])["hypervolume"] == pytest.approx(
        (0.0 + 0.25) / 2)  # with the origin as reference the corners on the axes enclose nothing
    assert k2["hypervolume"] == pytest.approx((0.21 + 0.36) / 2)  # reference -0.1: 1.1*.1*2 - .01; .6*.6
    assert k1["pass_at_k"] == pytest.approx((0.5 + 0.0) / 2) and k2["pass_at_k"] == pytest.approx(0.5)
    assert k2["reward_spread"] == pytest.approx((2**0.5 + 0) / 2)
    assert k2["distinct_2"] == pytest.approx((1.0 + 0.5) / 2)
    assert k2["per_prompt"]["best_at_k_dirichlet"] == pytest.approx([2.5 / 3, 0.5])


def test_eval_command_writes_eval_json_that_compare_shows(tmp_path, tiny_model_path):
    path = run_train(compose_run(tmp_path, "task=conflicting", "trainer.steps=2"))
    out = CliRunner().invoke(app, ["eval", str(path), "--k", "1,2", "--prompts", "3"])
    assert out.exit_code == 0, out.output
    data = json.loads((path / "eval.json").read_text())
    assert [r["k"] for r in data["results"]] == [1, 2] and data["results"][0]["pass_at_k"] is None
    assert data["results"][1]["best_at_k_dirichlet"] >= data["results"][0]["best_at_k_dirichlet"] - 1e-9
    assert data["checkpoint"] == "final" and data["hv_reference"] == [-0.1] * len(data["objectives"])
    resolved = yaml.safe_load((path / "config.yaml").read_text())["objectives"]["resolved"]
    assert data["weights"] == pytest.approx(resolved["weights"]) and data["objectives"] == resolved["names"]
    assert "best_at_k_sampled" not in data["results"][0] and "best_at_k_fixed" not in data["results"][0]
    assert len(data["results"][0]["per_prompt"]["best_at_k_weighted"]) == 3
    assert out.stdout.startswith(f"{path}: best@1 ") and out.stdout.rstrip().endswith("(user weights)")
    table = CliRunner().invoke(app, ["compare", str(tmp_path), "--format", "csv"])
    assert table.exit_code == 0 and "best@2" in table.stdout


def test_eval_without_checkpoint_is_one_line(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("task: {name: aligned}\n")
    (tmp_path / "r" / "metrics.jsonl").write_text("")
    out = CliRunner().invoke(app, ["eval", str(tmp_path / "r")])
    assert out.exit_code == 2 and "has no checkpoints/final" in out.output


CHAT = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}")


def test_eval_of_a_chat_template_run_formats_prompts_with_the_template(tmp_path, tiny_policy):
    """The run trained on chat-formatted prompts; eval must sample from the same format (it read raw prompts)."""
    import copy

    from mo_rl.analysis.evaluate import sample_points

    src = tmp_path / "chat-model"
    tok = copy.deepcopy(tiny_policy.tokenizer)
    tok.chat_template = CHAT
    tiny_policy.module.save_pretrained(src)
    tok.save_pretrained(src)
    path = run_train(compose_run(tmp_path, f"model.path={src}", "model.chat_template=true", "trainer.steps=1",
                                 "trainer.batch_prompts=2", "trainer.group_size=2", "objectives.failure_value=0.25"))
    _, _, _, cfg, scored = sample_points(path, 2, 2, seed=0)
    prompt = tok.decode(scored.batch.local.prompt_ids[0], skip_special_tokens=True)
    assert prompt.startswith("[user]") and prompt.endswith("[assistant]"), prompt
    assert cfg["model"]["chat_template"] is True


def test_eval_of_a_corrupt_config_is_a_warning_not_a_traceback(tmp_path):
    run = tmp_path / "r"
    (run / "checkpoints" / "final").mkdir(parents=True)
    (run / "checkpoints" / "final" / "config.json").write_text("{}")
    (run / "config.yaml").write_text("task: [unclosed\n")
    (run / "metrics.jsonl").write_text("")
    out = CliRunner().invoke(app, ["eval", str(run), "--base"])
    assert out.exit_code == 2 and "Traceback" not in out.output, out.output
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith(("warning:", "error:"))]  # not the progress
    assert lines[0].startswith(f"warning: skipped {run}: '{run / 'config.yaml'}' is damaged: not readable as YAML (")
    assert lines[1].startswith(f"warning: skipped the base of {run}: ")
    assert lines[-1] == "error: 1 of 1 run(s) skipped and 1 base evaluation(s) skipped (see the warnings above); " \
        "the others are evaluated"
