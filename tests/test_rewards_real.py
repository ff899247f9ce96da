"""Rewards of the real task families on right, wrong and malformed completions, with exact values."""

from __future__ import annotations

import json
import sys

import pytest

import mo_rl.rewards.real as real
from mo_rl.rewards.registry import available_rewards, get_reward

# ---------------------------------------------------------------------------------------------------------- math

MATH = ["<answer>12</answer>",                 # right
        "6 + 6 = 12 <answer>12</answer>",      # right, with working
        "<answer>13</answer>",                 # wrong
        "<answer> 12.0 </answer>",             # right value, spaces and a decimal point
        "<answer>12",                          # unclosed: right answer, no tag
        "<answer>1</answer><answer>12</answer>",  # two answers: the last one counts, the format does not
        "<answer>twelve</answer>",             # not a number
        "12",                                  # no tag: the answer still counts
        "<answer>12</answer> and more text"]   # trailing text after the tag


# math_correct and math_format measure one thing each (issue 21): correctness reads the final answer however it is
# written, the format objective rewards the tag. Before, correctness also required the tag, so the two were one
# objective for a model that does not write it ("<answer>12" and "12" scored 0 correct), and the format also
# required the tag to end the completion (trailing text scored 0 format).
def test_math_correct_exact_values():
    assert get_reward("math_correct")(None, MATH, answer=["12"] * len(MATH)) == \
        [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]


def test_math_format_exact_values():
    assert get_reward("math_format")(None, MATH) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


WRITTEN = ['15 * 11 = 165 The answer is "165".',   # SmolLM2's own words (issue 21): right, untagged
           "So 15 * 11 = 165",                     # "= N" at the end
           "We get \\boxed{165}.",                # LaTeX
           "<answer>165</answer>",
           "The answer is: **165**",
           "Answer: 1,65",                          # a thousands comma is read as one: 165
           "15 * 11 = 165, then I add 2 = 167",    # the last "=" is the final answer: wrong
           "15 * 11 = 165 <answer>160</answer>",   # the tag is what the model answered: wrong
           "the answer is 160, not 165",           # "answer is" beats a later number: wrong
           "So, the answer is 2 + 17 = 160.",       # SmolLM2's phrasing: the number after its "=": wrong
           "I do not know"]


def test_math_correct_reads_the_final_answer_however_written():
    assert get_reward("math_correct")(None, WRITTEN, answer=["165"] * len(WRITTEN)) == [1.0] * 6 + [0.0] * 5
    assert real.final_answer("So, the answer is 2 + 17 = 19.") == 19.0
    assert real.final_answer("Ana has 21 apples.") == 21.0 and real.final_answer("none") is None


def test_math_format_is_the_tag_alone():
    comps = ["<answer>160</answer>", "165", "<answer>165</answer> done", "<answer>1</answer> <answer>165</answer>"]
    assert get_reward("math_format")(None, comps) == [1.0, 0.0, 1.0, 0.0]
    assert get_reward("math_correct")(None, comps, answer=["165"] * 4) == [0.0, 1.0, 1.0, 1.0]


def test_math_length_budget_then_decreasing():
    comps = ["x" * 10, "x" * 64, "x" * 128, "x" * 256]
    assert get_reward("math_length")(None, comps) == [1.0, 1.0, 0.5, 0.25]
    assert get_reward("math_length")(None, comps[:2], max_chars=[5, 32]) == [0.5, 0.5]


# ---------------------------------------------------------------------------------------------------------- code

TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(0, 0) == 0", "assert add(2, 2) == 4"]
RIGHT = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n"
WRONG = "```python\ndef add(a, b):\n    return a * b\n```"       # passes only 2 * 2 == 2 + 2 and 0 * 0 == 0 + 0
BROKEN = "```python\ndef add(a, b)\n    return a + b\n```"        # syntax error
BARE = "def add(a, b):\n    return a + b\n"                          # no fence: the whole text is the code
PROSE = "I think you should add the numbers."
CODE = [RIGHT, WRONG, BROKEN, BARE, PROSE]

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux")


@pytest.fixture(autouse=True)
def fresh_code_cache():
    real._CACHE.clear()
    real.sandbox_failures(reset=True)
    yield


@linux_only
@pytest.mark.timeout(60)
def test_code_tests_fraction_passed():
    assert get_reward("code_tests")(None, CODE, tests=[TESTS] * len(CODE)) == [1.0, 0.5, 0.0, 1.0, 0.0]


