"""One training run, top to bottom: prompts -> rollouts -> rewards (B, G, K) -> advantages -> update -> disk.

This is the only module that knows every part; each part is handed in by name through its registry, so the loop
never branches on a method, task or engine. ``train_step`` is one step, read top to bottom; ``run_train`` is the
run around it (resume, checkpoints, the summary).
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mo_rl import advantages
from mo_rl.config import Config, objective_set, validate
from mo_rl.errors import RewardFailure
from mo_rl.models import Policy, load_policy
from mo_rl.models.policy import Reference
from mo_rl.pipeline.rollout_score import Scored, Scoring, rollout_and_score
from mo_rl.progress import progress_bar
from mo_rl.results.lock import RunLock
from mo_rl.results.writer import NullWriter, RunWriter
from mo_rl.rollout import SamplingParams, check_engine, make_engine
from mo_rl.tasks.base import Task, make_task
from mo_rl.train import checkpoint as ckpt
from mo_rl.train import run_identity as ident
from mo_rl.train import distributed as dp
from mo_rl.train import guards
from mo_rl.train.failures import FailureLog
from mo_rl.train.loss import backward_loss
from mo_rl.train.malloc import keep_freed_memory
from mo_rl.train.strategy import Strategy, make_strategy
from mo_rl.train.threads import set_threads


@dataclass
class Run:
    """Everything one run holds while it trains; built once by ``setup``."""

    cfg: Config
    task: Task
    scoring: Scoring  # objectives, answers, failure value, conditions, success test
    weights: torch.Tensor  # (K,) normalized
    method: str
    options: dict
    policy: Policy
    ref: Reference | None  # the KL reference (trainer.kl_coef > 0)
    engine: object
    opt: torch.optim.Optimizer
    writer: RunWriter | NullWriter
    device: torch.device
    failures: FailureLog  # first reward-function error per objective -> errors.json
    resume: bool = False  # continue from the run directory's last checkpoint (set by ``setup``)
    dist: dp.Dist = dp.Dist()  # this process's data-parallel rank (rank 0 of 1 without torchrun)
    lock: RunLock | None = None  # rank 0 holds the run directory's lock until the run ends
    director: object = None  # directive feedback's hints and teacher (mo_rl/directive), None when directive.coef=0
    strategy: Strategy | None = None  # how the ranks share a step and a checkpoint (trainer.strategy: ddp, fsdp)

    @property
    def names(self) -> list[str]:
        return self.scoring.names

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
    """``output_dir/experiment/run_name``; no run_name: ``<task>-<method>-s<seed>-<time>-<config hash>``, so two
    runs started in the same second differ by the hash of their settings (``run_identity.config_hash``)."""
    name = c.run_name or (f"{c.task.name}-{c.method['name']}-s{c.trainer.seed}-{time.strftime('%Y%m%d-%H%M%S')}-"
                          f"{ident.config_hash(ident.config_dict(c))}")
    return Path(c.output_dir) / c.experiment / name


def setup(cfg: DictConfig | Config, run_dir: Path | None = None, resume: bool = False) -> Run:
    """Validate, then build every part. The run directory is settled (new, or an earlier run to continue: see
    ``run_identity.check_existing``; ``resume`` forces continuing) before the model loads, so a bad output dir or a
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
    threads = set_threads(c.trainer.threads)  # before the model loads; said once the run has started
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
        run = _build(c, d, device, task, names, weights, method, options, resolved, path, resume, lock)
    except BaseException:
        if lock is not None:
            lock.discard()  # a start that wrote nothing leaves no directory behind (only the lock was there)
        raise
    if d.lead:
        print(threads, file=sys.stderr)
    return run


def _build(c, d, device, task, names, weights, method, options, resolved, path, resume, lock) -> Run:
    """The rest of ``setup``, under the run directory's lock. Nothing is written before the model and the engine
    are built, so a failure there leaves no config.yaml that would refuse the fixed rerun."""
    resume = resume or ident.check_existing(path, resolved, c.trainer.resume)
    if resume:
        ckpt.check_steps(path, c.trainer.steps)
    dp.barrier(d)  # every rank has looked for an earlier config.yaml before rank 0 writes this run's
    policy = load_policy(c.model, device=device, train=True)
    dp.broadcast_params(d, policy.module)
    # the reference is the initial policy: taken before a resumed run loads its checkpoint (LoRA: adapters off)
    ref = policy.reference() if c.trainer.kl_coef > 0 else None
    strategy = make_strategy(c.trainer.strategy, d, device)
    strategy.prepare(policy, ref)  # fsdp shards in place, before the optimizer takes the parameters
    opt = make_optimizer(policy.module, c.trainer.lr, c.trainer.weight_decay)
    scoring = Scoring.from_config(c, task, names)
    engine = make_engine(c.rollout.engine, policy, **c.rollout.engine_options())
    director = None
    if c.directive.coef > 0:
        from mo_rl.train.teacher import Director

        director = Director.from_config(c, task, policy, ref)
    writer = RunWriter(path, resolved, c.trainer.loggers) if d.lead else NullWriter(path)
    return Run(c, task, scoring, weights / weights.sum(), method, options, policy, ref,
               engine, opt, writer, device, FailureLog(), resume, d, lock, director, strategy)


