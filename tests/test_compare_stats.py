"""compare's intervals, base row and --baseline tables on run directories written by hand (config.yaml,
summary.json, metrics.jsonl, eval.json), with the eval.json format of ``mo-rl eval`` (per-prompt values, a base
directory from ``mo-rl eval --base``). Every run logs 5 steps of constant rewards, so its final values are the
values given here."""

import io
import json
import math

import pandas as pd
import pytest
import yaml

from mo_rl.analysis.compare import compare_runs
from mo_rl.analysis.stats import bootstrap_ci, diff_ci, hierarchical_ci

OBJS = ("a", "b")


def _eval(best, per_prompt=None, checkpoint="final"):
    """eval.json with one k=4 result: best@4 (user-weighted) ``best``, its per-prompt values if given."""
    res = {"k": 4, "best_at_k_weighted": best, "best_at_k_dirichlet": best / 2, "pass_at_k": None,
           "hypervolume": 0.1, "best_at_k_per_objective": [best, best], "worst_off_at_k": best, "distinct_2": 0.5}
    if per_prompt is not None:
        res["per_prompt"] = {"best_at_k_weighted": per_prompt, "best_at_k_dirichlet": [v / 2 for v in per_prompt]}
    return {"checkpoint": checkpoint, "prompts": len(per_prompt or [0]), "seed": 7, "num_weightings": 16,
            "objectives": list(OBJS), "weights": [0.5, 0.5], "hv_reference": [-0.1, -0.1], "results": [res]}


def write_run(root, method, seed, reward, task="toy", ev=None, name=None):
    """A completed run: rewards a = b = weighted = ``reward`` at every step; ``ev``: its eval.json."""
    path = root / task / (name or f"{method}-s{seed}")
    path.mkdir(parents=True)
    cfg = {"method": {"name": method}, "task": {"name": task}, "trainer": {"seed": seed},
           "objectives": {"resolved": {"names": list(OBJS), "weights": [0.5, 0.5]}}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"step": s, "reward/weighted/mean": reward, **{f"reward/{o}/mean": reward for o in OBJS}}
            for s in range(5)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "summary.json").write_text(json.dumps({"status": "completed", "method": method, "objectives": list(OBJS),
                                                   "steps_done": 5}))
    if ev is not None:
        (path / "eval.json").write_text(json.dumps(ev))
    return path


def write_base(root, task, ev, metrics=True):
    """What ``mo-rl eval --base`` writes: <root>/base/<task>-<hash>/, no training rows."""
    path = root / "base" / f"{task}-1a2b3c"
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"method": {"name": "base"}, "task": {"name": task}}))
    (path / "summary.json").write_text(json.dumps({"method": "base", "status": "completed", "seed": None,
                                                   "steps_done": 0}))
    if metrics:
        (path / "metrics.jsonl").write_text("")
    (path / "eval.json").write_text(json.dumps(ev))
    return path


def groups(text):
    return pd.read_csv(io.StringIO(text)).set_index(["task", "method"])


def paired(root, **kw):
    data = json.loads(compare_runs([str(root)], by=["task", "method"], fmt="json", baseline="grpo", **kw))
    return {(r["method"], r["metric"]): r for r in data["paired"]}, data


def test_base_row_and_change_from_base(tmp_path):
    for seed, best in ((0, 0.6), (1, 0.8)):
        write_run(tmp_path, "grpo", seed, 0.5, ev=_eval(best))
    write_base(tmp_path, "toy", _eval(0.5, checkpoint="base"))
    df = groups(compare_runs([str(tmp_path)], by=["task", "method"], fmt="csv"))
    assert df.loc[("toy", "base"), "steps_done"] == 0 and df.loc[("toy", "base"), "n_runs"] == 1
    assert df.loc[("toy", "grpo"), "best@4_vs_base"] == pytest.approx(0.2)  # 0.7 - 0.5
    assert df.loc[("toy", "grpo"), "best_dirichlet@4_vs_base"] == pytest.approx(0.1)
    assert math.isnan(df.loc[("toy", "base"), "best@4_vs_base"])
    text = compare_runs([str(tmp_path)], by=["task", "method"])
    section = text[text.index("eval, change from base"):].splitlines()
    assert [c.strip() for c in section[2].split("┃")[1:-1]] == [  # the columns' names without "_vs_base"
        "task", "method", "best@4", "best_dirichlet@4", "worst@4", "hv@4", "distinct_2@4", "best@4/a", "best@4/b"]
    assert [c.strip() for c in section[4].split("│")[1:-1]] == ["toy", "base"] + ["-"] * 7
    assert [c.strip() for c in section[5].split("│")[1:-1]] == ["toy", "grpo", "+0.200", "+0.100", "+0.200", "0",
                                                                 "0", "+0.200", "+0.200"]
    assert "eval: 3 eval.json, checkpoint base/final, 1 held-out prompts, seed 7" in text


