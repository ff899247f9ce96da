"""The directive teacher: the policy (or its frozen initial copy) reading the prompt with the hint added, scoring
the completion the policy sampled without it. Once per step, without gradient, for the hinted completions only;
``Guide`` holds what the update needs from it (its tensors are reused across ``trainer.epochs_per_step``).

``token_advantage`` (OpenClaw-RL's hindsight-guided on-policy distillation) turns the teacher-student gap of each
sampled token into a token advantage beside the method's sequence advantage,
``A[t] = A_seq + coef * clip(log pi_T(y_t) - log pi_old(y_t), -clip, clip)`` on hinted completions, through the
clipped surrogate; both log-probs are of the sampling distribution (temperature, then the top-p nucleus).
``forward_ce`` (DistIL's forward cross-entropy, over the teacher's top-k logits as SDFT/SDPO take them) adds
``coef * CE(pi_T top-k renormalised || pi_theta)`` at each sampled position of a hinted completion, from the
temperature-scaled distributions; it can raise tokens the policy never sampled.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from mo_rl.models.policy import sampled_logprobs
from mo_rl.pipeline import parallel
from mo_rl.pipeline.rollout_score import prompts_for
from mo_rl.rewards.score import repeat_rows
from mo_rl.rollout.base import RolloutBatch

HINT_HEADER = "Hint from feedback on an earlier attempt:"


def teacher_prompt(prompt: str, hint: str, chat_template: bool) -> str:
    """The prompt the teacher reads. Under a chat template the hint ends the user message; a raw prompt is
    continued by the completion, so there the hint goes before it."""
    if chat_template:
        return f"{prompt}\n\n{HINT_HEADER} {hint}"
    return f"{HINT_HEADER} {hint}\n\n{prompt}"


@dataclass
class Guide:
    """A step's directive targets for this rank's n rows (T completion positions)."""

    hinted: Tensor  # (n,) bool: a hint and a token to train on
    hint_mask: Tensor  # (n, T) float: completion tokens of hinted rows
    gap: Tensor  # (n, T) float: log pi_T - log pi_old of the sampled tokens, 0 off hint_mask
    topk_ids: Tensor | None = None  # (n, T, k) long, forward_ce: the teacher's top-k tokens
    topk_p: Tensor | None = None  # (n, T, k) float, their renormalised probabilities
    metrics: dict | None = None

    def rows(self, lo: int, hi: int) -> "Guide":
        take = (lambda x: None if x is None else x[lo:hi])
        return Guide(self.hinted[lo:hi], self.hint_mask[lo:hi], self.gap[lo:hi], take(self.topk_ids),
                     take(self.topk_p))

    def token_bonus(self, coef: float, clip: float) -> Tensor:
        """(n, T): ``coef * clip(gap, -clip, clip)`` on hinted tokens, 0 elsewhere."""
        return coef * self.gap.clamp(-clip, clip) * self.hint_mask


@torch.no_grad()
def score_hinted(policy, teacher, prompts: list[str], hints: list[str], completion_ids: Tensor,
                 completion_mask: Tensor, *, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 micro_batch_tokens: int = 0) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The teacher's view of m sampled completions: each prompt with its hint (``teacher_prompt``, formatted and
    tokenized by ``policy``), then the completion's tokens, in micro-batches of at most ``micro_batch_tokens``.

    teacher: None = ``policy`` itself in eval mode (no gradient), else a ``Reference`` (the frozen initial model).
    -> (log-probs of the completion tokens under the sampling distribution (m, T), 0 on padding; with
    ``top_k > 0`` the top-k tokens of the temperature-scaled distribution (m, T, k) and their probabilities
    renormalised to sum 1, else None, None).
    """
    from mo_rl.train.loss import micro_batch_rows

    enc = policy.encode([teacher_prompt(p, h, policy.chat_template) for p, h in zip(prompts, hints)])
    ids, pmask = enc["input_ids"], enc["attention_mask"]
    m = len(prompts)
    size = micro_batch_rows(m, ids.shape[1] + completion_ids.shape[1], 1, micro_batch_tokens)
    lps, tops, probs = [], [], []
    for lo in range(0, m, size):
        part = slice(lo, lo + size)
        tb = RolloutBatch(ids[part], pmask[part], completion_ids[part], completion_mask[part],
                          torch.zeros_like(completion_mask[part]), [], 1)
        if teacher is not None:
            logits = teacher.completion_logits(tb)
        else:
            with policy.mode(False):
                logits = policy.completion_logits(tb)
        lps.append(sampled_logprobs(logits, tb, temperature, top_p, stops=policy.stop_ids))
        if top_k > 0:
            scaled = logits.float() if temperature == 1.0 else logits.float() / temperature
            p, i = scaled.softmax(-1).topk(min(top_k, scaled.shape[-1]), -1)
            tops.append(i)
            probs.append(p / p.sum(-1, keepdim=True))
    if top_k <= 0:
        return torch.cat(lps), None, None
    return torch.cat(lps), torch.cat(tops), torch.cat(probs)


