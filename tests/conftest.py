"""Shared fixtures: the embedded tiny model is built once (cached under MO_RL_CACHE or ~/.cache/mo_rl)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Subprocesses (python -m mo_rl ...) must import this checkout, not whatever copy is installed.
ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])


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
