"""Structured configs (registered with Hydra's ConfigStore), composition, and validation at the boundary.

``conf/config.yaml`` composes one option from each group (method, task, model, rollout, objectives) onto the
``Config`` schema below, so a wrong type fails at compose time. ``validate`` then checks what types cannot
(names, lengths, ranges) and returns the typed object the rest of the code takes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, get_args, get_origin, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mo_rl.errors import MoRLError, choice_error

LOSS_AGGS = ("token_mean", "seq_mean_token_mean", "seq_sum")
ENGINES = ("hf", "vllm")


@dataclass
class TrainerConfig:
    steps: int = 100  # optimizer steps (one batch of B prompts x G rollouts each)
    batch_prompts: int = 8  # B: prompts per step
    group_size: int = 8  # G: rollouts per prompt, >= 2
    lr: float = 2e-3
    weight_decay: float = 0.0
    clip_eps: float = 0.2  # PPO clip range (low side; high side too unless clip_eps_high is set)
    clip_eps_high: Optional[float] = None  # DAPO-style asymmetric upper clip
    kl_coef: float = 0.0  # KL to a frozen copy of the initial policy; 0 = no reference model
    loss_agg: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_sum
    epochs_per_step: int = 1  # policy updates per batch of rollouts
    max_grad_norm: float = 1.0
    seed: int = 0
    samples_per_step: int = 4  # completions written to samples.jsonl each step
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    fail_fast: bool = False  # stop at the first reward-function failure instead of recording it


@dataclass
class ModelConfig:
    path: str = "embedded:tiny"  # a local directory or hub id for from_pretrained, or embedded:tiny
    dtype: str = "float32"  # float32 | bfloat16 | float16


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf (transformers generate, CPU or GPU) | vllm (GPU)
    max_new_tokens: int = 12
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class TaskConfig:
    name: str = MISSING  # registry key, = conf/task/<name>.yaml
    options: dict[str, Any] = field(default_factory=dict)  # task-specific knobs, passed to its factory


@dataclass
class ObjectivesConfig:
    names: Optional[list[str]] = None  # None = the task's objectives; else reward names or module:function
    weights: Optional[list[float]] = None  # None = the task's weights (or uniform for a custom list)
    # GDPO Eq. 8 conditioned rewards: {objective: {on: other_objective, min: threshold}} -> r *= 1[r_on >= min]
    conditions: dict[str, Any] = field(default_factory=dict)
    failure_value: float = 0.0  # reward given where an objective's function raises or returns NaN/inf


@dataclass
class Config:
    method: Any = MISSING  # {name: <estimator>, **its keyword options}; checked against the estimator's signature
    task: TaskConfig = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    experiment: str = "default"  # results/<experiment>/<run_name>/
    run_name: Optional[str] = None  # default: <task>-<method>-s<seed>-<timestamp>
    output_dir: str = "results"


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)


def conf_dir() -> Path:
    """The conf/ tree: inside the installed package (wheel), else beside it (editable checkout)."""
    here = Path(__file__).resolve().parent
    for cand in (here / "conf", here.parent / "conf"):
        if (cand / "config.yaml").is_file():
            return cand
    raise MoRLError(f"conf/ directory not found next to {here}; reinstall mo-rl")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/ with Hydra's compose API (single run; tests and `mo-rl train` without -m use this)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def _check_type(method: str, key: str, value, default, hint=None) -> None:
    """An option must match its default's type; a ``Literal[...]`` annotation also fixes the allowed values."""
    if get_origin(hint) is Literal:
        if value not in get_args(hint):
            raise choice_error(f"method.{key}", value, get_args(hint))
        return
    if default is None or default is inspect.Parameter.empty:
        return
    want = type(default)
    ok = isinstance(value, want) or (want is float and isinstance(value, int) and not isinstance(value, bool))
    if want is bool:
        ok = isinstance(value, bool)
    if not ok:
        raise MoRLError(f"method.{key}={value!r} for {method!r} must be {want.__name__} (default {default!r})")


