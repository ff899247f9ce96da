"""The policy the trainer, the rollout engines and ``mo-rl eval`` share: one object that owns the HF module, its
forward implementation (mo-rl's lean forward or transformers'), the tokenizer, the prompt format (chat template or
raw) and the train/eval mode. Nothing is hung on the transformers objects: every switch lives here.

``load_policy`` (``models/load.py``) builds one from a config; ``Policy(module, tokenizer, ...)`` wraps a module
already in memory (tests, benchmarks). The methods are the few things the rest of the code asks of a policy:
``format_prompts`` / ``encode`` (engines), ``completion_logprobs`` (the loss), ``decoder`` (the sampler),
``engine_weights`` (an engine with its own copy, vLLM), ``reference`` (the KL term) and ``save``.
"""

from __future__ import annotations

import copy
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from mo_rl.config import MODEL_IMPLS
from mo_rl.errors import MoRLError, choice_error
from mo_rl.files import fsync_tree, replace_dir
from mo_rl.models.lean import LeanLM, checkpointing_on, sharded, unsupported

OUTSIDE_NUCLEUS = -1e4  # log-prob given to a token outside the top-p nucleus: exp() is 0, no gradient flows

try:  # transformers 5.x renamed the cache argument and output field (``past_key_values`` -> ``cache``)
    from transformers.modeling_outputs import CausalLMOutputWithPast

    CACHE_KEY = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
except ImportError:  # pragma: no cover - transformers is a dependency
    CACHE_KEY = "past_key_values"


