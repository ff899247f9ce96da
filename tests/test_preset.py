"""conf/preset: preset=real and preset=real_gated compose into the grid they name, every job validates, and
experiment=<name> still names the results folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from mo_rl.config import compose, conf_dir, register_configs, validate
from mo_rl.hydra_app import expand_sweep

pytestmark = pytest.mark.skipif(not (Path(conf_dir()) / "model" / "smollm2.yaml").is_file(),
                                reason="the presets train model=smollm2 (conf/model/smollm2.yaml, issue 16)")


def _sweep(preset: str) -> list[list[str]]:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = hydra_compose("config", overrides=[f"preset={preset}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    return [[f"preset={preset}", *job] for job in expand_sweep([f"{k}={v}" for k, v in params.items()])]


def test_a_preset_sweep_expands_to_its_own_grid_as_hydra_runs_it():
    """``mo-rl train -m preset=real`` pre-validates (and counts) the preset's 16 jobs, not 1; a key also given on
    the command line takes the command line's value, as Hydra's basic sweeper does."""
    jobs = expand_sweep(["preset=real"])
    assert len(jobs) == 16 and all(j[-1] == "preset=real" for j in jobs)
    assert {frozenset(j) for j in jobs} == {frozenset(j) for j in _sweep("real")}
    narrowed = expand_sweep(["preset=real", "task=math", "trainer.seed=3,4,5"])
    assert len(narrowed) == 4 * 3 and {j[0] for j in narrowed} == {"task=math"}
    assert {j[2] for j in narrowed} == {f"trainer.seed={s}" for s in (3, 4, 5)}


def test_preset_real_is_four_methods_on_two_tasks_with_two_seeds():
    jobs = _sweep("real")
    cells = {(j[1], j[2], j[3]) for j in jobs}
    assert len(jobs) == len(cells) == 16
    assert {c[1] for c in cells} == {f"method={m}" for m in ("grpo", "gdpo", "dvao", "vpo")}
    assert {c[0] for c in cells} == {"task=math", "task=personas"}
    for job in jobs:
        c = validate(compose(job))
        assert c.experiment == "real" and c.model.path == "registry:smollm2" and c.trainer.lr == 1e-5


def test_preset_real_gated_is_gated_on_math_with_the_same_settings():
    jobs = _sweep("real_gated")
    assert sorted(j[1:] for j in jobs) == [["task=math", "method=gated", f"trainer.seed={s}"] for s in (0, 1)]
    c, base = validate(compose(jobs[0])), validate(compose(_sweep("real")[0]))
    assert list(c.method["gates"]) == ["math_format"] and c.method["inner"] == "dvao"
    assert (c.trainer, c.rollout, c.experiment) == (base.trainer, base.rollout, base.experiment)


def test_experiment_still_names_the_results_folder():
    assert compose(["experiment=my_sweep"]).experiment == "my_sweep"
    assert compose(["preset=real", "experiment=mine"]).experiment == "mine"