def test_base_directory_without_metrics_and_by_without_method(tmp_path, capsys):
    write_run(tmp_path, "grpo", 0, 0.5, ev=_eval(0.6))
    write_base(tmp_path, "toy", _eval(0.5, checkpoint="base"), metrics=False)
    df = groups(compare_runs([str(tmp_path)], by=["task", "method"], fmt="csv"))
    assert df.loc[("toy", "base"), "best@4"] == pytest.approx(0.5)
    assert df.loc[("toy", "grpo"), "best@4_vs_base"] == pytest.approx(0.1)
    assert groups(compare_runs([str(tmp_path / "base")], by=["task", "method"], fmt="csv")).index.tolist() == \
        [("toy", "base")]  # a folder holding only base directories
    by_task = pd.read_csv(io.StringIO(compare_runs([str(tmp_path)], by=["task"], fmt="csv")))
    assert by_task["n_runs"].tolist() == [1]  # the base run does not join the trained ones
    assert "left out 1 base runs: add method to --by" in capsys.readouterr().err


def test_intervals_over_runs_and_two_levels(tmp_path):
    for seed, reward in enumerate((0.2, 0.5, 0.3, 0.6)):
        write_run(tmp_path, "grpo", seed, reward, ev=_eval(reward, per_prompt=[reward - 0.1, reward + 0.1]))
    g = groups(compare_runs([str(tmp_path)], by=["task", "method"], fmt="csv")).loc[("toy", "grpo")]
    lo, hi = bootstrap_ci([0.2, 0.5, 0.3, 0.6])  # scipy over the four runs
    assert (g["final/a_lo"], g["final/a_hi"]) == (pytest.approx(float(lo)), pytest.approx(float(hi)))
    assert g["final/a_n"] == 4 and g["final/a_std"] == pytest.approx(pd.Series([0.2, 0.5, 0.3, 0.6]).std())
    # best@4 has per-prompt values: runs, then prompts within each run
    two = hierarchical_ci([[r - 0.1, r + 0.1] for r in (0.2, 0.5, 0.3, 0.6)])
    assert (g["best@4_lo"], g["best@4_hi"]) == (pytest.approx(two[0]), pytest.approx(two[1]))
    assert g["best@4_lo"] < lo and g["best@4_hi"] > hi  # prompt spread widens it
    # hv@4 has no per-prompt values: every run 0.1, the interval is that point
    assert (g["hv@4_lo"], g["hv@4_hi"]) == (pytest.approx(0.1), pytest.approx(0.1))


def test_one_run_with_prompts_gets_a_prompt_interval(tmp_path):
    write_base(tmp_path, "toy", _eval(0.5, per_prompt=[0.5] * 6, checkpoint="base"))
    write_run(tmp_path, "grpo", 0, 0.5, ev=_eval(0.5, per_prompt=[0.0, 1.0, 0.5, 0.5]))
    df = groups(compare_runs([str(tmp_path)], by=["task", "method"], fmt="csv"))
    assert (df.loc[("toy", "base"), "best@4_lo"], df.loc[("toy", "base"), "best@4_hi"]) == pytest.approx((0.5, 0.5))
    lo, hi = df.loc[("toy", "grpo"), ["best@4_lo", "best@4_hi"]]
    assert (lo, hi) == pytest.approx(hierarchical_ci([[0.0, 1.0, 0.5, 0.5]])) and lo < 0.5 < hi
    assert math.isnan(df.loc[("toy", "grpo"), "final/a_lo"])  # one run, no prompts: no interval


