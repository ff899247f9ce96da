"""compare/reader/plots on fake run directories written with RunWriter: 2 methods x 2 seeds, hand-set values.

Each run logs 10 steps (0..9). Per-objective rewards are 0 before step 8 and a fixed final value from step 8
on, so with last_frac=0.2 (the last 2 steps) the final means are exactly the values in FINALS. The weighted
reward is slope * step, which makes steps-to-threshold easy to work out by hand.
"""

import io
import json
import math

import pandas as pd
import pytest

from typer.testing import CliRunner

from mo_rl.analysis.compare import compare_runs
from mo_rl.cli import app
from mo_rl.analysis.plots import plot_runs
from mo_rl.errors import MoRLError
from mo_rl.results.reader import find_runs, read_run
from mo_rl.results.writer import RunWriter

# (method, seed) -> final a, final b, weighted slope, adv/mean_abs
FINALS = {("grpo", 0): (0.4, 0.5, 0.1, 0.2), ("grpo", 1): (0.6, 0.5, 0.05, 0.4),
          ("dvao", 0): (0.7, 0.6, 0.25, 1.0), ("dvao", 1): (0.9, 0.8, 0.125, 1.0)}
SQRT2 = math.sqrt(2)


def make_run(root, method, seed, objectives=("a", "b"), summary=True, task="toy"):
    """A finished (or, with summary=False, half-written) run under root/exp/<method>-s<seed>."""
    fa, fb, slope, adv = FINALS[(method, seed)]
    finals = dict(zip(objectives, (fa, fb, 0.5)))
    cfg = {"method": {"name": method}, "task": {"name": task}, "trainer": {"seed": seed, "lr": 0.01},
           "objectives": {"resolved": {"names": list(objectives), "weights": [0.5, 0.5]}}}
    path = root / "exp" / f"{method}-s{seed}"
    w = RunWriter(path, cfg)
    for step in range(10):
        row = {"step": step, "time": 2.0 * step, "reward/weighted/mean": slope * step, "adv/mean_abs": adv,
               "adv/distinct_per_group": 4.0, "adv/frac_zero_groups": 0.0, "perf/tokens_per_s": 100.0 * (seed + 1)}
        row.update({f"reward/{o}/mean": (v if step >= 8 else 0.0) for o, v in finals.items()})
        w.log_metrics(row)
        w.log_samples([{"step": step, "prompt": "p", "completion": "x y", "rewards": {o: v for o, v in finals.items()}},
                       {"step": step, "prompt": "p", "completion": "x z", "rewards": {o: 0.0 for o in finals}}])
    if summary:
        w.write_summary({"status": "completed", "method": method, "objectives": list(objectives),
                         "steps_done": 10, "wall_time": 30.0 + seed})
    return path


@pytest.fixture
def results(tmp_path):
    for method, seed in FINALS:
        make_run(tmp_path, method, seed)
    return tmp_path


def by_method(text):
    return pd.read_csv(io.StringIO(text)).set_index("method")


def test_csv_means_and_stds(results):
    df = by_method(compare_runs([str(results)], fmt="csv"))
    assert sorted(df.index) == ["dvao", "grpo"] and (df["n_runs"] == 2).all()
    g, d = df.loc["grpo"], df.loc["dvao"]
    assert g["final/a"] == pytest.approx(0.5) and g["final/a_std"] == pytest.approx(0.2 / SQRT2)
    assert g["final/b"] == pytest.approx(0.5) and g["final/b_std"] == pytest.approx(0.0)
    assert d["final/a"] == pytest.approx(0.8) and d["final/b"] == pytest.approx(0.7)
    # percentile bootstrap of two values: the mean is a, (a+b)/2 or b, so the 95% interval is [a, b]
    assert (g["final/a_lo"], g["final/a_hi"]) == (pytest.approx(0.4), pytest.approx(0.6))
    assert "hypervolume" not in df.columns  # the hypervolume of one point (the product of the final means) is gone
    # weighted = slope * step, last two steps 8, 9 -> slope * 8.5
    assert g["final/weighted"] == pytest.approx((0.1 + 0.05) / 2 * 8.5)
    assert g["adv/mean_abs"] == pytest.approx(0.3) and d["adv/mean_abs_std"] == pytest.approx(0.0)
    assert g["wall_time_s"] == pytest.approx(30.5) and g["tokens_per_s"] == pytest.approx(150.0)
    assert g["steps_done"] == 10


def test_steps_to_threshold(results):
    df = by_method(compare_runs([str(results)], fmt="csv", threshold=0.5))
    # grpo: 0.1*step reaches 0.5 at step 5, 0.05*step never (max 0.45) -> one run with a value
    assert df.loc["grpo", "steps_to_threshold"] == 5 and df.loc["grpo", "steps_to_threshold_n"] == 1
    # dvao: 0.25*step at step 2, 0.125*step at step 4
    assert df.loc["dvao", "steps_to_threshold"] == 3
    assert df.loc["dvao", "steps_to_threshold_std"] == pytest.approx(SQRT2)


