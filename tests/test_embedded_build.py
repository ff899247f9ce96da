"""First use on a fresh machine: the embedded tiny model is built once however many processes start together (a
file lock: one builds, the others wait and reuse it), and the test suite builds it before any test's timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

# One process of a cold start: waits for the parent's "go" so that both reach embedded_path() together, with a
# 20-step warm-up (a distinct recipe, so a distinct cache key: the lock is under test, not the warm-up).
FIRST_USE = """
import sys, time, pathlib
from mo_rl.models import embedded
embedded.RECIPE = {**embedded.RECIPE, "warmup_steps": 20}
root = pathlib.Path(sys.argv[1])
(root / ("ready-" + sys.argv[2])).touch()
while not (root / "go").exists():
    time.sleep(0.005)
print(embedded.embedded_path())
"""


def test_two_processes_at_once_build_the_model_once(tmp_path):
    env = {**os.environ, "MO_RL_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_USE, str(tmp_path), str(i)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    deadline = time.time() + 240
    while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "a process did not start"
        time.sleep(0.01)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    (path,) = {Path(out.strip()) for out, _ in outs}  # both got the same model
    notes = [line for _, err in outs for line in err.splitlines()]
    starts = [line for line in notes if line.startswith("building the tiny model") and ": 0/" in line]
    assert len(starts) == 1, notes  # one builder's progress (a bar, or plain lines off a terminal); the other waited
    assert (path / "config.json").is_file() and (path / "mo_rl_build.json").is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [f".{path.name}.lock", path.name]  # no .build- left


def test_suite_stops_once_with_one_message_when_the_build_fails(tmp_path):
    """A cache path that cannot hold a directory: the session stops before any test, with one line saying why."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    p = subprocess.run([sys.executable, "-m", "pytest", "tests/test_models.py", "-q", "-p", "no:cacheprovider"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "MO_RL_CACHE": str(blocker)},
                       timeout=300)
    assert p.returncode == 1, p.stdout[-2000:]
    msg = [ln for ln in p.stdout.splitlines() if "could not be built" in ln]
    assert len(msg) == 1 and "not writable (Not a directory" in msg[0], p.stdout[-2000:]  # MO_RL_CACHE named
    assert " passed" not in p.stdout and " error" not in p.stdout  # no test ran, none errored one by one
