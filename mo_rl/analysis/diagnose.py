"""``mo-rl diagnose``: which regime is this task in, and which method wins for the measure you care about?

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

The structure (thresholds in ``RULES``): an objective that failed on at least half the completions is ``failed``,
one flat in at least 90% of the groups ``flat``, one whose noise share is at least 0.5 ``noise``. Among the others
with weight > 0 (noisy ones included), every pair (i, j) is tested for a trade-off: the one-sided p-value of its
within-group correlation (Fisher ``z = atanh(rho) sqrt(n - 3)``, n the within-group degrees of freedom) with Holm's
correction over the pairs, at family-wise level ``alpha``; and its weighted noise-corrected correlation
``h_ij rho~_ij`` at or below ``-tradeoff_floor`` (rho~ corrected for noise between two non-noise objectives, the
raw rho otherwise), with ``h_ij = 2 w_i w_j / (w_i^2 + w_j^2)`` (1 for equal weights,
~0.02 for a 0.01 against a 0.99 weight: a minor objective cannot make a trade-off). Both: the task has a trade-off
(``spread`` structure), otherwise ``balance``; no non-flat weighted objective: ``flat``, no method. A gate candidate
is a pass/fail objective (values only 0 and 1) with a base rate under 0.5 that is neither the task's success
objective nor its one highest-weighted goal, or one the user gates (``method.gates``).

The verdict, per measure (``parse_measure``: ``weighted``, ``best@K``, ``best_dirichlet@K``, ``worst@K``,
``pass@K:OBJ``; eval's names: best@K under the task's weights, best_dirichlet@K under random ones), follows the
regime map rather than the structure's name: the map cell (``regime_table.json``, written by
scripts/regime_agreement.py from the map's run records) nearest to this batch in (weighted trade-off, noise share)
among the cells of the same structure names the method that won that measure there: ``too close to call`` where
vpo and the best scalarizing method were within seed noise (two standard errors), ``regime clear, method too close
to call`` where only the two best methods were. A balancer that would give a ``noise`` objective more than its weight
(dvao, and grpo, which ranks a group as dvao does) is never named: the best other method of the cell is.
``pass@K:OBJ`` with OBJ a gate candidate is ``gate`` (the map holds no gated runs; the README's gating section has
the measurement).
Earlier rules, replaced: noise-corrected rho <= -0.25 called ``conflicting`` balance (a real trade-off shows as a
weak but significant correlation); leaving ``noise`` objectives out of the test missed the trade-off of
``rho=-1 noise=0.3`` (correlation -0.63, noise share 0.57); the minimum Fisher z over all pairs against -2, with
no correction, no effect floor and weights ignored, read K = 16 independent objectives as a trade-off 92% of the
time and rho = -0.05 as one at 2048 prompts; one method per regime (dvao for balance) whatever the measure was
right in 3 of 6 map cells on the weighted reward.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from mo_rl import advantages
from mo_rl.advantages._stats import center, group_flat, group_std
from mo_rl.errors import MoRLError

RULES = {"noise_share": 0.5, "flat_frac": 0.9, "alpha": 0.05, "tradeoff_floor": 0.15, "gate_base_rate": 0.5}
DEFAULT_MEASURES = ("weighted", "best@4")
MEASURE_FORMS = "weighted, best@K, best_dirichlet@K, worst@K, pass@K:OBJ"
MAX_PROMPTS, MAX_GROUP, MAX_ROLLOUTS, MAX_K = 4096, 1024, 65536, 1024  # a typo must not fill the memory
SPREAD = ("vpo",)
AMPLIFY = ("dvao", "grpo")  # effective weight w_k sigma_k / sum_l w_l sigma_l: more than w_k for a wide noise
TABLE = Path(__file__).with_name("regime_table.json")


@dataclass
class Sampled:
    names: list[str]
    weights: Tensor  # (K,) normalized
    rewards: Tensor  # (P, G, K) float64, answer means for multi-answer tasks
    again: Tensor  # (P, G, K) the same completions scored a second time
    mask: Tensor  # (P, G) bool
    texts: list[str]
    failures: dict[str, int] = field(default_factory=dict)  # completions each objective failed on (first scoring)
    first_error: dict[str, str] = field(default_factory=dict)


def rollout_and_score(cfg, prompts: int, group: int, seed: int, progress=None) -> Sampled:
    """Sample ``group`` completions for ``prompts`` prompts from the initial policy and score them twice.

    The one place diagnose touches the training pieces (task, policy, engine, scoring), so it can follow the
    training loop's own rollout-and-score function wherever that goes.
    """
    from dataclasses import replace

    from mo_rl.config import objective_set, validate
    from mo_rl.models import load_policy
    from mo_rl.pipeline import rollout_score
    from mo_rl.rewards.score import apply_conditions, repeat_rows, score_rollouts
    from mo_rl.rollout import SamplingParams, make_engine
    from mo_rl.tasks.base import make_task
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
                                        SamplingParams(ro.max_new_tokens, ro.temperature, ro.top_p, seed), step=0,
                                        progress=progress)
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
    return Sampled(names, w / w.sum(), scored[0][0], scored[1][0], scored[0][1] & scored[1][1], s.batch.texts,
                   dict(s.scores.failures), dict(s.scores.first_error))


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
    dvao = advantages.compute_with_diagnostics("dvao", r, weights.to(r.dtype), mask)[1]["dvao/weight"]
    flat = group_flat(r, mask).squeeze(1).to(r.dtype).mean(0) if len(r) else torch.ones_like(mean)
    return {"mean": mean, "within_std": sd.mean(0) if len(sd) else torch.zeros_like(mean),
            "frac_zero_spread": flat, "noise_share": noise_share, "dvao_weight": dvao, "corr": corr,
            "corr_denoised": denoised, "pc1_share": eig.max() / eig.sum().clamp_min(1e-300),
            "dof": (mask.sum(1) - 1).sum().to(r.dtype)}


def parse_measure(text: str) -> dict:
    """``weighted`` | ``best@K`` | ``best_dirichlet@K`` | ``worst@K`` | ``pass@K:OBJ`` -> {"name", "kind", "k",
    "objective"}, eval's names: best@K under the task's own weights, best_dirichlet@K under random Dirichlet(1)
    preferences. MoRLError."""
    t = str(text).strip()
    m = re.fullmatch(r"(best|best_dirichlet|worst)@(\d+)|pass@(\d+):([A-Za-z0-9_.:-]+)|weighted", t)
    if not m:
        raise MoRLError(f"unknown --measure {t!r}; allowed: {MEASURE_FORMS} (e.g. best@4, pass@4:first_char)")
    kind = "weighted" if t == "weighted" else (m.group(1) or "pass")
    k = 1 if kind == "weighted" else int(m.group(2) or m.group(3))
    if not 1 <= k <= MAX_K:
        raise MoRLError(f"--measure {t!r}: K={k} must be in [1, {MAX_K}]")
    return {"name": t, "kind": kind, "k": k, "objective": m.group(4)}


def check_size(prompts: int, group: int) -> None:
    """diagnose's sampling size: bounded so that a typo cannot fill the memory. MoRLError."""
    if not (1 <= prompts <= MAX_PROMPTS and 2 <= group <= MAX_GROUP and prompts * group <= MAX_ROLLOUTS):
        raise MoRLError(f"--prompts={prompts} must be in [1, {MAX_PROMPTS}] and --group={group} in [2, {MAX_GROUP}], "
                        f"with --prompts x --group <= {MAX_ROLLOUTS} rollouts")


