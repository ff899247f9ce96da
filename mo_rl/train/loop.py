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
from mo_rl.errors import RewardFailure
from mo_rl.models import load_policy
from mo_rl.models.load import mode_matters
from mo_rl.results.lock import RunLock
from mo_rl.results.writer import RunWriter
from mo_rl.rewards.registry import get_reward
from mo_rl.rewards.score import apply_conditions, repeat_rows, score, score_rollouts
from mo_rl.rollout import SamplingParams, make_engine
from mo_rl.rollout.base import check_engine
from mo_rl.tasks.base import Task, make_task
from mo_rl.train import checkpoint as ckpt
from mo_rl.train import distributed as dp
from mo_rl.train import guards
from mo_rl.train import fsdp
from mo_rl.train.failures import FailureLog
from mo_rl.train.malloc import keep_freed_memory
from mo_rl.train.loss import backward_loss
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
    failures: FailureLog  # first reward-function error per objective -> errors.json
    resume: bool = False  # continue from the run directory's last checkpoint (set by ``setup``)
    dist: dp.Dist = dp.Dist()  # this process's data-parallel rank (rank 0 of 1 without torchrun)
    # train()/eval() around the update only where they change the computation (dropout, checkpointing); without
    # either, the policy stays in one mode (switching walks every module each step)
    switch_mode: bool = True
    lock: RunLock | None = None  # rank 0 holds the run directory's lock until the run ends

    @property
    def params(self) -> list[torch.Tensor]:
        """The trained parameters, as the optimizer holds them (no walk over the module tree)."""
        return [p for g in self.opt.param_groups for p in g["params"]]


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


