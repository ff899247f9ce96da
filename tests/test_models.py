"""Model loading options: LoRA (peft), gradient checkpointing, the chat-template prompt format, the reference."""

from __future__ import annotations

import builtins
import copy

import pytest
import torch

from mo_rl.config import ModelConfig
from mo_rl.errors import MoRLError
from mo_rl.models import Policy, load_policy
from mo_rl.models.policy import format_prompts

# a minimal Jinja chat template (ChatML-like) that starts with the BOS token, as Llama-style templates do
TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")


@pytest.fixture()
def chat_tok(tiny_policy):
    tok = copy.deepcopy(tiny_policy.tokenizer)
    tok.chat_template = TEMPLATE
    return tok


def test_format_prompts_raw_and_chat(chat_tok):
    assert format_prompts(chat_tok, ["a>", "b"], False) == ["a>", "b"]
    # the tiny tokenizer prepends BOS itself, so the template's leading BOS text is dropped
    assert format_prompts(chat_tok, ["a>", "b"], True) == ["[user]a>\n[assistant]", "[user]b\n[assistant]"]
    ids = chat_tok(format_prompts(chat_tok, ["a>"], True)[0])["input_ids"]
    assert ids.count(chat_tok.bos_token_id) == 1 and ids[0] == chat_tok.bos_token_id


def test_policy_formats_prompts_by_its_own_switch(tiny_policy, chat_tok):
    assert Policy(tiny_policy.module, chat_tok, chat_template=True).format_prompts(["x"]) == ["[user]x\n[assistant]"]
    assert Policy(tiny_policy.module, chat_tok, chat_template=False).format_prompts(["x"]) == ["x"]
    assert not hasattr(chat_tok, "mo_rl_chat_template")  # nothing is hung on the tokenizer


def test_hf_engine_uses_the_chat_template(tiny_policy, chat_tok):
    from mo_rl.rollout import SamplingParams, make_engine

    policy = Policy(tiny_policy.module, chat_tok, chat_template=True)
    b = make_engine("hf", policy).generate(["q>"], 2, SamplingParams(max_new_tokens=3))
    assert chat_tok.decode(b.prompt_ids[0], skip_special_tokens=True) == "[user]q>\n[assistant]"


def test_chat_template_errors(tiny_model_path):
    with pytest.raises(MoRLError, match="embedded model has none"):
        load_policy(ModelConfig(chat_template=True))
    with pytest.raises(MoRLError, match="has no chat template"):
        load_policy(ModelConfig(path=str(tiny_model_path), chat_template=True))


