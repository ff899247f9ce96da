"""``mo-rl eval --base``: the untrained model of a sweep, evaluated as its runs are, in a run-like directory."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from mo_rl.analysis.evaluate import base_dir_for, evaluate_run
from mo_rl.cli import app
from mo_rl.config import compose
from mo_rl.results.reader import read_run
from mo_rl.train.loop import run_train

EVAL = ["--k", "1,2", "--prompts", "3", "--seed", "7"]


def _run(tmp_path, name, *overrides):
    return run_train(compose([f"output_dir={tmp_path}", "experiment=sweep", f"run_name={name}", "trainer.steps=2",
                              "trainer.batch_prompts=2", "trainer.group_size=2", *overrides]))


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_model_path):
    """Two methods on the same task, objectives, model and rollout settings: one baseline between them."""
    tmp = tmp_path_factory.mktemp("base")
    return tmp, _run(tmp, "a", "method=grpo", "task=conflicting"), _run(tmp, "b", "method=vpo", "task=conflicting")


def test_base_equals_evaluating_the_untrained_model_and_lands_beside_the_runs(pair, tiny_policy):
    tmp, a, b = pair
    out = CliRunner().invoke(app, ["eval", str(a), str(b), "--base", *EVAL])
    assert out.exit_code == 0, out.output
    bases = sorted((tmp / "sweep" / "base").iterdir())
    assert len(bases) == 1 and bases[0] == base_dir_for(a, tmp / "sweep") == base_dir_for(b, tmp / "sweep")
    assert bases[0].name.startswith("conflicting-") and len(bases[0].name) == len("conflicting-") + 8
    base = bases[0]
    assert out.stdout.splitlines()[-1].startswith(f"{base}: best@1 ")
    # the untrained model evaluated directly: a run directory whose final checkpoint is that model
    direct = tmp / "direct"
    shutil.copytree(a, direct, ignore=shutil.ignore_patterns("checkpoints", "eval.json"))
    tiny_policy.module.save_pretrained(direct / "checkpoints" / "final")
    tiny_policy.tokenizer.save_pretrained(direct / "checkpoints" / "final")
    want = evaluate_run(direct, [1, 2], 3, 7)
    got = json.loads((base / "eval.json").read_text())
    assert got["checkpoint"] == "base" and want["checkpoint"] == "final"
    assert json.loads(json.dumps(want["results"])) == got["results"]
    assert {key: got[key] for key in ("prompts", "seed", "objectives", "weights", "hv_reference")} == \
        {key: want[key] for key in ("prompts", "seed", "objectives", "weights", "hv_reference")}
    trained = json.loads((a / "eval.json").read_text())
    assert trained["results"] != got["results"]  # the trained run's own eval is another model's
    summary = json.loads((base / "summary.json").read_text())
    assert summary == {"status": "completed", "method": "base", "task": "conflicting", "seed": None,
                       "objectives": got["objectives"], "weights": got["weights"], "steps_done": 0}
    cfg = yaml.safe_load((base / "config.yaml").read_text())
    assert cfg["method"] == {"name": "base"} and cfg["trainer"]["seed"] is None and cfg["task"]["name"] == "conflicting"
    run = read_run(base)  # the reader takes it as a run: method base, no seed, no steps
    assert (run.lookup("method"), run.lookup("seed"), run.status, len(run.metrics)) == ("base", None, "completed", 0)
    table = CliRunner().invoke(app, ["compare", str(tmp / "sweep"), "--format", "csv"])
    assert table.exit_code == 0, table.output
    assert any(line.split(",")[1] == "base" for line in table.stdout.splitlines()[1:]), table.stdout


def test_base_is_skipped_with_the_same_settings_and_redone_with_others(pair):
    tmp, a, b = pair
    first = CliRunner().invoke(app, ["eval", str(tmp / "sweep"), "--base", *EVAL])
    assert first.exit_code == 0, first.output
    base = base_dir_for(a, tmp / "sweep")
    assert sum(line.startswith(str(base)) for line in first.stdout.splitlines()) == 1  # the base dir is no run
    again = CliRunner().invoke(app, ["eval", str(a), "--base", *EVAL])  # one run alone: root = its parent
    assert again.exit_code == 0 and f"{base}: already evaluated with these settings" in again.stdout
    other = CliRunner().invoke(app, ["eval", str(a), "--base", "--k", "1", "--prompts", "2", "--seed", "7"])
    assert other.exit_code == 0 and f"{base}: best@1 " in other.stdout, other.output
    data = json.loads((base / "eval.json").read_text())
    assert data["prompts"] == 2 and [r["k"] for r in data["results"]] == [1]


def test_base_of_another_model_or_task_is_its_own_directory(pair, tmp_path):
    tmp, a, _ = pair
    cfg = yaml.safe_load((a / "config.yaml").read_text())
    other = tmp_path / "other"
    other.mkdir()
    temperature = cfg["rollout"]["temperature"]
    cfg["rollout"]["temperature"] = temperature / 2
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert base_dir_for(other, tmp) != base_dir_for(a, tmp)
    cfg["rollout"]["temperature"], cfg["model"]["lora_r"], cfg["method"] = temperature, 8, {"name": "dvao"}
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))  # LoRA and the method leave the initial policy as is
    assert base_dir_for(other, tmp) == base_dir_for(a, tmp)


def test_a_reference_not_below_the_sampled_rewards_is_a_warning(pair):
    _, a, _ = pair
    said = []
    out = evaluate_run(a, [1], 2, 7, hv_ref=1.0, warn=said.append)  # no reward lies above 1
    assert out["hv_reference"] == [1.0, 1.0] and out["results"][0]["hypervolume"] == 0.0
    assert len(said) == 1 and said[0].startswith("hypervolume reference [1.0, 1.0] is not below the lowest reward")
    said.clear()
    evaluate_run(a, [1], 2, 7, warn=said.append)
    assert said == []  # the default -0.1 lies below every reward in [0, 1]
