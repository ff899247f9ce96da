"""``mo-rl eval``: test-time search from a saved checkpoint: best@k, pass@k, Pareto coverage and diversity.

For each held-out prompt, n = max(ks) completions are sampled once. Every k-metric is the expectation over a
uniformly random k-subset of those n completions (one sample-size convention for all of them). A completion holding
several answers (``task.answers > 1``) contributes each written answer as a point; its value under a utility is the
best of its answers, and k always counts completions. For a scalar value v per completion, sorted ascending,
E[max of k] = sum_i v_(i) C(i-1, k-1) / C(n, k) (exact, ``expected_max_of_k``); a subset whose completions wrote no
answer is worth 0.
- ``best_at_k_weighted``: the best ``w . r`` of k samples, w the run's resolved objective weights: what a user with
  those weights gets by picking from k samples (shown first);
- ``best_at_k_dirichlet``: the same under random preferences: per Dirichlet(1) weighting lambda (the same
  ``num_weightings`` for every prompt and run) the estimator on ``lambda . r``, then the mean over weightings. This is
  vpo's own training objective, so it favours vpo by construction;
- ``pass_at_k``: ``1 - C(n - c, k) / C(n, k)``, c of the n completions solved (some answer meets the task's success
  threshold); ``null`` where the task defines no success;
- ``best_at_k_per_objective``: per objective, its own best value among k samples (``task=personas``: each group of
  users served the best of k for it); ``worst_off_at_k``: the lowest of those means over prompts (max-min fairness);
- ``hypervolume``: of the k samples' reward vectors above the reference ``hv_reference`` (default -0.1 for every
  objective, see ``HV_REFERENCE``); ``distinct_2``: distinct character bigrams of the k completions;
  ``reward_spread``: mean pairwise L2 distance of their points. These three average over all k-subsets when there
  are at most ``SUBSETS`` of them, else over ``SUBSETS`` random k-subsets drawn from (seed, n, k): the same subsets
  for every prompt and every run evaluated with that seed.

Each metric is a mean over prompts; ``per_prompt`` keeps the P values and ``ci`` a 95% percentile-bootstrap interval
over prompts (``scipy.stats.bootstrap``, ``BOOTSTRAP_RESAMPLES`` resamples, seed ``BOOTSTRAP_SEED``; a metric that
is constant over prompts gets [v, v]). ``per_prompt["worst_off_at_k"]`` is each prompt's lowest objective (its mean
is not ``worst_off_at_k``, the lowest mean); the interval of ``worst_off_at_k`` resamples prompts and takes the
lowest per-objective mean. Written to ``<run>/eval.json``.

``--base`` evaluates the untrained model of each distinct (task, objectives, model, rollout) among the runs the same
way and writes a run-like directory ``<root>/base/<task>-<hash>/`` (``evaluate_base``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from mo_rl.analysis.pareto import dirichlet_weights, distinct_n, hypervolume, mean_pairwise_distance
from mo_rl.checks import MAX_GROUP_SIZE, MAX_ROLLOUTS_PER_STEP
from mo_rl.errors import MoRLError
from mo_rl.files import atomic_write, current_dir

# Rewards lie in [0, 1]. A reference at 0 gives a sample with any objective at 0 no volume at all (hv@16 measured
# 0.01-0.06 on real tasks whose pass/fail objectives are mostly 0). A fixed margin of a tenth of the range below the
# lowest possible reward keeps every sample's contribution and the same reference for every run and eval, where one
# taken from the observed nadir would move with the samples.
HV_REFERENCE = -0.1
SUBSETS = 64  # k-subsets averaged for hypervolume, distinct_2 and reward_spread when C(n, k) is larger
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95
SCALAR_METRICS = ("best_at_k_weighted", "best_at_k_dirichlet", "pass_at_k", "hypervolume", "worst_off_at_k",
                  "distinct_2", "reward_spread")


def _pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def check_sizes(ks, prompts: int) -> list[int]:
    """The sorted distinct budgets, checked against the caps a training step has (``checks.py``). Raises MoRLError."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise MoRLError(f"--k values {ks} must be integers >= 1")
    if prompts < 1:
        raise MoRLError(f"--prompts={prompts} must be >= 1")
    if ks[-1] > MAX_GROUP_SIZE or prompts * ks[-1] > MAX_ROLLOUTS_PER_STEP:
        raise MoRLError(f"--k {ks[-1]} x --prompts {prompts} is beyond what one eval can hold in memory (every "
                        f"completion is sampled and scored together); allowed: k <= {MAX_GROUP_SIZE} and prompts * "
                        f"max k <= {MAX_ROLLOUTS_PER_STEP} (typical: k 1-64, prompts 8-256)")
    return ks


