"""Config groups held to their registries, composition errors as one line, validation of what types can't check."""

from __future__ import annotations

import re

import pytest
import yaml
from omegaconf import OmegaConf

from mo_rl import advantages
from mo_rl.config import compose, conf_dir, explain_compose_error, group_options, validate
from mo_rl.errors import MoRLError
from mo_rl.tasks.base import available_tasks


def test_method_yaml_mirrors_estimator_signature():
    """conf/method/<stem>.yaml: name == stem == registry key; other keys == keyword options with equal defaults."""
    assert group_options("method") == advantages.available()
    for path in sorted((conf_dir() / "method").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert data.pop("name") == path.stem
        assert data == advantages.get(path.stem).options(), path.name


def test_task_yaml_matches_task_registry():
    assert group_options("task") == available_tasks()
    for name in available_tasks():
        assert yaml.safe_load((conf_dir() / "task" / f"{name}.yaml").read_text())["name"] == name


def test_compose_defaults_and_overrides():
    cfg = compose(["method=gdpo", "trainer.steps=7", "objectives.weights=[0.7,0.1,0.1,0.1]"])
    c = validate(cfg)
    assert c.method == {"name": "gdpo", "adv_norm": "group", "std_unbiased": False, "eps": 1e-6}
    assert c.trainer.steps == 7 and c.task.name == "aligned" and c.objectives.weights == [0.7, 0.1, 0.1, 0.1]


@pytest.mark.parametrize("override, expected", [
    ("method=nope", "unknown method 'nope'; allowed: adv_combination, dvao"),
    ("trainer.stepz=5", "unknown config key 'trainer.stepz'; allowed under trainer: steps, batch_prompts"),
    ("trainer.steps=abc", "trainer.steps='abc' is not a valid integer"),
    ("task=nosuch", "unknown task 'nosuch'; allowed: aligned, code, conflicting, math, personas, regime, toolcall"),
])
def test_compose_errors_become_one_line(override, expected):
    with pytest.raises(Exception) as info:
        compose([override])
    msg = explain_compose_error(info.value)
    assert msg.startswith(expected) and "\n" not in msg


@pytest.mark.parametrize("overrides, expected", [
    (["trainer.group_size=1"], "trainer.group_size=1 must be >= 2"),
    (["method.adv_norm=foo"], "unknown method.adv_norm 'foo'; allowed: group, batch_std, none"),
    (["method.eps=abc"], "method.eps='abc' for 'dvao' must be float"),
    (["+method.bogus=1"], "unknown option method.bogus for method 'dvao'"),
    (["objectives.weights=[1,2]"], "objectives.weights=[1.0, 2.0] has 2 entries for 4 objectives"),
    (["objectives.weights=[0,0,0,0]"], "must be >= 0 and not all zero"),
    (["objectives.names=[match,nosuch]"], "unknown objective 'nosuch'; allowed: "),
    (["objectives.names=[no_such_module_xyz:f]"], "module 'no_such_module_xyz' does not import"),
    (["trainer.loss_agg=mean"], "unknown trainer.loss_agg 'mean'; allowed: token_mean"),
    (["rollout.engine=sglang"], "unknown rollout.engine 'sglang'; allowed: hf, vllm"),
])
def test_validation_errors_name_the_value(overrides, expected):
    with pytest.raises(MoRLError, match=re.escape(expected)):
        validate(compose(overrides))


def test_custom_objective_module_function_and_conditions():
    c = validate(compose(["objectives.names=[match,mo_rl.rewards.builtin:vowels]",
                          "+objectives.conditions={match: {on: mo_rl.rewards.builtin:vowels, min: 0.5}}"]))
    assert c.objectives.names == ["match", "mo_rl.rewards.builtin:vowels"]
    assert OmegaConf.to_container(OmegaConf.create(c.objectives.conditions))["match"]["min"] == 0.5