def test_json_default_threshold(results):
    data = json.loads(compare_runs([str(results)], fmt="json"))
    # default: halfway between the mean first value (0) and the mean best value (9 * mean slope)
    assert data["thresholds"]["toy"] == pytest.approx(9 * (0.1 + 0.05 + 0.25 + 0.125) / 4 / 2)
    groups = {g["method"]: g for g in data["groups"]}
    # grpo steps: 0.1 -> 6, 0.05 -> never
    assert groups["grpo"]["steps_to_threshold"] == 6 and groups["grpo"]["steps_to_threshold_n"] == 1
    assert groups["dvao"]["steps_to_threshold"] == pytest.approx(4.0)  # steps 3 and 5


def test_table_and_markdown(results, tmp_path):
    out = tmp_path / "out" / "cmp.txt"
    text = compare_runs([str(results)], out=str(out))
    assert out.read_text() == text
    assert "grpo" in text and "0.500 [0.400, 0.600]" in text and "6 (1)" in text
    md = compare_runs([str(results)], fmt="markdown", threshold=0.5)
    assert md.startswith("**rewards**\n\n| method | status | n |") and "| 5 (1) |" in md  # one table a section


def test_half_written_run_and_corrupt_rows(results, tmp_path, capsys):
    path = make_run(tmp_path / "more", "grpo", 0, summary=False)
    with open(path / "metrics.jsonl", "a") as f:
        f.write("[1, 2]\n")  # valid JSON, not a row
        f.write('{"step": 10, "reward/a/me')  # a write cut short by a crash
    run = read_run(path)
    assert run.n_corrupt_rows == 2 and len(run.metrics) == 10 and run.summary == {} and run.status == "unknown"
    df = by_method(compare_runs([str(results), str(path)], fmt="csv"))
    assert f"skipped 2 corrupt rows in {path}" in capsys.readouterr().err
    assert df.loc["grpo", "n_runs"] == 3 and df.loc["grpo", "status"] == "2 completed, 1 unknown"
    assert df.loc["grpo", "wall_time_s"] == pytest.approx((30 + 31 + 18) / 3)  # 18 = last logged time


