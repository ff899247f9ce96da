"""Sharded data parallelism (``trainer.strategy=fsdp``): PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``).

The step splits over the ranks exactly as under ``ddp`` (``distributed.py``: each rank generates and scores its
whole groups, rewards are all-gathered, advantages computed on the global batch), but no rank holds the whole
model between uses:

- ``prepare``: each decoder layer, then the whole model, is ``fully_shard``-ed over the data-parallel group, so
  parameters, gradients and the AdamW state (created from the sharded parameters) are 1/W per rank. On CUDA the
  layers compute in bfloat16 and reduce gradients in float32 (``MixedPrecisionPolicy``); on CPU all is float32.
  FSDP sums the gradients (its division by W is turned off) and the loss is scaled by the rank's share before
  ``backward`` (``loss.backward_loss(scale=...)``), so a step equals one process's step on the global batch.
- rollouts: the HF engine samples from the live model, and a sampling loop runs a different number of decode
  steps on each rank, so per-layer all-gathers would not line up. ``full_weights`` all-gathers every shard once
  per step around generation (the unsharded parameters are plain tensors, so the lean forward samples as
  without FSDP), then frees them. An engine with its own copy (vLLM) gets the gathered weights pushed once per
  update instead (``sync_engine``). Training forwards go through transformers' forward, whose per-layer hooks
  gather and free each layer's weights (the lean forward reads whole weights without calling modules, so
  ``Policy.lean_now`` falls back while weights are sharded: the policy's ``fsdp`` flag).
- checkpoints: ``step-<N>/dcp/`` is a ``torch.distributed.checkpoint`` of the sharded model and optimizer, every
  rank writing its own shards; it loads on any world size (resharded on load). ``state.pt`` holds rank 0's RNG
  states and failure log, ``meta.json`` the step. ``checkpoints/final`` is still a ``from_pretrained`` directory.

With one process ``fsdp`` shards nothing (a world of one) but writes and reads the same sharded checkpoints, so a
run written by W ranks resumes on one and the other way round.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist

from mo_rl.files import fsync_dir, fsync_tree, replace_dir
from mo_rl.train import checkpoint as ckpt
from mo_rl.train import distributed as dp
from mo_rl.train.loss import micro_batch_rows


def enabled(run) -> bool:
    """The run checkpoints with torch.distributed.checkpoint (``trainer.strategy=fsdp``, any world size)."""
    return run.cfg.trainer.strategy == "fsdp"


def sharded(run) -> bool:
    """The run's model is sharded over several ranks."""
    return enabled(run) and run.dist.active


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


def rollout_weights(run):
    """Around ``engine.generate``: whole weights for an engine that samples from the live model (hf)."""
    return full_weights(run.policy.module) if sharded(run) and run.engine.shares_policy_module else nullcontext()


def sync_engine(run) -> None:
    """After an update: an engine with its own copy of the weights (vLLM) gets the gathered ones pushed."""
    if not sharded(run):
        run.engine.sync_weights(run.policy)
    elif not run.engine.shares_policy_module:
        with full_weights(run.policy.module):
            run.engine.sync_weights(run.policy)


def micro_batch_size(run, batch) -> int:
    """Sequences per micro-batch, the same number of micro-batches on every rank (each forward and backward is a
    collective under FSDP): ``micro_batch_tokens`` is applied to the longest row of any rank."""
    t = run.cfg.trainer
    if t.micro_batch_size:
        return t.micro_batch_size
    L = torch.tensor([batch.prompt_ids.shape[1] + batch.completion_ids.shape[1]], device=run.device)  # nccl: CUDA
    dist.all_reduce(L, op=dist.ReduceOp.MAX)
    return micro_batch_rows(batch.completion_ids.shape[0], int(L), batch.n, t.micro_batch_tokens)


def reduce_stats(d: dp.Dist, loss: float, stats: dict[str, float], shares: tuple[float, float],
                 device: torch.device) -> tuple[float, dict[str, float]]:
    """The global loss and statistics from every rank's share (the gradients FSDP has already summed)."""
    loss_share, token_share = shares
    keys = sorted(stats)
    vals = [loss * loss_share] + [stats[k] * (loss_share if k == "loss/pg" else token_share) for k in keys]
    sums = torch.tensor(vals, dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    return float(sums[0]), dict(zip(keys, sums[1:].tolist()))


def grad_norm(gn) -> float:
    """``clip_grad_norm_``'s total norm as a float (a DTensor over sharded gradients)."""
    return float(gn.full_tensor()) if hasattr(gn, "full_tensor") else float(gn)


# ----------------------------------------------------------------------------------------------- checkpoints

def _states(run):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model = run.policy.module
    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, run.opt)}


