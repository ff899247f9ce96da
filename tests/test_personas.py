"""task=personas: each persona's reward on real short and long answers, the population shares as the objective
weights of a real run, and the per-persona metrics (best@k per persona, the worst-off persona) in eval and compare."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from mo_rl.analysis.compare import _eval_columns
from mo_rl.analysis.evaluate import search_metrics
from mo_rl.analysis.pareto import best_per_objective, worst_off
from mo_rl.config import compose
from mo_rl.errors import MoRLError
from mo_rl.rewards.personas import words
from mo_rl.rewards.registry import get_reward
from mo_rl.tasks.base import make_task
from mo_rl.train.loop import run_train

SKY = ["light", "scatter", "wavelength", "rayleigh", "sun"]
SHORT = {  # question -> (keywords, a one-line answer, an explained answer), written as an assistant would
    "Why is the sky blue?": (
        SKY,
        "Air scatters blue sunlight more than red light.",
        "The sky looks blue because of Rayleigh scattering. Sunlight holds every colour, and when it passes through "
        "the atmosphere the tiny gas molecules scatter short wavelengths, like blue, much more strongly than long "
        "ones, like red. That scattered blue light reaches our eyes from every direction, so the whole sky glows "
        "blue; at sunset the light travels further and the reds win."),
    "What is the capital of France?": (
        ["paris"],
        "Paris.",
        "The capital of France is Paris, which has been the seat of its government for most of the country's "
        "history. It sits on the Seine in the north of the country, holds about two million people in the city "
        "itself, and is known for the Eiffel Tower, the Louvre and its cafes."),
}
# sampled from SmolLM2-135M-Instruct (model.chat_template=true, temperature 1, 48 new tokens) on the task's prompts at
# step 0, with the (brief, detailed) rewards they must get: long and on topic; long and off topic (wrong facts)
SMOLLM2 = [
    ("What does a computer's CPU do?", ["instruction", "process", "calculat", "program", "data"],
     "A computer's CPU, or Central Processing Unit, plays a crucial role in processing and executing code. "
     "Essentially, it executes instructions stored in memory, which is where the computer's processor resides. The "
     "CPU acts as a execution engine that c\n            \n           ", (0.0, 1.0)),
    ("How many continents are there?", ["seven", "7"],
     "Always remember that the true answer to the question of how many continents there are lies within an "
     "infinite narrative of endless points. This infinite island was the home of Mortal Containers, a "
     "fantasy-themed variant introduced in Grand Thead Projectiverse", (0.0, 0.0)),
    ("How many legs does a spider have?", ["eight", "8"],
     "A spider's leg has five legs. Then, a spider's leg is all four legs of its body, excluding the spinnerets, "
     "which give the spider silk its strong build. Spiders land with their front legs on the floor", (0.0, 0.0)),
    ("What is the largest planet in our solar system?", ["jupiter"],
     "That question has to do with our own universe and Earth. No, it\u2019s not about your directions. In the "
     "realm of Astronomy and Physics, the largest known planet in our Solar System is called Xylophia. It's "
     "approximately", (0.0, 0.0)),
]


def _score(name, keywords, completions, **kw):
    return get_reward(name)(None, completions, keywords=[keywords] * len(completions), **kw)


@pytest.mark.parametrize("question", sorted(SHORT))
def test_each_persona_scores_its_own_answer_high_and_the_others_low(question):
    keywords, short, long = SHORT[question]
    assert words(short) <= 12 and words(long) >= 30
    assert _score("persona_brief", keywords, [short, long]) == [1.0, 0.0]
    assert _score("persona_detailed", keywords, [short, long]) == [0.0, 1.0]


def test_a_compromise_length_serves_neither_persona_well():
    middle = "The sky is blue because air molecules scatter the blue part of sunlight more than the red part of it."
    n = words(middle)
    assert 12 < n < 30
    brief, detailed = _score("persona_brief", SKY, [middle])[0], _score("persona_detailed", SKY, [middle])[0]
    assert brief == pytest.approx(1 - (n - 12) / 12) and detailed == pytest.approx((n - 12) / 18)
    # at the 51 / 49 shares the brief answer is worth more than the compromise: a weighted sum serves the majority
    assert 0.51 * brief + 0.49 * detailed < 0.51


def test_off_topic_or_empty_answers_satisfy_no_one():
    off = ["I like turtles.", " ".join(["Turtles are slow animals that live for a very long time."] * 4), "", "  \n"]
    assert _score("persona_brief", SKY, off) == [0.0] * 4
    assert _score("persona_detailed", SKY, off) == [0.0] * 4


def test_length_targets_come_from_the_row():
    long = SHORT["Why is the sky blue?"][2]
    assert _score("persona_brief", SKY, [long], short_words=[200], long_words=[400]) == [1.0]
    assert _score("persona_detailed", SKY, ["Blue light scatters more."], short_words=[2], long_words=[4]) == [1.0]


@pytest.mark.parametrize("question, keywords, completion, want", SMOLLM2)
def test_real_smollm2_samples(question, keywords, completion, want):
    task_row = next(r for r in make_task("personas").sample(random.Random(0), 400, "train") if r["prompt"] == question)
    assert task_row["keywords"] == keywords  # the fixture's keywords are the task's own
    got = (_score("persona_brief", keywords, [completion])[0], _score("persona_detailed", keywords, [completion])[0])
    assert got == want and words(completion) >= 30


def test_rows_carry_the_targets_and_every_question_its_keywords():
    task = make_task("personas", short_words=8, long_words=20)
    rows = task.sample(random.Random(0), 40, "train")
    assert rows == task.sample(random.Random(0), 40, "train")
    assert all(r["keywords"] and r["short_words"] == 8 and r["long_words"] == 20 for r in rows)
    assert task.objectives == ["persona_brief", "persona_detailed"] and task.weights == [0.51, 0.49]


def test_population_shares_are_the_resolved_weights_of_a_run(tmp_path):
    path = run_train(compose(["task=personas", "task.options.shares=[3,1]", "trainer.steps=1",
                              "trainer.batch_prompts=2", "trainer.group_size=2", "rollout.max_new_tokens=4",
                              "trainer.device=cpu", f"output_dir={tmp_path}", "run_name=p"]))
    from omegaconf import OmegaConf

    resolved = OmegaConf.load(path / "config.yaml")["objectives"]["resolved"]
    assert list(resolved["names"]) == ["persona_brief", "persona_detailed"]
    assert list(resolved["weights"]) == pytest.approx([0.75, 0.25])
    rows = [json.loads(line) for line in open(path / "metrics.jsonl")]
    assert "reward/persona_brief/mean" in rows[0] and "reward/persona_detailed/mean" in rows[0]


@pytest.mark.parametrize("options, needle", [
    ({"personas": ["brief", "chatty"]}, "chatty"),
    ({"shares": [1.0]}, r"shares=\[1.0\]"),
    ({"shares": [0.5, 0.0]}, "positive"),
    ({"personas": ["brief", "brief"], "shares": [0.5, 0.5]}, "different"),
    ({"short_words": 30, "long_words": 20}, "long_words=20"),
])
def test_bad_options_are_one_line(options, needle):
    with pytest.raises(MoRLError, match=needle) as e:
        make_task("personas", **options)
    assert "\n" not in str(e.value)


def test_best_per_objective_and_worst_off():
    pts = np.array([[1.0, 0.0], [0.2, 0.6], [0.0, 0.1]])
    assert best_per_objective(pts).tolist() == [1.0, 0.6]
    assert best_per_objective(np.zeros((0, 3))).tolist() == [0.0, 0.0, 0.0]
    assert worst_off([1.0, 0.6]) == 0.6 and np.isnan(worst_off([]))


def test_eval_reports_each_personas_best_of_k_and_the_worst_off():
    # two prompts, four samples each; (brief, detailed): a policy that serves the brief majority in 3 of 4 samples
    r = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]],
                  [[1.0, 0.0], [0.0, 0.5], [1.0, 0.0], [1.0, 0.0]]])[:, :, None, :]
    valid = np.ones(r.shape[:3], dtype=bool)
    texts = [["a"] * 4, ["b"] * 4]
    lam = np.array([[0.51, 0.49]])
    one = search_metrics(r, valid, texts, np.array([0.51, 0.49]), 1, lam, None)
    four = search_metrics(r, valid, texts, np.array([0.51, 0.49]), 4, lam, None)
    # k=1 is the mean over the 4 samples (a uniform random one): brief 3/4 on both prompts, detailed 1/4 and 0.5/4
    assert one["best_at_k_per_objective"] == [0.75, 0.1875] and one["worst_off_at_k"] == 0.1875
    assert four["best_at_k_per_objective"] == [1.0, 0.75] and four["worst_off_at_k"] == 0.75
    cols = _eval_columns({"objectives": ["persona_brief", "persona_detailed"], "results": [one, four]})
    assert cols["best@4/persona_detailed"] == 0.75 and cols["worst@4"] == 0.75 and cols["worst@1"] == 0.1875
    assert "worst@1" not in _eval_columns({"results": [{"k": 1, "best_at_k_sampled": 0.5}]})  # an older eval.json
