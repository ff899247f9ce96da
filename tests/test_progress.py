"""Progress: plain lines where stderr is not a terminal (training every trainer.log_every steps, other long work
every tenth), a bar that keeps its counter and time left at 80 columns, and sampling in slices that draws what one
call draws."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from io import StringIO

import pytest
import torch
from rich.console import Console

from mo_rl.config import compose, validate
from mo_rl.errors import MoRLError
from mo_rl.pipeline.rollout_score import Scoring, rollout_and_score
from mo_rl.progress import progress_bar, work
from mo_rl.rollout import SamplingParams, make_engine
from mo_rl.tasks.base import make_task
from tests.conftest import compose_run

TIME = r"\d+:\d\d:\d\d"


def test_a_run_outside_a_terminal_prints_a_plain_line_every_log_every_steps(tmp_path, tiny_model_path):
    out = subprocess.run([sys.executable, "-m", "mo_rl", "train", "trainer.steps=5", "trainer.log_every=2",
                          "trainer.batch_prompts=2", "trainer.group_size=2", f"output_dir={tmp_path}", "run_name=r"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if " step " in line]
    # every 2nd step and the last; the objectives of task=aligned, the weighted reward, step time and time left
    assert [re.search(r"step (\d+/\d+)", line).group(1) for line in lines] == ["2/5", "4/5", "5/5"], out.stderr
    pattern = (rf"^aligned/dvao step \d/5 \| match \d\.\d{{3}} \| match_noisy \d\.\d{{3}} \| first_char \d\.\d{{3}} \| "
               rf"noise \d\.\d{{3}} \| weighted \d\.\d{{3}} \| \d+\.\d{{3}} s/step \| ETA {TIME}$")
    assert all(re.match(pattern, line) for line in lines), lines
    assert lines[-1].endswith("ETA 0:00:00")
    assert "s/step" not in out.stdout and out.stdout.startswith(f"run: {tmp_path}/default/r")  # stdout: results only


def test_log_every_zero_prints_no_lines_and_a_negative_one_is_refused(tmp_path):
    validate(compose(["trainer.log_every=0"]))
    with pytest.raises(MoRLError, match=r"^trainer.log_every=-1 must be >= 0 \(steps between plain progress lines; "
                                        r"0 = none\)$"):
        validate(compose(["trainer.log_every=-1"]))
    console = Console(file=StringIO(), width=80)  # not a terminal
    with progress_bar(4, "aligned/dvao", ["match"], log_every=0, console=console) as bar:
        for _ in range(4):
            bar.advance({"reward/match/mean": 0.5, "reward/weighted/mean": 0.5})
    assert console.file.getvalue() == ""


def test_the_training_bar_keeps_its_counter_and_time_left_at_80_columns():
    names = ["match", "match_noisy", "first_char", "noise"]
    row = {**{f"reward/{n}/mean": 0.5 for n in names}, "reward/weighted/mean": 0.5}
    live = Console(file=StringIO(), width=80, force_terminal=True, color_system=None)
    with progress_bar(100, "aligned/dvao", names, console=live) as bar:
        for _ in range(37):
            bar.advance(row)
        shown = Console(file=StringIO(), width=80, color_system=None)
        shown.print(bar.p.make_tasks_table(bar.p.tasks))
    lines = shown.file.getvalue().splitlines()
    assert len(lines) == 1 and len(lines[0]) <= 80, lines
    line = lines[0]
    # label, counter, elapsed and time left are whole; the rewards after them are what is cut
    assert line.startswith("aligned/dvao ") and " 37/100 " in line
    assert re.search(rf" 37/100 {TIME} (?:{TIME}|-:--:--) match 0\.500 \| ", line), line
    assert line.endswith("…")


def test_a_resumed_runs_bar_counts_from_its_first_step():
    live = Console(file=StringIO(), width=80)
    with progress_bar(10, "t/m", ["a"], first=6, log_every=2, console=live) as bar:
        for _ in range(4):
            bar.advance({"reward/a/mean": 1.0, "reward/weighted/mean": 1.0})
    steps = re.findall(r"step (\d+/10)", live.file.getvalue())
    assert steps == ["8/10", "10/10"]


def test_work_prints_a_line_at_the_start_and_every_tenth():
    console = Console(file=StringIO(), width=200)
    with work(20, "sampling", console=console) as advance:
        for i in range(20):
            advance(info=f"item {i}")
    lines = console.file.getvalue().splitlines()
    assert [re.match(r"sampling: (\d+)/20", line).group(1) for line in lines] == [str(n) for n in range(0, 21, 2)]
    assert re.fullmatch(rf"sampling: 0/20 \({TIME}\)", lines[0])
    assert re.fullmatch(rf"sampling: 2/20 \({TIME}, ETA {TIME}\) item 1", lines[1])
    assert re.fullmatch(rf"sampling: 20/20 \({TIME}\) item 19", lines[-1])


def test_work_with_uneven_steps_never_passes_its_total():
    console = Console(file=StringIO(), width=200)
    with work(7, "x", console=console) as advance:
        advance(3)
        advance(3)
        advance(3)
    counts = re.findall(r"x: (\d+)/7", console.file.getvalue())
    assert counts == ["0", "3", "6", "7"]  # a line whenever another tenth (here: one unit) is done


def test_sampling_with_progress_draws_what_one_call_draws(tmp_path, tiny_policy):
    c = validate(compose_run(tmp_path))
    task = make_task("aligned")
    scoring = Scoring.from_config(c, task, list(task.objectives))
    rows = task.sample(random.Random(3), 13, "eval")
    params = SamplingParams(12, 1.0, 1.0, seed=5)
    engine = make_engine("hf", tiny_policy)
    one = rollout_and_score(engine, task, scoring, rows, 4, params, step=-1)
    done = []
    sliced = rollout_and_score(engine, task, scoring, rows, 4, params, step=-1, progress=done.append)
    assert done == [2, 2, 2, 2, 2, 2, 1]  # 13 prompts in slices of ceil(13 / 10) = 2
    assert sliced.batch.texts == one.batch.texts
    torch.testing.assert_close(sliced.rewards, one.rewards, rtol=0, atol=0)
    assert torch.equal(sliced.mask, one.mask)
    # the merged batch keeps every completion's tokens where its mask is 1
    a, b = one.batch.local, sliced.batch.local
    keep = a.completion_mask.bool()
    assert torch.equal(b.completion_mask, a.completion_mask) and sliced.batch.num_tokens == one.batch.num_tokens
    assert torch.equal(b.completion_ids[keep], a.completion_ids[keep])
    torch.testing.assert_close(b.logprobs[keep], a.logprobs[keep])
    assert torch.equal(b.prompt_ids[b.prompt_mask.bool()], a.prompt_ids[a.prompt_mask.bool()])


def test_the_tiny_models_build_reports_its_warm_up_steps(tmp_path, capsys):
    from mo_rl.models.embedded import build_tiny

    out = build_tiny(tmp_path / "models" / "tiny-test", ["aligned"], steps=20)
    assert (out / "config.json").is_file()
    lines = capsys.readouterr().err.splitlines()
    label = f"building the tiny model (once; cached in {tmp_path / 'models'})"
    counts = [line[len(label):].split(" (")[0] for line in lines if line.startswith(label)]
    assert counts == [f": {n}/20" for n in range(0, 21, 2)], lines  # the start, then every tenth of the steps


def test_work_without_eta_for_stages_of_unequal_length():
    console = Console(file=StringIO(), width=200)
    with work(3, "converting", console=console, eta=False) as advance:
        advance(info="tokenizer read")
        advance(info="weights dequantized")
        advance(info="saved")
    lines = console.file.getvalue().splitlines()
    assert [re.sub(TIME, "T", line) for line in lines] == [
        "converting: 0/3 (T)", "converting: 1/3 (T) tokenizer read", "converting: 2/3 (T) weights dequantized",
        "converting: 3/3 (T) saved"]
