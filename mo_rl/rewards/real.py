"""Reward functions of the real task families: math, code (run in the sandbox) and tool calls.

TRL signature, one objective each, values in [0, 1]; ``None`` only where a completion cannot be scored (a
``code_test_i`` for a problem with fewer than i + 1 tests). Columns come from the task rows (``mo_rl.tasks.real``):
math ``answer`` (+ ``max_chars``), code ``tests`` (a list of assert statements), toolcall ``tool`` and ``args``
(a JSON object string).
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import json
import re
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

# The solution's side of each test runs in the sandbox; the verdict never does. ``split_test`` cuts an assert into
# the expressions that need the solution (``add(1, 2)``) and the check on their values (``_v0 == 3``). The sandbox
# gets the solution and those expressions only (no expected value, no nonce: nothing to read in its frames) and
# prints each value's repr, accepted only for exact builtin types (no __eq__ or __repr__ of the solution's). This
# process parses the reprs as literals and judges: ``_vK == <literal>`` here, any other check in a second sandbox
# run without the solution (test code from a dataset never runs in this process). A line the solution forges is a
# guess at a value, and a test with two lines for one index fails.
_HARNESS = """
import json, os, signal
os.remove("main.py")
_src, _parts = {src!r}, {parts!r}
def _alarm(signum, frame):
    raise TimeoutError("test took too long")
def _plain(v, depth=0):
    t = type(v)
    if depth > 50:
        raise ValueError("nested too deep")
    if v is None or t in (bool, int, float, complex, str, bytes):
        return
    if t in (list, tuple, set, frozenset):
        for x in v:
            _plain(x, depth + 1)
        return
    if t is dict:
        for k, x in v.items():
            _plain(k, depth + 1)
            _plain(x, depth + 1)
        return
    raise TypeError("not a plain value: " + t.__name__)
signal.signal(signal.SIGALRM, _alarm)
_ns = {{"__name__": "solution"}}
try:
    exec(compile(_src, "solution.py", "exec"), _ns)
    _loaded = True
except BaseException:
    _loaded = False
for _i, _es in enumerate(_parts if _loaded else []):
    try:
        signal.setitimer(signal.ITIMER_REAL, {per_test})
        _out = []
        for _e in _es:
            _v = eval(compile(_e, "test_%d.py" % _i, "eval"), _ns)
            _plain(_v)
            _out.append(repr(_v))
        signal.setitimer(signal.ITIMER_REAL, 0)
        print("@@", json.dumps([_i, _out]), flush=True)
    except BaseException:
        signal.setitimer(signal.ITIMER_REAL, 0)
"""

# Judges checks that are not ``_vK == <literal>``, in the sandbox and without the solution.
_JUDGE = """
import ast, builtins
for _i, (_check, _values) in enumerate({checks!r}):
    try:
        _ok = bool(eval(_check, {{"__builtins__": builtins}}, {{"_v%d" % j: ast.literal_eval(v) for j, v in enumerate(_values)}}))
    except BaseException:
        _ok = False
    print(_i, int(_ok), flush=True)
"""
_BUILTINS = frozenset(dir(builtins))
_SCOPES = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def split_test(test: str) -> tuple[str, list[str]]:
    """``assert <expr>`` -> (the check, with ``_v0, _v1, ..`` for the values of the solution's expressions, and
    those expressions). A name that is not a builtin (nor a comprehension's or lambda's variable) is the
    solution's: the largest name, call on it, attribute or item of it is one expression. ValueError for a test
    that is not one assert statement, or that calls the solution with a comprehension's variable."""
    try:
        body = ast.parse(test).body
    except SyntaxError as e:
        raise ValueError(f"test {test!r} is not valid Python ({e.msg})") from None
    if len(body) != 1 or not isinstance(body[0], ast.Assert):
        raise ValueError(f"test {test!r} is not one assert statement")
    bound = set()  # the variables of the test's own comprehensions and lambdas
    for s in ast.walk(body[0]):
        if isinstance(s, ast.Lambda):
            bound |= {a.arg for a in ast.walk(s.args) if isinstance(a, ast.arg)}
        elif isinstance(s, (*_SCOPES, ast.NamedExpr)):
            bound |= {n.id for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    parts: list[str] = []

    def theirs(node) -> bool:
        return any(isinstance(n, ast.Name) and n.id not in _BUILTINS and n.id not in bound for n in ast.walk(node))

    class Split(ast.NodeTransformer):
        def visit(self, node):
            if isinstance(node, ast.expr) and theirs(node) and (
                    isinstance(node, ast.Name) or isinstance(node, ast.Call) and theirs(node.func)
                    or isinstance(node, (ast.Attribute, ast.Subscript)) and theirs(node.value)):
                if any(isinstance(n, ast.Name) and n.id in bound for n in ast.walk(node)):
                    raise ValueError(f"test {test!r} calls the solution with a comprehension's or lambda's "
                                     "variable; write one call per value")
                parts.append(ast.unparse(node))
                return ast.Name(f"_v{len(parts) - 1}", ast.Load())
            return self.generic_visit(node)

    return ast.unparse(Split().visit(body[0].test)), parts


def _literal(text: str):
    try:
        return True, ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _judge_here(check: str, values: list[str]) -> bool | None:
    """``_vK == <literal>`` (either side) judged on the parsed values; None for any other check."""
    node = ast.parse(check, mode="eval").body
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
        return None
    for mine, other in ((node.left, node.comparators[0]), (node.comparators[0], node.left)):
        if isinstance(mine, ast.Name) and mine.id.startswith("_v"):
            ok, expected = _literal(ast.unparse(other))
            if ok:
                got_ok, got = _literal(values[int(mine.id[2:])])
                return got_ok and bool(got == expected)
    return None


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
    """Run ``tests`` against ``code`` -> 1.0/0.0 per test (0 for any it never reached): one sandbox run for the
    solution's values, judged here, plus one without the solution for checks that are not ``== <literal>``."""
    split = [split_test(t) for t in tests]
    res = run_python(_HARNESS.format(src=code, parts=[p for _, p in split], per_test=PER_TEST_TIMEOUT_S),
                     timeout_s=CODE_TIMEOUT_S)
    with _LOCK:
        _REASONS[res.reason] += 1
    seen: dict[int, list] = {}
    for line in res.stdout.splitlines():
        try:
            i, values = json.loads(line[3:]) if line.startswith("@@ ") else (None, None)
        except ValueError:
            continue
        if isinstance(i, int) and 0 <= i < len(tests) and isinstance(values, list):
            seen[i] = None if i in seen else values  # two lines for one test: one of them forged
    passed, later = [0.0] * len(tests), []
    for i, values in seen.items():
        if values is None or len(values) != len(split[i][1]) or not all(isinstance(v, str) for v in values):
            continue
        verdict = _judge_here(split[i][0], values)
        if verdict is None:
            later.append((i, split[i][0], values))
        else:
            passed[i] = float(verdict)
    if later:
        judged = run_python(_JUDGE.format(checks=[(c, v) for _, c, v in later]), timeout_s=CODE_TIMEOUT_S).stdout
        ok = {int(a) for a, b in (ln.split() for ln in judged.splitlines() if len(ln.split()) == 2) if b == "1"}
        for j, (i, _, _) in enumerate(later):
            passed[i] = float(j in ok)
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
