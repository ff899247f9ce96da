"""Checks of ``validate`` that keep a run from starting on values that would ruin it silently or fail only later:
non-finite or out-of-range numbers, a device this machine does not have, batch sizes beyond any memory, and run
paths that leave ``output_dir``. All run before the model loads and before anything is written.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields, is_dataclass
from pathlib import PurePath

from mo_rl.errors import MoRLError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
# A sane ceiling, not a memory estimate: every rollout of a step is generated and scored together, and typical runs
# use 4-64 rollouts per prompt and a few thousand per step. Far beyond this a run ends in an out-of-memory kill.
MAX_GROUP_SIZE = 1024
MAX_ROLLOUTS_PER_STEP = 65536


def check_all(c) -> None:
    """Every check below, in the order a user would fix them. Raises MoRLError."""
    check_finite(c)
    check_ranges(c)
    check_method_eps(c.method)
    check_device(c.trainer.device)
    check_run_path(c)


def _floats(node, prefix: str):
    """(dotted key, value) of every float field in a dataclass tree."""
    for f in fields(node):
        v = getattr(node, f.name)
        if is_dataclass(v):
            yield from _floats(v, f"{prefix}{f.name}.")
        elif isinstance(v, float):
            yield f"{prefix}{f.name}", v


def check_finite(c) -> None:
    """No NaN anywhere, no infinity but where it means "no limit" (``trainer.max_grad_norm``)."""
    for key, v in _floats(c, ""):
        if math.isnan(v) or (math.isinf(v) and key != "trainer.max_grad_norm"):
            raise MoRLError(f"{key}={v} must be a finite number")
    for key, v in dict(c.method).items():
        if isinstance(v, float) and not math.isfinite(v):
            raise MoRLError(f"method.{key}={v} must be a finite number")


def check_ranges(c) -> None:
    t, o = c.trainer, c.objectives
    if not t.lr > 0:
        raise MoRLError(f"trainer.lr={t.lr} must be > 0")
    for key in ("clip_eps", "clip_eps_high", "kl_coef", "weight_decay"):
        v = getattr(t, key)
        if v is not None and v < 0:
            raise MoRLError(f"trainer.{key}={v} must be >= 0")
    if not t.max_grad_norm > 0:
        raise MoRLError(f"trainer.max_grad_norm={t.max_grad_norm} must be > 0 (inf = no clipping)")
    if t.group_size > MAX_GROUP_SIZE or t.batch_prompts * t.group_size > MAX_ROLLOUTS_PER_STEP:
        raise MoRLError(f"trainer.group_size={t.group_size} x trainer.batch_prompts={t.batch_prompts} is beyond what "
                        f"one step can hold in memory; allowed: group_size <= {MAX_GROUP_SIZE} and batch_prompts * "
                        f"group_size <= {MAX_ROLLOUTS_PER_STEP} (typical: group_size 4-64)")
    timeout = getattr(o, "timeout_s", None)
    if timeout is not None and timeout < 0:
        raise MoRLError(f"objectives.timeout_s={timeout} must be >= 0 (0 or null = no time limit)")


def check_method_eps(method) -> None:
    """An estimator's ``eps`` guards a division by a standard deviation: a negative one can make it zero."""
    for key, v in dict(method).items():
        if (key == "eps" or key.endswith("_eps")) and isinstance(v, (int, float)) and v < 0:
            raise MoRLError(f"method.{key}={v} must be >= 0")


def check_device(name: str) -> None:
    """``trainer.device`` must name a device this machine has."""
    import torch

    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if name in ("auto", "cpu"):
        return
    if m:
        if not torch.cuda.is_available():
            raise MoRLError(f"trainer.device={name} but CUDA is not available here (torch {torch.__version__}, "
                            f"{torch.cuda.device_count()} GPUs); use trainer.device=cpu or auto")
        if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
            raise MoRLError(f"trainer.device={name} but this machine has {torch.cuda.device_count()} CUDA "
                            f"device(s): cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise MoRLError("trainer.device=mps but MPS is not available here; use trainer.device=cpu or auto")
        return
    raise MoRLError(f"unknown trainer.device {name!r}; allowed: {', '.join(DEVICES)}")


def check_run_path(c) -> None:
    """``experiment`` and ``run_name`` name folders under ``output_dir``: relative, no ``..``, not empty."""
    for key in ("experiment", "run_name"):
        v = getattr(c, key)
        if v is None and key == "run_name":
            continue
        p = PurePath(str(v))
        if not str(v).isprintable():  # a line break or a control character in a folder name
            raise MoRLError(f"{key}={v!r} must be one line of printable characters (it names a folder)")
        if not str(v).strip() or p.is_absolute() or ".." in p.parts or str(v).strip() in (".", "./"):
            raise MoRLError(f"{key}={v!r} must be a relative name inside output_dir (no absolute path, no '..', "
                            "not empty)")
