"""Guards around one training run: divergence, SIGTERM, a full disk. ``loop.py`` calls them at a few points.

- **Divergence**: a non-finite loss or gradient norm is caught after the backward pass and before the optimizer
  step; a non-finite parameter right after the step (one foreach max-abs pass over the weights; measured by
  ``scripts/guard_overhead.py`` on a loaded 2-core CPU: 0.01x the AdamW step of the tiny model, 0.87x that of a
  50M-parameter model, itself a small part of a step that also generates and backpropagates). The run stops with ``Diverged`` (status ``diverged``), and since the check runs before the
  step's checkpoint, no checkpoint is written from the broken state.
- **SIGTERM** and **SIGHUP** stop the run like Ctrl-C (``mo_rl/signals.py``: ``on_sigterm``, ``Terminated``).
- **A full disk** (``ENOSPC``, a quota, a file-size limit) becomes ``DiskFull``: one line naming the file and how to
  go on; the half-written file is removed by the writer that failed, earlier checkpoints are untouched.
"""

from __future__ import annotations

import errno
import math
import os

import torch

from mo_rl.errors import MoRLError
from mo_rl.signals import Terminated, on_sigterm  # noqa: F401  (on_sigterm: guards.on_sigterm of the loop)

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class NonFinite(Exception):
    """Raised inside an update; ``explain`` adds the step and turns it into ``Diverged``."""

    def __init__(self, quantity: str, value: float):
        super().__init__(f"{quantity} is {value}")
        self.quantity, self.value = quantity, value


class Diverged(MoRLError):
    exit_code = 1
    status = "diverged"


class DiskFull(MoRLError):
    exit_code = 1
    status = "failed"


def check_update(loss, grad_norm) -> None:
    """After backward, before ``opt.step``: the loss and the (pre-clipping) gradient norm must be finite."""
    for quantity, v in (("the loss", float(loss)), ("the gradient norm", float(grad_norm))):
        if not math.isfinite(v):
            raise NonFinite(quantity, v)


def check_params(model: torch.nn.Module, params: list[torch.Tensor]) -> None:
    """After ``opt.step``: every parameter finite (a max-abs norm: no squares, so no overflow of large finite
    values). Names the first bad parameter."""
    if not params or torch.isfinite(torch.nn.utils.get_total_norm(params, norm_type=math.inf)):
        return
    for name, p in model.named_parameters():
        if p.requires_grad and not torch.isfinite(p).all():
            raise NonFinite(f"parameter {name}", float(p.detach()[~torch.isfinite(p)].reshape(-1)[0]))
    raise NonFinite("a parameter", math.nan)


def explain(e: BaseException, step: int, run_dir, lr: float) -> BaseException:
    """The exception the run ends with: ``NonFinite`` and disk-full errors become one-line ``MoRLError``s."""
    if isinstance(e, NonFinite):
        when = "after" if e.quantity.startswith(("parameter", "a parameter")) else "before"
        return Diverged(f"training diverged at step {step}: {e} (trainer.lr={lr:g}); the run stopped {when} the "
                        "optimizer step and wrote no checkpoint of the broken state: lower trainer.lr")
    if isinstance(e, Terminated):
        return Terminated(f"stopped by {e.name} at step {step}; the run is marked interrupted: continue it with "
                          f"mo-rl train --resume {run_dir}", e.signum)
    if disk_full(e):
        name = getattr(e, "filename", None)
        where = f"writing {str(name)!r}" if name else "writing the run directory"
        return DiskFull(f"disk full {where} at step {step} ({_reason(e)}); earlier checkpoints are intact: free "
                        f"space, then continue with mo-rl train --resume {run_dir}")
    return e


# what other writers say for the same errnos: torch.save's zip writer (a RuntimeError), safetensors (SafetensorError
# "I/O error: No space left on device (os error 28)", which save_pretrained raises for checkpoints/final)
_DISK_FULL_TEXT = {f"os error {n}": os.strerror(n) for n in DISK_FULL}


def disk_full(e: BaseException) -> bool:
    """An out-of-space error, also as torch.save and safetensors report it."""
    if isinstance(e, OSError):
        return e.errno in DISK_FULL
    text = str(e)
    return (isinstance(e, RuntimeError) and ("No space left" in text or "file write failed" in text)) or \
        any(code in text for code in _DISK_FULL_TEXT)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return next((why for code, why in _DISK_FULL_TEXT.items() if code in str(e)), "No space left on device")


def name_file(e: BaseException, path) -> None:
    """Let a disk-full message name ``path`` when the error names no file (safetensors' errors name none)."""
    if not getattr(e, "filename", None):
        try:
            e.filename = str(path)
        except (AttributeError, TypeError):
            pass


def status(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    return getattr(e, "status", "failed")


def close(writer, summary: dict, failing: bool) -> None:
    """The run's last writes (fsync the logs, summary.json). On a full disk the summary is overwritten in place
    (``RunWriter.write_summary_in_place``) if it can be; when the run is already failing, that must not hide
    the first error."""
    try:
        writer.sync()
        writer.write_summary(summary)
    except OSError as e:
        if not disk_full(e):
            raise
        try:
            writer.write_summary_in_place(summary)
        except OSError:
            pass
        if not failing:
            raise DiskFull(f"disk full writing summary.json of {str(writer.path)!r} ({_reason(e)}); the run itself "
                           "completed: free space and check its files") from e
