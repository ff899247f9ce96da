"""The real task families: deterministic rows, resolvable objectives, warm-up pairs the rewards accept,
local JSONL files, and one line for bad options."""

from __future__ import annotations

import importlib.util
import inspect
import json
import random
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mo_rl.errors import MoRLError
from mo_rl.rewards.registry import get_reward
from mo_rl.tasks.base import available_tasks, make_task
from mo_rl.tasks.real import _problems, code_problem

REAL = ["math", "code", "toolcall"]
# task.options.path reads files through HF datasets, the `data` extra (.ci/run installs it; the quick start does not)
needs_datasets = pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="the data extra is not "
                                    "installed (pip install 'mo-rl[data]')")
CONF = Path(__file__).resolve().parents[1] / "conf" / "task"


def _score(name: str, rows: list[dict], completions: list[str]) -> list:
    cols = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    return get_reward(name)([r["prompt"] for r in rows], completions, **cols)


@pytest.mark.parametrize("name", REAL)
def test_rows_are_a_function_of_the_seed(name):
    task = make_task(name)
    a = task.sample(random.Random(7), 6, "train")
    assert a == task.sample(random.Random(7), 6, "train")
    assert a != task.sample(random.Random(8), 6, "train")
    assert all(isinstance(r["prompt"], str) and r["prompt"] for r in a)


@pytest.mark.parametrize("name", REAL)
def test_objectives_resolve_and_weights_match(name):
    task = make_task(name)
    assert name in available_tasks()
    assert len(task.weights) == len(task.objectives) and sum(task.weights) == pytest.approx(1.0)
    for obj in [*task.objectives, task.success_objective]:
        assert callable(get_reward(obj))


def test_math_rows_hold_integer_answers_and_the_warmup_scores_full_marks():
    task = make_task("math", max_chars=40, max_operand=9)
    rows = task.sample(random.Random(0), 50, "train")
    assert all(r["answer"].isdigit() and r["max_chars"] == 40 for r in rows)
    assert all("<answer>number</answer>" in r["prompt"] for r in rows)
    rng = random.Random(3)
    pairs = [task.warmup(rng) for _ in range(20)]
    assert all(c.startswith("<answer>") and c.endswith("</answer>") for _, c in pairs)
    for obj in task.objectives:
        assert _score(obj, rows[:1], [f"<answer>{rows[0]['answer']}</answer>"]) == [1.0]


def test_math_problem_answers_are_right():
    rows = make_task("math").sample(random.Random(1), 200, "train")
    for r in rows:
        q = r["prompt"].split("Question: ")[-1].split("?")[0]  # the row's question, after the worked example
        if q.startswith("What is "):
            assert eval(q[len("What is "):]) == int(r["answer"])  # our own generated arithmetic


def test_code_rows_have_a_fixed_number_of_tests():
    task = make_task("code")
    rows = task.sample(random.Random(0), 30, "train")
    assert {len(r["tests"]) for r in rows} == {4}
    assert task.objectives == ["code_test_0", "code_test_1", "code_test_2", "code_test_3", "code_format"]
    assert task.success_objective == "code_tests"
    assert all(t.startswith(f"assert {r['entry_point']}(") for r in rows for t in r["tests"])
    assert make_task("code", per_test=False).objectives == ["code_tests", "code_format"]


def test_code_problem_fills_the_parameter_everywhere():
    spec = next(p for p in _problems() if p["name"] == "add_k")
    row = code_problem(spec, 5)
    assert "Return x plus 5." in row["prompt"]
    assert row["tests"] == ["assert add_k(0,) == 5", "assert add_k(5,) == 10", "assert add_k(-3,) == 2",
                            "assert add_k(100,) == 105"]


@pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux")
@pytest.mark.timeout(120)
def test_every_reference_solution_passes_its_tests_and_a_wrong_one_does_not():
    rows = []
    for spec in _problems():
        k = spec["k"][0] if spec.get("k") else None
        rows.append(code_problem(spec, k))
    assert len(rows) >= 10
    assert _score("code_tests", rows, [r["solution"] for r in rows]) == [1.0] * len(rows)
    assert _score("code_format", rows, [r["solution"] for r in rows]) == [1.0] * len(rows)
    wrong = [f"```python\ndef {r['entry_point']}(*args):\n    return None\n```" for r in rows[:3]]
    assert all(v < 1.0 for v in _score("code_tests", rows[:3], wrong))