class Policy:
    """A causal LM with everything mo-rl needs to sample from it, score its completions and train it.

    Attributes: ``module`` (the HF ``*ForCausalLM``, or its peft wrapper), ``tokenizer`` (left padding, a pad
    token), ``chat_template`` (wrap prompts as one user message), ``impl`` (``auto`` | ``lean`` | ``hf``),
    ``lean`` (the lean forward, built once, or None where transformers' forward runs), ``mode_matters``
    (whether train() and eval() compute differently: dropout or activation checkpointing), ``fsdp`` (set by
    ``train/fsdp.py`` on a policy it shards: the lean forward runs only while the weights are gathered).
    Unpacks as ``module, tokenizer = policy`` for callers that want only those two.
    """

    def __init__(self, module: nn.Module, tokenizer=None, chat_template: bool = False, impl: str = "auto",
                 compute_dtype: torch.dtype | None = None):
        if impl not in MODEL_IMPLS:
            raise choice_error("model.impl", impl, MODEL_IMPLS)
        why = unsupported(module)
        if impl == "lean" and why:
            raise MoRLError(f"model.impl=lean: {why}; use model.impl=auto (falls back to transformers) or hf")
        self.module, self.tokenizer, self.chat_template, self.impl = module, tokenizer, chat_template, impl
        self.lean = None if impl == "hf" or why else LeanLM(module)
        self.mode_matters = mode_matters(module)
        self.fsdp = False
        self.compute_dtype = compute_dtype  # mixed precision: autocast to this over float32 master weights

    @property
    def stop_ids(self) -> list[int]:
        """The token ids that end a completion (``stop_ids``: one rule for every engine)."""
        return stop_ids(self.tokenizer, self.module)

    def compute(self):
        """The forward's precision context: autocast to ``compute_dtype`` (mixed precision, ``load_policy(train=
        True)`` with model.dtype=bfloat16), else nothing."""
        if self.compute_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def lean_now(self) -> LeanLM | None:
        """The lean forward if it runs now: None under ``model.impl=hf`` or an unsupported model, and while FSDP
        holds the weights as shards (transformers' forward, whose per-layer hooks gather them, runs instead)."""
        if self.lean is None:
            return None
        if self.fsdp:  # each gather puts new parameter tensors in the modules: a lean forward over those ones
            return None if sharded(self.module) else LeanLM(self.module)
        return self.lean

    def __iter__(self):
        return iter((self.module, self.tokenizer))

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def is_lora(self) -> bool:
        return hasattr(self.module, "peft_config")

    # -- prompts -------------------------------------------------------------------------------------------------
    def format_prompts(self, prompts: list[str]) -> list[str]:
        """Prompts as an engine should tokenize them: raw, or each wrapped as one user message of the chat template.

        The template's text usually starts with the BOS token, and the tokenizer adds one again when it encodes; the
        leading BOS text is dropped here so that the prompt holds exactly one.
        """
        return format_prompts(self.tokenizer, prompts, self.chat_template)

    def encode(self, prompts: list[str]):
        """Formatted, tokenized, left-padded prompts on the policy's device: ``input_ids``, ``attention_mask`` (B, P)."""
        return self.tokenizer(self.format_prompts(prompts), return_tensors="pt", padding=True).to(self.device)

    # -- modes ---------------------------------------------------------------------------------------------------
    @contextmanager
    def mode(self, training: bool):
        """train() or eval() inside the block, restored after; nothing at all where the mode changes no number
        (switching walks every module, ~0.6 ms for a tiny model)."""
        if not self.mode_matters or self.module.training == training:
            yield
            return
        was = self.module.training
        self.module.train(training)
        try:
            yield
        finally:
            self.module.train(was)

    # -- forward -------------------------------------------------------------------------------------------------
    def completion_logprobs(self, batch, temperature: float = 1.0, top_p: float = 1.0,
                            untruncated: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Log-probs of the completion tokens of a ``RolloutBatch`` under the *sampling* distribution.
        -> (N, T) float32, 0 on padding; ``untruncated=True``: (those, the log-probs of the temperature-scaled
        distribution without the nucleus), from the one forward (the KL term under ``top_p < 1``).

        The convention every engine follows for its sampling log-probs (the HF sampler, vLLM's
        ``processed_logprobs``): logits divided by the temperature, then the top-p nucleus kept and renormalized
        (``top_p_filter``, the rule of transformers' ``TopPLogitsWarper`` and vLLM's sampler). So the importance
        ratio of a fresh batch is 1 whatever ``temperature`` and ``top_p`` are; with ``top_p < 1`` a sampled token
        that the updated policy ranks outside its nucleus gets ``OUTSIDE_NUCLEUS`` (the loss clamps the ratio).
        Positions follow the attention mask, as generation computed them for left-padded prompts.
        """
        return sampled_logprobs(self.completion_logits(batch), batch, temperature, top_p, untruncated,
                                self.stop_ids)

    def completion_logits(self, batch) -> Tensor:
        """The raw logits that predict each completion token of a ``RolloutBatch``, (N, T, V), through the lean
        forward where it runs (each group's shared prompt computed once), else transformers'."""
        lean = self.lean_now()
        with self.compute():
            if lean is not None:  # each group's shared prompt computed once (mo_rl/models/lean.py)
                return lean.completion_logits(batch.prompt_ids, batch.prompt_mask, batch.completion_ids)
            return _hf_completion_logits(self.module, batch)

    def decoder(self):
        """Prefill / decode / select for the sampler: the lean forward where it applies, else the HF forward."""
        lean = self.lean_now()
        return lean if lean is not None else HFDecoder(self.module)

    def engine_weights(self) -> Iterator[tuple[str, Tensor]]:
        """(HF name, tensor) of every weight as a plain ``from_pretrained`` model names it, LoRA deltas folded in
        one layer at a time (an engine with its own copy of the weights consumes this; no second model in memory)."""
        return merged_weights(self.module)

    def reference(self) -> "Reference":
        """The frozen initial policy for the KL term: the same module with its adapters off for a LoRA policy
        (LoRA leaves the base weights untouched: no memory), else a copy of the weights taken now."""
        if self.is_lora and hasattr(self.module, "disable_adapter"):
            return Reference(self, adapters_off=True)
        frozen = copy.deepcopy(self.module).eval().requires_grad_(False)
        return Reference(Policy(frozen, self.tokenizer, self.chat_template, self.impl, self.compute_dtype))

    def save(self, path: Path, merge_lora: bool = False) -> Path:
        """A ``from_pretrained`` directory, written under a temporary name, fsynced and swapped into place
        (``files.replace_dir``: an existing copy is kept aside until the new one is in).

        ``merge_lora``: a peft model alone saves only its adapters, which ``from_pretrained`` (and ``mo-rl eval``)
        cannot load by themselves; merging folds them into the base weights in place, without a second copy of the
        model, and leaves the peft wrapper unusable, so only the run's final save asks for it.
        """
        path = Path(path)
        module = self.module
        if merge_lora and hasattr(module, "merge_and_unload"):
            module = self.module = module.merge_and_unload()
            self.lean = None if self.lean is None else LeanLM(module)
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            module.save_pretrained(tmp)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
        except BaseException:  # a full disk, a signal: leave no half-written copy
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_tree(tmp)
        return replace_dir(tmp, path)


class Reference:
    """The KL reference: ``completion_logprobs`` of the initial policy, in eval mode and without grad."""

    def __init__(self, policy: Policy, adapters_off: bool = False):
        self.policy, self.adapters_off = policy, adapters_off

    @torch.no_grad()
    def completion_logprobs(self, batch, temperature: float = 1.0, top_p: float = 1.0) -> Tensor:
        off = self.policy.module.disable_adapter() if self.adapters_off else nullcontext()
        with self.policy.mode(False), off:
            return self.policy.completion_logprobs(batch, temperature, top_p)

    @torch.no_grad()
    def completion_logits(self, batch) -> Tensor:
        """``Policy.completion_logits`` of the initial policy (the directive teacher, ``mo_rl/directive``)."""
        off = self.policy.module.disable_adapter() if self.adapters_off else nullcontext()
        with self.policy.mode(False), off:
            return self.policy.completion_logits(batch)


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Mask (to -inf) the tokens outside the smallest set whose probability reaches ``top_p``. logits: (N, V).

    A token is kept when the probability of the tokens ranked above it is below ``top_p``: the top token always
    stays, and ties at the boundary resolve as in transformers' ``TopPLogitsWarper``.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    above = probs.cumsum(-1) - probs  # probability mass ranked strictly above each token
    drop_sorted = above >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sampled_logprobs(logits: Tensor, batch, temperature: float = 1.0, top_p: float = 1.0,
                     untruncated: bool = False, stops: list[int] | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """``Policy.completion_logprobs`` from logits already computed (N, T, V): see there. ``stops``: the stop token
    ids, masked for the batch's first ``min_new_tokens`` positions as the sampler masked them (needed then)."""
    scaled = logits.float() if temperature == 1.0 else logits.float() / temperature
    floor = min(getattr(batch, "min_new_tokens", 0), scaled.shape[1])
    if floor:  # the sampler masked the stop tokens for the first ``floor`` steps: the same distribution here
        if not stops:
            raise ValueError("a batch sampled with min_new_tokens needs the stop ids to score it (stops=...)")
        scaled = scaled.clone()
        scaled[:, :floor, stops] = float("-inf")
    ids = batch.completion_ids.unsqueeze(-1)
    whole = scaled.log_softmax(-1).gather(-1, ids).squeeze(-1) * batch.completion_mask if untruncated else None
    if top_p < 1.0:
        scaled = top_p_filter(scaled.flatten(0, 1), top_p).view_as(scaled)
    lp = scaled.log_softmax(-1).gather(-1, ids).squeeze(-1)
    if top_p < 1.0:  # outside the nucleus: a floor, not -inf (-inf * 0 on padding, or -inf - -inf in the KL, is NaN)
        lp = torch.where(batch.completion_mask > 0, lp.clamp_min(OUTSIDE_NUCLEUS), torch.zeros_like(lp))
    else:
        lp = lp * batch.completion_mask
    return (lp, whole) if untruncated else lp


def stop_ids(tokenizer, model=None) -> list[int]:
    """The token ids that end a completion, one rule for every engine: the tokenizer's EOS, then any other EOS id of
    the model's generation config (Qwen's lists two; vLLM stops on all of them by default). -> ids, no duplicates."""
    eos = getattr(tokenizer, "eos_token_id", None)  # a Policy built without a tokenizer: the config's ids
    ids = [eos] if eos is not None else []
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in (gen if isinstance(gen, (list, tuple)) else [gen]):
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


def format_prompts(tokenizer, prompts: list[str], use_chat_template: bool) -> list[str]:
    """``Policy.format_prompts`` for a bare tokenizer (see there)."""
    if not use_chat_template:
        return list(prompts)
    out = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                         tokenize=False) for p in prompts]
    bos = tokenizer.bos_token
    if bos and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        out = [t[len(bos):] if t.startswith(bos) else t for t in out]
    return out