def test_better_on_every_seed_by_a_fixed_margin(tmp_path):
    for seed, reward in enumerate((0.25, 0.5, 0.375, 0.625)):  # binary fractions: the ties below are exact
        write_run(tmp_path, "grpo", seed, reward)
        write_run(tmp_path, "vpo", seed, reward + 0.125)
    table, _ = paired(tmp_path)
    r = table[("vpo", "final/weighted")]
    assert r["diff"] == 0.125 and (r["diff_lo"], r["diff_hi"]) == (0.125, 0.125)
    assert r["verdict"] == "better" and r["pairing"] == "paired" and r["n"] == 4 and r["seeds_needed"] is None
    # P(vpo > grpo) over the 16 pairs: vpo 0.375 beats 1 and ties 1 (1.5), 0.625 beats 3 and ties 1 (3.5),
    # 0.5 beats 2 and ties 1 (2.5), 0.75 beats all 4
    assert r["p_better"] == pytest.approx(11.5 / 16)
    # threshold 0.5 (the mean of the constant runs): reached at step 0 by seeds 1 and 3 of both methods
    s = table[("vpo", "steps_to_threshold")]
    assert s["diff"] == 0 and s["n"] == 2 and s["verdict"] == "not resolved"


def test_identical_sweeps_are_not_resolved(tmp_path):
    for seed, reward in enumerate((0.2, 0.5, 0.3)):
        write_run(tmp_path, "grpo", seed, reward)
        write_run(tmp_path, "dvao", seed, reward)
    r = paired(tmp_path)[0][("dvao", "final/a")]
    assert r["diff"] == 0 and r["verdict"] == "not resolved" and r["p_better"] == pytest.approx(0.5)
    assert r["seeds_needed"] is None  # inf in JSON is null; the table prints inf
    assert "inf" in compare_runs([str(tmp_path)], by=["task", "method"], baseline="grpo")


def test_seeds_needed_and_the_unpaired_fallback(tmp_path):
    for seed, (x, y) in enumerate(((0.5, 0.4), (0.5, 0.2), (0.5, 0.6))):  # differences 0.1, 0.3, -0.1
        write_run(tmp_path, "grpo", seed, y)
        write_run(tmp_path, "vpo", seed, x)
    r = paired(tmp_path)[0][("vpo", "final/a")]
    assert r["diff"] == pytest.approx(0.1) and r["verdict"] == "not resolved"
    assert r["seeds_needed"] == 16  # sd 0.2: ceil((1.96 * 0.2 / 0.1)^2) = ceil(15.37)
    for seed, reward in ((5, 0.7), (6, 0.9)):  # dvao's seeds are not grpo's
        write_run(tmp_path, "dvao", seed, reward)
    r = paired(tmp_path)[0][("dvao", "final/a")]
    assert r["pairing"] == "unpaired (0 shared)" and r["diff"] == pytest.approx(0.8 - 0.4)
    assert (r["diff_lo"], r["diff_hi"]) == pytest.approx(diff_ci([0.7, 0.9], [0.4, 0.2, 0.6]))
    assert r["verdict"] == "better"


def test_iqm_across_tasks_and_the_table(tmp_path):
    for task, base in (("t1", 0.2), ("t2", 0.6)):
        for seed in range(3):
            write_run(tmp_path, "grpo", seed, base + 0.1 * seed, task=task)
            write_run(tmp_path, "vpo", seed, base + 0.1 * seed + 0.05, task=task)
    _, data = paired(tmp_path)
    iqm = {(r["method"], r["metric"]): r for r in data["iqm"]}
    # grpo's six runs 0.2, 0.3, 0.4, 0.6, 0.7, 0.8: trim_mean(0.25) drops one each side -> (0.3+0.4+0.6+0.7)/4
    assert iqm[("grpo", "final/a")]["iqm"] == pytest.approx(0.5) and iqm[("grpo", "final/a")]["strata"] == 2
    assert iqm[("vpo", "final/a")]["iqm"] == pytest.approx(0.55)
    # per task vpo's 3 runs beat 1, 2 and 3 of grpo's: 6 / 9, the same on both tasks
    assert iqm[("vpo", "final/a")]["p_better"] == pytest.approx(2 / 3)
    assert iqm[("grpo", "final/a")]["p_better"] is None  # the baseline against itself
    text = compare_runs([str(tmp_path)], by=["task", "method"], baseline="grpo")
    assert "IQM across the 2 strata" in text and "paired against grpo" in text
    assert max(len(line) for line in text.splitlines()) <= 160


