"""The command line: bad input is one line on stderr with exit code 2 and no traceback; train prints its result."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mo_rl import advantages
from mo_rl.cli import app


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mo_rl", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("args, expected", [
    (["train", "--method", "nope"], "error: unknown method 'nope'; allowed: adv_combination"),
    (["train", "trainer.group_size=1"], "error: trainer.group_size=1 must be >= 2"),
    (["train", "trainer.stepz=5"], "error: unknown config key 'trainer.stepz'; allowed under trainer: steps"),
    (["train", "objectives.weights=[1,-1,0,0]"], "error: objectives.weights=[1.0, -1.0, 0.0, 0.0] must be >= 0"),
    (["train", "model.path=/nonexistent/model"], "error: model.path='/nonexistent/model' is not a directory"),
])
def test_bad_input_is_one_line(args, expected):
    out = _cli(*args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stdout == ""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected), out.stderr


def test_methods_lists_every_estimator():
    out = CliRunner().invoke(app, ["methods"])
    assert out.exit_code == 0
    for name in advantages.available():
        assert name in out.stdout


def test_train_prints_run_and_reward(tmp_path, tiny_model_path):
    out = CliRunner().invoke(app, ["train", "--method", "grpo", "--task", "conflicting", "trainer.steps=2",
                                   f"output_dir={tmp_path}", "run_name=x"])
    assert out.exit_code == 0, out.output
    assert f"run: {tmp_path}/default/x" in out.stdout and "weighted reward: first 20% of steps" in out.stdout
    assert (tmp_path / "default" / "x" / "summary.json").is_file()


def test_config_prints_the_composed_config():
    out = CliRunner().invoke(app, ["config", "method=gdpo", "trainer.steps=3"])
    assert out.exit_code == 0 and "name: gdpo" in out.stdout and "steps: 3" in out.stdout
    bad = CliRunner().invoke(app, ["config", "trainer.group_size=1"])
    assert bad.exit_code == 2 and "trainer.group_size=1 must be >= 2" in bad.output


def test_resume_help_lists_the_keys_a_resume_may_change():
    """`mo-rl train --help` lists the resume overrides from the one list that resume_config enforces."""
    import typer.main

    from mo_rl.config import SAFE_RESUME_KEYS

    train = typer.main.get_command(app).commands["train"]
    help_text = next(p for p in train.params if p.name == "resume").help
    assert help_text.split("may change only ")[1].rstrip(".").split(", ") == list(SAFE_RESUME_KEYS)
    shown = " ".join(CliRunner().invoke(app, ["train", "--help"]).stdout.replace("│", " ").split())  # unwrapped
    assert "may change only " + ", ".join(SAFE_RESUME_KEYS) + "." in shown


def test_config_shows_the_objectives_the_task_will_use():
    out = CliRunner().invoke(app, ["config", "task=math"])
    assert out.exit_code == 0
    assert "  names:\n  - math_correct\n  - math_format\n  - math_length\n  weights:\n  - 0.6\n  - 0.2\n  - 0.2\n" \
        in out.stdout
    mine = CliRunner().invoke(app, ["config", "objectives.names=[match,noise]"])
    assert "  names:\n  - match\n  - noise\n  weights:\n  - 0.5\n  - 0.5\n" in mine.stdout


def test_the_console_script_imports_reward_modules_from_the_working_directory(tmp_path):
    """`mo-rl` (not `python -m mo_rl`) puts the working directory on the import path, as `python -m` does, for
    objectives.names=[module:function] and for objectives.modules' @register_reward names."""
    (tmp_path / "my_rewards.py").write_text("def short(prompts, completions, **kw):\n"
                                            "    return [1.0 / (1 + len(c)) for c in completions]\n")
    (tmp_path / "my_registered.py").write_text("from mo_rl.rewards import register_reward\n\n\n"
                                               "@register_reward('shortness')\n"
                                               "def shortness(prompts, completions, **kw):\n"
                                               "    return [1.0 / (1 + len(c)) for c in completions]\n")
    def script(*args):  # -P: no working directory on sys.path, as for the installed console script
        return subprocess.run([sys.executable, "-P", "-c", "from mo_rl.cli import main; main()", "config", *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)

    direct = script("objectives.names=[match,my_rewards:short]")
    assert direct.returncode == 0, direct.stderr
    assert "  names:\n  - match\n  - my_rewards:short\n" in direct.stdout
    registered = script("objectives.modules=[my_registered]", "objectives.names=[match,shortness]")
    assert registered.returncode == 0, registered.stderr
    assert "  names:\n  - match\n  - shortness\n" in registered.stdout
