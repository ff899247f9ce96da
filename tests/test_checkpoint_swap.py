"""A checkpoint replaced in place survives a SIGKILL between its two renames: the old copy waits aside
(``.<name>.old``) and the next resume puts it back. The kill is real: a subprocess whose ``Path.rename`` SIGKILLs
its own process right after renaming a directory aside, the very point where the old code had already deleted it."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from mo_rl.analysis.evaluate import evaluate_run
from mo_rl.files import aside, current_dir, recover_dir, replace_dir
from mo_rl.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, usable_checkpoint
from mo_rl.train.loop import run_train
from tests.conftest import compose_run

# Runs the rest of argv as `python -m mo_rl ...` or as a script, dying by SIGKILL right after the first rename of a
# directory to its aside name: no finally block, no atexit, as an OOM kill or a power cut would leave it.
KILL_AFTER_ASIDE = """
import os, pathlib, runpy, signal, sys
real = pathlib.Path.rename
def rename(self, target):
    out = real(self, target)
    if pathlib.Path(target).name.endswith(".old"):
        os.kill(os.getpid(), signal.SIGKILL)
    return out
pathlib.Path.rename = rename
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__") if sys.argv[0] == "mo_rl" else exec(sys.argv[0])
"""


def _killed(*args) -> None:
    p = subprocess.run([sys.executable, "-c", KILL_AFTER_ASIDE, *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr[-2000:]  # SIGKILL, at the swap


def test_replace_dir_and_recover(tmp_path):
    path, tmp = tmp_path / "final", tmp_path / ".final.tmp"
    for d, text in ((path, "old"), (tmp, "new")):
        d.mkdir()
        (d / "f").write_text(text)
    replace_dir(tmp, path)
    assert (path / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    path.rename(aside(path))  # a crash after the old copy went aside, before the new one came in
    assert current_dir(path) == aside(path) and not path.exists()  # a reader finds it, nothing moved
    assert recover_dir(path) and (path / "f").read_text() == "new" and not aside(path).exists()
    aside(path).mkdir()  # a crash after the new copy came in, before the old one was deleted
    assert not recover_dir(path) and not aside(path).exists() and (path / "f").read_text() == "new"
    assert current_dir(path) == path and not recover_dir(path)


def test_sigkill_while_a_step_checkpoint_is_replaced_keeps_the_old_one(tmp_path):
    """step-2 saved again (a resume that fell back past a damaged copy): killed mid-swap, the old step-2 is left
    aside next to the complete new .tmp; the next resume restores the old one, intact, and removes the .tmp."""
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 2, {"w": torch.tensor([1.0])}, {"elapsed": 1.0}, keep=1)
    _killed(f"from pathlib import Path; import torch; from mo_rl.train.checkpoint import save_checkpoint; "
            f"save_checkpoint(Path({str(root)!r}), 2, {{'w': torch.tensor([2.0])}}, {{'elapsed': 2.0}}, keep=1)")
    assert sorted(p.name for p in root.iterdir()) == [".step-2.old", ".step-2.tmp"]  # no step-2 at all
    path = usable_checkpoint(tmp_path)
    assert path == root / "step-2" and sorted(p.name for p in root.iterdir()) == ["step-2"]
    state, meta = load_checkpoint(path)
    assert meta == {"step": 2, "elapsed": 1.0} and state["w"].tolist() == [1.0]  # the old copy, verified


def test_sigkill_while_final_is_replaced_then_resume(tmp_path, tiny_model_path):
    """A completed run trained longer replaces checkpoints/final; killed between the renames, the old final is
    aside (eval still finds it), the resume puts it back and completes, writing the new one."""
    args = ["trainer.steps=2", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=1", "trainer.batch_prompts=2",
            "trainer.group_size=2", "trainer.device=cpu"]
    run_dir = run_train(compose_run(tmp_path, *args))
    final = run_dir / "checkpoints" / "final"
    weights = (final / "model.safetensors").read_bytes()
    _killed("mo_rl", "train", "--resume", str(run_dir), "trainer.steps=3")
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == [".final.old", ".final.tmp", "step-3"]  # step-3 saved, then killed at final's swap
    assert current_dir(final) == aside(final) and (aside(final) / "model.safetensors").read_bytes() == weights
    assert evaluate_run(run_dir, ks=[1], prompts=1)["results"]  # mo-rl eval reads the aside copy, moves nothing
    assert not final.exists()
    assert latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step-3"  # tidies: the old final is back
    assert (final / "model.safetensors").read_bytes() == weights
    p = subprocess.run([sys.executable, "-m", "mo_rl", "train", "--resume", str(run_dir), "trainer.steps=3"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["final", "step-3"]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert (final / "model.safetensors").read_bytes() != weights  # the policy after step 3
