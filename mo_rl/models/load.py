"""Load a policy and its tokenizer through ``from_pretrained`` (the embedded default goes the same way)."""

from __future__ import annotations

from pathlib import Path

import torch

from mo_rl.errors import MoRLError, choice_error

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EMBEDDED = ("embedded:tiny",)


def resolve_path(path: str) -> str:
    """``embedded:tiny`` -> its cached directory; a local path must exist; anything else is a hub id."""
    if path.startswith("embedded:"):
        if path not in EMBEDDED:
            raise choice_error("embedded model", path, EMBEDDED)
        from mo_rl.models.embedded import embedded_path

        return str(embedded_path(path.split(":", 1)[1]))
    looks_local = path.startswith(("/", ".", "~")) or Path(path).exists() or path.count("/") != 1
    if looks_local and not Path(path).expanduser().is_dir():
        raise MoRLError(f"model.path={path!r} is not a directory; give a from_pretrained directory, a hub id "
                        f"(org/name) or {EMBEDDED[0]}")
    return str(Path(path).expanduser()) if looks_local else path


def load_policy(path: str, dtype: str = "float32", device: str | torch.device = "cpu"):
    """-> (model in eval mode on ``device``, tokenizer with left padding and a pad token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ours is the progress bar that matters
    if dtype not in DTYPES:
        raise choice_error("model.dtype", dtype, DTYPES)
    src = resolve_path(path)
    try:
        tok = AutoTokenizer.from_pretrained(src)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=DTYPES[dtype])
    except OSError as e:
        raise MoRLError(f"model.path={path!r} could not be loaded ({str(e).splitlines()[0]})") from e
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.to(device).eval(), tok
