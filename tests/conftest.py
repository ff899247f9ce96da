"""Shared fixtures. The embedded tiny model (cached under MO_RL_CACHE or ~/.cache/mo_rl) is built once, before the
first test, when a selected test asks for ``tiny_model_path``: outside every test's timeout (a cold build under a
loaded machine takes minutes), and a build that fails stops the session with one message."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import pytest

# Subprocesses (python -m mo_rl ...) must import this checkout, not whatever copy is installed.
ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])


def pytest_collection_finish(session):
    if not any("tiny_model_path" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    from mo_rl.models.embedded import embedded_path

    capture = session.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else nullcontext():  # the builder's note is shown
        try:
            embedded_path()
        except Exception as e:  # noqa: BLE001 - reported once here instead of as an error in every test using it
            pytest.exit(f"the embedded tiny model could not be built, so no test ran: {type(e).__name__}: {e}",
                        returncode=pytest.ExitCode.TESTS_FAILED)


@pytest.fixture(scope="session")
def tiny_model_path():
    from mo_rl.models.embedded import embedded_path

    return embedded_path()


@pytest.fixture(scope="session")
def tiny_policy(tiny_model_path):
    from mo_rl.models import load_policy

    return load_policy("embedded:tiny")


def compose_run(tmp_path, *overrides):
    """A composed config writing under tmp_path with a fixed run name."""
    from mo_rl.config import compose

    return compose([f"output_dir={tmp_path}", "run_name=r", *overrides])


def kill_when(cmd: list[str], ready: Callable[[], bool], what: str, env: dict | None = None,
              timeout: float = 300) -> None:
    """Start ``cmd`` and SIGKILL it (no chance to clean up, as a crash or an OOM kill) as soon as ``ready()`` holds.
    Fails if the process ends first or ``what`` does not happen within ``timeout`` s (a guard against a hang, not a
    timing)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, f"the run ended before {what}"
            assert time.time() < deadline, f"no {what} within {timeout:.0f} s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