def resolve_hv_ref(ref, n_objectives: int) -> list[float]:
    """``--hv-ref``: None -> ``HV_REFERENCE`` for every objective; one number -> that for every objective; else one
    number per objective. Raises MoRLError."""
    vals = [HV_REFERENCE] if ref is None else [float(x) for x in np.atleast_1d(np.asarray(ref, dtype=float))]
    if len(vals) == 1:
        vals = vals * n_objectives
    if len(vals) != n_objectives or not all(math.isfinite(v) for v in vals):
        raise MoRLError(f"--hv-ref {vals} must be one finite number or one per objective ({n_objectives})")
    return vals


def best_of_k_weights(n: int, k: int) -> np.ndarray:
    """(n,): the probability that the i-th smallest of n values is the largest of a uniform random k-subset,
    C(i-1, k-1) / C(n, k) (integer arithmetic, then one rounding)."""
    if not 1 <= k <= n:
        raise MoRLError(f"k={k} must be in 1..{n} (the completions sampled)")
    total = math.comb(n, k)
    return np.array([math.comb(i - 1, k - 1) / total for i in range(1, n + 1)])


def expected_max_of_k(values, k: int) -> np.ndarray:
    """E[max of a uniform random k-subset] along the last axis of ``values`` (..., n); ``-inf`` marks a completion
    that offers nothing (no answer written), and a subset of only those is worth 0. -> (...)."""
    v = np.sort(np.asarray(values, dtype=np.float64), axis=-1)
    v = np.where(np.isneginf(v), 0.0, v)  # the lowest ranks: they are the max only of all-empty subsets
    return v @ best_of_k_weights(v.shape[-1], k)


def completion_values(r: np.ndarray, valid: np.ndarray, utilities: np.ndarray) -> np.ndarray:
    """Each completion's best answer under each utility. r: (P, n, M, K), valid: (P, n, M), utilities: (K, U)
    -> (P, n, U), ``-inf`` where a completion wrote no answer."""
    u = np.einsum("pnmk,ku->pnmu", r, utilities)
    return np.where(valid[..., None], u, -np.inf).max(2)


def subsets(n: int, k: int, seed: int) -> np.ndarray:
    """(S, k) completion indices: every k-subset when there are at most ``SUBSETS``, else ``SUBSETS`` uniform random
    ones from (seed, n, k)."""
    if math.comb(n, k) <= SUBSETS:
        return np.array(list(itertools.combinations(range(n), k)), dtype=int).reshape(-1, k)
    rng = np.random.default_rng([seed, n, k])
    return np.argsort(rng.random((SUBSETS, n)), axis=1)[:, :k]


def interval(values, statistic=None) -> list[float] | None:
    """95% percentile-bootstrap interval over prompts. values: (P,) with None allowed (dropped), or (P, K) with
    ``statistic`` mapping per-column arrays to one number (resampled by prompt, columns together). -> [lo, hi];
    [v, v] when the values do not vary; None when no value is known."""
    from scipy.stats import bootstrap

    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return None
    if statistic is None:
        if np.ptp(x) == 0:
            return [float(x[0]), float(x[0])]
        data, stat, paired = (x,), np.mean, False
    else:
        if np.ptp(x, axis=0).max() == 0:
            v = float(statistic(*x.T, axis=-1))
            return [v, v]
        data, stat, paired = tuple(x.T), statistic, True
    res = bootstrap(data, stat, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=CI_LEVEL, method="percentile",
                    paired=paired, vectorized=True, rng=np.random.default_rng(BOOTSTRAP_SEED))
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def _min_of_means(*columns, axis=-1):
    return np.min(np.stack([np.mean(c, axis=axis) for c in columns]), axis=0)


