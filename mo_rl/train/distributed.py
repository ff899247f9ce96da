"""Data-parallel training over torch.distributed: one process per device, launched by ``torchrun``.

How one step splits (``loop.py`` and ``pipeline/rollout_score.py`` call these helpers and ``pipeline/parallel.py``'s;
with one process they change nothing):

- every rank draws the same B prompts (the step's seeded ``random.Random``) and generates and scores its own
  contiguous B/W of them: whole groups, so a group never straddles ranks. Prompt ``i`` samples from its own seed
  (``SamplingParams.prompt_offset``), so a rank draws the tokens one process would draw for the same prompts;
- rewards (B, G, K), the mask, the completion texts and the failure counts are all-gathered, so every rank
  computes advantages and metrics on the global batch, exactly as one process would (batch-level statistics such
  as gdpo's or ``adv_norm=batch_std`` included), and rank 0 logs the row one process would log;
- the update runs on this rank's rows; its loss is scaled by its share of the global normalizer (tokens for
  ``token_mean``, sequences otherwise: ``loss.micro_share``) and the scaled gradients are summed over ranks, so
  the step equals one process's step on the global batch;
- only rank 0 writes the run directory (``results.writer.NullWriter`` elsewhere); every rank loads the checkpoint
  rank 0 chose to resume (``checkpoint.restore_run``). ``strategy.DDP`` is how the loop calls these for a step.

The interface is the collectives the step needs: ``init``/``teardown``, ``barrier``, ``broadcast_object``,
``broadcast_params``, ``trainable``, and ``local_part`` / ``reduce_update`` (this rank's share of the update, and the
gradient sum over ranks). Sharding the prompts and gathering what the ranks sampled and scored (``Dist``, ``shard``,
``gather_step``, ``all_gather``) is the rollout-and-score pipeline's: ``pipeline/parallel.py``.

Why an explicit all-reduce instead of ``DistributedDataParallel``: DDP averages gradients inside each backward
(once per micro-batch, unless told not to) and wraps the model, which the rollout engine, the reference copy and
the checkpoints all hold unwrapped; one bucketed all-reduce after the micro-batches keeps the model object as it
is and the normalization explicit. The cost is no overlap of communication with the backward pass.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
import torch.distributed as dist

from mo_rl.errors import MoRLError
from mo_rl.pipeline.parallel import Dist, StepBatch  # also dp.Dist and dp.StepBatch of the loop
from mo_rl.train.loss import micro_share

BUCKET_ELEMENTS = 1 << 24  # gradients all-reduced per call: 64 MB of float32, so no full flat copy of a big model


def init(device: str) -> tuple[Dist, str]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1) or already in one.

    Backend: nccl when training on CUDA, gloo on CPU. Each rank trains on ``cuda:LOCAL_RANK`` whatever CUDA device
    ``trainer.device`` names. -> (Dist, the device name to use).
    """
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist(), device
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), owned), device


def teardown(d: Dist) -> None:
    if d.owned and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(d: Dist, batch_prompts: int) -> None:
    """Each rank takes whole groups: B must split evenly over the ranks."""
    if batch_prompts % d.world:
        raise MoRLError(f"trainer.batch_prompts={batch_prompts} must be divisible by the {d.world} data-parallel "
                        f"processes (WORLD_SIZE); give a multiple of {d.world}")


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def broadcast_object(d: Dist, obj):
    """Rank 0's ``obj`` on every rank (a run directory named by the clock must be one directory)."""
    if not d.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_params(d: Dist, model: torch.nn.Module) -> None:
    """Start every rank from rank 0's weights (randomly initialized adapters included)."""
    if d.active:
        for p in model.parameters():
            dist.broadcast(p.data, src=0)


def trainable(d: Dist, batch: StepBatch, valid: torch.Tensor) -> StepBatch:
    """The batch the update trains on: masked rollouts (valid False: no scored answer) keep their rows but lose
    their tokens, so they enter no loss term, no KL and no mean (``loss.aggregate``), and ``num_tokens`` /
    ``num_seqs`` count the trainable ones over every rank. valid: (N,) bool over the global batch."""
    keep = valid[batch.rows].to(batch.local.completion_mask.dtype).unsqueeze(1)
    local = replace(batch.local, completion_mask=batch.local.completion_mask * keep)
    tokens = torch.tensor([float(local.completion_mask.sum())], dtype=torch.float64, device=valid.device)
    if d.active:
        dist.all_reduce(tokens)
    return replace(batch, local=local, num_tokens=int(tokens.item()), num_seqs=int(valid.sum()))


def local_part(batch: StepBatch, adv: torch.Tensor, loss_agg: str):
    """What this rank trains on. adv: (N,) of the global batch.

    -> (its rollouts, its advantages, (loss share, token share)): the loss share turns its locally normalized
    loss into its part of the global one (``loss.micro_share`` with the global token and sequence counts), the
    token share does the same for the token-mean statistics. One process: (all rows, adv, (1.0, 1.0)).
    """
    if len(batch.local.texts) == len(batch.texts):
        return batch.local, adv, (1.0, 1.0)
    mask = batch.local.completion_mask
    seqs = len(batch.texts) if batch.num_seqs is None else batch.num_seqs
    loss_share = micro_share(loss_agg, mask, batch.num_tokens, seqs)
    return batch.local, adv[batch.rows], (loss_share, float(mask.sum()) / max(batch.num_tokens, 1))


def reduce_update(d: Dist, model: torch.nn.Module, loss: float, stats: dict[str, float],
                  shares: tuple[float, float]) -> tuple[float, dict[str, float]]:
    """Sum every rank's share-scaled gradients, loss and statistics: afterwards each rank holds the global batch's
    gradient, loss and statistics (``reduce_stats``)."""
    if not d.active:
        return loss, stats
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:  # a parameter this rank's rows did not reach: it still takes part in the sum
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for i, p in enumerate(params):
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= BUCKET_ELEMENTS or i == len(params) - 1:
            flat = torch.cat([g.reshape(-1).float() for g in bucket]) * shares[0]  # float32 sums for bf16 grads
            dist.all_reduce(flat)
            for g, part in zip(bucket, flat.split([g.numel() for g in bucket])):
                g.copy_(part.view_as(g))
            bucket, size = [], 0
    return reduce_stats(d, loss, stats, shares, params[0].device)


def reduce_stats(d: Dist, loss: float, stats: dict[str, float], shares: tuple[float, float],
                 device: torch.device) -> tuple[float, dict[str, float]]:
    """The global loss and statistics from every rank's share (``loss/pg`` is combined like the loss, the others
    weighted by tokens); the gradients are ``reduce_update``'s, or FSDP's, which sums them in backward."""
    if not d.active:
        return loss, stats
    loss_share, token_share = shares
    keys = sorted(stats)
    vals = [loss * loss_share] + [stats[k] * (loss_share if k == "loss/pg" else token_share) for k in keys]
    sums = torch.tensor(vals, dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    return float(sums[0]), dict(zip(keys, sums[1:].tolist()))