def validate(cfg: DictConfig | Config) -> Config:
    """Check names, lengths and ranges that types cannot; return the typed ``Config``. Raises MoRLError."""
    from mo_rl import advantages
    from mo_rl.tasks.base import make_task

    c: Config = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    method = dict(c.method)
    name = method.pop("name", None)
    est = advantages.get(name)  # unknown method -> one line listing the allowed ones
    allowed = est.options()
    hints = get_type_hints(est.fn)
    for key, value in method.items():
        if key not in allowed:
            raise MoRLError(f"unknown option method.{key} for method {name!r}; allowed: {', '.join(allowed)}")
        _check_type(name, key, value, allowed[key], hints.get(key))
    t = c.trainer
    if t.group_size < 2:
        raise MoRLError(f"trainer.group_size={t.group_size} must be >= 2 (a group needs two rollouts to compare)")
    for key in ("steps", "batch_prompts", "epochs_per_step"):
        if getattr(t, key) < 1:
            raise MoRLError(f"trainer.{key}={getattr(t, key)} must be >= 1")
    if t.lr <= 0:
        raise MoRLError(f"trainer.lr={t.lr} must be > 0")
    if t.loss_agg not in LOSS_AGGS:
        raise choice_error("trainer.loss_agg", t.loss_agg, LOSS_AGGS)
    if c.rollout.engine not in ENGINES:
        raise choice_error("rollout.engine", c.rollout.engine, ENGINES)
    if c.rollout.max_new_tokens < 1 or c.rollout.temperature <= 0 or not 0 < c.rollout.top_p <= 1:
        raise MoRLError("rollout: max_new_tokens must be >= 1, temperature > 0 and 0 < top_p <= 1, got "
                        f"{c.rollout.max_new_tokens}, {c.rollout.temperature}, {c.rollout.top_p}")
    task = make_task(c.task.name, **c.task.options)
    names, weights = objective_set(c, task)
    from mo_rl.rewards.registry import get_reward

    for n in names:
        get_reward(n)
    for obj, cond in c.objectives.conditions.items():
        if obj not in names or cond.get("on") not in names or "min" not in cond:
            raise MoRLError(f"objectives.conditions.{obj}={cond} must name objectives of {names} as "
                            "{on: <objective>, min: <threshold>}")
    return c


def objective_set(c: Config, task) -> tuple[list[str], list[float]]:
    """The run's objective names and weights (not normalized): the overrides, else the task's defaults."""
    names = list(c.objectives.names) if c.objectives.names is not None else list(task.objectives)
    if c.objectives.weights is not None:
        weights = list(c.objectives.weights)
    elif c.objectives.names is None:
        weights = list(task.weights)
    else:
        weights = [1.0 / len(names)] * len(names)
    if not names:
        raise MoRLError("objectives.names is empty; give at least one objective")
    if len(weights) != len(names):
        raise MoRLError(f"objectives.weights={weights} has {len(weights)} entries for {len(names)} objectives "
                        f"{names}; give one weight per objective")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise MoRLError(f"objectives.weights={weights} must be >= 0 and not all zero")
    return names, weights


def explain_compose_error(e: Exception) -> str:
    """Turn Hydra/OmegaConf composition errors into one line naming the bad value and what is allowed."""
    import re

    msg = str(e) + ("\n" + str(e.__cause__) if e.__cause__ is not None else "")
    m = re.search(r"Could not find '([\w/]+)/([^']+)'", msg)
    if m and m.group(1) in ("method", "task", "model", "rollout", "objectives"):
        return f"unknown {m.group(1)} {m.group(2)!r}; allowed: {', '.join(group_options(m.group(1)))}"
    m = re.search(r"Could not override '([^']+)'", msg) or re.search(r"Key '([^']+)' (?:is )?not in", msg)
    if m:
        key = m.group(1)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(compose([]), parent) if parent else compose([])
        allowed = ", ".join(str(k) for k in node.keys()) if isinstance(node, DictConfig) else "(none)"
        where = f"under {parent}" if parent else "at the top level"
        return f"unknown config key {key!r}; allowed {where}: {allowed}"
    m = re.search(r"Value '(.*)' of type '\w+' could not be converted to (\w+)\s+full_key: ([\w.\[\]]+)", msg)
    if m:
        return f"{m.group(3)}={m.group(1)!r} is not a valid {m.group(2).lower()}"
    m = re.search(r"full_key: ([\w.\[\]]+)", msg)
    first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
    return f"{m.group(1)}: {first}" if m else f"bad override: {first}"
