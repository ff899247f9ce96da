"""Rollouts with vLLM, colocated with the trainer on one GPU; weights pushed into vLLM in place after each step.

Version assumptions (read from vLLM's V1 source and TRL's colocate mode, vLLM 0.10/0.11 era; not run on a GPU
here; vLLM is imported only inside ``VLLMEngine``):

- ``LLM.generate(prompts, sampling_params)`` takes token-id prompts as ``{"prompt_token_ids": [...]}`` and one
  ``SamplingParams`` per prompt, and returns one ``RequestOutput`` per prompt, in order. Its ``.outputs[j]`` has
  ``.index``, ``.token_ids`` (the stop token included) and ``.logprobs``: one ``{token_id: Logprob}`` per
  generated token; with ``logprobs=0`` the dict holds the sampled token (a flat-logprobs container in newer
  versions indexes the same way).
- With ``n > 1`` the V1 engine fans a request out into ``n`` children seeded ``seed + j``; so each prompt gets a
  seed ``n`` apart from the next one's, else two prompts of a step would share random draws.
- Log-probs of the *processed* distribution (temperature and top-p applied, what the HF engine and the training
  forward compare against) need the engine argument ``logprobs_mode="processed_logprobs"`` (vLLM >= 0.10, PR
  #21398). Without it V1 returns raw log-probs; the engine then refuses temperature != 1 or top_p < 1.
- In-place weight sync: ``LLMEngine.model_executor`` exists only when the engine core runs in this process, which
  we ask for with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (V0 engines always have it). The vLLM model is then
  ``llm.llm_engine.model_executor.driver_worker.model_runner.model`` and its ``load_weights(iterable of (hf_name,
  tensor))`` copies each tensor into the existing parameter (fusing q/k/v and gate/up itself), the path TRL's
  colocate mode takes. The prefix cache is reset afterwards: its KV blocks were computed with the old weights.
- Fallback where that attribute chain is missing (a future layout, or multiprocessing forced on): the policy is
  saved with ``save_pretrained`` to a temporary directory and the ``LLM`` is rebuilt from it. That costs a full
  write of the weights plus an engine start (weight load, memory profiling; CUDA graphs unless enforce_eager) on
  every step: seconds for a small model, a minute or more for 7B. A warning says when this happens.

Only tensor parallel size 1 is supported (the full HF weights are loaded into the one vLLM worker).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from mo_rl.errors import MoRLError
from mo_rl.models.policy import merged_weights as weights_for_vllm  # noqa: F401  (named for the engine)
from mo_rl.models.policy import weight_name as vllm_weight_name  # noqa: F401
from mo_rl.rollout.base import RolloutBatch, SamplingParams

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


# ------------------------------------------------------------------------------- pure parts (tested without vLLM)

def sampling_kwargs(params: SamplingParams, n: int, prompt_index: int, eos_id: int | None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one prompt of the batch.

    ``logprobs=0`` asks for the sampled token's log-prob only. Seeds are spaced ``n`` apart (see module doc).
    Detokenization is off: texts are decoded by our tokenizer, exactly as the HF engine does.
    """
    return {
        "n": n, "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_new_tokens,
        "seed": params.prompt_seed(prompt_index, n), "logprobs": 0, "detokenize": False,
        "stop_token_ids": [eos_id] if eos_id is not None else None,
    }


