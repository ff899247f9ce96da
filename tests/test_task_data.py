"""Task data through HF ``datasets``: parquet, CSV and JSONL files, ``save_to_disk`` directories (one split or a
DatasetDict), a column mapping, and one-line errors; plus a real `mo-rl train` on a parquet made here."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from mo_rl.errors import MoRLError
from mo_rl.tasks.base import make_task

datasets = pytest.importorskip("datasets")

QUESTIONS = {"question": ["What is 1 + 1?", "What is 2 + 3?", "What is 4 * 2?"], "answer": [2, 5, 8],
             "source": ["a", "b", "c"]}
MAP = {"prompt": "question", "answer": "answer"}


def _sample(task, n=30):
    return task.sample(random.Random(0), n, "train")


def test_parquet_round_trip_with_a_column_mapping(tmp_path):
    path = tmp_path / "math.parquet"
    datasets.Dataset.from_dict(QUESTIONS).to_parquet(str(path))
    rows = _sample(make_task("math", path=str(path), columns=MAP))
    assert {r["prompt"] for r in rows} == set(QUESTIONS["question"])
    pairs = dict(zip(QUESTIONS["question"], QUESTIONS["answer"]))
    assert all(r["answer"] == str(pairs[r["prompt"]]) for r in rows)  # answers become strings, as from JSONL
    assert all(r["source"] in "abc" and r["max_chars"] == 64 for r in rows)  # other columns are kept


def test_save_to_disk_directories_one_split_or_a_dict(tmp_path):
    tools = {"prompt": ["weather in Oslo?", "time in Rome?"], "tool": ["weather", "time"],
             "args": [json.dumps({"city": "Oslo"}), json.dumps({"city": "Rome"})]}
    test = {"prompt": ["weather in Bergen?"], "tool": ["weather"], "args": [json.dumps({"city": "Bergen"})]}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(tools), "test": datasets.Dataset.from_dict(test)})
    dd.save_to_disk(str(tmp_path / "dict"))
    rows = _sample(make_task("toolcall", path=str(tmp_path / "dict"), split="test"))
    assert {r["prompt"] for r in rows} == {"weather in Bergen?"} and json.loads(rows[0]["args"]) == {"city": "Bergen"}
    assert {r["tool"] for r in _sample(make_task("toolcall", path=str(tmp_path / "dict")))} == {"weather", "time"}
    code = {"prompt": ["p0", "p1"], "tests": [["assert 1", "assert 2"], ["assert 3", "assert 4"]]}
    datasets.Dataset.from_dict(code).save_to_disk(str(tmp_path / "one"))
    task = make_task("code", path=str(tmp_path / "one"))
    assert task.objectives[:2] == ["code_test_0", "code_test_1"]
    assert {tuple(r["tests"]) for r in _sample(task)} == {("assert 1", "assert 2"), ("assert 3", "assert 4")}


def test_csv_and_jsonl_files(tmp_path):
    datasets.Dataset.from_dict(QUESTIONS).to_csv(str(tmp_path / "m.csv"))
    assert {r["prompt"] for r in _sample(make_task("math", path=str(tmp_path / "m.csv"), columns=MAP))} == set(
        QUESTIONS["question"])
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n"
                                              for q, a in zip(QUESTIONS["question"], QUESTIONS["answer"])))
    assert {r["answer"] for r in _sample(make_task("math", path=str(tmp_path / "m.jsonl")))} == {"2", "5", "8"}


def test_errors_are_one_line(tmp_path):
    datasets.Dataset.from_dict(QUESTIONS).to_parquet(str(tmp_path / "m.parquet"))
    train = datasets.Dataset.from_dict(QUESTIONS)
    datasets.DatasetDict({"train": train, "test": train}).save_to_disk(str(tmp_path / "dd"))
    train.select([]).to_parquet(str(tmp_path / "empty.parquet"))  # (datasets cannot reload an empty saved split)
    (tmp_path / "notes.txt").write_text("x")
    cases = [
        ({"path": str(tmp_path / "missing.parquet")}, "no such file or directory; expected a JSONL, parquet or CSV"),
        ({"path": str(tmp_path / "m.parquet")}, r"the data lacks prompt; each row needs prompt, answer \(it has "
                                                 r"question, answer, source; map yours with \+task.options.columns"),
        ({"path": str(tmp_path / "m.parquet"), "columns": {"prompt": "q"}},
         r"columns.prompt='q': .* has no column 'q'; it has question, answer, source"),
        ({"path": str(tmp_path / "empty.parquet"), "columns": MAP}, r"split 'train' has no rows"),
        ({"path": str(tmp_path / "dd"), "split": "validation"}, r"split='validation': .* has splits train, test"),
        ({"path": str(tmp_path / "notes.txt")}, r"unknown file type '.txt'; allowed: .jsonl, .json, .parquet, .csv"),
        ({"path": str(tmp_path / "m.parquet"), "columns": "question"}, r"columns='question': must be a mapping"),
    ]
    for options, fragment in cases:
        with pytest.raises(MoRLError, match=fragment) as e:
            make_task("math", **options)
        assert "\n" not in str(e.value), options


def test_mo_rl_train_on_a_parquet(tmp_path, tiny_model_path):
    path = tmp_path / "math.parquet"
    datasets.Dataset.from_dict(QUESTIONS).to_parquet(str(path))
    cmd = [sys.executable, "-m", "mo_rl", "train", "task=math", f"task.options.path={path}",
           "+task.options.columns={prompt: question, answer: answer}", "trainer.steps=2", "trainer.batch_prompts=2",
           "trainer.group_size=2", f"output_dir={tmp_path}", "run_name=r", "trainer.device=cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in open(tmp_path / "default" / "r" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1] and "reward/math_correct/mean" in rows[0]
    samples = [json.loads(line) for line in open(tmp_path / "default" / "r" / "samples.jsonl")]
    assert {s["prompt"] for s in samples} <= set(QUESTIONS["question"])