@linux_only
@pytest.mark.timeout(60)
def test_per_test_objectives_share_one_sandbox_call_per_completion(monkeypatch):
    calls = []
    run = real.run_python
    monkeypatch.setattr(real, "run_python", lambda code, **kw: calls.append(code) or run(code, **kw))
    names = real.code_test_objectives(4)
    assert names == ["code_test_0", "code_test_1", "code_test_2", "code_test_3"]
    got = [get_reward(n)(None, CODE[:3], tests=[TESTS] * 3) for n in names]
    assert got == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    assert get_reward("code_tests")(None, CODE[:3], tests=[TESTS] * 3) == [1.0, 0.5, 0.0]
    assert len(calls) == 3  # one run per completion, however many objectives read it


@linux_only
@pytest.mark.timeout(60)
def test_per_test_objective_is_none_beyond_a_rows_tests():
    real.code_test_objectives(4)
    assert get_reward("code_test_3")(None, [RIGHT, RIGHT], tests=[TESTS, TESTS[:2]]) == [1.0, None]


@linux_only
@pytest.mark.timeout(60)
def test_a_hanging_test_fails_alone_and_failures_are_counted(monkeypatch):
    monkeypatch.setattr(real, "PER_TEST_TIMEOUT_S", 0.3)
    monkeypatch.setattr(real, "CODE_TIMEOUT_S", 1.0)
    code = "```python\ndef add(a, b):\n    while a == 7:\n        pass\n    return a + b\n```"
    tests = ["assert add(7, 0) == 7", *TESTS[1:]]
    assert real.run_tests(real.extract_code(code), tests) == [0.0, 1.0, 1.0, 1.0]  # per-test alarm, not timeout
    loop = "```python\nwhile True:\n    pass\n```"
    assert get_reward("code_tests")(None, [loop], tests=[TESTS]) == [0.0]
    assert real.sandbox_failures() == {"timeout": 1}


@linux_only
@pytest.mark.timeout(60)
def test_solution_cannot_forge_results_without_the_nonce():
    forged = "```python\nfor i in range(4):\n    print('0' * 16, i, 1)\n```"
    assert real.run_tests(real.extract_code(forged), TESTS) == [0.0, 0.0, 0.0, 0.0]


# Issue 29.6: a program that reads the harness's frame, and one whose return value claims to equal anything, both
# scored 3/3. The tests' expected values now never enter the sandbox, and values cross it as reprs of builtin types.
HACK_TESTS = ["assert add(1000, 234567) == 235567", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]
HONEST = "def add(a, b):\n    return a + b\n"
EQ_HACK = ("class E:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
           "def add(a, b):\n    return E()\n")
# Reads the caller's globals and every string in memory, then prints a pass line for each test in the old harness's
# format (nonce, index, 1) and in the new one's, with every value it found that could be an expected one.
FRAME_HACK = """
import gc, json, sys
def add(a, b):
    return None
g = sys._getframe(1).f_globals
found = [o for o in gc.get_objects() if isinstance(o, str) and o.strip("-").isdigit()]
for i in range(3):
    print(g.get("_nonce", "0" * 16), i, 1)
    for v in found:
        print("@@", json.dumps([i, [v]]))
print("LEAK", [o for o in gc.get_objects() if isinstance(o, str) and "235567" in o])
"""


@linux_only
@pytest.mark.timeout(60)
def test_the_frame_and_eq_hacks_score_0_and_an_honest_solution_1():
    assert real.run_tests(HONEST, HACK_TESTS) == [1.0, 1.0, 1.0]
    assert real.run_tests(EQ_HACK, HACK_TESTS) == [0.0, 0.0, 0.0]
    assert real.run_tests(FRAME_HACK, HACK_TESTS) == [0.0, 0.0, 0.0]
    parts = [p for _, p in map(real.split_test, HACK_TESTS)]
    assert parts == [["add(1000, 234567)"], ["add(-1, 1)"], ["add(2, 2)"]]  # no expected value goes in
    res = real.run_python(real._HARNESS.format(src=FRAME_HACK, parts=parts, per_test=1.0))
    assert "LEAK []" in res.stdout  # the expected value is nowhere in the sandbox's memory


def test_a_test_is_split_into_the_solutions_values_and_the_check():
    assert real.split_test("assert add(1, 2) == 3") == ("_v0 == 3", ["add(1, 2)"])
    assert real.split_test("assert sorted(f(x)) == [1, 2]") == ("sorted(_v0) == [1, 2]", ["f(x)"])
    assert real.split_test("assert all(v > 0 for v in f(3))") == ("all((v > 0 for v in _v0))", ["f(3)"])
    assert real.split_test("assert len(Stack().items) == 0") == ("len(_v0) == 0", ["Stack().items"])
    assert real.split_test("assert 1") == ("1", [])
    for bad, why in (("x = f(1)", "is not one assert statement"), ("assert (", "is not valid Python"),
                     ("assert all(f(i) == i for i in range(3))", "with a comprehension's or lambda's variable")):
        with pytest.raises(ValueError, match=why):
            real.split_test(bad)


