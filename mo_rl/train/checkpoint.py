"""Saving policies: a ``from_pretrained`` directory written under a temporary name, then renamed into place."""

from __future__ import annotations

import shutil
from pathlib import Path


def save_policy(model, tokenizer, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path
