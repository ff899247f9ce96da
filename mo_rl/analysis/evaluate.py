"""``mo-rl eval``: test-time search from a saved checkpoint: best@k, pass@k, Pareto coverage and diversity.

For each held-out prompt, k_max completions are sampled once and every k in ``ks`` uses the first k of them (an
unbiased draw of k samples). A completion holding several answers (``task.answers > 1``) contributes each answer as
a point, so methods trained for sets are credited for the sets they write; k always counts completions.
- ``best_at_k_fixed``: mean over prompts of the best ``w . r`` among the points (w: the run's objective weights);
- ``best_at_k_sampled``: the same under random preferences, the mean over Dirichlet(1) weightings of the best
  ``lambda . r`` (the expected utility), with the same weightings for every prompt and run;
- ``pass_at_k``: the unbiased estimator ``1 - C(n - c, k) / C(n, k)`` with n = k_max samples, c of them solved
  (some answer meets the task's success threshold); ``null`` where the task defines no success;
- ``hypervolume``: of the points' reward vectors, reference at the origin (rewards are in [0, 1]);
- ``best_at_k_per_objective``: per objective, the mean over prompts of its own best value among the points (with
  ``task=personas``: each group of users served the best of k samples for it); ``worst_off_at_k``: the lowest of
  those, the worst-off persona's score (max-min fairness);
- ``distinct_2``: distinct character bigrams over the k completions; ``reward_spread``: mean pairwise L2 distance
  of the points. Each is averaged over prompts and written to ``<run>/eval.json``.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from mo_rl.analysis.pareto import (best_per_objective, dirichlet_weights, distinct_n, expected_utility, hypervolume,
                                   mean_pairwise_distance, worst_off)
from mo_rl.errors import MoRLError
from mo_rl.results.writer import atomic_write


def _pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def run_config(run_dir: Path):
    """The run's own ``config.yaml`` as a typed ``Config`` (its ``objectives.resolved`` set aside)."""
    from omegaconf.errors import OmegaConfBaseException

    from mo_rl.config import Config, explain_compose_error, register_configs
    from mo_rl.train.checkpoint import read_saved_config

    register_configs()
    saved = read_saved_config(run_dir)  # a damaged one: MoRLError, and eval goes on with the other runs
    (saved.get("objectives") or {}).pop("resolved", None)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), saved))
    except OmegaConfBaseException as e:
        raise MoRLError(f"{str(run_dir / 'config.yaml')!r} is damaged: {explain_compose_error(e)}") from e


def sample_points(run_dir: Path, k_max: int, prompts: int, seed: int, device: str = "cpu"):
    """Sample k_max completions for each held-out prompt from the run's final checkpoint, through the training
    path's ``rollout_and_score``: prompts, chat template, objectives, failure value, answers and conditions all
    come from the run's own config.

    -> (rewards (P, k_max, M, K) numpy, valid (P, k_max, M) bool, texts [P][k_max], config dict, ``Scored``).
    """
    from dataclasses import replace

    from mo_rl.models import load_policy
    from mo_rl.rollout import SamplingParams, make_engine
    from mo_rl.tasks.base import make_task
    from mo_rl.train.rollout_score import Scoring, rollout_and_score

    ckpt = run_dir / "checkpoints" / "final"
    if not (ckpt / "config.json").is_file():
        raise MoRLError(f"{str(run_dir)!r} has no checkpoints/final; eval needs a run that finished training")
    c = run_config(run_dir)
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    task = make_task(c.task.name, **c.task.options)
    names = cfg["objectives"]["resolved"]["names"]
    # the final checkpoint holds merged weights (no adapters) and its own tokenizer (its chat template included)
    policy = load_policy(replace(c.model, path=str(ckpt), lora_r=0, gradient_checkpointing=False), device=device)
    scoring = replace(Scoring.from_config(c, task, names), fail_fast=False)  # a failure scores failure_value
    rows = task.sample(random.Random(seed), prompts, "eval")
    ro = c.rollout
    s = rollout_and_score(make_engine("hf", policy), task, scoring, rows, k_max,
                          SamplingParams(ro.max_new_tokens, ro.temperature, ro.top_p, seed), step=-1)
    m = c.task.answers
    r, valid = s.rewards.view(prompts, k_max, m, -1), s.mask.view(prompts, k_max, m)
    texts = [s.batch.texts[i * k_max:(i + 1) * k_max] for i in range(prompts)]
    return r.cpu().numpy(), valid.cpu().numpy(), texts, cfg, s


def search_metrics(r: np.ndarray, valid: np.ndarray, texts: list[list[str]], weights: np.ndarray, k: int,
                   lambdas: np.ndarray, success: tuple[int, float] | None = None,
                   solved: np.ndarray | None = None) -> dict:
    """Metrics of the first k completions per prompt. r: (P, n, M, K), valid: (P, n, M), lambdas: (D, K)."""
    out = {"k": k, "best_at_k_fixed": [], "best_at_k_sampled": [], "hypervolume": [], "distinct_2": [],
           "reward_spread": [], "pass_at_k": []}
    per_objective = []
    for p in range(r.shape[0]):
        pts = r[p, :k][valid[p, :k]]
        if len(pts) == 0:
            pts = np.zeros((1, r.shape[-1]))
        out["best_at_k_fixed"].append(float((pts @ weights).max()))
        out["best_at_k_sampled"].append(expected_utility(pts, weights=lambdas))
        out["hypervolume"].append(hypervolume(pts))
        out["distinct_2"].append(distinct_n([" ".join(t) for t in texts[p][:k]], 2))
        out["reward_spread"].append(mean_pairwise_distance(pts))
        per_objective.append(best_per_objective(pts))
        if solved is not None or success is not None:
            hit = solved[p] if solved is not None else ((r[p, :, :, success[0]] >= success[1]) & valid[p]).any(-1)
            out["pass_at_k"].append(_pass_at_k(r.shape[1], int(hit.sum()), k))
    out = {key: (v if key == "k" else (float(np.mean(v)) if v else None)) for key, v in out.items()}
    best = np.mean(per_objective, axis=0) if per_objective else np.zeros(r.shape[-1])
    out["best_at_k_per_objective"] = best.tolist()  # per objective (persona): mean over prompts of its best of k
    out["worst_off_at_k"] = worst_off(best)  # the worst-off objective's (persona's) best@k: max-min fairness
    return out


def evaluate_run(run_dir, ks=(1, 4, 16), prompts: int = 32, seed: int = 1234, num_weightings: int = 256,
                 device: str = "cpu") -> dict:
    """Evaluate one run directory; writes and returns ``eval.json``'s content."""
    run_dir = Path(run_dir)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise MoRLError(f"--k values {ks} must be integers >= 1")
    torch.manual_seed(seed)
    r, valid, texts, cfg, scored = sample_points(run_dir, ks[-1], prompts, seed, device)
    names = cfg["objectives"]["resolved"]["names"]
    weights = np.asarray(cfg["objectives"]["resolved"]["weights"], dtype=float)
    lambdas = dirichlet_weights(len(names), num_weightings, seed) * (weights > 0)
    lambdas = lambdas / lambdas.sum(1, keepdims=True)
    solved = None if scored.success is None else scored.success.view(len(texts), -1).cpu().numpy()
    results = [search_metrics(r, valid, texts, weights, k, lambdas, solved=solved) for k in ks]
    out = {"checkpoint": "final", "prompts": prompts, "seed": seed, "num_weightings": num_weightings,
           "answers_per_completion": int(r.shape[2]), "objectives": names, "results": results}
    atomic_write(run_dir / "eval.json", json.dumps(out, indent=2) + "\n")
    return out