def save_run(run, step: int, elapsed: float):
    """Every rank: write ``checkpoints/step-<step>/`` (its ``dcp/`` shards, plus rank 0's ``state.pt`` and
    ``meta.json``) under a ``.tmp`` name that rank 0 renames once all shards are on disk."""
    import torch.distributed.checkpoint as dcp

    d = run.dist
    root = run.writer.path / "checkpoints"
    tmp, final = root / f".step-{step}.tmp", root / f"step-{step}"
    if d.lead:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dp.barrier(d)
    dcp.save(_states(run), checkpoint_id=str(tmp / "dcp"), no_dist=not d.active)  # collective; fsyncs its files
    if d.lead:
        extras = {"rng": ckpt.rng_state(), "failures": run.failures.entries}
        if hasattr(run.engine, "state_dict"):
            extras["engine"] = run.engine.state_dict()
        with open(tmp / "state.pt", "wb") as f:
            torch.save(extras, f)
            f.flush()
            os.fsync(f.fileno())
        meta = {"step": step, "elapsed": elapsed, "strategy": "fsdp", "world": d.world}
        ckpt.atomic_write(tmp / "meta.json", json.dumps(meta) + "\n")
        files = {f.relative_to(tmp).as_posix(): {"size": f.stat().st_size, "crc32": ckpt._crc(f)}
                 for f in sorted(tmp.rglob("*")) if f.is_file()}  # the shards too: resume checks them all
        ckpt.atomic_write(tmp / ckpt.MANIFEST, json.dumps({"checksum": "crc32", "files": files}, indent=1) + "\n")
        fsync_dir(tmp)
        replace_dir(tmp, final)
        for old in ckpt.step_checkpoints(root)[:-max(run.cfg.trainer.keep_checkpoints, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    dp.barrier(d)
    return final


def restore(run) -> tuple[int, float, dict]:
    """Every rank: continue from the run's last checkpoint, whatever world size wrote it (the shards are read
    into this world's layout). Rank 0 truncates the logs. -> (next step, elapsed s, last kept metrics row)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    from mo_rl.errors import MoRLError

    d = run.dist
    path = dp.broadcast_object(d, ckpt.usable_checkpoint(run.writer.path, warn=True) if d.lead else None)
    step, elapsed = 0, 0.0
    if path is not None:
        if not (path / "dcp").is_dir():
            raise MoRLError(f"checkpoint {path} was not written with trainer.strategy=fsdp (no dcp/ in it); resume "
                            "it with the strategy that wrote it")
        meta = json.loads((path / "meta.json").read_text())
        step, elapsed = int(meta["step"]), float(meta["elapsed"])
        states = _states(run)  # this world's layout, optimizer state initialized, filled by the load
        dcp.load(states, checkpoint_id=str(path / "dcp"), no_dist=not d.active)
        set_model_state_dict(run.policy.module, states["model"])
        set_optimizer_state_dict(run.policy.module, run.opt, states["optim"])
        extras = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        ckpt.set_rng_state(extras["rng"])
        run.failures.entries = extras.get("failures", {})
        if "engine" in extras and hasattr(run.engine, "load_state_dict"):
            run.engine.load_state_dict(extras["engine"])
        sync_engine(run)
    last = {}
    if d.lead:
        rows = ckpt.truncate_jsonl(run.writer.path / "metrics.jsonl", step)
        ckpt.truncate_jsonl(run.writer.path / "samples.jsonl", step)
        if run.failures.entries:
            run.failures.write(run.writer.path)
        else:
            (run.writer.path / "errors.json").unlink(missing_ok=True)
        last = rows[-1] if rows else {}
    return step, elapsed, dp.broadcast_object(d, last)


def save_final(run, path) -> None:
    """Every rank: the final policy as a ``from_pretrained`` directory written by rank 0 from the gathered
    weights (LoRA adapters folded into the base weights, as ``Policy.save(merge_lora=True)`` does)."""
    if not sharded(run):
        if run.dist.lead:
            run.policy.save(path, merge_lora=True)
        return
    model = run.policy.module
    with full_weights(model):
        if run.dist.lead:
            state = {name: w.detach().cpu().clone() for name, w in run.policy.engine_weights()}
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            tmp = path.with_name(f".{path.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            base.save_pretrained(tmp, state_dict=state)
            run.policy.tokenizer.save_pretrained(tmp)
            fsync_tree(tmp)
            replace_dir(tmp, path)
