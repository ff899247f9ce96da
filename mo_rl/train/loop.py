"""One training run, top to bottom: prompts -> rollouts -> rewards (B, G, K) -> advantages -> update -> disk.

This is the only module that knows every part; each part is handed in by name through its registry, so the loop
never branches on a method, task or engine.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mo_rl import advantages
from mo_rl.config import Config, objective_set, validate
from mo_rl.models import load_policy
from mo_rl.results.writer import RunWriter
from mo_rl.rewards.registry import get_reward
from mo_rl.rewards.score import apply_conditions, score
from mo_rl.rollout import SamplingParams, make_engine
from mo_rl.tasks.base import Task, make_task
from mo_rl.train.checkpoint import save_policy
from mo_rl.train.loss import completion_logprobs, policy_loss
from mo_rl.train.progress import progress_bar


@dataclass
class Run:
    """Everything one run holds while it trains; built once by ``setup``."""

    cfg: Config
    task: Task
    names: list[str]
    weights: torch.Tensor  # (K,) normalized
    rewards: list[tuple[str, object]]
    method: str
    options: dict
    model: torch.nn.Module
    tokenizer: object
    ref: torch.nn.Module | None
    engine: object
    opt: torch.optim.Optimizer
    writer: RunWriter
    device: torch.device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def step_seed(seed: int, step: int) -> int:
    """A distinct, reproducible seed per (run seed, step): prompts, sampling and estimator draws use it."""
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**31 - 1)


def default_run_dir(c: Config) -> Path:
    name = c.run_name or f"{c.task.name}-{c.method['name']}-s{c.trainer.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(c.output_dir) / c.experiment / name


def setup(cfg: DictConfig | Config, run_dir: Path | None = None) -> Run:
    c = validate(cfg)
    random.seed(c.trainer.seed)
    torch.manual_seed(c.trainer.seed)
    device = resolve_device(c.trainer.device)
    task = make_task(c.task.name, **c.task.options)
    names, raw = objective_set(c, task)
    weights = torch.tensor(raw, dtype=torch.float32, device=device)
    options = dict(c.method)
    method = options.pop("name")
    model, tok = load_policy(c.model.path, c.model.dtype, device)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if c.trainer.kl_coef > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=c.trainer.lr, weight_decay=c.trainer.weight_decay)
    resolved = OmegaConf.to_container(OmegaConf.structured(c))
    resolved["objectives"]["resolved"] = {"names": names, "weights": (weights / weights.sum()).tolist()}
    writer = RunWriter(Path(run_dir) if run_dir else default_run_dir(c), resolved)
    return Run(c, task, names, weights / weights.sum(), [(n, get_reward(n)) for n in names], method, options,
               model, tok, ref, make_engine(c.rollout.engine, model, tok), opt, writer, device)


def rollout_and_score(run: Run, step: int):
    """-> (rollout batch, rewards (B, G, K), mask (B, G), Scores, rows)."""
    t, ro = run.cfg.trainer, run.cfg.rollout
    seed = step_seed(t.seed, step)
    rows = run.task.sample(random.Random(seed), t.batch_prompts, "train")
    params = SamplingParams(ro.max_new_tokens, ro.temperature, ro.top_p, seed)
    batch = run.engine.generate([r["prompt"] for r in rows], t.group_size, params)
    rep = [r for r in rows for _ in range(t.group_size)]
    columns = {k: [r[k] for r in rep] for k in rows[0] if k != "prompt"}
    sc = score(run.rewards, [r["prompt"] for r in rep], batch.texts, columns, step,
               run.cfg.objectives.failure_value, t.fail_fast)
    r = apply_conditions(sc.rewards, run.names, run.cfg.objectives.conditions)
    shape = (t.batch_prompts, t.group_size)
    return batch, r.view(*shape, -1).to(run.device, torch.float32), sc.valid.view(shape).to(run.device), sc, rows


def update(run: Run, batch, adv: torch.Tensor) -> dict[str, float]:
    """``epochs_per_step`` clipped policy-gradient steps on one batch of rollouts. adv: (N,)."""
    t = run.cfg.trainer
    run.model.train()
    for _ in range(t.epochs_per_step):
        logp = completion_logprobs(run.model, batch, run.cfg.rollout.temperature)
        ref_logp = None
        if run.ref is not None:
            with torch.no_grad():
                ref_logp = completion_logprobs(run.ref, batch, run.cfg.rollout.temperature)
        loss, stats = policy_loss(logp, batch.logprobs, adv, batch.completion_mask, clip_eps=t.clip_eps,
                                  clip_eps_high=t.clip_eps_high, ref_logp=ref_logp, kl_coef=t.kl_coef,
                                  loss_agg=t.loss_agg, max_tokens=run.cfg.rollout.max_new_tokens)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(run.model.parameters(), t.max_grad_norm)
        run.opt.step()
    run.model.eval()
    run.engine.sync_weights(run.model)
    return {"loss/total": float(loss.detach()), **stats, "loss/grad_norm": float(gn)}


def train_step(run: Run, step: int) -> tuple[dict, list[dict]]:
    t0 = time.perf_counter()
    batch, r, mask, sc, rows = rollout_and_score(run, step)
    t1 = time.perf_counter()
    seed = step_seed(run.cfg.trainer.seed, step)
    ctx = {"generator": torch.Generator().manual_seed(seed), "objectives": run.names}
    adv = advantages.compute(run.method, r, run.weights, mask, **ctx, **run.options)
    ctx["generator"] = torch.Generator().manual_seed(seed)  # diagnostics see the draws the advantages saw
    stats = update(run, batch, adv.reshape(-1).detach())
    t2 = time.perf_counter()
    row = {"step": step, **advantages.summarize(r, adv, mask, run.names)}
    for key, v in advantages.diagnose(run.method, r, run.weights, mask, **ctx, **run.options).items():
        row.update(_expand(key, v, run.names))
    w = (r * run.weights).sum(-1)
    row["reward/weighted/mean"] = float(w[mask].mean()) if mask.any() else float("nan")
    if run.task.success_objective in run.names:
        k = run.names.index(run.task.success_objective)
        row["success/rate"] = float((r[..., k][mask] >= run.task.success_threshold).float().mean())
    row.update(stats)
    row.update({f"reward_fail/{n}": c for n, c in sc.failures.items()})
    row.update({"completion/mean_tokens": batch.num_tokens / len(batch.texts), "perf/rollout_s": t1 - t0,
                "perf/update_s": t2 - t1, "perf/step_s": t2 - t0, "perf/tokens_per_s": batch.num_tokens / (t2 - t0)})
    return row, _samples(run, step, batch, r, rows)


def _expand(key: str, v, names: list[str]) -> dict[str, float]:
    """A (K,) tensor becomes one metric per objective name, any other vector one per index."""
    if isinstance(v, torch.Tensor) and v.dim() > 0:
        labels = names if v.numel() == len(names) else [str(i) for i in range(v.numel())]
        return {f"{key}/{n}": float(x) for n, x in zip(labels, v.reshape(-1).tolist())}
    return {key: float(v)}


def _samples(run: Run, step: int, batch, r: torch.Tensor, rows: list[dict]) -> list[dict]:
    n, G = len(batch.texts), run.cfg.trainer.group_size
    flat = r.reshape(n, -1)
    picks = sorted({round(i * (n - 1) / max(run.cfg.trainer.samples_per_step - 1, 1))
                    for i in range(run.cfg.trainer.samples_per_step)}) if run.cfg.trainer.samples_per_step else []
    return [{"step": step, "prompt": rows[i // G]["prompt"], "completion": batch.texts[i],
             "rewards": dict(zip(run.names, flat[i].tolist()))} for i in picks]


def run_train(cfg: DictConfig | Config, run_dir: Path | None = None) -> Path:
    """Train one run to completion; returns its directory. Metrics reach disk every step, whatever happens."""
    run = setup(cfg, run_dir)
    c, start = run.cfg, time.time()
    summary = {"status": "running", "method": run.method, "task": c.task.name, "seed": c.trainer.seed,
               "objectives": run.names, "weights": run.weights.tolist(), "steps_done": 0, "final": {}}
    run.writer.write_summary(summary)
    try:
        with progress_bar(c.trainer.steps, f"{c.task.name}/{run.method}", run.names) as bar:
            for step in range(c.trainer.steps):
                row, samples = train_step(run, step)
                row["time"] = time.time() - start
                run.writer.log_metrics(row)
                run.writer.log_samples(samples)
                summary.update(steps_done=step + 1, final=row, wall_time=row["time"])
                bar.advance(row)
        save_policy(run.model, run.tokenizer, run.writer.path / "checkpoints" / "final")
        summary["status"] = "completed"
    except BaseException as e:
        summary.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                       error=f"{type(e).__name__}: {e}")
        raise
    finally:
        summary["wall_time"] = time.time() - start
        run.writer.write_summary(summary)
    return run.writer.path