def make_optimizer(model, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, the fused kernel where torch has one for their device (one pass over
    all parameters instead of a dozen per-tensor ops: 0.18 ms vs 0.75 ms a step for the tiny model on CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def train_step(run: Run, step: int) -> tuple[dict, list[dict]]:
    """One step: the step's prompts -> rollouts and rewards -> advantages -> update -> (metrics row, samples)."""
    t, ro = run.cfg.trainer, run.cfg.rollout
    seed = step_seed(t.seed, step)
    t0 = time.perf_counter()
    rows = run.task.sample(random.Random(seed), t.batch_prompts, "train")
    params = SamplingParams(ro.max_new_tokens, ro.temperature, ro.top_p, seed)
    s = rollout_and_score(run.engine, run.task, run.scoring, rows, t.group_size, params, step, run.dist, run.device,
                          around_generate=lambda: run.strategy.rollout_weights(run.policy, run.engine))
    t1 = time.perf_counter()
    adv, diag = advantages.compute_with_diagnostics(run.method, s.rewards, run.weights, s.mask,
                                                    generator=torch.Generator().manual_seed(seed),
                                                    objectives=run.names, **run.options)
    valid = s.mask if s.mask.dim() == 2 else s.mask.any(-1)  # a rollout with no scored answer trains on nothing
    batch = dp.trainable(run.dist, s.batch, valid.reshape(-1))
    guide = None if run.director is None else run.director.prepare(run, s, batch, step)  # hints, teacher: once
    stats = update(run, batch, adv.reshape(-1).detach(), guide)
    t2 = time.perf_counter()
    row = {"step": step, **step_metrics(run, s, adv, diag), **stats, **(guide.metrics if guide else {})}
    row.update({"completion/mean_tokens": s.batch.num_tokens / len(s.batch.texts), "perf/rollout_s": t1 - t0,
                "perf/update_s": t2 - t1, "perf/step_s": t2 - t0,
                "perf/tokens_per_s": s.batch.num_tokens / (t2 - t0)})
    run.failures.record(step, s.scores.failures, s.scores.first_error)
    return row, _samples(run, step, s)


def update(run: Run, batch: dp.StepBatch, adv: torch.Tensor, guide=None) -> dict[str, float]:
    """``epochs_per_step`` clipped policy-gradient steps on one batch of rollouts. adv: (N,).
    ``guide``: the step's directive targets for this rank's rows (``train.teacher.Guide``) or None.

    Data-parallel: each rank backpropagates its own rows and the gradients are summed over ranks, scaled so the
    step equals one process's step on the global batch (``distributed.local_part``, ``Strategy.reduce``).
    """
    t, s = run.cfg.trainer, run.strategy
    local, adv, shares = dp.local_part(batch, adv, t.loss_agg)
    micro = s.micro_batch_size(local, t)
    d, teacher, extra = run.cfg.directive, None, {}
    if guide is not None and d.loss == "token_advantage" and bool(guide.hinted.any()):
        adv = adv.unsqueeze(1) + guide.token_bonus(d.coef, d.clip)  # (n, T): A_seq + the teacher's token term
    elif guide is not None and d.loss == "forward_ce":
        teacher, extra = guide, {"distill_coef": d.coef}
    with run.policy.mode(True):
        for _ in range(t.epochs_per_step):
            run.opt.zero_grad(set_to_none=True)
            loss, stats = backward_loss(run.policy, run.ref, local, adv, micro_batch_size=micro,
                                        micro_batch_tokens=t.micro_batch_tokens,
                                        temperature=run.cfg.rollout.temperature, top_p=run.cfg.rollout.top_p,
                                        clip_eps=t.clip_eps, clip_eps_high=t.clip_eps_high, kl_coef=t.kl_coef,
                                        loss_agg=t.loss_agg, max_tokens=run.cfg.rollout.max_new_tokens,
                                        scale=s.loss_scale(shares), teacher=teacher, **extra)
            loss, stats = s.reduce(run.policy.module, loss, stats, shares)
            gn = s.grad_norm(torch.nn.utils.clip_grad_norm_(run.params, t.max_grad_norm))
            guards.check_update(loss, gn)  # a non-finite loss or gradient never reaches the weights
            run.opt.step()
            guards.check_params(run.policy.module, run.params)
    s.sync_engine(run.policy, run.engine)
    return {"loss/total": loss, **stats, "loss/grad_norm": gn}


def step_metrics(run: Run, s: Scored, adv: torch.Tensor, diag: dict) -> dict[str, float]:
    """Rewards, advantages, the method's diagnostics, the weighted reward, success and failure counts of a step."""
    r, mask = (s.rewards, s.mask) if s.rewards.dim() == 3 else advantages.reduce_answers(s.rewards, s.mask)
    row = advantages.summarize(r, adv, mask, run.names)
    for key, v in diag.items():
        row.update(_expand(key, v, run.names))
    w = (r * run.weights).sum(-1)
    row["reward/weighted/mean"] = float(w[mask].mean()) if mask.any() else float("nan")
    if s.success is not None:
        row["success/rate"] = float(s.success[mask].float().mean()) if mask.any() else float("nan")
    row.update({f"reward_fail/{n}": c for n, c in s.scores.failures.items()})
    return row


def _calls(run: Run, steps: int) -> int:
    """Completions (answers, with several per completion) each objective scored in ``steps`` steps."""
    t = run.cfg.trainer
    return steps * t.batch_prompts * t.group_size * run.scoring.answers


def _expand(key: str, v, names: list[str]) -> dict[str, float]:
    """A (K,) tensor becomes one metric per objective name, any other vector one per index."""
    if isinstance(v, torch.Tensor) and v.dim() > 0:
        labels = names if v.numel() == len(names) else [str(i) for i in range(v.numel())]
        return {f"{key}/{n}": float(x) for n, x in zip(labels, v.reshape(-1).tolist())}
    return {key: float(v)}


def _samples(run: Run, step: int, s: Scored) -> list[dict]:
    """A few completions with their reward vectors; a multi-answer one's ``rewards`` is the mean over the answers
    it wrote, and ``answer_rewards`` lists the written answers' vectors."""
    texts, G, k = s.batch.texts, run.cfg.trainer.group_size, run.cfg.trainer.samples_per_step
    n = len(texts)
    flat = s.rewards.reshape(n, -1, s.rewards.shape[-1])  # (N, answers, K)
    written = s.mask.reshape(n, -1)  # (N, answers)
    mean = advantages.reduce_answers(flat.unsqueeze(0), written.unsqueeze(0))[0][0]  # (N, K)
    picks = sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)}) if k else []
    return [{"step": step, "prompt": s.rows[i // G]["prompt"], "completion": texts[i],
             "rewards": dict(zip(run.names, mean[i].tolist())),
             **({"answer_rewards": flat[i][written[i]].tolist()} if flat.shape[1] > 1 else {})} for i in picks]


def run_train(cfg: DictConfig | Config, run_dir: Path | None = None, resume: bool = False) -> Path:
    """Train one run to completion; returns its directory. Metrics reach disk every step, whatever happens.

    ``resume`` (``mo-rl train --resume``), or ``trainer.resume=auto`` meeting an earlier run in the same directory,
    continues from its last checkpoint; per-step seeds make the continued steps those of an uninterrupted run.
    Under ``torchrun`` every rank runs this; only rank 0 (``lead``) writes the run directory.
    """
    run = setup(cfg, run_dir, resume)
    restore_sigterm = guards.on_sigterm()  # SIGTERM and SIGHUP stop the run like Ctrl-C
    c, t, lead = run.cfg, run.cfg.trainer, run.dist.lead
    first, elapsed, last = ckpt.restore_run(run) if run.resume else (0, 0.0, {})
    start = time.time() - elapsed  # a resumed run's clock goes on from its checkpoint
    summary = {"status": "running", "method": run.method, "task": c.task.name, "seed": t.seed,
               "objectives": run.names, "weights": run.weights.tolist(), "steps_done": first, "final": last}
    run.writer.write_summary(summary)
    step = first
    try:
        with progress_bar(t.steps, f"{c.task.name}/{run.method}", run.names, first,
                          t.log_every if lead else 0) as bar:
            for step in range(first, t.steps):
                row, samples = train_step(run, step)
                row["time"] = time.time() - start
                run.writer.log_metrics(row)  # the one place a metrics row is written
                run.writer.log_samples(samples)
                if run.failures.dirty and lead:
                    run.failures.write(run.writer.path)
                summary.update(steps_done=step + 1, final=row, wall_time=row["time"])
                due = (t.checkpoint_every and (step + 1) % t.checkpoint_every == 0) or step + 1 == t.steps
                if due and run.strategy.writes_checkpoints:  # fsdp: every rank writes its shards
                    run.writer.sync()
                    ckpt.save_run(run, step + 1, row["time"])
                    run.writer.publish(step + 1)  # trackers get checkpointed steps only (results/loggers.py)
                bar.advance(row)
        run.failures.check_run(_calls(run, t.steps), t.fail_fast)  # an objective that never scored: failed
        final = run.writer.path / "checkpoints" / "final"
        try:
            run.strategy.save_final(run.policy, final)
        except Exception as e:
            guards.name_file(e, final)  # a full disk there: the message names it
            raise
        if t.keep_checkpoints == 0 and lead:
            ckpt.prune_steps(run.writer.path / "checkpoints")  # only checkpoints/final stays
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
        if lead and not summary.get("error", "").startswith("RewardFailure"):  # that error line says it all
            for line in run.failures.closing_lines(_calls(run, summary["steps_done"])):
                print(line, file=sys.stderr)
        try:
            guards.close(run.writer, summary, failing=summary["status"] != "completed")
        finally:
            run.writer.close(summary["status"])  # the trackers' runs end with the run's status
            if run.lock is not None:
                run.lock.release()
        dp.teardown(run.dist)
    return run.writer.path