def _p_one_sided(z: float) -> float:
    """P(Z <= z) for a standard normal Z: the p-value of a negative correlation."""
    return 0.5 * math.erfc(-z / math.sqrt(2))


def tradeoff_pairs(names: list[str], weights: Tensor, stats: dict[str, Tensor], live: list[int],
                   clean: list[bool]) -> list[dict]:
    """Every pair of the ``live`` objectives with its trade-off test (module docstring), sorted by p-value.
    clean[k]: objective k is not noise; the noise correction is applied between clean objectives only (a noise
    share near 1 would blow any chance correlation up to -1)."""
    n = float(stats["dof"])
    root = max(n - 3, 1.0) ** 0.5
    w = [float(x) for x in weights]
    out = []
    for a, i in enumerate(live):
        for j in live[a + 1:]:
            rho = float(stats["corr"][i, j])
            z = math.atanh(max(-0.999999, min(0.999999, rho))) * root
            h = 2 * w[i] * w[j] / (w[i] ** 2 + w[j] ** 2)
            fixed = float(stats["corr_denoised"][i, j]) if clean[i] and clean[j] else rho
            out.append({"pair": (names[i], names[j]), "i": i, "j": j, "corr": rho, "corr_denoised": fixed, "h": h,
                        "effect": h * fixed, "z": z, "p": _p_one_sided(z)})
    out.sort(key=lambda q: q["p"])
    m, running = len(out), 0.0
    for rank, q in enumerate(out):  # Holm's step-down adjusted p-values (monotone)
        running = max(running, min(1.0, (m - rank) * q["p"]))
        q["p_holm"] = running
        q["tradeoff"] = running <= RULES["alpha"] and q["effect"] <= -RULES["tradeoff_floor"]
    return out


