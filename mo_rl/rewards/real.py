"""Reward functions of the real task families: math, code (run in the sandbox) and tool calls.

TRL signature, one objective each, values in [0, 1]; ``None`` only where a completion cannot be scored (a
``code_test_i`` for a problem with fewer than i + 1 tests). Columns come from the task rows (``mo_rl.tasks.real``):
math ``answer`` (+ ``max_chars``), code ``tests`` (a list of assert statements), toolcall ``tool`` and ``args``
(a JSON object string).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor

from mo_rl.rewards.registry import available_rewards, register_reward
from mo_rl.rewards.sandbox import run_python

# ---------------------------------------------------------------------------------------------------------- math

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_NUM = r"[+-]?\d[\d,]*(?:\.\d+)?"  # a number as written in prose: thousands commas, a decimal part
# where a final answer is written, most explicit first; the last match of the first pattern found is the answer
_FINAL = [re.compile(r"<answer>(.*?)</answer>", re.DOTALL),
          re.compile(r"\\boxed\{([^{}]*)\}"),
          re.compile(r"answer(?:\s+is\s*:?|\s*[:=])([^\n]*\d[^\n]*)", re.IGNORECASE),  # the rest of its line
          re.compile(rf"=\s*[*$]*\s*({_NUM})")]
DEFAULT_MAX_CHARS = 64


def _number(text: str) -> float | None:
    """The value of a plain decimal number (thousands commas allowed), else None."""
    text = text.strip().replace(",", "")
    return float(text) if _NUMBER.fullmatch(text) else None


def final_answer(completion: str) -> float | None:
    """The completion's final answer however it is written: the last ``<answer>..</answer>``, else the last
    ``\\boxed{..}``, else the last "answer is ..." / "answer: ..." line, else the last "= N", else the last number
    at all. Inside the chosen span the number after its last "=" is the answer, else its first number
    (``<answer>16 apples</answer>`` -> 16, "the answer is 2 + 17 = 19" -> 19); None if there is none."""
    for pattern in _FINAL:
        found = pattern.findall(completion)
        if found:
            span = found[-1]
            break
    else:
        numbers = re.findall(_NUM, completion)
        return _value(numbers[-1]) if numbers else None
    m = re.search(_NUM, span.rsplit("=", 1)[-1]) or re.search(_NUM, span)
    return _value(m.group(0)) if m else None


def _value(number: str) -> float | None:
    try:
        return float(number.replace(",", ""))
    except ValueError:  # "1,," and the like
        return None


@register_reward("math_correct", "1 if the final answer, however written (<answer>, \\boxed, 'answer is', '=', "
                 "last number), equals the `answer` column, else 0")
def math_correct(prompts, completions, answer, **_):
    out = []
    for c, a in zip(completions, answer):
        got = final_answer(c)
        out.append(float(got is not None and abs(got - float(a)) < 1e-9))
    return out


@register_reward("math_format", "1 if the completion holds exactly one <answer>number</answer> tag, else 0")
def math_format(prompts, completions, **_):
    out = []
    for c in completions:
        found = _ANSWER.findall(c)
        ok = (len(found) == 1 and c.count("<answer>") == 1 and c.count("</answer>") == 1
              and _number(found[0]) is not None)
        out.append(float(ok))
    return out


@register_reward("math_length", "1 within the `max_chars` budget (default 64), budget/length beyond it")
def math_length(prompts, completions, max_chars=None, **_):
    budgets = max_chars if max_chars is not None else [DEFAULT_MAX_CHARS] * len(completions)
    return [1.0 if len(c) <= b else b / len(c) for c, b in zip(completions, budgets)]


# ---------------------------------------------------------------------------------------------------------- code

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
_CACHE: OrderedDict[str, list[float]] = OrderedDict()  # (completion, tests) -> per-test results, one batch's worth
_CACHE_SIZE = 4096
_LOCK = threading.Lock()
_REASONS: Counter = Counter()
CODE_TIMEOUT_S = 4.0
PER_TEST_TIMEOUT_S = 1.0

# Runs in the sandbox. The solution cannot overwrite results it did not earn: each line carries a nonce, and the
# harness deletes its own source (which holds the nonce) before the solution runs.
_HARNESS = """
import os, signal
os.remove("main.py")
_nonce, _src, _tests = {nonce!r}, {src!r}, {tests!r}
def _alarm(signum, frame):
    raise TimeoutError("test took too long")
signal.signal(signal.SIGALRM, _alarm)
_ns = {{"__name__": "solution"}}
try:
    exec(compile(_src, "solution.py", "exec"), _ns)
    _loaded = True
except BaseException:
    _loaded = False
