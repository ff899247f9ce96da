"""How the ranks share one training step and one checkpoint (``trainer.strategy``): the one interface the loop and
the checkpoint code call, so a step and a checkpoint each have one path.

- ``DDP`` (also the one-process run, where every collective below is a no-op): each rank holds the whole model;
  the update all-reduces the share-scaled gradients (``distributed.reduce_update``); rank 0 alone writes a
  checkpoint, one ``state.pt`` with the weights and the optimizer (``checkpoint.StateFile``).
- ``FSDP`` (``fsdp.py``): the model is sharded; FSDP sums the gradients inside backward, so the loss carries the
  rank's share instead and only the statistics are reduced; sampling from the live module runs on gathered
  weights; every rank writes its ``dcp/`` shards of a checkpoint (a collective), rank 0 the rest.

``checkpoint.save_checkpoint`` and ``checkpoint.restore_run`` do everything else (the temporary directory, meta
and manifest, the swap, the pruning; the choice of checkpoint, the log truncation) once, for both.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from mo_rl.train import distributed as dp
from mo_rl.train import fsdp
from mo_rl.train.checkpoint import StateFile


class DDP(StateFile):
    """Whole model on every rank, gradients all-reduced after backward; rank 0 writes the checkpoints."""

    name = "ddp"

    def __init__(self, d: dp.Dist, device: torch.device):
        self.dist, self.device = d, device

    @property
    def lead(self) -> bool:
        """Rank 0 writes a checkpoint's meta.json and manifest and swaps it in."""
        return self.dist.lead

    writes_checkpoints = lead  # whether this rank calls ``checkpoint.save_run``: ddp's rank 0 alone, no barrier

    def prepare(self, policy, ref) -> None:
        """After ``broadcast_params``, before the optimizer takes the parameters: nothing to change."""

    def rollout_weights(self, policy, engine):
        """The context ``engine.generate`` runs in."""
        return nullcontext()

    def micro_batch_size(self, batch, trainer) -> int:
        """Sequences per micro-batch of this rank's ``batch`` (0: ``backward_loss`` sizes them by tokens)."""
        return trainer.micro_batch_size

    def loss_scale(self, shares: tuple[float, float]) -> float:
        """What the backpropagated loss is multiplied by (``backward_loss(scale=...)``)."""
        return 1.0

    def reduce(self, model, loss: float, stats: dict[str, float], shares) -> tuple[float, dict[str, float]]:
        """After backward: the global batch's gradients, loss and statistics on every rank."""
        return dp.reduce_update(self.dist, model, loss, stats, shares)

    def grad_norm(self, gn) -> float:
        """``clip_grad_norm_``'s total norm as a float."""
        return float(gn)

    def sync_engine(self, policy, engine) -> None:
        """After an update or a restore: an engine with its own copy of the weights (vLLM) gets the new ones."""
        engine.sync_weights(policy)

    def training_state(self, model, opt, extras: dict) -> dict:
        """What a checkpoint holds: the weights and optimizer state, plus ``extras`` (RNG, failures, engine)."""
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), **extras}

    def load_training_state(self, state: dict, model, opt) -> None:
        """The inverse of ``training_state`` for the weights and the optimizer."""
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])

    def save_final(self, policy, path: Path) -> None:
        """Every rank: the final policy as a ``from_pretrained`` directory, LoRA adapters merged (rank 0 writes)."""
        if self.dist.lead:
            policy.save(path, merge_lora=True)


class FSDP(DDP):
    """Sharded model (FSDP2); with one process nothing is sharded but checkpoints are the same ``dcp/`` shards, so a
    run written by W ranks resumes on any number."""

    name = "fsdp"

    @property
    def writes_checkpoints(self) -> bool:
        return True  # DCP's save is collective: every rank writes its shards

    def barrier(self) -> None:
        dp.barrier(self.dist)

    def prepare(self, policy, ref) -> None:
        fsdp.prepare(self.dist, policy, ref, self.device)

    def rollout_weights(self, policy, engine):
        # a sampling loop runs a different number of decode steps per rank: gather once, not per layer
        return fsdp.full_weights(policy.module) if engine.shares_policy_module else nullcontext()

    def micro_batch_size(self, batch, trainer) -> int:
        if trainer.micro_batch_size or not self.dist.active:
            return trainer.micro_batch_size
        return fsdp.micro_batch_size(batch, trainer.micro_batch_tokens, self.device)

    def loss_scale(self, shares: tuple[float, float]) -> float:
        return shares[0]  # FSDP sums the gradients over the ranks inside backward

    def reduce(self, model, loss: float, stats: dict[str, float], shares) -> tuple[float, dict[str, float]]:
        return dp.reduce_stats(self.dist, loss, stats, shares, self.device)

    def grad_norm(self, gn) -> float:
        return float(gn.full_tensor()) if hasattr(gn, "full_tensor") else float(gn)  # a DTensor when sharded

    def sync_engine(self, policy, engine) -> None:
        if not engine.shares_policy_module:
            with fsdp.full_weights(policy.module):
                engine.sync_weights(policy)

    def training_state(self, model, opt, extras: dict) -> dict:
        return {**extras, "dcp": fsdp.state_dicts(model, opt)}

    def write_state(self, tmp: Path, state: dict) -> dict:
        """Every rank its shards into ``tmp/dcp`` (collective, fsynced by DCP), then rank 0 the rest as state.pt."""
        rest = dict(state)
        fsdp.save_shards(rest.pop("dcp"), tmp / "dcp", self.dist)
        return super().write_state(tmp, rest) if self.lead else {}

    def read_state(self, path: Path, model, opt) -> dict:
        shards = fsdp.load_shards(path / "dcp", model, opt, self.dist)  # resharded into this world's layout
        return {**super().read_state(path, model, opt), "dcp": shards}

    def load_training_state(self, state: dict, model, opt) -> None:
        fsdp.set_state_dicts(model, opt, state["dcp"])

    def save_final(self, policy, path: Path) -> None:
        if not self.dist.active:
            return super().save_final(policy, path)
        fsdp.save_gathered(policy, path, self.dist.lead)


Strategy = DDP  # the interface: every strategy extends ddp's
STRATEGIES = {"ddp": DDP, "fsdp": FSDP}


def make_strategy(name: str, d: dp.Dist, device: torch.device) -> Strategy:
    """``trainer.strategy`` (checked by ``config.validate``) for this process."""
    return STRATEGIES[name](d, device)
