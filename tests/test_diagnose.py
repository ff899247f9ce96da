"""mo-rl diagnose: the statistics on hand-made batches, and its advice on the built-in tasks (real sampling)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close
from typer.testing import CliRunner

from mo_rl.analysis.diagnose import diagnose, recommend, statistics
from mo_rl.cli import app
from mo_rl.config import compose

T = torch.tensor


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
    assert rec["regime"] == "flat" and rec["method"] is None and rec["gate_candidates"] == []
    assert "no method anything to learn" in rec["reasons"][-2]


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
    report = diagnose(compose([f"output_dir={tmp_path}/out"]))
    rec = report["recommendation"]
    assert rec["labels"]["noise"] == "noise" and report["objectives"]["noise"]["noise_share"] > 0.9
    assert rec["labels"]["match"] == "signal" and report["objectives"]["match"]["noise_share"] == 0
    assert rec["regime"] == "balance" and rec["method"] == "dvao"
    assert rec["gate_candidates"] == ["first_char"]  # pass/fail with a low base rate
    assert not (tmp_path / "out").exists()  # no run directory


def test_conflicting_reports_negative_correlation_and_recommends_spread():
    out = CliRunner().invoke(app, ["diagnose", "task=conflicting", "--format", "json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["corr"][0][1] < 0
    assert report["recommendation"]["regime"] == "spread" and report["recommendation"]["method"] == "vpo"
    assert set(report["objectives"]) == {"vowels", "digits"}


@pytest.mark.parametrize("args, msg", [
    (["--format", "csv"], "unknown --format 'csv'; allowed: table, json"),
    (["--group", "1"], "must be >= 1 and --group=1 >= 2"),
    (["task=nosuch"], "unknown task 'nosuch'"),
])
def test_bad_input(args, msg):
    out = CliRunner().invoke(app, ["diagnose", *args])
    assert out.exit_code == 2 and msg in out.output