def recommend(names: list[str], weights: Tensor, stats: dict[str, Tensor], binary: list[bool],
              failed: dict[str, str] | None = None, gates: list[str] | None = None,
              success: str | None = None) -> dict:
    """The structure: labels per objective, the regime the statistics show, gate candidates, the features the
    verdicts match map cells on, and the reasons (module docstring). failed: {objective: first error} of those
    that failed on at least half the completions; gates: objectives the user gates; success: the task's."""
    failed, gates = failed or {}, list(gates or [])
    labels, reasons = {}, []
    w = [float(x) for x in weights]
    for k, name in enumerate(names):
        ns, fz = float(stats["noise_share"][k]), float(stats["frac_zero_spread"][k])
        if name in failed:
            labels[name] = "failed"
            reasons.append(f"{name} failed: {failed[name]} (it scores objectives.failure_value there; fix the "
                           "reward before reading anything else)")
        elif fz >= RULES["flat_frac"]:
            labels[name] = "flat"
            reasons.append(f"{name} is flat: no spread in {fz:.0%} of groups (>= {RULES['flat_frac']:.0%})")
        elif ns >= RULES["noise_share"]:
            labels[name] = "noise"
            reasons.append(f"{name} looks like noise: {ns:.0%} of its within-group variance differs between two "
                           f"scorings of the same completion (>= {RULES['noise_share']:.0%}); dvao would give it "
                           f"weight {float(stats['dvao_weight'][k]):.2f} (its own: {w[k]:.2f})")
        else:
            labels[name] = "signal"
    # noisy objectives stay in the trade-off test: noise only weakens a correlation, never fakes a significant one
    live = [k for k, n in enumerate(names) if labels[n] in ("signal", "noise") and w[k] > 0]
    pairs = tradeoff_pairs(names, weights, stats, live, [labels[n] == "signal" for n in names])
    trade = [q for q in pairs if q["tradeoff"]]

    def said(q):
        wt = f", x {q['h']:.2f} for the weights" if q["h"] < 0.995 else ""
        fixed = f" ({q['corr_denoised']:+.2f} corrected for noise{wt})" if q["corr_denoised"] != q["corr"] else wt
        return (f"{q['pair'][0]} vs {q['pair'][1]}: within-group correlation {q['corr']:+.2f}{fixed}, "
                f"z = {q['z']:+.1f}, Holm p = {q['p_holm']:.2g}")
    if not live:
        regime = "flat"
        reasons.append("every weighted objective is flat: these rollouts give no method anything to learn; raise the "
                       "base rates first (the task's prompt, rollout.temperature, rollout.max_new_tokens, "
                       "trainer.group_size, a warm-up or a stronger model), then diagnose again")
    elif trade:
        regime = "spread"
        reasons.append(f"they trade off: {said(min(trade, key=lambda q: q['effect']))} (<= {RULES['alpha']:g}, "
                       f"effect <= -{RULES['tradeoff_floor']:g})" + (f"; {len(trade)} of {len(pairs)} pairs do"
                                                                   if len(trade) > 1 else ""))
    else:
        regime = "balance"
        if pairs:
            q = min(pairs, key=lambda q: q["effect"] if q["p_holm"] <= RULES["alpha"] else q["p_holm"] + 2)
            why = ("significant but too small to matter" if q["p_holm"] <= RULES["alpha"] else
                   f"not significant over {len(pairs)} pair(s)")
            reasons.append(f"no pair of objectives trades off: the closest is {said(q)}: {why}")
        else:
            reasons.append(f"no pair of objectives trades off: {len(live)} weighted objective with spread")
    reasons.append(f"first principal component: {float(stats['pc1_share']):.0%} of the within-group variance")
    top = [k for k in range(len(names)) if w[k] == max(w)] if w else []
    main = {names[top[0]]} if len(top) == 1 else set()
    if success:
        main.add(success)
    cands = [n for k, n in enumerate(names) if n in gates or (
        binary[k] and labels[n] == "signal" and float(stats["mean"][k]) < RULES["gate_base_rate"] and n not in main)]
    for n in cands:
        reasons.append(f"{n} is pass/fail with base rate {float(stats['mean'][names.index(n)]):.2f}: if it is a "
                       f"rubric that must hold, gate it (method=gated method.gates=[{n}])")
    noise_live = [k for k in live if labels[names[k]] == "noise"]
    amplified = [names[k] for k in noise_live if float(stats["dvao_weight"][k]) > w[k] + 1e-9]
    features = {"tradeoff": max(-1.0, min(1.0, min((q["effect"] for q in pairs), default=0.0))),
                "noise": max((float(stats["noise_share"][k]) for k in live), default=0.0)}
    return {"regime": regime, "labels": labels, "gate_candidates": cands, "amplified_noise": amplified,
            "features": features, "pairs": [{k: v for k, v in q.items() if k not in ("i", "j")} for q in pairs],
            "reasons": reasons}