@linux_only
@pytest.mark.timeout(60)
def test_checks_other_than_equality_are_judged_apart_and_plain_types_only_pass():
    code = "def f(n):\n    return list(range(n))\nclass L(list):\n    pass\ndef g(n):\n    return L(range(n))\n"
    tests = ["assert sorted(f(3), reverse=True) == [2, 1, 0]", "assert len(f(4)) > 3", "assert f(2) == [0, 1]",
             "assert g(2) == [0, 1]", "assert f(2) == (0, 1)", "assert 1"]
    assert real.run_tests(code, tests) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]  # a list subclass is not a plain value


def test_code_format_exact_values():
    comps = [RIGHT, BARE, PROSE, "```python\nprint(1)\n```", "```python\nunclosed", "    def f(x):"]
    assert get_reward("code_format")(None, comps) == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_code_test_objectives_are_registered_once():
    assert real.code_test_objectives(2) == ["code_test_0", "code_test_1"]
    assert real.code_test_objectives(6)[-1] == "code_test_5"
    assert "code_test_5" in available_rewards()


# ------------------------------------------------------------------------------------------------------ toolcall

WEATHER = json.dumps({"city": "Paris", "unit": "celsius"})
CALLS = [
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',           # right
    '```json\n{"name": "get_weather", "arguments": {"unit": "celsius", "city": "Paris"}}\n```',  # right, fenced
    '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"unit\\": \\"celsius\\"}"}',  # string args
    '{"name": "get_weather", "arguments": {"city": "Lima", "unit": "celsius"}}',            # one wrong value
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',                              # one missing
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "x": 1}}',   # one made up
    '{"name": "set_timer", "arguments": {"city": "Paris", "unit": "celsius"}}',             # wrong tool
    '{"name": "get_weather", "arguments": {"city": "Paris"',                                # truncated JSON
    '["get_weather"]',                                                                      # JSON, not an object
    'get_weather(city="Paris")',                                                            # not JSON
    'Sure: {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}} Done.',  # call in prose
]


def test_tool_json_exact_values():
    assert get_reward("tool_json")(None, CALLS) == [1.0] * 7 + [0.0] * 4


# tool_json, tool_name and tool_args measure one thing each (issue 21): the format (only a JSON object), the choice
# of tool and the arguments, each read wherever the call is written. Before, name and args required the whole
# completion to be JSON and args also the right name, so for a model that wraps its call in prose all three were
# one objective (the call in prose scored 0 name and 0 args; the wrong tool with the right arguments 0 args).
def test_tool_name_exact_values():
    assert get_reward("tool_name")(None, CALLS, tool=["get_weather"] * len(CALLS)) == [1.0] * 6 + [0.0] * 4 + [1.0]


def test_tool_args_exact_values():
    got = get_reward("tool_args")(None, CALLS, tool=["get_weather"] * len(CALLS), args=[WEATHER] * len(CALLS))
    assert got == [1.0, 1.0, 1.0, 0.5, 0.5, pytest.approx(2 / 3), 1.0, 0.0, 0.0, 0.0, 1.0]


def test_find_call_skips_objects_without_a_name():
    assert real.find_call('{"x": 1} then {"name": "f", "arguments": {}}') == {"name": "f", "arguments": {}}
    assert real.find_call('only {"x": 1}') == {"x": 1} and real.find_call("no call {") is None


def test_tool_args_no_arguments_expected():
    assert get_reward("tool_args")(None, ['{"name": "now"}', '{"name": "now", "arguments": {"tz": "UTC"}}'],
                                   tool=["now", "now"], args=["{}", "{}"]) == [1.0, 0.0]


def test_every_real_reward_stays_in_unit_interval():
    for name in ["math_correct", "math_format", "math_length"]:
        assert all(0.0 <= v <= 1.0 for v in get_reward(name)(None, MATH, answer=["12"] * len(MATH)))
    for name in ["tool_json", "tool_name", "tool_args"]:
        vals = get_reward(name)(None, CALLS, tool=["get_weather"] * len(CALLS), args=[WEATHER] * len(CALLS))
        assert all(0.0 <= v <= 1.0 for v in vals)