def mode_matters(model) -> bool:
    """Whether train() and eval() compute differently for ``model``: a dropout with p > 0 anywhere (LoRA's
    included), or activation checkpointing (transformers turns the KV cache off in training mode)."""
    cfg = getattr(model, "config", None)
    config_dropout = cfg is not None and any(
        isinstance(v, float) and v > 0 for k, v in vars(cfg).items() if "dropout" in k)  # e.g. attention_dropout
    module_dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    return config_dropout or module_dropout or checkpointing_on(model)


def _hf_completion_logits(model, batch) -> Tensor:
    """transformers' forward over the concatenated rows; logits predicting each completion token. -> (N, T, V).

    When no prompt is padded the mask is dropped: padding after EOS sits to the right, which causal attention never
    lets an earlier token see, so the logits that count are unchanged and the model takes its plain-causal path.
    """
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
    T = batch.completion_ids.shape[1]
    if bool(batch.prompt_mask.all()):
        return model(input_ids=ids, logits_to_keep=T + 1).logits[:, :-1]
    attn = torch.cat([batch.prompt_mask, batch.completion_mask.long()], 1)
    pos = (attn.cumsum(1) - 1).clamp_min(0)
    return model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1).logits[:, :-1]


def _positions(mask: Tensor) -> Tensor:
    """Position ids that follow the attention mask, as the training forward computes them. (N, L) -> (N, L)."""
    return (mask.cumsum(1) - 1).clamp_min(0)