def test_toolcall_rows_show_the_right_tool_and_the_warmup_is_a_correct_call():
    task = make_task("toolcall", distractors=1)
    rows = task.sample(random.Random(0), 20, "train")
    for r in rows:
        shown = [json.loads(line)["name"] for line in r["prompt"].split("\n") if line.startswith("{")]
        assert r["tool"] in shown and len(shown) == 2
        assert isinstance(json.loads(r["args"]), dict)
    rng = random.Random(5)
    for _ in range(10):
        prompt, completion = task.warmup(rng)
        call = json.loads(completion)
        assert set(call) == {"name", "arguments"} and call["name"] in prompt


@needs_datasets
def test_jsonl_files_give_the_rows(tmp_path):
    math_file = tmp_path / "math.jsonl"
    math_file.write_text('{"prompt": "1+1?", "answer": 2}\n\n{"prompt": "2+2?", "answer": 4}\n')
    rows = make_task("math", path=str(math_file)).sample(random.Random(0), 10, "train")
    assert {r["prompt"] for r in rows} <= {"1+1?", "2+2?"} and all(isinstance(r["answer"], str) for r in rows)
    # read by HF datasets (arrow): a column has one type, and a file mixing them gets a one-line error
    math_file.write_text('{"prompt": "1+1?", "answer": 2}\n\n{"prompt": "2+2?", "answer": "4"}\n')
    with pytest.raises(MoRLError, match=r"column 'answer' holds both numbers and strings; write every row"):
        make_task("math", path=str(math_file))
    tool_file = tmp_path / "tools.jsonl"
    tool_file.write_text(json.dumps({"prompt": "weather?", "tool": "w", "args": {"c": "X"}}) + "\n")
    task = make_task("toolcall", path=str(tool_file))
    row = task.sample(random.Random(0), 1, "eval")[0]
    assert json.loads(row["args"]) == {"c": "X"}
    assert _score("tool_args", [row], [task.warmup(random.Random(0))[1]]) == [1.0]
    code_file = tmp_path / "code.jsonl"
    code_file.write_text("".join(json.dumps({"prompt": f"p{i}", "tests": ["assert 1", "assert 2", "assert 3"]})
                                 + "\n" for i in range(3)))
    task = make_task("code", path=str(code_file))
    assert task.objectives[:3] == ["code_test_0", "code_test_1", "code_test_2"] and task.warmup is None


@pytest.mark.parametrize("name, options, fragment", [
    ("math", {"path": "/no/such/file.jsonl"}, "no such file"),
    ("math", {"max_chars": 0}, "max_chars=0"),
    ("math", {"max_operand": "ten"}, "max_operand='ten'"),
    ("toolcall", {"distractors": -1}, "distractors=-1"),
])
def test_bad_options_raise_one_line(name, options, fragment):
    with pytest.raises(MoRLError, match=fragment) as e:
        make_task(name, **options)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content, fragment", [
    pytest.param('{"prompt": "x"}\n', "lacks answer", marks=needs_datasets),
    pytest.param("not json\n", "line 1 is not JSON", marks=needs_datasets),
    ("", "has no rows"),
])
def test_bad_jsonl_files_raise(tmp_path, content, fragment):
    f = tmp_path / "rows.jsonl"
    f.write_text(content)
    with pytest.raises(MoRLError, match=fragment):
        make_task("math", path=str(f))


@needs_datasets
def test_code_file_with_uneven_tests_is_refused(tmp_path):
    f = tmp_path / "code.jsonl"
    f.write_text(json.dumps({"prompt": "a", "tests": ["assert 1"]}) + "\n"
                 + json.dumps({"prompt": "b", "tests": ["assert 1", "assert 2"]}) + "\n")
    with pytest.raises(MoRLError, match="same length in every row"):
        make_task("code", path=str(f))


def test_task_data_without_the_data_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"prompt": "1+1", "answer": "2"}\n')
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError, as where it is missing
    with pytest.raises(MoRLError) as e:
        make_task("math", path=str(f))
    assert str(e.value) == (f"task option path='{f}': reading task data needs the datasets package, not installed "
                            "here: pip install 'mo-rl[data]' (or pip install datasets)")
    with pytest.raises(MoRLError, match="no such file"):  # what needs no datasets is still checked first
        make_task("math", path=str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("name", REAL)
def test_config_file_options_are_the_factory_defaults(name):
    conf = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    assert conf["name"] == name
    from mo_rl.tasks import real

    params = inspect.signature(getattr(real, name)).parameters
    plus_only = {"columns"}  # set with +task.options.columns=..., so not in the yaml; default None
    assert all(params[k].default is None for k in plus_only if k in params)
    assert conf.get("options", {}) == {k: p.default for k, p in params.items() if k not in plus_only}
