"""Rollout engines: one protocol, an HF ``generate`` engine (CPU/GPU) and a vLLM engine (GPU, lazy import)."""

from mo_rl.rollout.base import RolloutBatch, SamplingParams, make_engine

__all__ = ["RolloutBatch", "SamplingParams", "make_engine"]
