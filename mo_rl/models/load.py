"""Load a ``Policy`` through ``from_pretrained`` (the embedded default goes the same way), applying the options of
the ``model`` config group: dtype, forward implementation, gradient checkpointing, LoRA adapters (peft, imported
only when ``lora_r > 0``) and the chat-template prompt format.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from mo_rl.config import MODEL_DTYPES, ModelConfig
from mo_rl.errors import MoRLError, choice_error
from mo_rl.models.lean import IMPLS
from mo_rl.models.policy import Policy, format_prompts, mode_matters  # noqa: F401  (re-exported)

DTYPES = {name: getattr(torch, name) for name in MODEL_DTYPES}
EMBEDDED = ("embedded:tiny",)


def resolve_path(path: str) -> str:
    """``embedded:tiny`` / ``registry:smollm2`` -> its cached directory (built or converted on first use); a local
    path must exist; anything else is a hub id."""
    if path.startswith("registry:"):
        from mo_rl.models.registry_models import registry_path

        return registry_path(path)
    if path.startswith("embedded:"):
        if path not in EMBEDDED:
            raise choice_error("embedded model", path, EMBEDDED)
        from mo_rl.models.embedded import embedded_path

        return str(embedded_path(path.split(":", 1)[1]))
    looks_local = path.startswith(("/", ".", "~")) or Path(path).exists() or path.count("/") != 1
    if looks_local and not Path(path).expanduser().is_dir():
        raise MoRLError(f"model.path={path!r} is not a directory; give a from_pretrained directory, a hub id "
                        f"(org/name), {EMBEDDED[0]} or registry:smollm2")
    return str(Path(path).expanduser()) if looks_local else path


def load_policy(model: str | ModelConfig, dtype: str | None = None, device: str | torch.device = "cpu",
                train: bool = False) -> Policy:
    """-> a ``Policy``: the module in eval mode on ``device``, the tokenizer with left padding and a pad token.

    ``model`` is a path (then ``dtype`` applies, default float32) or a whole ``ModelConfig`` (LoRA, gradient
    checkpointing and chat template included; a given ``dtype`` overrides the config's).
    ``train``: the policy will be updated. Then ``bfloat16`` means mixed precision: float32 master weights that the
    optimizer updates, bf16 compute under autocast (``Policy.compute``); updating bf16 weights in place loses most
    small steps to rounding (at lr 1e-5 only ~15% of the weights changed at all in 10 steps). A LoRA policy keeps
    its frozen base in bf16 (peft keeps the trained adapters in float32). ``float16`` is refused for training: it
    would need loss scaling as well.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    cfg = ModelConfig(path=model) if isinstance(model, str) else copy.copy(model)
    cfg.dtype = dtype or cfg.dtype
    hf_logging.disable_progress_bar()  # ours is the progress bar that matters
    if cfg.dtype not in DTYPES:
        raise choice_error("model.dtype", cfg.dtype, DTYPES)
    if cfg.impl not in IMPLS:
        raise choice_error("model.impl", cfg.impl, IMPLS)
    if cfg.chat_template and cfg.path.startswith("embedded:"):
        raise MoRLError("model.chat_template=true needs a tokenizer with a chat template; the embedded model has "
                        "none (set model.chat_template=false)")
    if train and cfg.dtype == "float16":
        raise MoRLError("model.dtype=float16 cannot be trained here (no fp32 master weights or loss scaling: small "
                        "updates round away and gradients underflow); use model.dtype=bfloat16 (fp32 master weights, "
                        "bf16 compute) or float32")
    mixed = train and cfg.dtype == "bfloat16" and cfg.lora_r == 0  # fp32 master weights, bf16 autocast
    src = resolve_path(cfg.path)
    try:
        tok = AutoTokenizer.from_pretrained(src)
        policy = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32 if mixed else DTYPES[cfg.dtype])
    except Exception as e:  # noqa: BLE001 - OSError, or a damaged file (safetensors' SafetensorError, a torch zip)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MoRLError(f"model.path={cfg.path!r} could not be loaded ({first})") from e
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if cfg.chat_template and not getattr(tok, "chat_template", None):
        raise MoRLError(f"model.chat_template=true but the tokenizer of {cfg.path!r} has no chat template; "
                        "set model.chat_template=false to feed raw prompts")
    if cfg.gradient_checkpointing:
        enable_checkpointing(policy)
    if cfg.lora_r > 0:
        policy = add_lora(policy, cfg)
    return Policy(policy.to(device).eval(), tok, chat_template=cfg.chat_template, impl=cfg.impl,
                  compute_dtype=torch.bfloat16 if mixed else None)


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing, non-reentrant: it works with frozen embeddings (LoRA) without forcing
    the inputs to require grad. transformers >= 5.x names it ``activation_checkpointing_enable``."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def add_lora(model, cfg: ModelConfig):
    """Wrap ``model`` in a peft ``PeftModel`` with trainable LoRA adapters; the base weights are frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise MoRLError("model.lora_r > 0 needs peft: pip install 'mo-rl[lora]' (or set model.lora_r=0 for full "
                        "fine-tuning)") from e
    targets = cfg.lora_target_modules
    target = targets[0] if list(targets) == ["all-linear"] else list(targets)  # peft's shorthand is a string
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as e:  # peft names the missing modules; say which config key to change
        raise MoRLError(f"model.lora_target_modules={list(targets)}: {str(e).splitlines()[0]}") from e