def to_rollout_batch(outputs, prompt_ids: list[list[int]], n: int, pad_id: int, eos_id: int | None,
                     decode, device: torch.device | str = "cpu") -> RolloutBatch:
    """vLLM ``RequestOutput``-like objects -> a ``RolloutBatch`` in prompt-major order.

    outputs: one per prompt, ``.outputs`` n completions with ``.token_ids`` and ``.logprobs``.
    prompt_ids: the prompts' token ids, as sent. decode: ``list[int] -> str``.
    Returns (N = len(prompt_ids) * n): prompt ids left-padded (N, P); completion ids right-padded (N, T), cut after
    the first EOS; completion_mask 1 on real tokens (EOS included); logprobs 0 on padding.
    """
    if len(outputs) != len(prompt_ids):
        raise MoRLError(f"vllm returned {len(outputs)} outputs for {len(prompt_ids)} prompts")
    seqs, lps = [], []
    for out in outputs:
        comps = sorted(out.outputs, key=lambda o: o.index)
        if len(comps) != n:
            raise MoRLError(f"vllm returned {len(comps)} completions for a prompt, expected n={n}")
        for c in comps:
            ids = list(c.token_ids)
            if eos_id is not None and eos_id in ids:
                ids = ids[: ids.index(eos_id) + 1]
            if c.logprobs is None:
                raise MoRLError("vllm returned no logprobs; SamplingParams(logprobs=0) is required")
            seqs.append(ids)
            lps.append([c.logprobs[t][tok].logprob for t, tok in enumerate(ids)])
    N, P = len(seqs), max(len(p) for p in prompt_ids)
    T = max(1, max(len(s) for s in seqs))
    p_ids = torch.full((N, P), pad_id, dtype=torch.long)
    p_mask = torch.zeros((N, P), dtype=torch.long)
    c_ids = torch.full((N, T), pad_id, dtype=torch.long)
    c_mask = torch.zeros((N, T), dtype=torch.float32)
    logprobs = torch.zeros((N, T), dtype=torch.float32)
    for i, (ids, lp) in enumerate(zip(seqs, lps)):
        prompt = prompt_ids[i // n]
        p_ids[i, P - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        p_mask[i, P - len(prompt):] = 1
        c_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        c_mask[i, : len(ids)] = 1.0
        logprobs[i, : len(ids)] = torch.tensor(lp, dtype=torch.float32)
    return RolloutBatch(prompt_ids=p_ids.to(device), prompt_mask=p_mask.to(device), completion_ids=c_ids.to(device),
                        completion_mask=c_mask.to(device), logprobs=logprobs.to(device),
                        texts=[decode(s) for s in seqs], n=n)


@dataclass
class VLLMOptions:
    gpu_memory_utilization: float = 0.3
    enforce_eager: bool = True
    max_model_len: int | None = None


def llm_kwargs(path: str, dtype: torch.dtype, opts: VLLMOptions, processed_logprobs: bool) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for a colocated, single-GPU engine of the policy at ``path``."""
    kw = {"model": path, "tokenizer": path, "dtype": _DTYPE_NAMES.get(dtype, "auto"), "tensor_parallel_size": 1,
          "gpu_memory_utilization": opts.gpu_memory_utilization, "enforce_eager": opts.enforce_eager, "seed": 0}
    if opts.max_model_len is not None:
        kw["max_model_len"] = opts.max_model_len
    if processed_logprobs:
        kw["logprobs_mode"] = "processed_logprobs"
    return kw


# ------------------------------------------------------------------------------------------------ the engine

def _require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise MoRLError("rollout=vllm needs vllm (pip install 'mo-rl[vllm]', Linux + CUDA); use rollout=hf instead")
    if not torch.cuda.is_available():
        raise MoRLError("rollout=vllm needs a CUDA GPU and none is visible; use rollout=hf instead")


def _find_vllm_model(llm):
    """The in-process vLLM ``nn.Module`` with ``load_weights``, or None when this vLLM keeps it elsewhere."""
    try:
        m = llm.llm_engine.model_executor.driver_worker.model_runner.model
    except AttributeError:
        return None
    return m if hasattr(m, "load_weights") else None


class VLLMEngine:
    """vLLM rollouts of the trainer's policy, sharing its GPU. See the module doc for the vLLM versions assumed."""

    def __init__(self, policy, **options):
        _require_vllm()
        # in-process engine core: the only way to reach the vLLM model object for in-place weight loads
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM, EngineArgs

        model = policy.module
        self.policy, self.tok, self.opts = policy, policy.tokenizer, VLLMOptions(**options)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.path, self.dtype = base.config._name_or_path, next(model.parameters()).dtype
        self.device = next(model.parameters()).device  # batches land where the trainer reads them
        if not os.path.isdir(self.path):
            raise MoRLError(f"rollout=vllm loads the policy from a local directory; {self.path!r} is not one "
                            "(download the model first, or use rollout=hf)")
        self.processed = "logprobs_mode" in getattr(EngineArgs, "__dataclass_fields__", {})
        self._LLM, self._tmp = LLM, None
        self.llm = LLM(**llm_kwargs(self.path, self.dtype, self.opts, self.processed))
        self.in_place = _find_vllm_model(self.llm) is not None

    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> RolloutBatch:
        from vllm import SamplingParams as VSamplingParams

        if not self.processed and (params.temperature != 1.0 or params.top_p < 1.0):
            raise MoRLError("this vllm returns log-probs before temperature/top-p (no logprobs_mode): upgrade to "
                            "vllm>=0.10, keep rollout.temperature=1 and rollout.top_p=1, or use rollout=hf")
        texts = self.policy.format_prompts(prompts)
        ids = [self.tok(t)["input_ids"] for t in texts]
        sps = [VSamplingParams(**sampling_kwargs(params, n, i, self.tok.eos_token_id)) for i in range(len(ids))]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in ids], sps, use_tqdm=False)
        return to_rollout_batch(outs, ids, n, self.tok.pad_token_id, self.tok.eos_token_id,
                                lambda s: self.tok.decode(s, skip_special_tokens=True), self.device)

    @torch.no_grad()
    def sync_weights(self, policy) -> None:
        """Copy the trainer's current weights into vLLM (in place; else the slow rebuild, see module doc)."""
        target = _find_vllm_model(self.llm)
        if target is not None:
            target.load_weights(policy.engine_weights())
            self.llm.reset_prefix_cache()
            return
        warnings.warn("vllm: no in-process model to load weights into; rebuilding the engine from a saved copy "
                      "each step (slow)", stacklevel=2)
        self._rebuild(policy)

    def _rebuild(self, policy) -> None:
        tmp = tempfile.mkdtemp(prefix="mo_rl_vllm_")
        model = policy.module
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.save_pretrained(tmp, state_dict=dict(policy.engine_weights()))
        self.tok.save_pretrained(tmp)
        del self.llm
        torch.cuda.empty_cache()
        self.llm = self._LLM(**llm_kwargs(tmp, self.dtype, self.opts, self.processed))
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = tmp
