"""Rollout engines by name (``make_engine``): one protocol, an HF engine (CPU/GPU) and a vLLM engine (GPU, imported
only when a run chooses it)."""

from mo_rl.rollout import hf  # noqa: F401  (registers the hf engine)
from mo_rl.rollout.base import RolloutBatch, SamplingParams, check_engine, make_engine, register_engine

register_engine("vllm", "mo_rl.rollout.vllm:VLLMEngine", requires="vllm")  # imported when a run chooses it

__all__ = ["RolloutBatch", "SamplingParams", "check_engine", "make_engine", "register_engine"]
