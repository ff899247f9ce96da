"""``mo-rl diagnose``: which regime is this task in? Balance (dvao and friends), spread (vpo), or a gate.

It samples G rollouts for N prompts from the initial policy (no training, nothing written to disk), scores every
completion twice, and reads off the statistics that decide the question:
- per objective: base rate (mean), within-group std, the fraction of zero-spread groups (no gradient there), and
  the noise share: half the mean squared difference of the two scorings of the same completion, over the
  within-group variance (Bessel's, so both are unbiased; 1: the objective's spread inside a group is all noise);
- between objectives: the within-group correlation matrix (rewards centred in their group, pooled over groups),
  the same corrected for the noise (Spearman's attenuation correction, ``rho / sqrt((1 - n_i)(1 - n_j))``), and
  the share of the within-group variance the first principal component of the correlation matrix explains;
- dvao's effective weights on this batch.
The second scoring shifts the ``index`` column by N: a reward that draws its randomness per (step, index), as the
built-in noisy ones do so that reruns repeat, is redrawn; a reward with its own randomness differs anyway.

Recommendation (thresholds in ``RULES``, set before the regime map was measured): objectives whose noise share is
at least 0.5 are ``noise``, those flat in at least 90% of the groups are ``flat``. Among the non-flat ones with
weight > 0 (noisy ones included: noise weakens a correlation but does not make one significant), a pair whose
within-group correlation is negative beyond sampling error (Fisher ``z = atanh(rho) sqrt(n - 3) <= -2``, n the
within-group degrees of freedom, ``sum_groups (valid - 1)``) trades off: ``spread`` (vpo); otherwise ``balance``
(dvao); no non-flat objective with weight > 0 at all: ``flat``, no method (nothing to learn from these
rollouts). A pass/fail objective (values only 0 and 1) with a base rate under 0.5 is named as a ``gate`` candidate:
if it is a rubric that must hold, gate it rather than weigh it.
Two earlier rules, replaced: noise-corrected rho <= -0.25 called ``conflicting`` balance (it reads -0.23 at the
initial policy, where most characters are neither vowels nor digits: a real trade-off shows as a weak but
significant correlation); leaving ``noise`` objectives out of the test missed the trade-off of ``task=regime
task.options.rho=-1 task.options.noise=0.3`` (correlation -0.63, noise share 0.57).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from mo_rl import advantages
from mo_rl.advantages._stats import center, group_flat, group_std

RULES = {"noise_share": 0.5, "flat_frac": 0.9, "conflict_z": -2.0, "gate_base_rate": 0.5}


@dataclass
class Sampled:
    names: list[str]
    weights: Tensor  # (K,) normalized
    rewards: Tensor  # (P, G, K) float64, answer means for multi-answer tasks
    again: Tensor  # (P, G, K) the same completions scored a second time
    mask: Tensor  # (P, G) bool
    texts: list[str]


def rollout_and_score(cfg, prompts: int, group: int, seed: int) -> Sampled:
    """Sample ``group`` completions for ``prompts`` prompts from the initial policy and score them twice.

    The one place diagnose touches the training pieces (task, policy, engine, scoring), so it can follow the
    training loop's own rollout-and-score function wherever that goes.
    """
    from dataclasses import replace

    from mo_rl.config import objective_set, validate
    from mo_rl.models import load_policy
    from mo_rl.rewards.score import apply_conditions, repeat_rows, score_rollouts
    from mo_rl.rollout import SamplingParams, make_engine
    from mo_rl.tasks.base import make_task
    from mo_rl.train import rollout_score
    from mo_rl.train.loop import resolve_device

    c = validate(cfg)
    task = make_task(c.task.name, **c.task.options)
    names, raw = objective_set(c, task)
    torch.manual_seed(seed)
    policy = load_policy(c.model, device=resolve_device(c.trainer.device))
    engine = make_engine(c.rollout.engine, policy, **c.rollout.engine_options())
    scoring = replace(rollout_score.Scoring.from_config(c, task, names), fail_fast=False)
    rows = task.sample(random.Random(seed), prompts, "train")
    ro = c.rollout
    s = rollout_score.rollout_and_score(engine, task, scoring, rows, group,
                                        SamplingParams(ro.max_new_tokens, ro.temperature, ro.top_p, seed), step=0)
    # the second scoring of the same completions: the index column shifted by N redraws a per-(step, index) noise
    rep, columns = repeat_rows(rows, group)
    r2, valid2, _ = score_rollouts(scoring.fns, rep, s.batch.texts, columns, 0, scoring.answers, scoring.delimiter,
                                   scoring.failure_value, first_index=len(s.batch.texts), timeout_s=scoring.timeout_s)
    r2 = apply_conditions(r2, names, scoring.conditions).to(torch.float32)  # as rollout_and_score's rewards
    r2, valid2 = r2.view(prompts, group, *r2.shape[1:]), valid2.view(prompts, group, *valid2.shape[1:])
    scored = []
    for r, valid in ((s.rewards.cpu(), s.mask.cpu()), (r2, valid2)):
        if scoring.answers > 1:
            r, valid = advantages.reduce_answers(r, valid)
        scored.append((r.reshape(prompts, group, -1).double(), valid.reshape(prompts, group)))
    w = torch.tensor(raw, dtype=torch.float64)
    return Sampled(names, w / w.sum(), scored[0][0], scored[1][0], scored[0][1] & scored[1][1], s.batch.texts)


def statistics(r: Tensor, again: Tensor, mask: Tensor, weights: Tensor) -> dict[str, Tensor]:
    """The diagnose numbers, batched. r, again: (P, G, K) float; mask: (P, G) bool; weights: (K,).

    -> mean, within_std, frac_zero_spread, noise_share, dvao_weight: (K,); corr, corr_denoised: (K, K);
    pc1_share, dof (within-group degrees of freedom): scalars. A group with < 2 valid rollouts enters no
    within-group statistic.
    """
    live = mask.sum(1) >= 2
    r, again, mask = r[live], again[live], mask[live]
    m = mask.unsqueeze(-1).to(r.dtype)
    n = m.sum((0, 1)).clamp_min(1)
    mean = (r * m).sum((0, 1)) / n
    sd = group_std(r, mask, False).squeeze(1)  # (P, K), population std as everywhere
    # the noise share compares two unbiased variances: Bessel's within-group variance against the noise variance
    var = (group_std(r, mask, True).squeeze(1) ** 2).mean(0) if len(sd) else torch.zeros_like(mean)
    noise_var = ((r - again) ** 2 / 2 * m).sum((0, 1)) / n
    noise_share = torch.where(var > 0, (noise_var / var.clamp_min(1e-300)).clamp(0, 1), torch.zeros_like(var))
    dev = center(r, mask)
    cov = torch.einsum("pgk,pgl->kl", dev, dev)
    scale = cov.diagonal().sqrt()
    ok = scale > 0
    corr = torch.where(ok[:, None] & ok[None, :], cov / (scale[:, None] * scale[None, :]).clamp_min(1e-300), 0.0)
    keep = (1 - noise_share).clamp_min(1e-6).sqrt()
    denoised = (corr / (keep[:, None] * keep[None, :])).clamp(-1, 1).fill_diagonal_(1.0)
    eig = torch.linalg.eigvalsh(corr[ok][:, ok]) if bool(ok.any()) else torch.ones(1, dtype=r.dtype)
    dvao = advantages.diagnose("dvao", r, weights.to(r.dtype), mask)["dvao/weight"]
    flat = group_flat(r, mask).squeeze(1).to(r.dtype).mean(0) if len(r) else torch.ones_like(mean)
    return {"mean": mean, "within_std": sd.mean(0) if len(sd) else torch.zeros_like(mean),
            "frac_zero_spread": flat, "noise_share": noise_share, "dvao_weight": dvao, "corr": corr,
            "corr_denoised": denoised, "pc1_share": eig.max() / eig.sum().clamp_min(1e-300),
            "dof": (mask.sum(1) - 1).sum().to(r.dtype)}


def recommend(names: list[str], weights: Tensor, stats: dict[str, Tensor], binary: list[bool]) -> dict:
    """Labels per objective and the regime, with the numbers behind it (see the module docstring)."""
    labels, reasons = {}, []
    for k, name in enumerate(names):
        ns, fz = float(stats["noise_share"][k]), float(stats["frac_zero_spread"][k])
        if fz >= RULES["flat_frac"]:
            labels[name] = "flat"
            reasons.append(f"{name} is flat: no spread in {fz:.0%} of groups (>= {RULES['flat_frac']:.0%})")
        elif ns >= RULES["noise_share"]:
            labels[name] = "noise"
            reasons.append(f"{name} looks like noise: {ns:.0%} of its within-group variance differs between two "
                           f"scorings of the same completion (>= {RULES['noise_share']:.0%}); dvao would give it "
                           f"weight {float(stats['dvao_weight'][k]):.2f}")
        else:
            labels[name] = "signal"
    # noisy objectives stay in the trade-off test: noise only weakens a correlation, never fakes a significant one
    signal = [k for k, n in enumerate(names) if labels[n] != "flat" and float(weights[k]) > 0]
    root = max(float(stats["dof"]) - 3, 1.0) ** 0.5
    pairs = [(float(torch.atanh(stats["corr"][i, j].clamp(-0.999999, 0.999999))) * root, i, j)
             for a, i in enumerate(signal) for j in signal[a + 1:]]
    worst = min(pairs) if pairs else None
    if worst is not None:
        z, i, j = worst
        fixed = (f" ({float(stats['corr_denoised'][i, j]):+.2f} corrected for noise)"
                 if labels[names[i]] == labels[names[j]] == "signal" else "")  # undefined for a noise objective
        said = (f"{names[i]} vs {names[j]}: within-group correlation {float(stats['corr'][i, j]):+.2f}{fixed}, "
                f"z = {z:+.1f}")
    if not signal:
        regime, method = "flat", None
        reasons.append("every weighted objective is flat: these rollouts give no method anything to learn; raise the "
                       "base rates first (the task's prompt, rollout.temperature, rollout.max_new_tokens, "
                       "trainer.group_size, a warm-up or a stronger model), then diagnose again")
    elif worst is not None and worst[0] <= RULES["conflict_z"]:
        regime, method = "spread", "vpo"
        reasons.append(f"they trade off: {said} <= {RULES['conflict_z']:+.0f}")
    else:
        regime, method = "balance", "dvao"
        reasons.append("no pair of objectives trades off: " + (
            f"the lowest is {said} > {RULES['conflict_z']:+.0f}" if worst
            else f"{len(signal)} objective(s) with spread"))
    reasons.append(f"first principal component: {float(stats['pc1_share']):.0%} of the within-group variance")
    gates = [n for k, n in enumerate(names) if binary[k] and labels[n] == "signal"
             and float(stats["mean"][k]) < RULES["gate_base_rate"]]
    for n in gates:
        reasons.append(f"{n} is pass/fail with base rate {float(stats['mean'][names.index(n)]):.2f}: if it is a "
                       f"rubric that must hold, gate it (method=gated method.gates=[{n}])")
    return {"regime": regime, "method": method, "labels": labels, "gate_candidates": gates, "reasons": reasons}


def diagnose(cfg, prompts: int = 32, group: int | None = None, seed: int | None = None) -> dict:
    """Sample, score twice, compute ``statistics`` and ``recommend``. -> a JSON-ready dict."""
    from mo_rl.config import validate

    c = validate(cfg)
    group = group or c.trainer.group_size
    seed = c.trainer.seed if seed is None else seed
    t0 = time.perf_counter()
    s = rollout_and_score(cfg, prompts, group, seed)
    stats = statistics(s.rewards, s.again, s.mask, s.weights)
    valid = s.rewards[s.mask]
    binary = [bool(((valid[:, k] == 0) | (valid[:, k] == 1)).all()) for k in range(len(s.names))]
    rec = recommend(s.names, s.weights, stats, binary)
    per = {name: {"weight": float(s.weights[k]), **{key: float(stats[key][k]) for key in
                  ("mean", "within_std", "frac_zero_spread", "noise_share", "dvao_weight")},
                  "label": rec["labels"][name]} for k, name in enumerate(s.names)}
    return {"task": c.task.name, "task_options": dict(c.task.options), "prompts": prompts, "group_size": group,
            "seed": seed, "objectives": per, "corr": stats["corr"].tolist(),
            "corr_denoised": stats["corr_denoised"].tolist(), "pc1_share": float(stats["pc1_share"]),
            "dof": int(stats["dof"]),
            "recommendation": rec, "seconds": time.perf_counter() - t0}


def render(report: dict) -> str:
    """The report as rich tables rendered to text."""
    import io

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    buf = io.StringIO()
    con = Console(file=buf, width=140, color_system=None, no_color=True)
    names = list(report["objectives"])
    opts = " ".join(f"{k}={v}" for k, v in report["task_options"].items())
    t = Table(title=f"{report['task']}{' ' + opts if opts else ''}: {report['prompts']} prompts x "
                    f"{report['group_size']} rollouts from the initial policy", title_justify="left")
    for col in ("objective", "weight", "mean", "within-group std", "zero-spread groups", "noise share",
                "dvao weight", "looks like"):
        t.add_column(col, justify="left" if col in ("objective", "looks like") else "right")
    for n, o in report["objectives"].items():
        t.add_row(n, f"{o['weight']:.2f}", f"{o['mean']:.3f}", f"{o['within_std']:.3f}",
                  f"{o['frac_zero_spread']:.0%}", f"{o['noise_share']:.0%}", f"{o['dvao_weight']:.2f}", o["label"])
    con.print(t)
    c = Table(title="within-group correlation (noise-corrected)", title_justify="left")
    signal = [report["objectives"][n]["label"] == "signal" for n in names]
    c.add_column("")
    for n in names:
        c.add_column(n, justify="right")
    for i, n in enumerate(names):
        c.add_row(n, *(f"{report['corr'][i][j]:+.2f}" + (f" ({report['corr_denoised'][i][j]:+.2f})"
                       if signal[i] and signal[j] and i != j else "") for j in range(len(names))))
    con.print(c)
    rec = report["recommendation"]
    con.print(f"recommendation: {rec['regime']}" + (f" (method={rec['method']})" if rec["method"] else
                                                    ": no method can learn from these rollouts"))
    for line in rec["reasons"]:
        con.print(f"  - {escape(line)}", soft_wrap=True)
    con.print(f"({report['seconds']:.1f} s)")
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