def search_metrics(r: np.ndarray, valid: np.ndarray, texts: list[list[str]], weights: np.ndarray, k: int,
                   lambdas: np.ndarray, success: tuple[int, float] | None = None, solved: np.ndarray | None = None,
                   hv_ref=None, seed: int = 0) -> dict:
    """One budget k's entry of eval.json ``results``. r: (P, n, M, K), valid: (P, n, M), texts: [P][n],
    weights: (K,), lambdas: (D, K); ``solved`` (P, n) or ``success`` (objective index, threshold) for pass@k;
    ``hv_ref``: see ``resolve_hv_ref``; ``seed``: of the k-subsets."""
    P, n, _, K = r.shape
    ref = resolve_hv_ref(hv_ref, K)
    weights, lambdas = np.asarray(weights, dtype=np.float64), np.asarray(lambdas, dtype=np.float64)
    pp: dict = {"best_at_k_weighted": expected_max_of_k(completion_values(r, valid, weights[:, None])[..., 0], k)}
    dirichlet = expected_max_of_k(np.moveaxis(completion_values(r, valid, lambdas.T), 1, 2), k)  # (P, D)
    pp["best_at_k_dirichlet"] = dirichlet.mean(1)
    if solved is None and success is not None:
        solved = ((r[..., success[0]] >= success[1]) & valid).any(-1)
    pp["pass_at_k"] = ([None] * P if solved is None else
                       np.array([_pass_at_k(n, int(c), k) for c in np.asarray(solved).sum(1)]))
    per_obj = expected_max_of_k(np.moveaxis(completion_values(r, valid, np.eye(K)), 1, 2), k)  # (P, K)
    pp["worst_off_at_k"] = per_obj.min(1)
    idx = subsets(n, k, seed)
    hv, d2, spread = np.zeros((P, len(idx))), np.zeros((P, len(idx))), np.zeros((P, len(idx)))
    for p in range(P):
        for s, sub in enumerate(idx):
            pts = r[p, sub][valid[p, sub]]
            hv[p, s] = hypervolume(pts, ref=ref)
            spread[p, s] = mean_pairwise_distance(pts) if len(pts) else 0.0
            d2[p, s] = distinct_n([" ".join(texts[p][j]) for j in sub], 2)
    pp["hypervolume"], pp["distinct_2"], pp["reward_spread"] = hv.mean(1), d2.mean(1), spread.mean(1)
    means = {m: (None if pp[m][0] is None else float(np.mean(pp[m]))) for m in SCALAR_METRICS}
    means["worst_off_at_k"] = float(per_obj.mean(0).min())  # the worst-off objective's (persona's) best@k
    ci = {m: interval(pp[m]) for m in SCALAR_METRICS if m != "worst_off_at_k"}
    ci["worst_off_at_k"] = interval(per_obj, _min_of_means)
    out = {"k": k, "best_at_k_weighted": means["best_at_k_weighted"],
           "best_at_k_dirichlet": means["best_at_k_dirichlet"], "pass_at_k": means["pass_at_k"],
           "hypervolume": means["hypervolume"], "best_at_k_per_objective": per_obj.mean(0).tolist(),
           "worst_off_at_k": means["worst_off_at_k"], "distinct_2": means["distinct_2"],
           "reward_spread": means["reward_spread"]}
    out["per_prompt"] = {m: [None if v is None else float(v) for v in pp[m]] for m in SCALAR_METRICS}
    out["per_prompt"]["best_at_k_per_objective"] = per_obj.tolist()
    out["ci"] = {m: ci[m] for m in SCALAR_METRICS}
    return out


def _load_yaml(path: Path):
    try:
        return OmegaConf.load(path)
    except FileNotFoundError as e:
        raise MoRLError(f"{str(path)!r} does not exist; eval needs a run directory with its config.yaml") from e
    except Exception as e:  # noqa: BLE001 - a YAML syntax error, a non-mapping, an unreadable file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MoRLError(f"cannot read {str(path)!r} as a run config ({first})") from e


def run_config(run_dir: Path):
    """The run's own ``config.yaml`` as a typed ``Config`` (its ``objectives.resolved`` set aside)."""
    from omegaconf.errors import OmegaConfBaseException

    from mo_rl.config import Config, explain_compose_error, register_configs
    from mo_rl.train.run_identity import read_saved_config

    register_configs()
    saved = read_saved_config(run_dir)  # a damaged one: MoRLError, and eval goes on with the other runs
    (saved.get("objectives") or {}).pop("resolved", None)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), saved))
    except OmegaConfBaseException as e:
        raise MoRLError(f"{str(run_dir / 'config.yaml')!r} is damaged: {explain_compose_error(e)}") from e


