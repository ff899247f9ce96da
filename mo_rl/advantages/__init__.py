"""Advantage estimators: pure batched torch over rewards (B, G, K). Entry point: ``compute(method, rewards, ...)``."""

from mo_rl.advantages import scalar  # noqa: F401  (registers the estimators)
from mo_rl.advantages import gated, vpo  # noqa: F401
from mo_rl.advantages.diagnostics import summarize
from mo_rl.advantages.registry import (Estimator, available, compute, compute_with_diagnostics, get, reduce_answers,
                                      register)

__all__ = ["Estimator", "available", "compute", "compute_with_diagnostics", "get", "reduce_answers", "register",
           "summarize"]
