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
STRATEGIES = ("ddp", "fsdp")  # trainer.strategy (mo_rl/train/fsdp.py)
RESUME_MODES = ("auto", "never")
# Overrides a resumed run may change (`mo-rl train --resume`; its help lists them from here): none alters what the
# steps already taken computed (trainer.loggers: a tracker added on resume is backfilled, see results/loggers.py)
SAFE_RESUME_KEYS = ("trainer.steps", "trainer.checkpoint_every", "trainer.keep_checkpoints", "trainer.resume",
                    "trainer.fail_fast", "trainer.device", "trainer.samples_per_step", "trainer.loggers",
                    "trainer.log_every", "trainer.threads", "objectives.timeout_s", "objectives.isolation")


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
    # true: stop at the first reward-function failure | null (default): record failures, and end the run failed
    # (exit 1) if an objective failed on every call | false: record failures, never fail the run for them
    fail_fast: Optional[bool] = None
    micro_batch_size: int = 0  # sequences per forward/backward (gradient accumulation); 0 = set by micro_batch_tokens
    # when micro_batch_size=0: split the update into the fewest micro-batches of whole sequences (whole groups where
    # possible) holding at most this many prompt+completion tokens each, bounding activation memory; 0 = one pass
    micro_batch_tokens: int = 2048  # CPU-sized; on a GPU raise it (e.g. 16384) for fewer, larger passes
    # CPU (glibc): keep freed memory in the process instead of returning it to the OS and faulting it back in every
    # step (~10% of a small model's step; mo_rl/train/malloc.py); false = glibc's defaults
    keep_freed_memory: bool = True
    checkpoint_every: int = 50  # save checkpoints/step-<N>/ every N steps (and at the end); 0 = only at the end
    # step checkpoints kept (oldest deleted first); 0 = one while the run goes (to resume from after a crash), none
    # once it completes: only checkpoints/final stays (~1/3 of a step checkpoint, which adds AdamW's moments), and
    # the run can no longer be trained longer
    keep_checkpoints: int = 2
    resume: str = "auto"  # an existing run dir with the same run_name: auto = continue it | never = refuse
    # experiment trackers besides metrics.jsonl (always written): tensorboard | wandb | mlflow (pip install -e
    # '.[trackers]'); they get each step once it is checkpointed (mo_rl/results/loggers.py)
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])
    # data parallelism under torchrun: ddp = every rank holds the whole model and optimizer (gradients summed);
    # fsdp = FSDP2 shards parameters, gradients and optimizer state over the ranks (mo_rl/train/fsdp.py)
    strategy: str = "ddp"
    # where stderr is not a terminal (a log file, a pipe, a batch job): one plain progress line every N steps (step,
    # rewards, step time, time left) instead of the live bar; 0 = none
    log_every: int = 10
    # torch intra-op threads; 0 = auto: OMP_NUM_THREADS if set (Ray's launcher sets it per job to the job's CPUs,
    # torchrun to 1 per rank), else one per core. Several runs side by side on C cores: give each about C / N
    # (mo_rl/train/threads.py); `mo-rl train` prints the count it uses
    threads: int = 0


MODEL_DTYPES = ("float32", "bfloat16", "float16")  # model.dtype
MODEL_IMPLS = ("auto", "lean", "hf")  # model.impl (mo_rl/models/lean.py)