def sample_points(run_dir: Path, k_max: int, prompts: int, seed: int, device: str = "cpu", base: bool = False):
    """Sample k_max completions for each held-out prompt from the run's final checkpoint (``base``: from the model
    the run trained from, its config's ``model``), through the training path's ``rollout_and_score``: prompts, chat
    template, objectives, failure value, answers and conditions all come from the run's own config. The sampling
    shows its progress on stderr (``mo_rl.progress.work``: a bar, or a plain line every tenth of the prompts).

    -> (rewards (P, k_max, M, K) numpy, valid (P, k_max, M) bool, texts [P][k_max], config dict, ``Scored``).
    """
    from mo_rl.models import load_policy
    from mo_rl.pipeline.rollout_score import Scoring, rollout_and_score
    from mo_rl.progress import work
    from mo_rl.rollout import SamplingParams, make_engine
    from mo_rl.tasks.base import make_task

    run_dir = Path(run_dir)
    ckpt = current_dir(run_dir / "checkpoints" / "final")  # or the copy a crash during its replacement set aside
    if not base and not (ckpt / "config.json").is_file():
        raise MoRLError(f"{str(run_dir)!r} has no checkpoints/final; eval needs a run that finished training")
    c = run_config(run_dir)
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    task = make_task(c.task.name, **c.task.options)
    names = cfg["objectives"]["resolved"]["names"]
    # the final checkpoint holds merged weights (no adapters) and its own tokenizer (its chat template included);
    # the initial model is the config's, without adapters (LoRA starts at zero, so the two are the same policy)
    model = replace(c.model, lora_r=0, gradient_checkpointing=False)
    policy = load_policy(model if base else replace(model, path=str(ckpt)), device=device)
    scoring = replace(Scoring.from_config(c, task, names), fail_fast=False)  # a failure scores failure_value
    rows = task.sample(random.Random(seed), prompts, "eval")
    ro = c.rollout
    with work(prompts, "sampling base" if base else "sampling") as advance:  # stderr; nests in eval's bar over runs
        s = rollout_and_score(make_engine("hf", policy), task, scoring, rows, k_max,
                              SamplingParams(ro.max_new_tokens, ro.temperature, ro.top_p, seed), step=-1,
                              progress=advance)  # a tenth of the prompts at a time, each with its own seed
    m = c.task.answers
    r, valid = s.rewards.view(prompts, k_max, m, -1), s.mask.view(prompts, k_max, m)
    texts = [s.batch.texts[i * k_max:(i + 1) * k_max] for i in range(prompts)]
    return r.cpu().numpy(), valid.cpu().numpy(), texts, cfg, s


def _evaluate(run_dir: Path, ks, prompts: int, seed: int, num_weightings: int, device: str, hv_ref, base: bool,
              warn=None) -> dict:
    """Sample and compute eval.json's content (nothing written)."""
    ks = check_sizes(ks, prompts)
    torch.manual_seed(seed)
    r, valid, texts, cfg, scored = sample_points(run_dir, ks[-1], prompts, seed, device, base=base)
    names = cfg["objectives"]["resolved"]["names"]
    weights = np.asarray(cfg["objectives"]["resolved"]["weights"], dtype=float)
    ref = resolve_hv_ref(hv_ref, len(names))
    lambdas = dirichlet_weights(len(names), num_weightings, seed) * (weights > 0)
    lambdas = lambdas / lambdas.sum(1, keepdims=True)
    solved = None if scored.success is None else scored.success.view(len(texts), -1).cpu().numpy()
    low = [round(float(v), 4) for v in r[valid].min(0)] if valid.any() else None
    if warn is not None and low is not None and any(lo <= rf for lo, rf in zip(low, ref)):
        warn(f"hypervolume reference {ref} is not below the lowest reward sampled {low}: a sample with an "
             "objective at or below it adds no volume (set --hv-ref lower)")
    results = [search_metrics(r, valid, texts, weights, k, lambdas, solved=solved, hv_ref=ref, seed=seed) for k in ks]
    return {"checkpoint": "base" if base else "final", "prompts": prompts, "seed": seed,
            "num_weightings": num_weightings, "answers_per_completion": int(r.shape[2]), "objectives": names,
            "weights": weights.tolist(), "hv_reference": ref, "results": results}


def _dump(data: dict) -> str:
    from mo_rl.results.writer import _clean

    return json.dumps(_clean(data), indent=2) + "\n"


def evaluate_run(run_dir, ks=(1, 4, 16), prompts: int = 32, seed: int = 1234, num_weightings: int = 256,
                 device: str = "cpu", hv_ref=None, warn=None) -> dict:
    """Evaluate one run directory's final checkpoint; writes and returns ``eval.json``'s content. ``warn``: called
    with a one-line message when the hypervolume reference is not below the sampled rewards."""
    run_dir = Path(run_dir)
    out = _evaluate(run_dir, ks, prompts, seed, num_weightings, device, hv_ref, False, warn)
    atomic_write(run_dir / "eval.json", _dump(out))
    return out


# the untrained baseline ------------------------------------------------------------------------------------------

