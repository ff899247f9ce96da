"""The built-in feedback functions: hints made from what each task already knows about the right answer.

Each returns ``None`` for a completion that needs no correction (it already earns the objective's full reward),
so the teacher is run only where a hint says something. The hint is written as an instruction to the model, in
the task's own answer format, because the teacher reads it inside the prompt (``mo_rl.train.teacher``).
"""

from __future__ import annotations

import json

from mo_rl.directive.registry import register_feedback
from mo_rl.rewards import personas as persona_rewards
from mo_rl.rewards import real as real_rewards


@register_feedback("math_answer", "the right answer in the tag format, 'The correct final answer is "
                   "<answer>N</answer>.' (none when the answer and its tag are already right)")
def math_answer(prompts, completions, answer, **_):
    right = real_rewards.math_correct(prompts, completions, answer)
    tagged = real_rewards.math_format(prompts, completions)
    return [None if r == 1.0 and f == 1.0 else f"The correct final answer is <answer>{a}</answer>."
            for r, f, a in zip(right, tagged, answer)]


@register_feedback("tool_call", "the expected call with the request's values, 'The correct reply "
                   "is {\"name\": ..., \"arguments\": {...}}' (none when the reply is exactly that call)")
def tool_call(prompts, completions, tool, args, **_):
    out = []
    for c, t, a in zip(completions, tool, args):
        want = json.loads(a) if isinstance(a, str) else dict(a)
        got = real_rewards.parse_call(c)
        exact = got is not None and got.get("name") == t and real_rewards._call_args(got) == want
        out.append(None if exact else "The correct reply is " + json.dumps({"name": t, "arguments": want}) + ".")
    return out


@register_feedback("code_failing_test", "the first unit test the code fails, 'This test fails: "
                   "assert f(x) == y' (the sandbox results the rewards computed, cached; none when all pass)")
def code_failing_test(prompts, completions, tests, **_):
    out = []
    for r, t in zip(real_rewards.case_results(completions, tests), tests):
        failing = [i for i, v in enumerate(r) if v < 1.0]
        out.append(f"This test fails: {t[failing[0]]}" if failing else None)
    return out


def _wants(persona: str, keywords, short_words: int, long_words: int) -> str:
    topic = f" and names {keywords[0]!r}" if keywords else ""
    if persona == "brief":
        return f"This user wants a one-line answer of at most {short_words} words that stays on topic{topic}."
    return f"This user wants an explained answer of at least {long_words} words that stays on topic{topic}."


@register_feedback("persona_wants", "what the user this answer is closer to serving wants (length "
                   "and topic; ties by the rollout's index); none once it fully satisfies that user")
def persona_wants(prompts, completions, keywords=None, short_words=None, long_words=None, index=None, **_):
    n = len(completions)
    kw = keywords if keywords is not None else [None] * n
    sw = short_words if short_words is not None else [persona_rewards.SHORT_WORDS] * n
    lw = long_words if long_words is not None else [persona_rewards.LONG_WORDS] * n
    brief = persona_rewards.persona_brief(prompts, completions, kw, sw, lw)
    detailed = persona_rewards.persona_detailed(prompts, completions, kw, sw, lw)
    idx = index if index is not None else list(range(n))
    out = []
    for b, d, k, s, l_, i in zip(brief, detailed, kw, sw, lw, idx):
        who = "brief" if b > d or (b == d and i % 2 == 0) else "detailed"
        out.append(None if max(b, d) >= 1.0 else _wants(who, k, s, l_))
    return out


TASK_FEEDBACK = {"math": ["math_answer"], "toolcall": ["tool_call"], "code": ["code_failing_test"],
                 "personas": ["persona_wants"]}  # a task's own feedback (``directive.feedback`` unset)