def test_cli_baseline_and_metric(tmp_path):
    from typer.testing import CliRunner

    from mo_rl.cli import app

    for seed, reward in enumerate((0.25, 0.5)):
        write_run(tmp_path, "grpo", seed, reward)
        write_run(tmp_path, "vpo", seed, reward + 0.25)
    res = CliRunner().invoke(app, ["compare", str(tmp_path), "--baseline", "vpo", "--metric", "final/a",
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["paired"]
    assert [(r["method"], r["metric"], r["diff"], r["verdict"]) for r in rows] == [("grpo", "final/a", -0.25, "worse")]
    res = CliRunner().invoke(app, ["compare", str(tmp_path), "--baseline", "ppo"])
    assert res.exit_code == 2 and res.output.strip() == "error: unknown --baseline method 'ppo'; allowed: grpo, vpo"


def test_method_options_in_by_name_variants_not_strata():
    """--by task,method,method.credit: vpo's two credits are two methods of one stratum (each compared with the
    baseline), not two strata; a method without the option keeps its plain name."""
    import pandas as pd

    from mo_rl.analysis.paired import method_labels, strata_keys

    by = ["task", "method", "method.credit"]
    rows = pd.DataFrame({"task": ["m"] * 3, "method": ["grpo", "vpo", "vpo"], "method.credit": [None, "shapley", "loo"]})
    assert strata_keys(by) == ["task"]
    assert method_labels(rows, by)["method"].tolist() == ["grpo", "vpo[credit=shapley]", "vpo[credit=loo]"]
    assert method_labels(rows, ["task", "method"]) is rows


def test_directive_key_names_a_method_variant(tmp_path):
    """--by task,method,directive: directive off (coef 0, or a config without a directive block) and each loss are
    variants of one method in one stratum, so --baseline 'dvao[directive=off]' pairs them per seed."""
    from mo_rl.results.reader import directive_label

    assert directive_label(None) == "off" and directive_label({"coef": 0.0, "loss": "forward_ce"}) == "off"
    assert directive_label({"coef": 1.0, "loss": "forward_ce", "teacher": "current"}) == "forward_ce"
    assert (directive_label({"coef": 0.5, "loss": "token_advantage", "teacher": "reference"})
            == "token_advantage/coef=0.5/teacher=reference")
    for seed in range(3):
        write_run(tmp_path, "dvao", seed, 0.2 + 0.1 * seed, name=f"off-s{seed}")
        hinted = write_run(tmp_path, "dvao", seed, 0.3 + 0.1 * seed, name=f"fce-s{seed}")
        cfg = yaml.safe_load((hinted / "config.yaml").read_text())
        cfg["directive"] = {"coef": 1.0, "loss": "forward_ce", "teacher": "current"}
        (hinted / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = json.loads(compare_runs([str(tmp_path)], by=["task", "method", "directive"], fmt="json",
                                  baseline="dvao[directive=off]"))
    rows = [(r["method"], r["metric"], round(r["diff"], 6), r["pairing"], r["verdict"])
            for r in out["paired"] if r["metric"] == "final/weighted"]
    assert rows == [("dvao[directive=forward_ce]", "final/weighted", 0.1, "paired", "better")]


def test_a_group_mixing_settings_is_named_on_stderr(tmp_path, capsys):
    """--by task,method over vpo runs of two credits: one stderr note naming the key, its values and the --by that
    splits them; with that --by, or over runs differing only in the seed, none."""
    for seed in range(2):
        write_run(tmp_path, "grpo", seed, 0.3)
        for credit in ("loo", "shapley"):
            path = write_run(tmp_path, "vpo", seed, 0.4, name=f"vpo-{credit}-s{seed}")
            cfg = yaml.safe_load((path / "config.yaml").read_text())
            cfg["method"]["credit"] = credit
            (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    compare_runs([str(tmp_path)], by=["task", "method"], fmt="csv")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: group 'toy / vpo' mixes runs that differ in method.credit (loo, shapley); add --by "
                   "method.credit to compare them apart"]
    compare_runs([str(tmp_path)], by=["task", "method", "method.credit"], fmt="csv")
    assert "mixes" not in capsys.readouterr().err