class HFDecoder:
    """Prefill / decode through the HF model's own forward and cache classes (any architecture)."""

    def __init__(self, model):
        self.model = model

    def prefill(self, input_ids: Tensor, attention_mask: Tensor, n: int, capacity: int):
        """Run the prompts once and repeat their cache ``n`` times (prompt-major). -> (last logits (N, V), state)."""
        model = self.model
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask),
                    use_cache=True, logits_to_keep=1)
        cache, logits = getattr(out, CACHE_KEY), out.logits[:, -1]
        # without left padding the causal mask is implied, and building a 4-D mask each step costs a small model ~20%
        self.padded = not bool(attention_mask.all())
        self.mask = attention_mask.repeat_interleave(n, 0)
        if n > 1 and hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, 0)
        elif n > 1:  # a cache type that cannot be repeated: prefill every copy, as generate does
            ids, mask = input_ids.repeat_interleave(n, 0), self.mask
            out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True,
                        logits_to_keep=1)
            cache, logits = getattr(out, CACHE_KEY), out.logits[:, -1]
        return logits, cache

    def decode(self, tok: Tensor, pos: Tensor, cache) -> Tensor:
        if self.padded:
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(tok), 1)], 1)
        out = self.model(input_ids=tok.unsqueeze(1), attention_mask=self.mask if self.padded else None,
                         position_ids=pos.unsqueeze(1), use_cache=True, logits_to_keep=1, **{CACHE_KEY: cache})
        return out.logits[:, -1]

    def select(self, cache, keep: Tensor) -> None:
        cache.batch_select_indices(keep)
        self.mask = self.mask[keep]


def weight_name(name: str) -> str | None:
    """A trainer parameter name -> the plain HF checkpoint name (what vLLM's ``load_weights`` expects); None to skip.

    peft wraps the model (``base_model.model.``) and each adapted layer (``.base_layer``); adapter tensors are not
    sent (``merged_weights`` folds them into the base weight). Gradient-checkpoint wrappers add a prefix too.
    """
    name = name.replace("_checkpoint_wrapped_module.", "")
    name = name.removeprefix("base_model.model.")
    if ".lora_" in name or "original_module" in name:
        return None
    return name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


@torch.no_grad()
def merged_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(HF name, tensor) for every parameter, LoRA deltas folded in, without touching the model.

    For a peft model the merged weight is ``base + sum of active adapters' get_delta_weight``: the result of
    ``merge_adapter`` without the merge/unmerge round trip, which would drift the base weights in bf16.
    """
    lora = {f"{n}.base_layer.weight": m for n, m in model.named_modules()
            if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer") and not getattr(m, "merged", False)}
    for name, param in model.named_parameters():
        target = weight_name(name)
        if target is None:
            continue
        w = param.detach()
        if name in lora:  # computed one layer at a time, as an engine consumes the generator: no second model
            mod = lora[name]
            for adapter in getattr(mod, "active_adapters", []):
                if adapter in getattr(mod, "lora_A", {}) or adapter in getattr(mod, "lora_embedding_A", {}):
                    w = w + mod.get_delta_weight(adapter).detach().to(w.dtype)
        yield target, w