def setup(cfg: DictConfig | Config, run_dir: Path | None = None, resume: bool = False) -> Run:
    """Validate, then build every part. The run directory is settled (new, or an earlier run to continue: see
    ``checkpoint.check_existing``; ``resume`` forces continuing) before the model loads, so a bad output dir or a
    refused resume costs nothing."""
    c = validate(cfg)
    check_engine(c.rollout.engine)
    d, device_name = dp.init(c.trainer.device)
    dp.check_batch(d, c.trainer.batch_prompts)
    random.seed(c.trainer.seed)
    torch.manual_seed(c.trainer.seed)
    device = resolve_device(device_name)
    if c.trainer.keep_freed_memory and device.type == "cpu":
        keep_freed_memory()
    task = make_task(c.task.name, **c.task.options)
    names, raw = objective_set(c, task)
    weights = torch.tensor(raw, dtype=torch.float32, device=device)
    options = dict(c.method)
    method = options.pop("name")
    resolved = OmegaConf.to_container(OmegaConf.structured(c))
    resolved["objectives"]["resolved"] = {"names": names, "weights": (weights / weights.sum()).tolist()}
    path = dp.broadcast_object(d, Path(run_dir) if run_dir else default_run_dir(c))  # one clock names the dir
    lock = RunLock(path) if d.lead else None  # before looking at the directory: a second process is refused here
    try:
        return _build(c, d, device, task, names, weights, method, options, resolved, path, resume, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _build(c, d, device, task, names, weights, method, options, resolved, path, resume, lock) -> Run:
    """The rest of ``setup``, under the run directory's lock. Nothing is written before the model and the engine
    are built, so a failure there leaves no config.yaml that would refuse the fixed rerun."""
    resume = resume or ckpt.check_existing(path, resolved, c.trainer.resume)
    if resume:
        ckpt.check_steps(path, c.trainer.steps)
    dp.barrier(d)  # every rank has looked for an earlier config.yaml before rank 0 writes this run's
    model, tok = load_policy(c.model, device=device)
    dp.broadcast_params(d, model)
    # the reference stays the initial policy: it is copied before a resumed run loads its checkpoint
    ref = copy.deepcopy(model).eval().requires_grad_(False) if c.trainer.kl_coef > 0 else None
    if c.trainer.strategy == "fsdp":
        fsdp.prepare(d, model, ref, device)  # shards in place, before the optimizer takes the parameters
    opt = make_optimizer(model, c.trainer.lr, c.trainer.weight_decay)
    rewards = [(n, get_reward(n)) for n in names]
    engine = make_engine(c.rollout.engine, model, tok, **c.rollout.engine_options())
    writer = RunWriter(path, resolved, c.trainer.loggers) if d.lead else dp.NullWriter(path)
    return Run(c, task, names, weights / weights.sum(), rewards, method, options, model, tok, ref,
               engine, opt, writer, device, FailureLog(), resume, d, mode_matters(model), lock)


def make_optimizer(model, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, the fused kernel where torch has one for their device (one pass over
    all parameters instead of a dozen per-tensor ops: 0.18 ms vs 0.75 ms a step for the tiny model on CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def rollout_and_score(run: Run, step: int):
    """-> (rollout batch, rewards (B, G, K) or (B, G, M, K), mask (B, G) or (B, G, M), Scores, rows).

    Data-parallel: this rank generates and scores its slice of the step's B prompts, then the rewards, mask and
    texts of all ranks are gathered, so what follows sees the global batch (``distributed.gather_step``).
    """
    t, ro, m = run.cfg.trainer, run.cfg.rollout, run.cfg.task.answers
    seed = step_seed(t.seed, step)
    rows = run.task.sample(random.Random(seed), t.batch_prompts, "train")
    mine = dp.shard(run.dist, len(rows))
    prompts = [r["prompt"] if m == 1 else run.task.multi_answer_prompt(r["prompt"], m) for r in rows[mine]]
    params = SamplingParams(ro.max_new_tokens, ro.temperature, ro.top_p, seed, prompt_offset=mine.start)
    with fsdp.rollout_weights(run):  # fsdp: the HF engine samples from gathered weights
        batch = run.engine.generate(prompts, t.group_size, params)
    rep_prompts, columns = repeat_rows(rows[mine], t.group_size)
    r, valid, sc = score_rollouts(run.rewards, rep_prompts, batch.texts, columns, step, m,
                                  run.task.answer_delimiter, run.cfg.objectives.failure_value, t.fail_fast,
                                  first_index=mine.start * t.group_size, timeout_s=run.cfg.objectives.timeout_s)
    r = apply_conditions(r, run.names, run.cfg.objectives.conditions)
    shape = (len(prompts), t.group_size)
    r = r.view(*shape, *r.shape[1:]).to(run.device, torch.float32)
    batch, r, valid, sc = dp.gather_step(run.dist, batch, r, valid.view(*shape, *valid.shape[1:]).to(run.device), sc)
    return batch, r, valid, sc, rows


def update(run: Run, batch, adv: torch.Tensor) -> dict[str, float]:
    """``epochs_per_step`` clipped policy-gradient steps on one batch of rollouts. adv: (N,).

    Data-parallel: each rank backpropagates its own rows and the gradients are summed over ranks, scaled so the
    step equals one process's step on the global batch (``distributed.local_part``, ``reduce_update``).
    """
    t = run.cfg.trainer
    batch, adv, shares = dp.local_part(batch, adv, t.loss_agg)
    sharded = fsdp.sharded(run)  # FSDP reduces the gradients in backward: the share scales the loss instead
    micro = fsdp.micro_batch_size(run, batch) if sharded else t.micro_batch_size
    if run.switch_mode:
        run.model.train()
    for _ in range(t.epochs_per_step):
        run.opt.zero_grad(set_to_none=True)
        loss, stats = backward_loss(run.model, run.ref, batch, adv, micro_batch_size=micro,
                                    micro_batch_tokens=t.micro_batch_tokens,
                                    temperature=run.cfg.rollout.temperature, top_p=run.cfg.rollout.top_p,
                                    clip_eps=t.clip_eps,
                                    clip_eps_high=t.clip_eps_high, kl_coef=t.kl_coef, loss_agg=t.loss_agg,
                                    max_tokens=run.cfg.rollout.max_new_tokens, scale=shares[0] if sharded else 1.0)
        if sharded:
            loss, stats = fsdp.reduce_stats(run.dist, loss, stats, shares, run.device)
        else:
            loss, stats = dp.reduce_update(run.dist, run.model, loss, stats, shares)
        gn = fsdp.grad_norm(torch.nn.utils.clip_grad_norm_(run.params, t.max_grad_norm))  # DTensor-aware
        guards.check_update(loss, gn)  # a non-finite loss or gradient never reaches the weights
        run.opt.step()
        guards.check_params(run.model, run.params)
    if run.switch_mode:
        run.model.eval()
    fsdp.sync_engine(run)
    return {"loss/total": loss, **stats, "loss/grad_norm": gn}


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
    r_log, mask_log = (r, mask) if r.dim() == 3 else advantages.reduce_answers(r, mask)
    row = {"step": step, **advantages.summarize(r_log, adv, mask_log, run.names)}
    for key, v in advantages.diagnose(run.method, r, run.weights, mask, **ctx, **run.options).items():
        row.update(_expand(key, v, run.names))
    w = (r_log * run.weights).sum(-1)
    row["reward/weighted/mean"] = float(w[mask_log].mean()) if mask_log.any() else float("nan")
    if run.task.success_objective:
        row["success/rate"] = _success_rate(run, step, batch.texts, rows, r_log, mask_log)
    row.update(stats)
    row.update({f"reward_fail/{n}": c for n, c in sc.failures.items()})
    run.failures.record(step, sc.failures, sc.first_error)
    row.update({"completion/mean_tokens": batch.num_tokens / len(batch.texts), "perf/rollout_s": t1 - t0,
                "perf/update_s": t2 - t1, "perf/step_s": t2 - t0, "perf/tokens_per_s": batch.num_tokens / (t2 - t0)})
    return row, _samples(run, step, batch, r, mask, rows)


def _success_rate(run: Run, step: int, texts: list[str], rows: list[dict], r: torch.Tensor, mask) -> float:
    """Fraction of rollouts whose success objective reaches the task's threshold; scored apart (for logging only)
    when it is not one of the run's objectives (e.g. code's all-tests-pass under per-test objectives)."""
    obj, thr = run.task.success_objective, run.task.success_threshold
    if obj in run.names:
        return float((r[..., run.names.index(obj)][mask] >= thr).float().mean())
    prompts, columns = repeat_rows(rows, run.cfg.trainer.group_size)
    sc = score([(obj, get_reward(obj))], prompts, texts, columns, step,  # a failure counts as unsolved
               timeout_s=run.cfg.objectives.timeout_s)
    return float((sc.rewards[sc.valid, 0] >= thr).float().mean()) if sc.valid.any() else float("nan")


def _expand(key: str, v, names: list[str]) -> dict[str, float]:
    """A (K,) tensor becomes one metric per objective name, any other vector one per index."""
    if isinstance(v, torch.Tensor) and v.dim() > 0:
        labels = names if v.numel() == len(names) else [str(i) for i in range(v.numel())]
        return {f"{key}/{n}": float(x) for n, x in zip(labels, v.reshape(-1).tolist())}
    return {key: float(v)}


def _samples(run: Run, step: int, batch, r: torch.Tensor, mask: torch.Tensor, rows: list[dict]) -> list[dict]:
    """A few completions with their reward vectors; a multi-answer one's ``rewards`` is the mean over the answers
    it wrote, and ``answer_rewards`` lists the written answers' vectors."""
    n, G = len(batch.texts), run.cfg.trainer.group_size
    flat = r.reshape(n, -1, r.shape[-1])  # (N, answers, K)
    written = mask.reshape(n, -1)  # (N, answers)
    mean = advantages.reduce_answers(flat.unsqueeze(0), written.unsqueeze(0))[0][0]  # (N, K)
    picks = sorted({round(i * (n - 1) / max(run.cfg.trainer.samples_per_step - 1, 1))
                    for i in range(run.cfg.trainer.samples_per_step)}) if run.cfg.trainer.samples_per_step else []
    return [{"step": step, "prompt": rows[i // G]["prompt"], "completion": batch.texts[i],
             "rewards": dict(zip(run.names, mean[i].tolist())),
             **({"answer_rewards": flat[i][written[i]].tolist()} if flat.shape[1] > 1 else {})} for i in picks]


def run_train(cfg: DictConfig | Config, run_dir: Path | None = None, resume: bool = False) -> Path:
    """Train one run to completion; returns its directory. Metrics reach disk every step, whatever happens.

    ``resume`` (``mo-rl train --resume``), or ``trainer.resume=auto`` meeting an earlier run in the same directory,
    continues from its last checkpoint; per-step seeds make the continued steps those of an uninterrupted run.
    Under ``torchrun`` every rank runs this; only rank 0 (``lead``) writes the run directory.
    """
    run = setup(cfg, run_dir, resume)
    restore_sigterm = guards.on_sigterm()  # SIGTERM stops the run like Ctrl-C
    c, t, lead = run.cfg, run.cfg.trainer, run.dist.lead
    restore = fsdp.restore if fsdp.enabled(run) else (lambda r: dp.restore(r.dist, r))
    first, elapsed, last = restore(run) if run.resume else (0, 0.0, {})
    start = time.time() - elapsed  # a resumed run's clock goes on from its checkpoint
    summary = {"status": "running", "method": run.method, "task": c.task.name, "seed": t.seed,
               "objectives": run.names, "weights": run.weights.tolist(), "steps_done": first, "final": last}
    run.writer.write_summary(summary)
    step = first
    try:
        with progress_bar(t.steps - first, f"{c.task.name}/{run.method}", run.names) as bar:
            for step in range(first, t.steps):
                row, samples = train_step(run, step)
                row["time"] = time.time() - start
                run.writer.log_metrics(row)
                run.writer.log_samples(samples)
                if run.failures.dirty and lead:
                    run.failures.write(run.writer.path)
                summary.update(steps_done=step + 1, final=row, wall_time=row["time"])
                due = (t.checkpoint_every and (step + 1) % t.checkpoint_every == 0) or step + 1 == t.steps
                if due and (lead or fsdp.enabled(run)):  # fsdp: every rank writes its shards
                    run.writer.sync()
                    (fsdp.save_run if fsdp.enabled(run) else ckpt.save_run)(run, step + 1, row["time"])
                    run.writer.publish(step + 1)  # trackers get checkpointed steps only (results/loggers.py)
                bar.advance(row)
        fsdp.save_final(run, run.writer.path / "checkpoints" / "final")  # plain save_policy unless sharded
        dp.barrier(run.dist)  # no rank returns (and reads the run directory) before rank 0 has written it
        summary["status"] = "completed"
    except BaseException as e:
        err = guards.explain(e, step, run.writer.path, t.lr)  # divergence, a full disk: one line
        if isinstance(e, RewardFailure):  # fail_fast: keep the message that stopped the run
            run.failures.record(step, {e.objective: 1}, {e.objective: e.message})
            if lead:
                run.failures.write(run.writer.path)
        summary.update(status=guards.status(err), error=f"{type(err).__name__}: {err}")
        if err is e:
            raise
        raise err from e
    finally:
        restore_sigterm()
        summary["wall_time"] = time.time() - start
        try:
            guards.close(run.writer, summary, failing=summary["status"] != "completed")
        finally:
            run.writer.close(summary["status"])  # the trackers' runs end with the run's status
            if run.lock is not None:
                run.lock.release()
        dp.teardown(run.dist)
    return run.writer.path