@dataclass
class ModelConfig:
    path: str = "embedded:tiny"  # a local directory or hub id for from_pretrained, or embedded:tiny
    dtype: str = "float32"  # float32 | bfloat16 | float16
    # forward used for rollouts (hf engine) and training: auto = mo-rl's lean forward for the Llama family (Llama,
    # Mistral, Qwen2/3; same numbers, ~2x less overhead on small models), transformers' forward for anything else;
    # lean = require it (error if the architecture is not supported); hf = always transformers'
    impl: str = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower steps
    chat_template: bool = False  # wrap each prompt as a user message with the tokenizer's chat template
    lora_r: int = 0  # LoRA rank (needs peft); 0 = full fine-tuning
    lora_alpha: int = 16  # LoRA scale numerator: updates are scaled by lora_alpha / lora_r
    lora_dropout: float = 0.0
    # module names that get adapters; the default names fit Llama, Qwen and Mistral ("all-linear" also works)
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf (transformers generate, CPU or GPU) | vllm (GPU)
    max_new_tokens: int = 12
    temperature: float = 1.0
    top_p: float = 1.0
    # vllm only (the hf engine ignores them):
    gpu_memory_utilization: float = 0.3  # share of GPU memory vLLM may take; the trainer shares the same GPU
    enforce_eager: bool = True  # skip CUDA-graph capture: faster start, somewhat slower decoding
    max_model_len: Optional[int] = None  # prompt + completion tokens; None = the model config's limit

    def engine_options(self) -> dict[str, Any]:
        """The knobs ``make_engine`` forwards to the engine (only vllm takes any)."""
        return {"gpu_memory_utilization": self.gpu_memory_utilization, "enforce_eager": self.enforce_eager,
                "max_model_len": self.max_model_len}


def check_model_rollout(c: Config) -> None:
    """Ranges of the model and rollout groups that types cannot check. Raises MoRLError."""
    m, r = c.model, c.rollout
    for key, value, allowed in (("dtype", m.dtype, MODEL_DTYPES), ("impl", m.impl, MODEL_IMPLS)):
        if value not in allowed:  # before the run directory exists (load_policy checks again for direct callers)
            raise choice_error(f"model.{key}", value, allowed)
    if m.lora_r < 0 or m.lora_alpha <= 0 or not 0 <= m.lora_dropout < 1:
        raise MoRLError(f"model: lora_r must be >= 0 (0 = off), lora_alpha > 0 and 0 <= lora_dropout < 1, got "
                        f"{m.lora_r}, {m.lora_alpha}, {m.lora_dropout}")
    if m.lora_r > 0 and not m.lora_target_modules:
        raise MoRLError("model.lora_target_modules is empty; name the modules that get adapters, e.g. [q_proj,v_proj]")
    if not 0 < r.gpu_memory_utilization <= 1:
        raise MoRLError(f"rollout.gpu_memory_utilization={r.gpu_memory_utilization} must be in (0, 1]")
    if r.max_model_len is not None and r.max_model_len <= r.max_new_tokens:
        raise MoRLError(f"rollout.max_model_len={r.max_model_len} must exceed rollout.max_new_tokens="
                        f"{r.max_new_tokens} (it holds the prompt too); null = the model's own limit")


@dataclass
class TaskConfig:
    name: str = MISSING  # registry key, = conf/task/<name>.yaml
    answers: int = 1  # answers asked for in each completion (m); > 1 needs a task with a multi-answer prompt
    options: dict[str, Any] = field(default_factory=dict)  # task-specific knobs, passed to its factory


@dataclass
class ObjectivesConfig:
    names: Optional[list[str]] = None  # None = the task's objectives; else reward names or module:function
    weights: Optional[list[float]] = None  # None = the task's weights (or uniform for a custom list)
    # GDPO Eq. 8 conditioned rewards: {objective: {on: other_objective, min: threshold}} -> r *= 1[r_on >= min]
    conditions: dict[str, Any] = field(default_factory=dict)
    failure_value: float = 0.0  # reward given where an objective's function raises or returns NaN/inf
    # time limit of each reward-function call (s): past it the call is abandoned and scored as a failure; 0 = none
    timeout_s: Optional[float] = 300.0
    # where reward functions run: auto = module:function rewards in a worker process killed at timeout_s, built-in
    # and objectives.modules rewards in-process | process = all in workers | thread = all in-process
    isolation: str = "auto"
    # modules imported before the objectives are looked up, so that the rewards they register with
    # @mo_rl.rewards.register_reward can be named in objectives.names (e.g. [my_pkg.rewards])
    modules: list[str] = field(default_factory=list)