def load_table(path: str | Path | None = None) -> dict:
    """The regime map's winners per cell and measure (``regime_table.json`` beside this module by default)."""
    p = Path(path) if path else TABLE
    if not p.is_file():
        raise MoRLError(f"no regime table at {str(p)!r}; regenerate it with scripts/regime_agreement.py")
    return json.loads(p.read_text(encoding="utf-8"))


def _table_measure(measure: dict, table_ks: list[int]) -> str:
    """The table column that holds the evidence for ``measure`` (the nearest k on a log scale)."""
    if measure["kind"] == "weighted":
        return "weighted"
    k = min(table_ks, key=lambda t: (abs(math.log(t) - math.log(measure["k"])), t))
    return f"{'obj' if measure['kind'] == 'pass' else measure['kind']}@{k}"


def nearest_cell(table: dict, regime: str, features: dict, exclude=None) -> dict | None:
    """The map cell closest to ``features`` among those whose structure was ``regime`` (all cells if none)."""
    cells = [c for c in table["cells"] if exclude is None or (c["rho"], c["noise"]) != tuple(exclude)]
    same = [c for c in cells if c["diagnose"]["regime"] == regime] or cells
    return min(same, key=lambda c: (math.hypot(c["diagnose"]["tradeoff"] - features["tradeoff"],
                                               c["diagnose"]["noise"] - features["noise"]), c["rho"], c["noise"]),
               default=None)


def _fmt(name: str, st: list) -> str:
    return f"{name} {st[0]:.3f} ± {st[1]:.3f}"


def verdict(rec: dict, measure: dict, table: dict, exclude=None) -> dict:
    """Regime, method and confidence for one measure, with the map cell it rests on (module docstring)."""
    out = {"measure": measure["name"], "regime": None, "method": None, "confidence": None, "cell": None}
    if rec["regime"] == "flat":
        return {**out, "regime": "flat", "reason": "nothing to learn from these rollouts"}
    if measure["kind"] == "pass" and measure["objective"] in rec["gate_candidates"]:
        return {**out, "regime": "gate", "method": "gated", "confidence": "not on the map",
                "reason": f"{measure['objective']} must hold: gate it (method=gated method.gates="
                          f"[{measure['objective']}]); the map holds no gated runs (README: gating)"}
    col = _table_measure(measure, table["ks"])
    cell = nearest_cell(table, rec["regime"], rec["features"], exclude)
    if cell is None or col not in cell["measures"]:
        return {**out, "reason": f"the regime table has no cell for {col}"}
    ev = cell["measures"][col]
    ranked = sorted(ev["methods"], key=lambda m: -ev["methods"][m][0])
    if rec["amplified_noise"]:
        ranked = [m for m in ranked if m not in AMPLIFY] or ranked
    best = ranked[0]
    second = ranked[1] if len(ranked) > 1 else None
    other = next((m for m in ranked if (m in SPREAD) != (best in SPREAD)), None)  # the best of the other regime
    where = f"map cell rho={cell['rho']:g} noise={cell['noise']:g} ({col}, {ev['methods'][best][2]} seeds)"
    st = ev["methods"]
    close = second is not None and _close(st[best], st[second])
    regime_close = other is not None and _close(st[best], st[other])
    conf = ("too close to call" if regime_close else "regime clear, method too close to call" if close
            else "clear")
    vs = [m for m in (second, other) if m is not None]
    reason = f"{where}: " + " vs ".join(_fmt(m, st[m]) for m in [best, *dict.fromkeys(vs)])
    if rec["amplified_noise"] and ev["winner"] in AMPLIFY and ev["winner"] != best:
        reason += (f"; {ev['winner']} led there but would give {', '.join(rec['amplified_noise'])} (noise) more than "
                   "its weight")
    return {**out, "regime": "spread" if best in SPREAD else "balance", "method": best, "confidence": conf,
            "cell": [cell["rho"], cell["noise"]], "candidates": [best] + ([second] if close else []),
            "reason": reason}