class Director:
    """Feedback functions + teacher for one run (built by ``train.loop`` when ``directive.coef > 0``)."""

    def __init__(self, cfg, fns: list[tuple[str, object]], policy, teacher, answers: int = 1):
        self.cfg, self.fns, self.policy, self.teacher, self.answers = cfg, fns, policy, teacher, answers
        self.warned: set[str] = set()  # feedback functions whose first failure was printed

    @classmethod
    def from_config(cls, c, task, policy, ref) -> "Director":
        """``ref``: the run's KL reference if it has one (the ``reference`` teacher reuses it)."""
        from mo_rl.directive import feedback_fns

        d = c.directive
        teacher = None
        if d.teacher == "reference":
            teacher = ref if ref is not None else policy.reference()
        return cls(d, feedback_fns(c, task), policy, teacher, c.task.answers)

    # -- the step -------------------------------------------------------------------------------------------
    def prepare(self, run, s, batch: parallel.StepBatch, step: int) -> Guide:
        """Hints for this rank's rollouts, then one teacher forward over the hinted ones. ``s``: the step's
        ``Scored``; ``batch``: the trainable batch (masked rollouts hold no token). Metrics are global."""
        from mo_rl.directive.feedback import collect

        t0 = time.perf_counter()
        local, G = batch.local, batch.n
        rows = s.rows[batch.rows.start // G: batch.rows.stop // G]
        asked = prompts_for(run.task, rows, self.answers)
        prompts, columns = repeat_rows([{**r, "prompt": p} for r, p in zip(rows, asked)], G)
        hints = collect(self.fns, prompts, local.texts, columns, step, batch.rows.start, self.cfg.timeout_s)
        for name, msg in hints.first_error.items():  # counted every step in the metrics; said once here
            if name not in self.warned:
                self.warned.add(name)
                print(f"warning: feedback {name!r} failed at step {step} ({msg}); its completions get no hint "
                      "(directive/feedback_fail/<name> counts them)", file=sys.stderr)
        t1 = time.perf_counter()
        mask = local.completion_mask
        n, T = mask.shape
        live = mask.sum(1) > 0
        hinted = torch.tensor([h is not None for h in hints.text], dtype=torch.bool, device=mask.device) & live
        guide = Guide(hinted, mask * hinted.unsqueeze(1).to(mask.dtype), torch.zeros_like(mask))
        forward_ce = self.cfg.loss == "forward_ce"
        if forward_ce:  # unhinted rows keep zeros: their hint_mask zeroes the term
            k = self.cfg.top_k
            guide.topk_ids = torch.zeros(n, T, k, dtype=torch.long, device=mask.device)
            guide.topk_p = torch.zeros(n, T, k, dtype=torch.float32, device=mask.device)
        sel = hinted.nonzero().squeeze(1)
        if len(sel):
            self._score(run, local, sel, [hints.text[i] for i in sel.tolist()],
                        [prompts[i] for i in sel.tolist()], guide, forward_ce)
        guide.metrics = self._metrics(run, hints, guide, t1 - t0, time.perf_counter() - t1)
        return guide

    def _score(self, run, local: RolloutBatch, sel: Tensor, hints: list[str], prompts: list[str], guide: Guide,
               forward_ce: bool) -> None:
        """The teacher's log-probs (and top-k) of the selected rows' sampled tokens, written into ``guide``."""
        ro = run.cfg.rollout
        cids, cmask = local.completion_ids[sel], local.completion_mask[sel]
        lp, ids, p = score_hinted(self.policy, self.teacher, prompts, hints, cids, cmask, temperature=ro.temperature,
                                  top_p=ro.top_p, top_k=self.cfg.top_k if forward_ce else 0,
                                  micro_batch_tokens=run.cfg.trainer.micro_batch_tokens)
        guide.gap[sel] = (lp - local.logprobs[sel]) * cmask
        if forward_ce:
            guide.topk_ids[sel, :, :ids.shape[-1]] = ids
            guide.topk_p[sel, :, :ids.shape[-1]] = p

    def _metrics(self, run, hints, guide: Guide, feedback_s: float, teacher_s: float) -> dict[str, float]:
        """Global over ranks: hint rates (all and per function), feedback failures, the teacher-student gap on
        hinted tokens (mean, share > 0, and on the first and the last token of each hinted completion: a hint that
        changes how the reply starts or ends shows there, ``scripts/hint_gap.py``), the token advantage it gives
        (``token_advantage``), timings."""
        names = [n for n, _ in self.fns]
        hm = guide.hint_mask
        bonus = guide.token_bonus(self.cfg.coef, self.cfg.clip)
        rows = (hm.sum(1) > 0).nonzero().squeeze(1)  # hinted completions with a token (the mask is a prefix)
        ends = guide.gap[rows, hm[rows].sum(1).long() - 1]
        vals = [float(len(hints.text)), float(guide.hinted.sum()), float(hm.sum()), float(guide.gap.sum()),
                float(((guide.gap > 0).float() * hm).sum()), float(bonus.sum()), float(len(rows)),
                float(guide.gap[rows, 0].sum()), float(ends.sum()),
                *[float(hints.given.get(n, 0)) for n in names], *[float(hints.failures.get(n, 0)) for n in names]]
        x = torch.tensor([vals], dtype=torch.float64, device=hm.device)
        tot = parallel.all_gather(run.dist, x).sum(0).tolist()
        n, hinted, tokens, gap, pos, adv, seqs, first, last = tot[:9]
        given, failed = tot[9:9 + len(names)], tot[9 + len(names):]
        out = {"directive/hint_rate": hinted / max(n, 1), "directive/hinted_tokens": tokens,
               "directive/gap_mean": gap / tokens if tokens else float("nan"),
               "directive/gap_pos": pos / tokens if tokens else float("nan"),
               "directive/gap_first": first / seqs if seqs else float("nan"),
               "directive/gap_last": last / seqs if seqs else float("nan"),
               "perf/feedback_s": feedback_s, "perf/teacher_s": teacher_s}
        if self.cfg.loss == "token_advantage":
            out["directive/token_adv_mean"] = adv / tokens if tokens else float("nan")
        for name, g, f in zip(names, given, failed):
            out[f"directive/hint_rate/{name}"] = g / max(n, 1)
            out[f"directive/feedback_fail/{name}"] = f
        return out
