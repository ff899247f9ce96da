"""The embedded default: a tiny Llama and a character-level tokenizer, built offline, warmed up, cached on disk.

RL from a random init cannot learn in a few CPU minutes; real runs start from a pretrained prior. So the build
ends with a short supervised warm-up on the synthetic tasks' format (random strings of the right alphabet and
length, see ``Task.warmup``), which teaches the format and nothing about the rewards. The result is saved with
``save_pretrained`` and loaded back through the same ``from_pretrained(path)`` a real checkpoint takes.

First use on a machine builds it (~30 s of one core); processes that start together (a sweep's jobs, a test suite
and its subprocesses) take a file lock next to the cache, so one builds and the others wait for it and reuse the
result. The builder prints one line; the build itself is silent.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import string
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
ALPHABET = sorted(set(string.printable) - set("\x0b\x0c\r"))  # printable ASCII, space, tab and newline
RECIPE = {  # anything here changes the cache key
    "version": 2, "hidden": 64, "intermediate": 192, "layers": 2, "heads": 4, "max_pos": 256,
    "warmup_tasks": ["aligned", "conflicting"], "warmup_steps": 300, "warmup_batch": 64, "warmup_lr": 3e-3, "seed": 0,
}


def cache_root() -> Path:
    """Where built models are kept: ``$MO_RL_CACHE``, else ~/.cache/mo_rl."""
    return Path(os.environ.get("MO_RL_CACHE", Path.home() / ".cache" / "mo_rl"))


def writable_models_dir() -> Path:
    """``cache_root()/models``, created; a cache that cannot be written (a read-only HOME) is one MoRLError, before
    any build work."""
    from mo_rl.errors import MoRLError

    models = cache_root() / "models"
    try:
        models.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=models).close()
    except OSError as e:
        where = "MO_RL_CACHE" if "MO_RL_CACHE" in os.environ else "HOME"
        raise MoRLError(f"the model cache {str(models)!r} is not writable ({e.strerror or type(e).__name__}; it is "
                        f"under {where}): mo-rl builds the embedded model there once; set MO_RL_CACHE=<a writable "
                        "directory>") from e
    return models


def build_tokenizer():
    """Character-level fast tokenizer over printable ASCII; a BOS token is prepended to every encoded text."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + ALPHABET)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left")


def build_model(tokenizer, recipe: dict = RECIPE, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe["hidden"], intermediate_size=recipe["intermediate"],
        num_hidden_layers=recipe["layers"], num_attention_heads=recipe["heads"],
        num_key_value_heads=recipe["heads"], max_position_embeddings=recipe["max_pos"], tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(cfg)


def warmup(model, tokenizer, pairs_fn, steps: int, batch: int, lr: float, seed: int,
           on_step=lambda: None) -> list[float]:
    """Supervised warm-up: next-token loss on the completion (and EOS) of (prompt, completion) pairs; ``on_step``
    is called after each step (the build's progress)."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        pairs = [pairs_fn(rng) for _ in range(batch)]
        enc = [tokenizer(p)["input_ids"] for p, _ in pairs]
        comp = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for _, c in pairs]
        width = max(len(a) + len(b) for a, b in zip(enc, comp))
        ids = torch.full((batch, width), tokenizer.pad_token_id)
        labels = torch.full((batch, width), -100)
        attn = torch.zeros((batch, width), dtype=torch.long)
        for i, (a, b) in enumerate(zip(enc, comp)):  # right-pad: the warm-up is not the hot path
            ids[i, : len(a) + len(b)] = torch.tensor(a + b)
            labels[i, len(a): len(a) + len(b)] = torch.tensor(b)
            attn[i, : len(a) + len(b)] = 1
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        on_step()
    model.eval()
    return losses


def build_tiny(out: Path, tasks: list[str], steps: int, recipe: dict = RECIPE, seed: int = 0) -> Path:
    """Build, warm up on ``tasks``' warm-up pairs, and save a tiny model + tokenizer to ``out`` (atomically)."""
    from mo_rl.tasks.base import make_task
    from mo_rl.progress import work

    fns = [make_task(t).warmup for t in tasks]
    fns = [f for f in fns if f is not None]
    tok = build_tokenizer()
    model = build_model(tok, recipe, seed)
    losses = []
    if fns and steps:  # a bar (or plain lines off a terminal): the first build can take minutes on a loaded machine
        with work(steps, f"building the tiny model (once; cached in {Path(out).parent})") as advance:
            losses = warmup(model, tok, lambda r: r.choice(fns)(r), steps, recipe["warmup_batch"],
                            recipe["warmup_lr"], seed, on_step=advance)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out.parent))
    with _no_progress_bars():
        model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "mo_rl_build.json").write_text(json.dumps({"recipe": recipe, "tasks": tasks, "losses": losses[-5:]}))
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished the same build first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextmanager
def _no_progress_bars():
    """transformers' "Writing model shards" bar off while the build saves (restored after)."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


@contextmanager
def _build_lock(path: Path):
    """An exclusive ``flock`` on ``.<name>.lock`` beside ``path``, held while building it: a second process blocks
    here until the first has finished (the kernel drops the lock when its holder exits, however it exits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def embedded_path(name: str = "tiny") -> Path:
    """The cached embedded model's directory, built on first use by one process while any others wait for it
    (seconds on an idle 2-core CPU, minutes on a loaded one; it shows its progress)."""
    key = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_root() / "models" / f"{name}-{key}"
    if (path / "config.json").is_file():
        return path
    writable_models_dir()  # a read-only cache: one line naming MO_RL_CACHE, before any build work
    with _build_lock(path):
        if not (path / "config.json").is_file():  # not built by the process this one waited for
            build_tiny(path, RECIPE["warmup_tasks"], RECIPE["warmup_steps"], RECIPE, RECIPE["seed"])
    return path