def _close(a: list, b: list) -> bool:
    """Two methods' [mean, std, n] over seeds within seed noise: the lead under two standard errors."""
    se = math.sqrt(a[1] ** 2 / max(a[2], 1) + b[1] ** 2 / max(b[2], 1))
    return abs(a[0] - b[0]) <= 2 * se


def diagnose(cfg, prompts: int = 32, group: int | None = None, seed: int | None = None,
             measures: list[str] | None = None, table: dict | None = None) -> dict:
    """Sample, score twice, compute ``statistics``, ``recommend`` and a ``verdict`` per measure (default:
    weighted and best@4). -> a JSON-ready dict. MoRLError on a bad measure or size, before any sampling.
    The sampling shows its progress on stderr (``mo_rl.progress.work``: a bar, or plain lines off a terminal)."""
    from mo_rl.config import objective_set, validate
    from mo_rl.tasks.base import make_task
    from mo_rl.progress import work

    c = validate(cfg)
    group = group or c.trainer.group_size
    seed = c.trainer.seed if seed is None else seed
    check_size(prompts, group)
    task = make_task(c.task.name, **c.task.options)
    names = objective_set(c, task)[0]
    parsed = [parse_measure(m) for m in (measures or DEFAULT_MEASURES)]
    for m in parsed:
        if m["objective"] is not None and m["objective"] not in names:
            raise MoRLError(f"--measure {m['name']!r}: unknown objective {m['objective']!r}; allowed: "
                            f"{', '.join(names)}")
    table = table if table is not None else load_table()
    t0 = time.perf_counter()
    with work(prompts, "sampling") as advance:  # on stderr, after every check: a bad size prints only its error
        s = rollout_and_score(cfg, prompts, group, seed, progress=advance)
    stats = statistics(s.rewards, s.again, s.mask, s.weights)
    valid = s.rewards[s.mask]
    binary = [bool(((valid[:, k] == 0) | (valid[:, k] == 1)).all()) for k in range(len(s.names))]
    total = prompts * group
    failed = {n: f"{s.failures[n]} of {total} completions, first error: {s.first_error.get(n, '?')}"
              for n in s.names if s.failures.get(n, 0) >= total / 2}
    gates = list(c.method.get("gates") or []) if c.method.get("name") == "gated" else []
    rec = recommend(s.names, s.weights, stats, binary, failed, gates, task.success_objective)
    for n in s.names:
        if 0 < s.failures.get(n, 0) < total / 2:
            rec["reasons"].insert(0, f"{n} failed on {s.failures[n]} of {total} completions (first error: "
                                     f"{s.first_error.get(n, '?')}); those score objectives.failure_value")
    rec["verdicts"] = [verdict(rec, m, table) for m in parsed]
    per = {name: {"weight": float(s.weights[k]), **{key: float(stats[key][k]) for key in
                  ("mean", "within_std", "frac_zero_spread", "noise_share", "dvao_weight")},
                  "failures": int(s.failures.get(name, 0)), "label": rec["labels"][name]}
           for k, name in enumerate(s.names)}
    return {"task": c.task.name, "task_options": dict(c.task.options), "prompts": prompts, "group_size": group,
            "seed": seed, "objectives": per, "corr": stats["corr"].tolist(),
            "corr_denoised": stats["corr_denoised"].tolist(), "pc1_share": float(stats["pc1_share"]),
            "dof": int(stats["dof"]), "recommendation": rec, "seconds": time.perf_counter() - t0}


def render(report: dict) -> str:
    """The report as rich tables rendered to text."""
    import io

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    buf = io.StringIO()
    con = Console(file=buf, width=140, color_system=None, no_color=True)
    names = list(report["objectives"])
    opts = " ".join(f"{k}={v}" for k, v in report["task_options"].items() if v is not None)
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
    con.print(f"structure: {rec['regime']}" + {"spread": " (the objectives trade off)",
                                               "balance": " (no trade-off)",
                                               "flat": ": no method can learn from these rollouts"}[rec["regime"]])
    for line in rec["reasons"]:
        con.print(f"  - {escape(line)}", soft_wrap=True)
    v = Table(title="verdict per measure (the regime map's winner in the nearest cell)", title_justify="left")
    for col in ("measure", "regime", "method", "confidence", "evidence"):
        v.add_column(col)
    for d in rec["verdicts"]:
        v.add_row(d["measure"], d["regime"] or "-", d["method"] or "-", d["confidence"] or "-", escape(d["reason"]))
    con.print(v)
    con.print(f"({report['seconds']:.1f} s)")
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
