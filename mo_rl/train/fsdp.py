"""Sharded data parallelism (``trainer.strategy=fsdp``): PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``).

The step splits over the ranks exactly as under ``ddp`` (``distributed.py``: each rank generates and scores its
whole groups, rewards are all-gathered, advantages computed on the global batch), but no rank holds the whole
model between uses. This module holds what is FSDP's; ``strategy.FSDP`` is what the loop and the checkpoint code
call:

- ``prepare``: each decoder layer, then the whole model, is ``fully_shard``-ed over the data-parallel group, so
  parameters, gradients and the AdamW state (created from the sharded parameters) are 1/W per rank. On CUDA the
  layers compute in bfloat16 and reduce gradients in float32 (``MixedPrecisionPolicy``); on CPU all is float32.
  FSDP sums the gradients (its division by W is turned off) and the loss is scaled by the rank's share before
  ``backward`` (``loss.backward_loss(scale=...)``), so a step equals one process's step on the global batch.
- rollouts: the HF engine samples from the live model, and a sampling loop runs a different number of decode
  steps on each rank, so per-layer all-gathers would not line up. ``full_weights`` all-gathers every shard once
  per step around generation (the unsharded parameters are plain tensors, so the lean forward samples as
  without FSDP), then frees them. An engine with its own copy (vLLM) gets the gathered weights pushed once per
  update instead (``strategy.FSDP.sync_engine``). Training forwards go through transformers' forward, whose
  per-layer hooks gather and free each layer's weights (the lean forward reads whole weights without calling
  modules, so ``Policy.lean_now`` falls back while weights are sharded: the policy's ``fsdp`` flag).
- checkpoints: ``step-<N>/dcp/`` is a ``torch.distributed.checkpoint`` of the sharded model and optimizer, every
  rank writing its own shards (``save_shards``); it loads on any world size (resharded on load). The rest of the
  checkpoint is ddp's (``checkpoint.save_checkpoint``): ``state.pt`` holds rank 0's RNG states and failure log,
  ``meta.json`` the step. ``checkpoints/final`` is still a ``from_pretrained`` directory (``save_gathered``).

With one process ``fsdp`` shards nothing (a world of one) but writes and reads the same sharded checkpoints, so a
run written by W ranks resumes on one and the other way round.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from mo_rl.files import fsync_tree, replace_dir
from mo_rl.train import distributed as dp
from mo_rl.train.loss import micro_batch_rows


def decoder_layers(model) -> list[torch.nn.Module]:
    """The blocks to shard one by one: modules whose class transformers names as not to be split
    (``_no_split_modules``, e.g. ``LlamaDecoderLayer``), found inside a peft wrapper too."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    return [m for m in base.modules() if type(m).__name__ in names]


def prepare(d: dp.Dist, policy, ref, device: torch.device) -> None:
    """Shard the ``Policy``'s module (and the frozen reference's copy, if any: a LoRA reference shares the policy's
    module) in place over the data-parallel group; no-op on one process. Call after ``broadcast_params`` (every
    rank shards the same weights) and before the optimizer is built (it must hold the sharded parameters)."""
    if not d.active:
        return
    model = policy.module
    ref_policy = None if ref is None or ref.policy.module is model else ref.policy
    ref = None if ref_policy is None else ref_policy.module
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" else MixedPrecisionPolicy()
    for m, root_reshard in ((model, False), (ref, True)):  # a reference without backward frees its root too
        if m is None:
            continue
        for layer in decoder_layers(m):
            fully_shard(layer, reshard_after_forward=True, mp_policy=mp)
        fully_shard(m, reshard_after_forward=root_reshard, mp_policy=mp)
        for unit in _fsdp_modules(m):  # each unit's own setting (the setters do not recurse)
            unit.set_gradient_divide_factor(1.0)  # sum, not mean: the loss carries each rank's share
            unit.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)
    for p in (policy, ref_policy):  # the lean forward runs only while the weights are gathered (Policy.lean_now)
        if p is not None:
            p.fsdp = True


def _fsdp_modules(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def full_weights(model):
    """All-gather every shard of ``model`` for the block (every rank must enter); within it the parameters are
    whole plain tensors and forwards run no collectives. Resharded (the gathered copies freed) on exit."""
    mods = _fsdp_modules(model)
    if not mods:
        yield
        return
    model.set_reshard_after_forward(False)
    for m in mods:
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(m is not model, recurse=False)


def micro_batch_size(batch, micro_batch_tokens: int, device: torch.device) -> int:
    """Sequences per micro-batch, the same number of micro-batches on every rank (each forward and backward is a
    collective under FSDP): ``micro_batch_tokens`` is applied to the longest row of any rank."""
    L = torch.tensor([batch.prompt_ids.shape[1] + batch.completion_ids.shape[1]], device=device)  # nccl: CUDA
    dist.all_reduce(L, op=dist.ReduceOp.MAX)
    return micro_batch_rows(batch.completion_ids.shape[0], int(L), batch.n, micro_batch_tokens)


# ----------------------------------------------------------------------------------------------- checkpoints

def state_dicts(model, opt) -> dict:
    """The model's and the optimizer's state as DCP saves and loads them (this rank's shards)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}


def set_state_dicts(model, opt, states: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, states["model"])
    set_optimizer_state_dict(model, opt, states["optim"])


def save_shards(states: dict, path: Path, d: dp.Dist) -> None:
    """Every rank: its shards of ``states`` into ``path`` (collective; DCP fsyncs its files)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(states, checkpoint_id=str(path), no_dist=not d.active)


def load_shards(path: Path, model, opt, d: dp.Dist) -> dict:
    """Every rank: the states saved by ``save_shards`` on any world size, read into this world's layout (the
    optimizer state initialized, then filled by the load)."""
    import torch.distributed.checkpoint as dcp

    states = state_dicts(model, opt)
    dcp.load(states, checkpoint_id=str(path), no_dist=not d.active)
    return states


def save_gathered(policy, path: Path, lead: bool) -> None:
    """Every rank: the final policy as a ``from_pretrained`` directory written by rank 0 from the gathered
    weights (LoRA adapters folded into the base weights, as ``Policy.save(merge_lora=True)`` does)."""
    model = policy.module
    with full_weights(model):
        if lead:
            state = {name: w.detach().cpu().clone() for name, w in policy.engine_weights()}
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            tmp = path.with_name(f".{path.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            base.save_pretrained(tmp, state_dict=state)
            policy.tokenizer.save_pretrained(tmp)
            fsync_tree(tmp)
            replace_dir(tmp, path)
