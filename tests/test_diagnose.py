"""mo-rl diagnose: the statistics on hand-made batches, and its advice on the built-in tasks (real sampling)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close
from typer.testing import CliRunner

from mo_rl.analysis.diagnose import (RULES, check_size, diagnose, load_table, parse_measure, recommend, statistics,
                                     verdict)
from mo_rl.errors import MoRLError
from mo_rl.cli import app
from mo_rl.config import compose

T = torch.tensor
ONES = torch.ones(32, 8, dtype=torch.bool)


def _cell(rho, noise, regime, tradeoff, noise_share, **measures):
    return {"rho": rho, "noise": noise, "diagnose": {"regime": regime, "tradeoff": tradeoff, "noise": noise_share},
            "measures": {m: {"methods": v, "winner": max(v, key=lambda k: v[k][0])} for m, v in measures.items()}}


# a hand-built regime table: [mean, std, seeds] per method
TABLE = {"ks": [4, 16], "cells": [
    _cell(-1, 0, "spread", -1.0, 0.0,
          weighted={"gdpo": [0.56, 0.001, 3], "dvao": [0.55, 0.001, 3], "vpo": [0.50, 0.01, 3]},
          **{"best@4": {"gdpo": [0.60, 0.01, 3], "vpo": [0.70, 0.01, 3]},
             "worst@4": {"dvao": [0.80, 0.01, 3], "vpo": [0.90, 0.01, 3]},
             "obj@4": {"dvao": [0.95, 0.01, 3], "vpo": [0.85, 0.01, 3]}}),
    _cell(0, 0, "balance", -0.1, 0.0,
          weighted={"dvao": [0.80, 0.01, 3], "gdpo": [0.79, 0.01, 3], "vpo": [0.70, 0.01, 3]},  # within noise
          **{"best@4": {"gdpo": [0.95, 0.002, 3], "vpo": [0.90, 0.002, 3]},
             "best@16": {"gdpo": [0.97, 0.002, 3], "vpo": [0.99, 0.002, 3]},
             "worst@4": {"gdpo": [0.95, 0.02, 3], "vpo": [0.94, 0.02, 3]},  # within noise
             "obj@4": {"gdpo": [0.97, 0.002, 3], "vpo": [0.91, 0.002, 3]}}),
    _cell(0, 0.3, "balance", -0.1, 0.6,
          weighted={"dvao": [0.70, 0.001, 3], "gdpo": [0.65, 0.001, 3], "grpo": [0.64, 0.001, 3]},
          **{"best@4": {"dvao": [0.90, 0.001, 3], "vpo": [0.85, 0.001, 3]}}),
]}


def _verdicts(names, weights, r, again=None, binary=None, measures=("weighted", "best@4"), **kw):
    w = T(weights, dtype=torch.float64)
    s = statistics(r, r.clone() if again is None else again, torch.ones(r.shape[:2], dtype=torch.bool), w)
    rec = recommend(names, w, s, binary or [False] * len(names), **kw)
    return rec, {m: verdict(rec, parse_measure(m), TABLE) for m in measures}


def _batch(seed=0, P=16, G=8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(P, G, generator=g, dtype=torch.float64), g


def test_statistics_by_construction():
    a, g = _batch()
    noise = torch.rand(a.shape, generator=g, dtype=torch.float64)
    redraw = torch.rand(a.shape, generator=g, dtype=torch.float64)
    r = torch.stack([a, 1 - a, noise, torch.full_like(a, 0.5)], -1)  # clean, its mirror, pure noise, flat
    again = torch.stack([a, 1 - a, redraw, torch.full_like(a, 0.5)], -1)
    mask = torch.ones(a.shape, dtype=torch.bool)
    s = statistics(r, again, mask, T([0.25, 0.25, 0.25, 0.25], dtype=torch.float64))
    assert_close(s["corr"][0, 1], T(-1.0, dtype=torch.float64))
    assert s["noise_share"][0] == 0 and s["noise_share"][3] == 0
    assert 0.75 < float(s["noise_share"][2]) <= 1.0  # two independent draws: the spread is all noise
    assert s["frac_zero_spread"].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert_close(s["dvao_weight"].sum(), T(1.0, dtype=torch.float64))
    assert float(s["dvao_weight"][3]) == 0.0  # flat: no weight
    assert int(s["dof"]) == 16 * 7
    rec = recommend(["a", "mirror", "noise", "flat"], T([0.25] * 4), s, [False] * 4)
    assert rec["labels"] == {"a": "signal", "mirror": "signal", "noise": "noise", "flat": "flat"}
    assert rec["regime"] == "spread"


def test_every_objective_flat_recommends_no_method():
    """What toolcall gave SmolLM2 at temperature 1 (docs/tasks.md): 0 in every group. No method can learn from that,
    so diagnose must not name one; an objective with spread but weight 0 does not count either."""
    a, _ = _batch(2)
    r = torch.stack([torch.zeros_like(a), torch.ones_like(a), a], -1)
    s = statistics(r, r.clone(), torch.ones(a.shape, dtype=torch.bool), T([0.5, 0.5, 0.0], dtype=torch.float64))
    rec = recommend(["json", "name", "unweighted"], T([0.5, 0.5, 0.0]), s, [True, True, False])
    assert rec["labels"] == {"json": "flat", "name": "flat", "unweighted": "signal"}
    assert rec["regime"] == "flat" and rec["gate_candidates"] == []
    assert "no method anything to learn" in rec["reasons"][-2]
    v = verdict(rec, parse_measure("best@4"), TABLE)
    assert v["regime"] == "flat" and v["method"] is None


def test_masked_rollouts_and_small_groups_are_ignored():
    a, g = _batch(1)
    r = torch.stack([a, a], -1)
    mask = torch.ones(a.shape, dtype=torch.bool)
    mask[0] = False
    mask[1, 1:] = False  # one valid rollout: no within-group statistic
    r[0] = 99.0  # would dominate every number if it counted
    s = statistics(r, r.clone(), mask, T([0.5, 0.5], dtype=torch.float64))
    assert float(s["mean"][0]) < 1 and int(s["dof"]) == 14 * 7
    assert_close(s["corr"][0, 1], T(1.0, dtype=torch.float64))
    assert_close(s["pc1_share"], T(1.0, dtype=torch.float64))
    rec = recommend(["x", "y"], T([0.5, 0.5]), s, [False, False])
    assert rec["regime"] == "balance"


def test_aligned_names_noise_and_recommends_balance(tmp_path):
    """Issue 26 changed the contract: the verdict is per measure, and never dvao (or grpo) here, since dvao gives
    the pure-noise objective more than its weight (0.30 against 0.25 in the README's run)."""
    report = diagnose(compose([f"output_dir={tmp_path}/out"]))
    rec = report["recommendation"]
    assert rec["labels"]["noise"] == "noise" and report["objectives"]["noise"]["noise_share"] > 0.9
    assert rec["labels"]["match"] == "signal" and report["objectives"]["match"]["noise_share"] == 0
    assert rec["regime"] == "balance" and "noise" in rec["amplified_noise"]
    assert [v["measure"] for v in rec["verdicts"]] == ["weighted", "best@4"]
    assert all(v["method"] not in ("dvao", "grpo") and v["confidence"] for v in rec["verdicts"])
    assert rec["gate_candidates"] == ["first_char"]  # pass/fail with a low base rate, not the task's success goal
    assert not (tmp_path / "out").exists()  # no run directory


def test_conflicting_reports_negative_correlation_and_recommends_spread():
    out = CliRunner().invoke(app, ["diagnose", "task=conflicting", "--format", "json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["corr"][0][1] < 0
    assert report["recommendation"]["regime"] == "spread"
    assert set(report["objectives"]) == {"vowels", "digits"}


@pytest.mark.parametrize("args, msg", [
    (["--format", "csv"], "unknown --format 'csv'; allowed: table, json"),
    (["--group", "1"], "--group=1 in [2, 1024]"),
    (["--group", "100000"], "--group=100000 in [2, 1024]"),  # issue 29: an allocator traceback before
    (["--prompts", "100000000"], "--prompts=100000000 must be in [1, 4096]"),  # issue 29: grew to 20 GB before
    (["--prompts", "4096", "--group", "64"], "--prompts x --group <= 65536 rollouts"),
    (["--measure", "best@"], "unknown --measure 'best@'; allowed: weighted, best@K, best_dirichlet@K, worst@K, "
                                 "pass@K:OBJ"),
    (["--measure", "weighted,median"], "unknown --measure 'median'"),
    (["--measure", "pass@4"], "unknown --measure 'pass@4'"),
    (["--measure", "best@0"], "--measure 'best@0': K=0 must be in [1, 1024]"),
    (["--measure", "pass@4:nosuch"], "unknown objective 'nosuch'; allowed: match, match_noisy, first_char, noise"),
    (["task=nosuch"], "unknown task 'nosuch'"),
])
def test_bad_input(args, msg):
    out = CliRunner().invoke(app, ["diagnose", *args])
    assert out.exit_code == 2 and msg in out.output and len(out.output.strip().splitlines()) == 1, out.output


def _independent(seed, K, P=32, G=8, rho=0.0):
    """K objectives, each pair at correlation rho within the group (a shared factor), scored without noise."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(P, G, K, generator=g, dtype=torch.float64)
    if rho < 0:  # two objectives: y = rho x + sqrt(1 - rho^2) e
        e[..., 1] = rho * e[..., 0] + (1 - rho * rho) ** 0.5 * e[..., 1]
    return e


@pytest.mark.parametrize("K", [4, 8, 16])
@pytest.mark.parametrize("floor", [None, 0.0])
def test_null_independent_objectives_read_as_tradeoff_at_most_at_the_nominal_rate(K, floor, monkeypatch):
    """Issue 26: the old rule (min z over pairs <= -2, no correction) read independent objectives as a trade-off 13%
    of the time at K=4, 47% at 8, 92% at 16. Holm's correction keeps the family-wise rate at 5% (at 32 prompts the
    floor binds no more than Holm's threshold does); 200 seeds, so 0.07 leaves 1.5 binomial standard errors."""
    if floor is not None:
        monkeypatch.setitem(RULES, "tradeoff_floor", floor)
    w = torch.full((K,), 1.0 / K, dtype=torch.float64)
    hits = 0
    for seed in range(200):
        r = _independent(seed, K)
        rec = recommend([f"o{k}" for k in range(K)], w, statistics(r, r, ONES, w), [False] * K)
        hits += rec["regime"] == "spread"
    assert hits / 200 <= 0.07  # measured: 0.05, 0.04, 0.035 at K = 4, 8, 16 (the same with the floor)


@pytest.mark.parametrize("prompts", [32, 256, 2048])
def test_weak_negative_correlation_does_not_become_spread_as_prompts_grow(prompts):
    """rho = -0.05 is significant at 2048 prompts (z ~ -6) but too small to matter: under the floor. The old rule
    read it as spread 14% of the time at 32 prompts and always at 2048."""
    w = T([0.5, 0.5], dtype=torch.float64)
    ones = torch.ones(prompts, 8, dtype=torch.bool)
    regimes = set()
    for seed in range(10):
        r = _independent(seed, 2, P=prompts, rho=-0.05)
        rec = recommend(["a", "b"], w, statistics(r, r, ones, w), [False, False])
        regimes.add(rec["regime"])
    assert regimes == {"balance"}
    r = _independent(0, 2, rho=-0.5)  # a real trade-off is found at 32 prompts
    assert recommend(["a", "b"], w, statistics(r, r, ONES, w), [False, False])["regime"] == "spread"


def test_a_minor_objective_cannot_make_a_tradeoff():
    a, _ = _batch(3, P=32)
    r = torch.stack([a, 1 - a], -1)  # a strict trade-off
    assert _verdicts(["main", "minor"], [0.5, 0.5], r)[0]["regime"] == "spread"
    rec, _ = _verdicts(["main", "minor"], [0.99, 0.01], r)
    assert rec["regime"] == "balance"  # h = 2 * 0.99 * 0.01 / (0.99^2 + 0.01^2) = 0.0202: effect -0.02
    assert rec["pairs"][0]["h"] == pytest.approx(0.0198 / 0.9802, abs=1e-4)


def test_verdicts_strict_tradeoff():
    """On the weighted reward a scalarizing method wins a trade-off (it optimizes exactly that number); on best@k
    vpo does: one recommendation cannot be right for both."""
    a, _ = _batch(4, P=32)
    rec, v = _verdicts(["a", "b"], [0.5, 0.5], torch.stack([a, 1 - a], -1),
                       measures=("weighted", "best@4", "best@5", "worst@4", "pass@4:a"))
    assert rec["regime"] == "spread" and rec["features"]["tradeoff"] == pytest.approx(-1.0)
    assert (v["weighted"]["regime"], v["weighted"]["method"], v["weighted"]["confidence"]) == ("balance", "gdpo",
                                                                                                "clear")
    assert v["weighted"]["cell"] == [-1, 0] and "gdpo 0.560 ± 0.001 vs dvao 0.550 ± 0.001" in v["weighted"]["reason"]
    assert (v["best@4"]["regime"], v["best@4"]["method"]) == ("spread", "vpo")
    assert v["best@5"]["method"] == "vpo"  # the nearest k of the table (4)
    assert v["worst@4"]["method"] == "vpo"
    assert (v["pass@4:a"]["regime"], v["pass@4:a"]["method"]) == ("balance", "dvao")  # a is no pass/fail rubric


def test_verdicts_noisy_copies_never_amplify_the_noise():
    a, g = _batch(5, P=32)
    copy = (a + 0.6 * torch.randn(a.shape, generator=g, dtype=torch.float64))
    redraw = (a + 0.6 * torch.randn(a.shape, generator=g, dtype=torch.float64))
    r, again = torch.stack([a, copy], -1), torch.stack([a, redraw], -1)
    rec, v = _verdicts(["goal", "copy"], [0.5, 0.5], r, again)
    assert rec["labels"] == {"goal": "signal", "copy": "noise"} and rec["regime"] == "balance"
    assert rec["amplified_noise"] == ["copy"]  # dvao's weight for it is above 0.5
    assert v["weighted"]["cell"] == [0, 0.3]
    assert v["weighted"]["method"] == "gdpo" and "dvao led there" in v["weighted"]["reason"]
    assert v["best@4"]["method"] == "vpo"  # dvao won best@4 in that cell but amplifies the noise


def test_verdicts_rare_pass_fail_rubric_is_a_gate_unless_it_is_the_main_goal():
    a, g = _batch(6, P=32)
    rubric = (torch.rand(a.shape, generator=g, dtype=torch.float64) < 0.1).double()
    r = torch.stack([a, rubric], -1)
    rec, v = _verdicts(["goal", "rubric"], [0.8, 0.2], r, binary=[False, True],
                       measures=("weighted", "pass@4:rubric", "pass@4:goal"))
    assert rec["gate_candidates"] == ["rubric"]
    assert (v["pass@4:rubric"]["regime"], v["pass@4:rubric"]["method"]) == ("gate", "gated")
    assert v["pass@4:goal"]["regime"] == "balance" and v["weighted"]["regime"] == "balance"
    # the highest-weighted goal, or the task's success objective, is never a gate candidate; one the user gates is
    assert _verdicts(["goal", "rubric"], [0.2, 0.8], r, binary=[False, True])[0]["gate_candidates"] == []
    assert _verdicts(["goal", "rubric"], [0.8, 0.2], r, binary=[False, True],
                     success="rubric")[0]["gate_candidates"] == []
    assert _verdicts(["goal", "rubric"], [0.8, 0.2], r, gates=["goal"])[0]["gate_candidates"] == ["goal"]


def test_verdicts_flat_objective_and_failed_objective():
    a, _ = _batch(7, P=32)
    r = torch.stack([a, torch.full_like(a, 0.3), torch.zeros_like(a)], -1)
    rec, v = _verdicts(["goal", "flat", "broken"], [0.4, 0.3, 0.3], r, failed={"broken": "256 of 256 completions, "
                       "first error: ValueError: boom"}, measures=("weighted", "best@4", "worst@4"))
    assert rec["labels"] == {"goal": "signal", "flat": "flat", "broken": "failed"}
    assert rec["regime"] == "balance" and "broken failed: 256 of 256" in rec["reasons"][1]
    # the (0, 0) cell: dvao 0.80 vs gdpo 0.79 +- 0.01 (two balancers), both well above vpo's 0.70
    assert v["weighted"]["confidence"] == "regime clear, method too close to call"
    assert v["weighted"]["candidates"] == ["dvao", "gdpo"] and v["best@4"]["confidence"] == "clear"
    assert v["worst@4"]["confidence"] == "too close to call"  # gdpo 0.95 vs vpo 0.94 +- 0.02: not even the regime
    assert v["worst@4"]["candidates"] == ["gdpo", "vpo"]


def test_parse_measure():
    assert parse_measure("weighted") == {"name": "weighted", "kind": "weighted", "k": 1, "objective": None}
    assert parse_measure(" best@16") == {"name": "best@16", "kind": "best", "k": 16, "objective": None}
    assert parse_measure("pass@4:math_correct")["objective"] == "math_correct"
    for bad in ("best", "worst@x", "pass@4:", "best@2000", "Weighted"):
        with pytest.raises(MoRLError, match="--measure"):
            parse_measure(bad)
    with pytest.raises(MoRLError, match=r"--group=100000 in \[2, 1024\]"):
        check_size(32, 100000)


def test_best_at_k_is_the_users_weights_and_best_dirichlet_the_random_ones():
    """eval's names: best@K is the best of K under the task's own weights, best_dirichlet@K under Dirichlet(1)
    preferences (vpo's training objective); each reads its own column of the map."""
    from mo_rl.analysis.diagnose import _table_measure

    user, rand = parse_measure("best@16"), parse_measure("best_dirichlet@16")
    assert (user["kind"], user["k"], rand["kind"], rand["k"]) == ("best", 16, "best_dirichlet", 16)
    assert _table_measure(user, [1, 4, 16]) == "best@16" and _table_measure(rand, [1, 4, 16]) == "best_dirichlet@16"
    cell = next(c for c in load_table()["cells"] if (c["rho"], c["noise"]) == (-1, 0))
    assert cell["measures"]["best@16"]["methods"] != cell["measures"]["best_dirichlet@16"]["methods"]


def test_shipped_table_is_the_complete_map():
    t = load_table()
    cells = {(c["rho"], c["noise"]) for c in t["cells"]}
    assert cells == {(r, n) for r in (-1, -0.5, -0.25, 0, 0.5, 1) for n in (0, 0.3)}
    for c in t["cells"]:
        for m in ("weighted", "best@4", "best@16", "best_dirichlet@4", "best_dirichlet@16", "worst@4", "worst@16"):
            ev = c["measures"][m]["methods"]
            assert set(ev) == {"grpo", "gdpo", "dvao", "vpo"} and min(s[2] for s in ev.values()) >= 3


def test_diagnose_prints_both_default_verdicts():
    out = CliRunner().invoke(app, ["diagnose", "task=conflicting", "--prompts", "8", "--measure", "weighted",
                                   "--measure", "best@16,worst@4"])
    assert out.exit_code == 0, out.output
    assert "verdict per measure" in out.output
    for m in ("weighted", "best@16", "worst@4"):
        assert f"│ {m}" in out.output


def test_a_failing_reward_shows_as_failed_not_flat(tmp_path, monkeypatch):
    """A reward that raises scores objectives.failure_value everywhere: flat by its numbers, but diagnose says
    failed, with the first error."""
    pkg = tmp_path / "h26_user_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rewards.py").write_text("def broken(prompts, completions, **_):\n    raise ValueError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    report = diagnose(compose(["objectives.names=[match,h26_user_pkg.rewards:broken]"]), prompts=4)
    rec = report["recommendation"]
    assert rec["labels"] == {"match": "signal", "h26_user_pkg.rewards:broken": "failed"}
    assert report["objectives"]["h26_user_pkg.rewards:broken"]["failures"] == 32
    assert any("failed: 32 of 32 completions, first error: ValueError: boom" in r for r in rec["reasons"])