def test_find_runs(results, tmp_path):
    hidden = tmp_path / "exp" / ".hydra-runs" / "x"
    hidden.mkdir(parents=True)
    (hidden / "config.yaml").write_text("a: 1\n")
    (hidden / "metrics.jsonl").write_text("")
    runs = find_runs([str(results), str(results / "exp" / "grpo-s0")])
    assert [p.name for p in runs] == ["dvao-s0", "dvao-s1", "grpo-s0", "grpo-s1"]
    with pytest.raises(MoRLError, match=r"no runs found under '/nonexistent' \(a run directory holds"):
        compare_runs(["/nonexistent"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MoRLError, match="no runs found under"):
        find_runs(tmp_path / "empty")


def test_bad_inputs(results):
    with pytest.raises(MoRLError, match="unknown format 'xml'; allowed: table, csv, markdown, json"):
        compare_runs([str(results)], fmt="xml")
    with pytest.raises(MoRLError, match="metric 'nope'"):
        compare_runs([str(results)], metric="nope")
    with pytest.raises(MoRLError, match="--by 'trainer.nope'"):
        compare_runs([str(results)], by=["trainer.nope"])
    with pytest.raises(MoRLError, match="last_frac"):
        compare_runs([str(results)], last_frac=0)
    with pytest.raises(MoRLError, match=r"unknown --baseline method 'nope'; allowed: dvao, grpo"):
        compare_runs([str(results)], baseline="nope")
    with pytest.raises(MoRLError, match="add method to --by"):
        compare_runs([str(results)], by=["task"], baseline="grpo")


def test_mixed_objectives(results, tmp_path):
    other = make_run(tmp_path / "k3", "grpo", 0, objectives=("a", "b", "c"), task="toy3")
    with pytest.raises(MoRLError, match=r"different objectives: \[a,b\] .* vs \[a,b,c\]"):
        compare_runs([str(results), str(other)])
    df = pd.read_csv(io.StringIO(compare_runs([str(results), str(other)], by=["task", "method"], fmt="csv")))
    assert len(df) == 3 and df.loc[df["task"] == "toy3", "final/c"].item() == pytest.approx(0.5)


def test_metric_focus_and_config_grouping(results):
    df = pd.read_csv(io.StringIO(compare_runs([str(results)], fmt="csv", metric="adv/mean_abs")))
    assert list(df["method"]) == ["dvao", "grpo"] and list(df.columns[4:6]) == ["adv/mean_abs", "adv/mean_abs_std"]
    logged = pd.read_csv(io.StringIO(compare_runs([str(results)], fmt="csv", metric="perf/tokens_per_s")))
    assert logged["perf/tokens_per_s"].tolist() == [pytest.approx(150.0)] * 2
    by_lr = pd.read_csv(io.StringIO(compare_runs([str(results)], fmt="csv", by=["trainer.lr"])))
    assert by_lr["n_runs"].tolist() == [4]


def test_eval_columns(results):
    # an older eval.json: best_at_k_fixed is the user-weighted best@k, best_at_k_sampled the Dirichlet one
    ev = {"results": [{"k": 1, "best_at_k_sampled": 0.5, "best_at_k_fixed": 0.4, "pass_at_k": None,
                       "hypervolume": 0.2, "distinct_2": 0.9},
                      {"k": 4, "best_at_k_sampled": 0.8, "best_at_k_fixed": 0.6, "pass_at_k": 0.7,
                       "hypervolume": 0.3, "distinct_2": 0.8}]}
    (results / "exp" / "dvao-s0" / "eval.json").write_text(json.dumps(ev))
    df = by_method(compare_runs([str(results)], fmt="csv"))
    assert df.loc["dvao", "best@4"] == pytest.approx(0.6) and df.loc["dvao", "best@4_n"] == 1
    assert df.loc["dvao", "best_dirichlet@4"] == pytest.approx(0.8) and df.loc["dvao", "hv@1"] == pytest.approx(0.2)
    assert list(df.columns).index("best@1") < list(df.columns).index("best_dirichlet@1")  # user-weighted first
    assert df.loc["dvao", "pass@1_n"] == 0 and df.loc["grpo", "best@4_n"] == 0
    assert "best@4" in compare_runs([str(results)], metric="best@4")


def test_plots_are_pngs(results, tmp_path):
    files = plot_runs(find_runs([str(results)]), tmp_path / "figs", by=["method"])
    assert sorted(p.name for p in files) == ["curves.png", "pareto.png", "samples.png"]
    for p in files:
        assert p.stat().st_size > 5000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    compare_runs([str(results)], plot=str(tmp_path / "via_compare"))
    assert len(list((tmp_path / "via_compare").glob("*.png"))) == 3


def test_status_keeps_only_runs_in_those_states(results, monkeypatch):
    monkeypatch.setitem(FINALS, ("vpo", 0), (0.5, 0.5, 0.1, 0.3))
    make_run(results, "vpo", 0, summary=False)  # still going: no summary.json yet (status unknown)
    everything = by_method(compare_runs([str(results)], fmt="csv"))
    assert "vpo" in everything.index
    done = by_method(compare_runs([str(results)], fmt="csv", status=["completed"]))
    assert sorted(done.index) == ["dvao", "grpo"] and (done["n_runs"] == 2).all()
    assert "4 runs with status completed;" in compare_runs([str(results)], status=["completed"])
    out = CliRunner().invoke(app, ["compare", str(results), "--status", "finished"])
    assert out.exit_code == 2 and len(out.output.strip().splitlines()) == 1, out.output
    assert ("unknown --status 'finished'; allowed: completed, running, failed, interrupted, diverged, dead, "
            "unknown") in out.output
    out = CliRunner().invoke(app, ["compare", str(results), "--status", "failed"])
    assert out.exit_code == 2 and "no run with status failed under" in out.output
    assert "(found: 4 completed, 1 unknown)" in out.output


def test_a_plot_label_reads_a_missing_key_as_the_tables_dash(results):
    from mo_rl.analysis.plots import _label

    run = read_run(results / "exp" / "grpo-s0")
    assert _label(run, ["method", "method.credit"]) == "grpo / -"  # grpo has no credit option (was "grpo / None")
    assert _label(run, ["method"]) == "grpo"


def test_curve_band_is_a_t_interval_and_base_runs_are_not_drawn(results, tmp_path):
    from mo_rl.analysis.plots import _curve_band

    runs = [read_run(results / "exp" / f"grpo-s{s}") for s in (0, 1)]
    band = _curve_band(runs, "reward/a/mean").loc[8]  # a = 0.4 and 0.6 from step 8: sd 0.2 / sqrt(2)
    half = 12.7062047 * (0.2 / SQRT2) / SQRT2  # t(0.975, 1 dof)
    assert band["mean"] == pytest.approx(0.5) and band["n"] == 2
    assert (band["lo"], band["hi"]) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    base = tmp_path / "base" / "toy-1"
    base.mkdir(parents=True)
    (base / "config.yaml").write_text("method: {name: base}\ntask: {name: toy}\n")
    (base / "metrics.jsonl").write_text("")
    files = plot_runs([*runs, base], tmp_path / "figs", by=["method"])
    assert sorted(p.name for p in files) == ["curves.png", "pareto.png", "samples.png"]
