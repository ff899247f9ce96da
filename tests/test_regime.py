"""The regime task family (rewards by hand, correlation knob) and compare's winner heatmaps."""

from __future__ import annotations

import json
import random

import pytest
import torch
from PIL import Image

from mo_rl.analysis.compare import compare_runs
from mo_rl.analysis.plots import winners
from mo_rl.errors import MoRLError
from mo_rl.results.writer import RunWriter
from mo_rl.rewards.registry import get_reward
from mo_rl.tasks.base import make_task

COMPLETIONS = ["aeiou01234", "zzzzz99999", "aaaa", "1234", ""]


@pytest.mark.parametrize("rho, want", [
    (1.0, [1.0, 0.0, 1.0, 0.0, 0.0]),  # the same goal as regime_a
    (0.0, [1.0, 1.0, 0.0, 1.0, 0.0]),  # digits in the second half only
    (-1.0, [0.0, 1.0, 0.0, 1.0, 1.0]),  # 1 - regime_a: a strict trade-off
    (0.5, [1.0, 0.6340, 0.3660, 0.6340, 0.0]),  # (0.5 a + 0.866 d) / 1.366
])
def test_regime_rewards_by_hand(rho, want):
    a = get_reward("regime_a")(None, COMPLETIONS)
    assert a == [1.0, 0.0, 1.0, 0.0, 0.0]
    b = get_reward("regime_b")(None, COMPLETIONS, rho=[rho] * 5, noise=[0.0] * 5)
    assert b == pytest.approx(want, abs=1e-4)


def test_regime_noise_is_seeded_and_clipped():
    kw = dict(rho=[0.0] * 5, noise=[0.5] * 5, step=3, index=list(range(5)))
    b1, b2 = get_reward("regime_b")(None, COMPLETIONS, **kw), get_reward("regime_b")(None, COMPLETIONS, **kw)
    assert b1 == b2 and all(0.0 <= v <= 1.0 for v in b1)
    assert b1 != get_reward("regime_b")(None, COMPLETIONS, **{**kw, "index": list(range(5, 10))})


@pytest.mark.parametrize("rho", [-1.0, -0.5, 0.0, 0.5, 1.0])
def test_correlation_follows_rho_for_equal_spread_features(rho):
    # strings whose two halves are drawn with equal vowel and digit rates: a and d independent, equal spread
    rng = random.Random(0)
    texts = ["".join(rng.choice("ab") for _ in range(4)) + "".join(rng.choice("0x") for _ in range(4))
             for _ in range(4000)]
    a = torch.tensor(get_reward("regime_a")(None, texts))
    b = torch.tensor(get_reward("regime_b")(None, texts, rho=[rho] * len(texts), noise=[0.0] * len(texts)))
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) == pytest.approx(rho, abs=0.05)


def test_task_rows_carry_the_knobs_and_bad_options_are_one_line():
    rows = make_task("regime", rho=-0.5, noise=0.2).sample(random.Random(0), 3, "train")
    assert all(r["rho"] == -0.5 and r["noise"] == 0.2 and r["prompt"].endswith("=") for r in rows)
    with pytest.raises(MoRLError, match=r"rho=2 must be in \[-1, 1\]"):
        make_task("regime", rho=2)


def _run(root, method, rho, seed, weighted):
    cfg = {"method": {"name": method}, "task": {"name": "regime", "options": {"rho": rho, "noise": 0.0}},
           "trainer": {"seed": seed}, "objectives": {"resolved": {"names": ["regime_a", "regime_b"],
                                                                   "weights": [0.5, 0.5]}}}
    w = RunWriter(root / f"{method}-{rho}-s{seed}", cfg)
    for step in range(5):
        w.log_metrics({"step": step, "reward/weighted/mean": weighted, "reward/regime_a/mean": weighted,
                       "reward/regime_b/mean": weighted})
    w.write_summary({"status": "completed", "method": method, "objectives": ["regime_a", "regime_b"],
                     "steps_done": 5})
    (w.path / "eval.json").write_text(json.dumps({"results": [{"k": 8, "best_at_k_weighted": 1 - weighted}]}))


def test_winner_heatmaps(tmp_path):
    for seed in (0, 1):
        for rho in (-1, 1):  # dvao wins final/weighted everywhere, vpo wins best@8 everywhere
            _run(tmp_path / "runs", "dvao", rho, seed, 0.8 + 0.01 * seed)
            _run(tmp_path / "runs", "vpo", rho, seed, 0.6)
    compare_runs([str(tmp_path / "runs")], plot=str(tmp_path / "plots"),
                 heatmap=["task.options.rho", "task.options.noise"])
    for name in ("winner_final_weighted.png", "winner_best@8.png"):
        with Image.open(tmp_path / "plots" / name) as im:
            assert im.format == "PNG" and im.size[0] > 100
    rows = json.loads(compare_runs([str(tmp_path / "runs")], by=["task.options.rho", "task.options.noise",
                                                                  "method"], fmt="json"))["groups"]
    import pandas as pd

    rows = pd.DataFrame(rows).rename(columns={"best@8": "best8"})
    w = winners(rows, "task.options.rho", "task.options.noise", "final/weighted")
    assert list(w["winner"]) == ["dvao", "dvao"] and w["lead"].round(3).tolist() == [0.205, 0.205]
    assert list(winners(rows, "task.options.rho", "task.options.noise", "best8")["winner"]) == ["vpo", "vpo"]
    with pytest.raises(MoRLError, match="needs --plot DIR"):
        compare_runs([str(tmp_path / "runs")], heatmap=["task.options.rho", "task.options.noise"])


@pytest.mark.parametrize("fmt", ["old", "new"])
def test_regime_agreement_reads_either_eval_format(tmp_path, fmt):
    """scripts/regime_agreement.py reads eval.json as written today (best_at_k_sampled / _fixed) and in the format
    that replaces those names (best_at_k_dirichlet / _weighted, plus per_prompt and ci it ignores)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from regime_agreement import cells_of

    best, fixed = ("best_at_k_sampled", "best_at_k_fixed") if fmt == "old" else ("best_at_k_dirichlet",
                                                                               "best_at_k_weighted")
    for method, seed, v in (("vpo", 0, 0.9), ("vpo", 1, 0.8), ("gdpo", 0, 0.5), ("gdpo", 1, 0.5)):
        _run(tmp_path, method, -1, seed, 0.5)
        res = [{"k": k, best: v + k / 100, fixed: v - k / 100, "worst_off_at_k": v / 2,
                "best_at_k_per_objective": [v, v / 2], **({"ci": {}, "per_prompt": []} if fmt == "new" else {})}
               for k in (1, 4)]
        (tmp_path / f"{method}--1-s{seed}" / "eval.json").write_text(json.dumps(
            {"objectives": ["regime_a", "regime_b"], "results": res}))
    cells, n, ks = cells_of([str(tmp_path)])
    assert n == 4 and ks == {1, 4}
    c = cells[(-1.0, 0.0)]
    assert c["weighted"]["methods"]["vpo"] == [pytest.approx(0.84), pytest.approx(0.070711, abs=1e-6), 2]
    assert c["best@4"]["winner"] == "vpo" and not c["best@4"]["tied"]  # 0.89 +- 0.07 vs 0.54 +- 0
    assert c["obj@4"]["methods"]["gdpo"][0] == pytest.approx(0.5) and c["worst@4"]["methods"]["gdpo"][0] == 0.25