def is_base_dir(run_dir) -> bool:
    """A directory ``evaluate_base`` wrote (its config's ``method.name`` is ``base``)."""
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(Path(run_dir) / "config.yaml"))
    except Exception:  # noqa: BLE001 - unreadable: not one of ours; evaluating it reports why
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("method"), dict) and cfg["method"].get("name") == "base"


def base_identity(cfg: dict) -> dict:
    """What the untrained model's eval depends on: task and its options, objectives and weights, the model as
    loaded (not its LoRA or memory settings, which leave the initial policy unchanged), the rollout settings."""
    o, m, ro = cfg["objectives"], cfg["model"], cfg["rollout"]
    return {"task": cfg["task"],
            "objectives": {"names": o["resolved"]["names"], "weights": o["resolved"]["weights"],
                           "conditions": o.get("conditions") or {}, "failure_value": o.get("failure_value"),
                           "modules": o.get("modules") or []},
            "model": {key: m.get(key) for key in ("path", "dtype", "impl", "chat_template")},
            "rollout": {key: ro.get(key) for key in ("max_new_tokens", "temperature", "top_p")}}


def base_dir_for(run_dir, root) -> Path:
    """``<root>/base/<task>-<8 hex of the identity's sha256>``."""
    cfg = OmegaConf.to_container(_load_yaml(Path(run_dir) / "config.yaml"))
    try:
        ident = json.dumps(base_identity(cfg), sort_keys=True)
    except (KeyError, TypeError, AttributeError) as e:
        raise MoRLError(f"{str(Path(run_dir) / 'config.yaml')!r} lacks {e} (task, objectives.resolved, model, "
                        "rollout); is it a config mo-rl train wrote?") from e
    return Path(root) / "base" / f"{cfg['task']['name']}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"


def base_root(paths) -> Path:
    """The common parent of the given paths: a run directory's parent, any other directory itself."""
    from mo_rl.results.reader import is_run_dir

    dirs = [os.path.normpath(Path(p).parent if is_run_dir(Path(p)) else p) for p in paths]
    try:
        return Path(os.path.commonpath(dirs))
    except ValueError:  # relative and absolute paths mixed
        return Path(os.path.commonpath([os.path.abspath(d) for d in dirs]))


def _settings(ev: dict) -> tuple:
    return (ev.get("checkpoint"), ev.get("prompts"), ev.get("seed"), ev.get("num_weightings"),
            ev.get("hv_reference"), [r.get("k") for r in ev.get("results") or []])


def evaluate_base(run_dir, root, ks=(1, 4, 16), prompts: int = 32, seed: int = 1234, num_weightings: int = 256,
                  device: str = "cpu", hv_ref=None, warn=None) -> tuple[Path, dict | None]:
    """Evaluate the model ``run_dir`` trained from, with its prompts, objectives and rollout settings, into the
    run-like directory ``base_dir_for(run_dir, root)``: ``config.yaml`` (the run's, ``method: {name: base}`` and
    ``trainer.seed: null``), an empty ``metrics.jsonl``, ``eval.json`` (checkpoint ``base``) and ``summary.json``
    (written last). -> (that directory, eval.json's content; None when it already holds an eval with these
    settings, which is then kept)."""
    import yaml

    run_dir = Path(run_dir)
    out_dir = base_dir_for(run_dir, root)
    ks = check_sizes(ks, prompts)
    cfg = OmegaConf.to_container(_load_yaml(run_dir / "config.yaml"))
    ref = resolve_hv_ref(hv_ref, len(cfg["objectives"]["resolved"]["names"]))
    want = ("base", prompts, seed, num_weightings, ref, ks)
    try:
        old_ev = json.loads((out_dir / "eval.json").read_text())
        done = json.loads((out_dir / "summary.json").read_text()).get("status") == "completed"
        if done and _settings(old_ev) == want:
            return out_dir, None
    except (OSError, ValueError, AttributeError):
        pass
    out = _evaluate(run_dir, ks, prompts, seed, num_weightings, device, ref, True, warn)
    cfg["method"] = {"name": "base"}
    cfg.setdefault("trainer", {})["seed"] = None  # one baseline serves every seed
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").unlink(missing_ok=True)  # incomplete until the new summary lands
    atomic_write(out_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    atomic_write(out_dir / "metrics.jsonl", "")
    atomic_write(out_dir / "eval.json", _dump(out))
    summary = {"status": "completed", "method": "base", "task": cfg["task"]["name"], "seed": None,
               "objectives": out["objectives"], "weights": out["weights"], "steps_done": 0}
    atomic_write(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return out_dir, out