for _i, _t in enumerate(_tests):
    _ok = False
    if _loaded:
        try:
            signal.setitimer(signal.ITIMER_REAL, {per_test})
            exec(compile(_t, "test_%d.py" % _i, "exec"), _ns)
            _ok = True
        except BaseException:
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    print(_nonce, _i, int(_ok), flush=True)
"""


def extract_code(completion: str) -> str:
    """The first fenced Python block, else the whole completion (a bare ``def`` is code too)."""
    m = _FENCE.search(completion)
    return m.group(1) if m else completion


def sandbox_failures(reset: bool = False) -> dict[str, int]:
    """How many code runs ended other than ``ok``, per sandbox reason, since the last reset (for the run log)."""
    with _LOCK:
        out = {k: v for k, v in _REASONS.items() if k != "ok"}
        if reset:
            _REASONS.clear()
    return out


def run_tests(code: str, tests: list[str]) -> list[float]:
    """Run all ``tests`` against ``code`` in ONE sandbox call -> 1.0/0.0 per test (0 for any it never reached)."""
    nonce = secrets.token_hex(8)
    harness = _HARNESS.format(nonce=nonce, src=code, tests=list(tests), per_test=PER_TEST_TIMEOUT_S)
    res = run_python(harness, timeout_s=CODE_TIMEOUT_S)
    with _LOCK:
        _REASONS[res.reason] += 1
    passed = [0.0] * len(tests)
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == nonce and parts[1].isdigit() and int(parts[1]) < len(tests):
            passed[int(parts[1])] = float(parts[2] == "1")
    return passed


def _key(completion: str, tests) -> str:
    return hashlib.blake2b(json.dumps([completion, list(tests)]).encode(), digest_size=16).hexdigest()


def case_results(completions: list[str], tests: list[list[str]], workers: int = 4) -> list[list[float]]:
    """Per-test results of each completion; cached, so the T per-test objectives run each completion once."""
    keys = [_key(c, t) for c, t in zip(completions, tests)]
    with _LOCK:
        found = {k: _CACHE[k] for k in keys if k in _CACHE}
    todo = {k: (extract_code(c), t) for k, c, t in zip(keys, completions, tests) if k not in found}
    if todo:  # sandbox runs wait on subprocesses, so threads overlap them well
        with ThreadPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            found.update(zip(todo, pool.map(lambda ct: run_tests(*ct), todo.values())))
        with _LOCK:
            for k in todo:
                _CACHE[k] = found[k]
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return [list(found[k]) for k in keys]


@register_reward("code_tests", "fraction of the row's unit tests (column `tests`) the code passes, in the sandbox")
def code_tests(prompts, completions, tests, **_):
    return [sum(r) / len(r) if r else None for r in case_results(completions, tests)]


@register_reward("code_format", "1 if the completion has a closed ```python block or a `def`, else 0")
def code_format(prompts, completions, **_):
    return [float(bool(_FENCE.search(c)) or bool(re.search(r"^\s*def \w+\s*\(", c, re.MULTILINE)))
            for c in completions]


def _per_test(i: int):
    def reward(prompts, completions, tests, **_):
        return [r[i] if i < len(r) else None for r in case_results(completions, tests)]

    reward.__name__ = f"code_test_{i}"
    reward.__doc__ = f"1 if the code passes the row's test case {i}, else 0 (None when it has no such test)"
    return reward


def code_test_objectives(num_tests: int) -> list[str]:
    """Register (once) and return ``code_test_0 .. code_test_{T-1}``: the per-test-case reward vector."""
    names = [f"code_test_{i}" for i in range(num_tests)]
    have = available_rewards()
    for i, name in enumerate(names):
        if name not in have:
            register_reward(name)(_per_test(i))
    return names


# ------------------------------------------------------------------------------------------------------ toolcall

_JSON_FENCE = re.compile(r"^```(?:json)?[ \t]*\n(.*?)\n?```$", re.DOTALL)


def parse_call(completion: str) -> dict | None:
    """The completion as a JSON object (optionally inside one ```json fence), else None."""
    text = completion.strip()
    m = _JSON_FENCE.match(text)
    try:
        obj = json.loads(m.group(1) if m else text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def find_call(completion: str) -> dict | None:
    """The call a completion makes, wherever it is written: the first JSON object in the text that has a ``name``
    (prose or a fence around it allowed), else the first JSON object at all, else None."""
    decoder, first = json.JSONDecoder(), None
    for i, ch in enumerate(completion):
        if ch != "{":
            continue
        try:
            obj, _ = decoder.raw_decode(completion, i)
        except ValueError:
            continue
        if isinstance(obj, dict):
            if "name" in obj:
                return obj
            first = first if first is not None else obj
    return first


def _call_args(obj: dict) -> dict | None:
    """The call's arguments; OpenAI-style calls give them as a JSON string, which we accept too."""
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return args if isinstance(args, dict) else None


@register_reward("tool_json", "1 if the completion is one JSON object and nothing else (a ```json fence allowed)")
def tool_json(prompts, completions, **_):
    return [float(parse_call(c) is not None) for c in completions]


@register_reward("tool_name", "1 if the call's `name` equals the `tool` column (the call found anywhere), else 0")
def tool_name(prompts, completions, tool, **_):
    return [float((find_call(c) or {}).get("name") == t) for c, t in zip(completions, tool)]


@register_reward("tool_args", "correct arguments / (expected + extra ones) vs the `args` column, whatever the name")
def tool_args(prompts, completions, args, **_):
    out = []
    for c, a in zip(completions, args):
        obj, want = find_call(c), json.loads(a) if isinstance(a, str) else dict(a)
        got = _call_args(obj) if obj is not None else None
        if got is None:
            out.append(0.0)
            continue
        keys = set(want) | set(got)  # a made-up extra argument counts against the call
        out.append(sum(k in want and k in got and got[k] == want[k] for k in keys) / len(keys) if keys else 1.0)
    return out