@dataclass
class DirectiveConfig:
    """Directive feedback beside the rewards (mo_rl/directive): hints distilled token by token by a teacher."""

    coef: float = 0.0  # weight of the directive term; 0 = off (training without it, bit for bit)
    loss: str = "token_advantage"  # token_advantage (OPD token advantages) | forward_ce (top-k forward CE)
    teacher: str = "current"  # current (the policy itself, no gradient) | reference (the frozen initial model)
    feedback: Optional[list[str]] = None  # feedback names or module:function; None = the task's own
    clip: float = 1.0  # token_advantage: the teacher-student log-prob gap is clipped to [-clip, clip]
    top_k: int = 20  # forward_ce: the teacher's top-k tokens, renormalised, at each position
    timeout_s: Optional[float] = 60.0  # time limit of each feedback call (s); past it: no hint; 0 = none
    modules: list[str] = field(default_factory=list)  # modules imported so their @register_feedback names resolve


@dataclass
class Config:
    method: Any = MISSING  # {name: <estimator>, **its keyword options}; checked against the estimator's signature
    task: TaskConfig = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    directive: DirectiveConfig = field(default_factory=DirectiveConfig)
    experiment: str = "default"  # results/<experiment>/<run_name>/
    run_name: Optional[str] = None  # default: <task>-<method>-s<seed>-<timestamp>-<config hash>
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


