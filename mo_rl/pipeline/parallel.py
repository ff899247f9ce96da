"""A step's rollouts over data-parallel processes: which prompts this rank samples (``shard``) and the global view
of what every rank sampled and scored (``gather_step``, ``all_gather``). With one process (``Dist()``) nothing is
sharded or gathered. ``train/distributed.py`` holds the rest of data parallelism (the process group, the update).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from mo_rl.rollout.base import RolloutBatch


@dataclass(frozen=True)
class Dist:
    """This process's place in the data-parallel group (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    owned: bool = False  # this run initialized the process group, so its end tears it down

    @property
    def lead(self) -> bool:
        """Rank 0 writes the run directory and logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def shard(d: Dist, n: int) -> slice:
    """This rank's contiguous share of ``n`` items (``n`` divisible by the world size)."""
    per = n // d.world
    return slice(d.rank * per, (d.rank + 1) * per)


def all_gather(d: Dist, x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0, in rank order. x: (n, ...) the same shape on every rank."""
    if not d.active:
        return x
    src = x.to(torch.uint8) if x.dtype == torch.bool else x  # bool is not a collective dtype on every backend
    parts = [torch.empty_like(src) for _ in range(d.world)]
    dist.all_gather(parts, src.contiguous())
    return torch.cat(parts).to(x.dtype)


def _gather_list(d: Dist, items: list) -> list:
    parts = [None] * d.world
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


@dataclass
class StepBatch:
    """A step's rollouts, sharded or not: the global batch's ``texts`` and ``num_tokens`` (for metrics and samples),
    and this process's ``local`` rows (for the update; all of them with one process)."""

    local: RolloutBatch
    texts: list[str]  # all N completions, prompt-major
    num_tokens: int
    rows: slice  # this rank's rows of the global (N,) batch
    n: int
    num_seqs: int | None = None  # sequences with a token to train on (``trainable``); None: all N


def gather_step(d: Dist, batch: RolloutBatch, r: torch.Tensor, mask: torch.Tensor, scores):
    """The global view of a step from every rank's share. r: (B/W, G, ...) -> (B, G, ...); mask likewise.

    -> (StepBatch, r, mask, scores with failure counts summed over ranks and each objective's first message from
    the lowest rank that has one); with one process the batch is all local and the rest is unchanged.
    """
    if not d.active:
        return StepBatch(batch, batch.texts, batch.num_tokens, slice(0, len(batch.texts)), batch.n), r, mask, scores
    counts = _gather_list(d, list(scores.failures.items()))
    failures: dict[str, int] = {}
    for name, c in counts:
        failures[name] = failures.get(name, 0) + c
    first_error: dict[str, str] = {}
    for name, msg in _gather_list(d, list(scores.first_error.items())):
        first_error.setdefault(name, msg)
    tokens = torch.tensor([batch.num_tokens], dtype=torch.float64, device=r.device)
    dist.all_reduce(tokens)
    n_local = len(batch.texts)
    view = StepBatch(batch, _gather_list(d, batch.texts), int(tokens.item()),
                      slice(d.rank * n_local, (d.rank + 1) * n_local), batch.n)
    return view, all_gather(d, r), all_gather(d, mask), replace(scores, failures=failures, first_error=first_error)
