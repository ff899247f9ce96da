"""``mo-rl compare --html``: one self-contained page with the tables, the figures inlined, the config
differences and a command per run (the fake runs of test_compare; the page itself was looked at in Chromium)."""

import re
import shlex

from mo_rl.analysis.compare import compare_runs
from mo_rl.analysis.report import run_command
from tests.test_compare import FINALS, make_run


def test_html_report_is_self_contained_and_holds_the_tables(tmp_path):
    for method, seed in FINALS:
        make_run(tmp_path, method, seed)
    out = tmp_path / "report" / "report.html"
    compare_runs([str(tmp_path)], by=["method"], html=str(out))
    page = out.read_text()
    assert not re.search(r"(?:src|href)\s*=\s*['\"]?(?:https?:)?//", page)  # nothing fetched from elsewhere
    assert not re.search(r"<script|<link|@import|url\(", page)
    assert len(re.findall(r"src='data:image/png;base64,[A-Za-z0-9+/=]{1000,}'", page)) == 3  # curves, pareto, samples
    for name in ("curves.png", "pareto.png", "samples.png"):
        assert f"<figcaption>{name}</figcaption>" in page
    # the rewards table: dvao's final a is 0.7 and 0.9 over its two seeds
    assert "<th>final/a</th>" in page and "<td class=num>0.800 [0.700, 0.900]</td>" in page
    assert "<td>dvao</td><td>completed</td><td>2</td>" in page
    # config differences: method and seed differ, lr does not
    assert "<td>method.name</td>" in page and "<td>trainer.seed</td>" in page and "<td>trainer.lr</td>" not in page
    assert page.count("<pre>mo-rl train method=") == 4


def test_run_command_recreates_the_overrides():
    from mo_rl.config import compose
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose(["method=grpo", "task=math", "trainer.steps=7",
                                          "+task.options.columns={prompt: question}", "objectives.weights=[1,2,3]"]))
    cmd = run_command(cfg)
    assert cmd.startswith("mo-rl train method=grpo task=math ")
    overrides = shlex.split(cmd)[2:]
    assert "trainer.steps=7" in overrides and "+task.options.columns.prompt=question" in overrides
    assert OmegaConf.to_container(compose(overrides)) == cfg  # the command composes the very same config


def test_html_report_carries_intervals_verdicts_and_cost_apart(tmp_path):
    for method, seed in FINALS:
        make_run(tmp_path, method, seed)
    out = tmp_path / "report.html"
    compare_runs([str(tmp_path)], by=["method"], html=str(out), baseline="grpo")
    page = out.read_text()
    # dvao - grpo on final/a is 0.3 on both seeds: the interval is that point and the verdict "better"
    assert "<h3>paired against grpo" in page
    assert "<td>final/a</td><td>dvao</td><td class=num>0.500</td><td class=num>0.800</td><td class=num>+0.300</td>" \
           "<td class=num>[0.300, 0.300]</td><td class=num>2</td><td>paired</td><td>better</td>" \
           in page
    results, cost = page.split("<h2>Cost</h2>")
    assert "wall_time_s" in cost and "wall_time_s" not in results.split("<h2>Results</h2>")[1]
    assert "@media print" in page and "percentile bootstrap" in page