def test_plain_load_keeps_the_old_signature(tiny_model_path):
    model, tok = load_policy(str(tiny_model_path), "bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    assert tok.padding_side == "left" and not hasattr(tok, "mo_rl_chat_template")


def test_gradient_checkpointing_switch(tiny_model_path):
    model, _ = load_policy(ModelConfig(path=str(tiny_model_path), gradient_checkpointing=True))
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    model.train()
    ids = torch.tensor([[2, 40, 41, 42]])
    model(input_ids=ids, labels=ids).loss.backward()  # checkpointed backward runs and fills the gradients
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_lora_trains_only_adapters(tiny_model_path):
    pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[lora]'")
    model, _ = load_policy(ModelConfig(path=str(tiny_model_path), lora_r=4, lora_alpha=8,
                                       lora_target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # 2 layers x 2 modules x (A, B)
    assert len(trainable) == 8 and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert model.peft_config["default"].r == 4 and model.peft_config["default"].lora_alpha == 8


def test_lora_errors(tiny_model_path, monkeypatch):
    pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[lora]'")
    with pytest.raises(MoRLError, match="lora_target_modules=.*nope"):
        load_policy(ModelConfig(path=str(tiny_model_path), lora_r=2, lora_target_modules=["nope"]))
    real_import = builtins.__import__

    def no_peft(name, *a, **k):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("no peft")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(MoRLError, match=r"needs peft: pip install 'mo-rl\[lora\]'"):
        load_policy(ModelConfig(path=str(tiny_model_path), lora_r=2))


def _batch(policy):
    from mo_rl.rollout import SamplingParams, make_engine

    return make_engine("hf", policy).generate(["ab>", "c>"], 2, SamplingParams(max_new_tokens=6, seed=1))


def test_reference_is_adapters_off_for_lora(tiny_model_path):
    pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[lora]'")
    base = load_policy(str(tiny_model_path))
    policy = load_policy(ModelConfig(path=str(tiny_model_path), lora_r=4))
    with torch.no_grad():
        for n, p in policy.module.named_parameters():
            if "lora_B" in n:
                p.fill_(0.05)
    ref = policy.reference()
    assert ref.adapters_off and ref.policy is policy  # the same module: no copy of the weights
    b = _batch(base)
    policy.module.train()
    with torch.no_grad():
        torch.testing.assert_close(ref.completion_logprobs(b), base.completion_logprobs(b))
        assert not torch.allclose(policy.completion_logprobs(b), base.completion_logprobs(b))
    assert policy.module.training  # the reference call leaves the policy's mode alone


def test_reference_is_a_frozen_copy_for_full_fine_tuning(tiny_policy):
    ref = tiny_policy.reference()
    model = tiny_policy.module
    assert ref.policy.module is not model and not any(p.requires_grad for p in ref.policy.module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(ref.policy.module.parameters(), model.parameters()))
    b = _batch(tiny_policy)
    torch.testing.assert_close(ref.completion_logprobs(b), tiny_policy.completion_logprobs(b))


def _changed_after_one_step(policy, lr: float) -> float:
    """Share of trained weight elements that one AdamW step at ``lr`` changed (as stored)."""
    from mo_rl.rollout import SamplingParams
    from mo_rl.rollout.hf import HFEngine
    from mo_rl.train.loop import make_optimizer
    from mo_rl.train.loss import backward_loss

    b = HFEngine(policy).generate(["a>", "b>"], 4, SamplingParams(max_new_tokens=8, seed=2))
    opt = make_optimizer(policy.module, lr, 0.0)
    before = [p.detach().clone() for p in policy.module.parameters()]
    with policy.mode(True):
        backward_loss(policy, None, b, torch.linspace(-1, 1, len(b.texts)), max_tokens=8)
    opt.step()
    after = list(policy.module.parameters())
    changed = sum(int((x != y.detach()).sum()) for x, y in zip(before, after))
    return changed / sum(p.numel() for p in after)


def test_bf16_training_keeps_fp32_master_weights(tiny_model_path):
    """Issue 24.7: model.dtype=bfloat16 trains fp32 master weights under bf16 autocast, so a step at lr 1e-5
    changes (nearly) every weight with a gradient; bf16 weights updated in place keep most of them."""
    mixed = load_policy(ModelConfig(path="embedded:tiny", dtype="bfloat16"), train=True)
    assert all(p.dtype == torch.float32 for p in mixed.module.parameters()) and mixed.compute_dtype == torch.bfloat16
    with mixed.compute():
        x = torch.ones(2, 2) @ torch.ones(2, 2)
    assert x.dtype == torch.bfloat16  # the forward computes in bf16
    in_place = load_policy(ModelConfig(path="embedded:tiny", dtype="bfloat16"))  # not for training: bf16 as loaded
    assert next(in_place.module.parameters()).dtype == torch.bfloat16
    torch.manual_seed(0)
    got, naive = _changed_after_one_step(mixed, 1e-5), _changed_after_one_step(in_place, 1e-5)
    assert got > 0.9 and naive < 0.5, (got, naive)


def test_fp16_training_is_refused_in_one_line(tiny_model_path):
    with pytest.raises(MoRLError, match=r"model.dtype=float16 cannot be trained here .* use model.dtype=bfloat16"):
        load_policy(ModelConfig(path="embedded:tiny", dtype="float16"), train=True)
