"""Where does a hint move the teacher? The teacher-student log-prob gap by position in the completion, before training.

    python scripts/hint_gap.py task=toolcall model=smollm2 [--prompts 8] [--group 4] [--seed 0] [overrides...]

Samples ``--group`` completions for ``--prompts`` training prompts from the initial policy (the training loop's own
rollout-and-score path, as `mo-rl diagnose` does), asks the run's feedback functions for hints
(``directive.feedback``, default the task's own), and scores the hinted completions under the teacher
(``directive.teacher``: the policy itself, or the frozen reference, which before training is the same model) with
the same ``train.teacher.score_hinted`` that training uses (``--null-hint TEXT``: also against the teacher
reading an uninformative hint, the contrast that would cancel the hint's frame and keep its content). The gap ``log pi_T(y_t) - log pi(y_t)`` (sampling
temperature, as ``directive/gap_mean``) is printed by position: the first completion token, tokens 2-5, the middle,
and the last token (the stop token where the completion ended by itself), with the share > 0 and the
token_advantage term it gives at ``directive.clip``; then, for the first token, the student's and the teacher's
most likely tokens. A hint that names the answer should raise the teacher on the answer's tokens (middle); a
large negative gap on the first or last token says the hint changed the *frame* of the reply (the teacher would
start or end differently), which both directive losses then teach to every hinted completion. README
"Evaluative and directive feedback" reads its output for task=toolcall and task=math.
"""

from __future__ import annotations

import argparse
import random

import torch


def main(overrides: list[str], prompts: int, group: int, seed: int, null_hint: str | None = None) -> None:
    from mo_rl.config import compose, objective_set, validate
    from mo_rl.directive import feedback_fns
    from mo_rl.directive.feedback import collect
    from mo_rl.models import load_policy
    from mo_rl.pipeline import rollout_score
    from mo_rl.pipeline.rollout_score import prompts_for
    from mo_rl.rewards.score import repeat_rows
    from mo_rl.rollout import SamplingParams, make_engine
    from mo_rl.tasks.base import make_task
    from mo_rl.train.loop import resolve_device
    from mo_rl.train.teacher import score_hinted

    c = validate(compose(overrides))
    task = make_task(c.task.name, **c.task.options)
    names, _ = objective_set(c, task)
    torch.manual_seed(seed)
    policy = load_policy(c.model, device=resolve_device(c.trainer.device))
    engine = make_engine(c.rollout.engine, policy, **c.rollout.engine_options())
    scoring = rollout_score.Scoring.from_config(c, task, names)
    rows = task.sample(random.Random(seed), prompts, "train")
    ro = c.rollout
    s = rollout_score.rollout_and_score(engine, task, scoring, rows, group,
                                        SamplingParams(ro.max_new_tokens, ro.temperature, ro.top_p, seed), step=0)
    asked = prompts_for(task, rows, c.task.answers)
    rep, columns = repeat_rows([{**r, "prompt": p} for r, p in zip(rows, asked)], group)
    hints = collect(feedback_fns(c, task), rep, s.batch.texts, columns, 0, 0, c.directive.timeout_s)
    b = s.batch.local
    sel = [i for i, h in enumerate(hints.text) if h is not None and int(b.completion_mask[i].sum())]
    print(f"{c.task.name}: {len(sel)} of {len(hints.text)} completions hinted "
          f"({', '.join(f'{k} {v}' for k, v in hints.given.items())})")
    if not sel:
        return
    ids, mask = b.completion_ids[sel], b.completion_mask[sel].float()
    teacher = policy.reference() if c.directive.teacher == "reference" else None
    t_lp, t_top, t_p = score_hinted(policy, teacher, [rep[i] for i in sel], [hints.text[i] for i in sel], ids,
                                    b.completion_mask[sel], temperature=ro.temperature, top_p=ro.top_p, top_k=3)
    sub = type(b)(b.prompt_ids[sel], b.prompt_mask[sel], ids, b.completion_mask[sel],
                  torch.zeros_like(b.completion_mask[sel]), [], 1)
    with torch.no_grad(), policy.mode(False):
        logits = policy.completion_logits(sub)  # the student's first-token distribution, below
    gap = (t_lp - b.logprobs[sel]) * mask  # the sampling log-probs: training's log pi_old
    n = mask.sum(1).long()
    pos = torch.arange(mask.shape[1]).expand_as(mask)
    last = pos == (n - 1).unsqueeze(1)
    parts = {"first token": pos == 0, "tokens 2-5": (pos >= 1) & (pos <= 4),
             "middle (6 .. last-1)": (pos >= 5) & ~last, "last token": last}
    clip = c.directive.clip

    def table(gap: torch.Tensor, title: str) -> None:
        print(f"\n{title}\n\n| position | tokens | gap mean | share > 0 | clip(gap, -{clip:g}, {clip:g}) mean |")
        print("|---|---|---|---|---|")
        for name, where in [*parts.items(), ("all", torch.ones_like(last))]:
            w = where & mask.bool()
            g = gap[w]
            print(f"| {name} | {int(w.sum())} | {g.mean():.3f} | {(g > 0).float().mean():.2f} | "
                  f"{g.clamp(-clip, clip).mean():.3f} |")

    table(gap, "log pi_T(y_t | prompt + hint) - log pi(y_t | prompt): the gap training uses")
    if null_hint:
        n_lp, _, _ = score_hinted(policy, teacher, [rep[i] for i in sel], [null_hint] * len(sel), ids,
                                  b.completion_mask[sel], temperature=ro.temperature, top_p=ro.top_p)
        table((t_lp - n_lp) * mask, f"log pi_T(y_t | prompt + hint) - log pi_T(y_t | prompt + {null_hint!r}): "
                                    "the same teacher with an uninformative hint as the baseline")
    tok = policy.tokenizer
    s_p0 = (logits[:, 0].float() / ro.temperature).softmax(-1).mean(0)
    sv, si = s_p0.topk(3)
    print("\nfirst token, student (mean over the hinted completions): "
          + ", ".join(f"{tok.decode([int(i)])!r} {float(v):.3f}" for v, i in zip(sv, si)))
    tp0 = torch.zeros_like(s_p0).index_add_(0, t_top[:, 0].reshape(-1), t_p[:, 0].reshape(-1)) / len(sel)
    tv, ti = tp0.topk(3)
    print("first token, teacher (its top-3 renormalised, mean):       "
          + ", ".join(f"{tok.decode([int(i)])!r} {float(v):.3f}" for v, i in zip(tv, ti)))
    print(f"\nexample hint: {hints.text[sel[0]]!r}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--null-hint", default=None, metavar="TEXT",
                    help="also the gap against the teacher reading this uninformative hint instead (the hint's "
                         "frame without its content), e.g. 'No feedback on this attempt.'")
    a = ap.parse_args()
    main(a.overrides, a.prompts, a.group, a.seed, a.null_hint)
