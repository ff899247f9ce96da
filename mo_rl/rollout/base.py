"""The rollout engine protocol: prompts in, G sampled completions per prompt out, with sampling log-probs.

Sequences are ordered prompt-major: the rollouts of prompt ``i`` are rows ``i*n .. i*n + n - 1``, so a
``(N, ...)`` tensor reshapes to ``(B, G, ...)``. An engine that holds its own copy of the weights (vLLM) refreshes
it in ``sync_weights`` after each optimizer step; one that shares the policy object (HF) does nothing there.

Engines are looked up by name in a registry (``register_engine``, ``make_engine``): ``hf.py`` registers itself,
vllm is registered by module path in ``rollout/__init__.py`` and imported only by a run that chooses it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor

from mo_rl.errors import MoRLError, choice_error


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 12
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0  # the step's seed: the same seed and weights give the same completions
    prompt_offset: int = 0  # index of the batch's first prompt in the step (a data-parallel rank's slice)

    def prompt_seed(self, i: int, n: int) -> int:
        """The seed of prompt ``i`` of the batch (``n`` rollouts each): its draws do not depend on the batch's other
        prompts, so a rank that samples a slice of the step's prompts draws what one process sampling them all does."""
        return (self.seed + (self.prompt_offset + i) * n) % (2**31 - 1)


@dataclass
class RolloutBatch:
    prompt_ids: Tensor  # (N, P) long, left-padded
    prompt_mask: Tensor  # (N, P) long, 1 on real prompt tokens
    completion_ids: Tensor  # (N, T) long, right-padded after EOS
    completion_mask: Tensor  # (N, T) float, 1 on generated tokens up to and including EOS
    logprobs: Tensor  # (N, T) float, log-prob of each sampled token under the sampling distribution; 0 on padding
    texts: list[str]  # N decoded completions, special tokens removed
    n: int  # rollouts per prompt (G)
    min_new_tokens: int = 0  # stop tokens were masked for this many steps when sampling (benchmarks' fixed length):
    # the trainer's log-probs mask them the same way (``Policy.completion_logprobs``), so a fresh ratio is 1

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> RolloutBatch: ...

    def sync_weights(self, policy) -> None: ...


# name -> engine factory ``(policy, **engine_options)``, or (``"module:attr"``, the package it needs): an engine
# registered by path is imported only when a run chooses it (vllm), so this module imports no engine
_ENGINES: dict[str, Callable | tuple[str, str | None]] = {}


def register_engine(name: str, path: str | None = None, requires: str | None = None):
    """Add an engine under ``name`` (``rollout.engine``). As a decorator on a factory ``(policy,
    **engine_options) -> RolloutEngine``; or with ``path`` (``"package.module:Factory"``), imported when chosen,
    and ``requires``, the package ``check_engine`` looks for (that module's ``INSTALL`` says how to get it)."""
    if path is not None:
        _ENGINES[name] = (path, requires)
        return None

    def deco(factory):
        _ENGINES[name] = factory
        return factory

    return deco


def make_engine(name: str, policy, **engine_options) -> RolloutEngine:
    """The engine registered as ``name`` (``hf``, ``vllm``), sampling from ``policy`` (a ``Policy``);
    ``engine_options``: ``RolloutConfig.engine_options``, the knobs an engine may take."""
    if name not in _ENGINES:
        raise choice_error("rollout.engine", name, tuple(_ENGINES))
    factory = _ENGINES[name]
    if isinstance(factory, tuple):
        factory = getattr(_engine_module(factory[0]), factory[0].partition(":")[2])
    return factory(policy, **engine_options)


def _engine_module(path: str):
    return importlib.import_module(path.partition(":")[0])


def check_engine(name: str) -> None:
    """Before anything is loaded or written: the engine's package is importable (``validate`` does not ask, so that
    a sweep can be composed where it will not run). Raises MoRLError naming the install."""
    entry = _ENGINES.get(name)  # an unknown name is validate's to report
    if isinstance(entry, tuple) and entry[1] and importlib.util.find_spec(entry[1]) is None:
        install = getattr(_engine_module(entry[0]), "INSTALL", f"pip install {entry[1]}")
        raise MoRLError(f"rollout={name} needs {entry[1]}: {install}; or use rollout=hf")


def completion_mask(ids: Tensor, eos_id: int | list[int]) -> Tensor:
    """1 on tokens up to and including the first stop token (any of ``eos_id``) of each row, 0 after.
    ids: (N, T) -> (N, T) float."""
    is_eos = torch.isin(ids, torch.as_tensor(eos_id, device=ids.device)).int()
    after = (is_eos.cumsum(1) - is_eos) > 0  # strictly after the first EOS
    return (~after).float()