def compose(overrides: list[str] | None = None, hydra_config: bool = False) -> DictConfig:
    """Compose conf/ with Hydra's compose API (single run; tests and `mo-rl train` without -m use this);
    ``hydra_config`` keeps the ``hydra:`` node (a sweep's own params)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides or []), return_hydra_config=hydra_config)


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


def _check_trainer_extras(t: TrainerConfig) -> None:
    """Micro-batching, checkpointing and resume settings."""
    n = t.batch_prompts * t.group_size
    if t.micro_batch_tokens < 0:
        raise MoRLError(f"trainer.micro_batch_tokens={t.micro_batch_tokens} must be >= 0 (0 = no token limit)")
    if t.micro_batch_size < 0 or (t.micro_batch_size and n % t.micro_batch_size):
        raise MoRLError(f"trainer.micro_batch_size={t.micro_batch_size} must divide trainer.batch_prompts * "
                        f"trainer.group_size = {t.batch_prompts} * {t.group_size} = {n} "
                        "(or be 0: sized by trainer.micro_batch_tokens)")
    if t.checkpoint_every < 0 or t.keep_checkpoints < 0:
        raise MoRLError(f"trainer.checkpoint_every={t.checkpoint_every} and trainer.keep_checkpoints="
                        f"{t.keep_checkpoints} must be >= 0")
    if t.log_every < 0:
        raise MoRLError(f"trainer.log_every={t.log_every} must be >= 0 (steps between plain progress lines; 0 = none)")
    if t.threads < 0:
        raise MoRLError(f"trainer.threads={t.threads} must be >= 0 (0 = auto: OMP_NUM_THREADS, else one per core)")
    if t.resume not in RESUME_MODES:
        raise choice_error("trainer.resume", t.resume, RESUME_MODES)
    from mo_rl.results.loggers import check_loggers

    check_loggers(list(t.loggers))


def _check_task_options(name: str, options: dict) -> None:
    """``task.options`` keys must be keyword parameters of the task's factory (checked before calling it)."""
    from mo_rl.tasks.base import task_options

    allowed = task_options(name)  # unknown task -> one line listing the tasks
    for key in options:
        if key not in allowed:
            raise MoRLError(f"unknown option task.options.{key} for task {name!r}; allowed: "
                            f"{', '.join(allowed) or '(none)'}")


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
    from mo_rl.checks import check_all

    check_all(c)  # non-finite numbers, ranges, device, run paths
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
    if t.strategy not in STRATEGIES:
        raise choice_error("trainer.strategy", t.strategy, STRATEGIES)
    if t.strategy == "fsdp" and c.model.impl == "lean":
        raise MoRLError("model.impl=lean cannot train under trainer.strategy=fsdp (the lean forward reads whole "
                        "weights, FSDP holds shards); use model.impl=auto (lean sampling, transformers' forward "
                        "for the sharded update) or hf")
    _check_trainer_extras(t)
    if c.rollout.engine not in ENGINES:
        raise choice_error("rollout.engine", c.rollout.engine, ENGINES)
    check_model_rollout(c)
    if c.rollout.max_new_tokens < 1 or c.rollout.temperature <= 0 or not 0 < c.rollout.top_p <= 1:
        raise MoRLError("rollout: max_new_tokens must be >= 1, temperature > 0 and 0 < top_p <= 1, got "
                        f"{c.rollout.max_new_tokens}, {c.rollout.temperature}, {c.rollout.top_p}")
    _check_task_options(c.task.name, c.task.options)
    task = make_task(c.task.name, **c.task.options)
    if c.task.answers < 1 or (c.task.answers > 1 and task.multi_answer_prompt is None):
        raise MoRLError(f"task.answers={c.task.answers} must be >= 1, and 1 for task {task.name!r} "
                        "(it has no multi-answer prompt)")
    from mo_rl.rewards.registry import get_reward, load_reward_modules

    load_reward_modules(c.objectives.modules)
    names, weights = objective_set(c, task)
    for n in names:
        get_reward(n, c.objectives.isolation, c.objectives.modules, c.objectives.timeout_s)
    for obj, cond in c.objectives.conditions.items():
        if obj not in names or cond.get("on") not in names or "min" not in cond:
            raise MoRLError(f"objectives.conditions.{obj}={cond} must name objectives of {names} as "
                            "{on: <objective>, min: <threshold>}")
    from mo_rl.directive import check_config

    check_config(c, task)
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
    m = re.match(r"(LexerNoViableAltException: )(.*)\n( *)\^\n", msg, re.S)
    if m:  # a character the override grammar has no token for; the caret marks where
        line, col = m.group(2), len(m.group(3)) - len(m.group(1))
        ch = line[col] if 0 <= col < len(line) else "?"
        key = line.split("=", 1)[0]
        fix = ("a line break cannot be part of an override" if ch in "\r\n" else
               f"quote the value ({key}='...') to use letters beyond ASCII")
        return f"cannot parse the override {line!r}: character {ch!r} is not allowed there; {fix}"
    m = re.search(r"Could not find '([\w/]+)/([^']+)'", msg)
    if m and m.group(1) in ("method", "task", "model", "rollout", "objectives", "directive"):
        return f"unknown {m.group(1)} {m.group(2)!r}; allowed: {', '.join(group_options(m.group(1)))}"
    m = re.search(r"Could not override '([^']+)'", msg) or re.search(r"Key '([^']+)' (?:is )?not in", msg)
    if m:
        key = m.group(1)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(compose([]), parent) if parent else compose([])
        if parent == "task.options":  # which task the user chose is not in the error; validate names its options
            return (f"unknown config key {key!r}: only options written in conf/task/<task>.yaml can be set "
                    f"without a '+'; write +{key}=<value> to have it checked against the task's options")
        allowed = ", ".join(str(k) for k in node.keys()) if isinstance(node, DictConfig) else ""
        allowed = allowed or "(none)"
        where = f"under {parent}" if parent else "at the top level"
        return f"unknown config key {key!r}; allowed {where}: {allowed}"
    m = re.search(r"Value '(.*)' of type '\w+' could not be converted to (\w+)\s+full_key: ([\w.\[\]]+)", msg)
    if m:
        return f"{m.group(3)}={m.group(1)!r} is not a valid {m.group(2).lower()}"
    m = re.search(r"full_key: ([\w.\[\]]+)", msg)
    first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
    return f"{m.group(1)}: {first}" if m else f"bad override: {first}"
