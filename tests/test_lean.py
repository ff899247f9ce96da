"""The lean forward (mo_rl/models/lean.py) computes what the transformers forward computes: logits, gradients and
sampled tokens, for Llama, Llama with grouped-query attention and biases, Qwen2 and Qwen3, padded or not; models it
cannot stand in for fall back to transformers, and ``model.impl=lean`` on one of those is a one-line error."""

from __future__ import annotations

import pytest
import torch

from mo_rl.models.policy import Policy
from mo_rl.errors import MoRLError
from mo_rl.models.lean import LeanLM, unsupported
from mo_rl.rollout.base import RolloutBatch
from mo_rl.rollout.sampler import sample
from mo_rl.train.loss import completion_logprobs

V = 48


def _llama(**kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(LlamaConfig(**{**cfg, **kw})).eval()


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64)).eval()


def _qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                        max_position_embeddings=64)).eval()


MODELS = {
    "llama": lambda: _llama(),
    "llama_gqa_bias_rope_scaling": lambda: _llama(num_key_value_heads=2, attention_bias=True, mlp_bias=True,
                                                  rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                   "rope_theta": 10000.0}),
    "qwen2": _qwen2,
    "qwen3": _qwen3,
}


def _batch(B=3, G=4, P=5, T=7, padded=True, seed=0):
    """Prompt-major groups: left-padded prompts repeated G times, completions with EOS-style padding."""
    g = torch.Generator().manual_seed(seed)
    pids = torch.randint(4, V, (B, P), generator=g)
    pm = torch.ones(B, P, dtype=torch.long)
    if padded:
        pm[0, :2] = 0
        pm[2, :1] = 0
        pids[pm == 0] = 0
    pids, pm = pids.repeat_interleave(G, 0), pm.repeat_interleave(G, 0)
    cids = torch.randint(4, V, (B * G, T), generator=g)
    cm = torch.ones(B * G, T)
    cm[1, 4:] = 0
    cm[-1, 2:] = 0
    cids[cm == 0] = 0
    return RolloutBatch(prompt_ids=pids, prompt_mask=pm, completion_ids=cids, completion_mask=cm,
                        logprobs=torch.zeros(B * G, T), texts=[""] * (B * G), n=G)


def _hf_logits(model, b: RolloutBatch):
    """The transformers forward on the concatenated rows, logits predicting each completion token."""
    ids = torch.cat([b.prompt_ids, b.completion_ids], 1)
    attn = torch.cat([b.prompt_mask, b.completion_mask.long()], 1)
    pos = (attn.cumsum(1) - 1).clamp_min(0)
    P = b.prompt_ids.shape[1]
    return model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, P - 1:-1]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("padded", [False, True])
def test_logits_and_gradients_equal_transformers(name, padded):
    model = MODELS[name]()
    assert unsupported(model) is None
    b = _batch(padded=padded)
    m = b.completion_mask.unsqueeze(-1)
    w = torch.randn(*b.completion_ids.shape, V, generator=torch.Generator().manual_seed(1))
    ref = _hf_logits(model, b)
    (ref * w * m).sum().backward()
    g_ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    lean = LeanLM(model)
    out = lean.completion_logits(b.prompt_ids, b.prompt_mask, b.completion_ids)  # shared prompts
    assert ((out - ref).abs() * m).max() < 1e-5
    (out * w * m).sum().backward()
    for n, p in model.named_parameters():
        scale = g_ref[n].abs().max().clamp_min(1e-6)
        assert ((p.grad - g_ref[n]).abs().max() / scale) < 1e-4, n
    # the plain forward over the whole rows too
    ids = torch.cat([b.prompt_ids, b.completion_ids], 1)
    attn = torch.cat([b.prompt_mask, b.completion_mask.long()], 1) if padded else None
    full = lean.logits(ids, attn, keep=b.completion_ids.shape[1] + 1)[:, :-1]
    assert ((full - ref).abs() * m).max() < 1e-5


def test_shared_prompt_forward_without_groups_and_one_token_completions():
    model = _llama()
    b = _batch(G=1)  # every row its own prompt: the plain path
    lean = LeanLM(model)
    m = b.completion_mask.unsqueeze(-1)
    assert ((lean.completion_logits(b.prompt_ids, b.prompt_mask, b.completion_ids) - _hf_logits(model, b)).abs()
            * m).max() < 1e-5
    b1 = _batch(T=1)
    out = lean.completion_logits(b1.prompt_ids, b1.prompt_mask, b1.completion_ids)
    assert out.shape == (12, 1, V)
    assert (out - _hf_logits(model, b1)).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["llama", "llama_gqa_bias_rope_scaling", "qwen3"])
@pytest.mark.parametrize("padded", [False, True])
def test_sampling_matches_the_transformers_decoder(name, padded):
    """Same seed, same prompts: the lean decoder (static cache, fused projections) samples the tokens the HF
    forward and its cache classes sample, with the same log-probs."""
    model = MODELS[name]()
    b = _batch(B=3, G=1, P=6, padded=padded)
    kw = dict(n=4, max_new_tokens=9, temperature=0.9, top_p=0.95, eos_id=3, pad_id=0)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    lean, hf = Policy(model).decoder(), Policy(model, impl="hf").decoder()
    assert isinstance(lean, LeanLM) and not isinstance(hf, LeanLM)
    ids_lean, lp_lean = sample(lean, b.prompt_ids, b.prompt_mask, generator=gens(), **kw)
    ids_hf, lp_hf = sample(hf, b.prompt_ids, b.prompt_mask, generator=gens(), **kw)
    assert torch.equal(ids_lean, ids_hf)
    assert torch.allclose(lp_lean, lp_hf, atol=1e-5)


def test_completion_logprobs_uses_lean_and_equals_hf():
    model = _llama(num_key_value_heads=2)
    b = _batch()
    a = completion_logprobs(Policy(model), b, temperature=0.7)
    assert Policy(model, impl="hf").lean is None
    h = completion_logprobs(Policy(model, impl="hf"), b, temperature=0.7)
    assert torch.allclose(a, h, atol=1e-5)


def test_lora_adapters_go_through_the_lean_forward():
    peft = pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[lora]'")
    model = _llama()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                          "down_proj"]))
    for n, p in lora.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)  # nonzero adapters, so they change the logits
    b = _batch()
    m = b.completion_mask.unsqueeze(-1)
    ref = _hf_logits(lora, b)
    out = LeanLM(lora).completion_logits(b.prompt_ids, b.prompt_mask, b.completion_ids)
    assert ((out - ref).abs() * m).max() < 1e-5
    (out * m).sum().backward()
    assert all(p.grad is not None for n, p in lora.named_parameters() if p.requires_grad)


def test_activation_checkpointing_keeps_the_gradients():
    from mo_rl.models.load import enable_checkpointing

    model = _llama()
    b = _batch()
    m = b.completion_mask.unsqueeze(-1)
    lean = LeanLM(model)
    model.train()
    lean.completion_logits(b.prompt_ids, b.prompt_mask, b.completion_ids).mul(m).sum().backward()
    g = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    enable_checkpointing(model)
    lean = LeanLM(model)
    assert lean.checkpointing
    lean.completion_logits(b.prompt_ids, b.prompt_mask, b.completion_ids).mul(m).sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, g[n], atol=1e-6), n


def test_unsupported_models_fall_back_and_lean_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=2, n_positions=32))
    assert "gpt2" in unsupported(gpt2) and Policy(gpt2).lean is None
    with pytest.raises(MoRLError, match="model.impl=lean: architecture 'gpt2'"):
        Policy(gpt2, impl="lean")
    assert "sliding" in unsupported(_qwen2_sliding())
    b = _batch()  # the HF path still computes log-probs for it
    lp = completion_logprobs(Policy(gpt2), b)
    assert lp.shape == b.completion_ids.shape and torch.isfinite(lp).all()


def _qwen2_sliding():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                        sliding_window=4, max_window_layers=0))


def test_model_impl_is_validated_and_recorded():
    from mo_rl.config import compose, validate
    from mo_rl.models.load import load_policy

    with pytest.raises(MoRLError, match="unknown model.impl 'fast'; allowed: auto, lean, hf"):
        validate(compose(["model.impl=fast"]))
    policy = load_policy(validate(compose(["model.impl=hf"])).model)
    assert policy.lean is None and policy.impl == "hf" and not hasattr(policy.module, "mo_rl_impl")
    policy = load_policy(validate(compose(["model.impl=lean"])).model)
    assert isinstance(policy.lean, LeanLM) and policy.decoder() is policy.lean  # built once, kept


def test_rope_and_swiglu_backward_pass_gradcheck():
    """The hand-written backwards (inverse rotation; SwiGLU from its saved inputs) against finite differences."""
    from mo_rl.models.lean_ops import Rope, SwiGLU

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 8, dtype=torch.float64, generator=g, requires_grad=True)
    ang = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=g).repeat(1, 1, 1, 2)
    sign = torch.cat([-torch.ones(4), torch.ones(4)]).double()
    assert torch.autograd.gradcheck(lambda t: Rope.apply(t, ang.cos(), ang.sin() * sign), (x,))
    a = torch.randn(5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(SwiGLU.apply, (a, b))


def test_bfloat16_matches_transformers_to_bf16_rounding():
    """Half precision: norms in float32 as transformers computes them, everything else in bf16."""
    model = _llama(num_key_value_heads=2).to(torch.bfloat16)
    b = _batch()
    m = b.completion_mask.unsqueeze(-1)
    ref = _hf_logits(model, b).float()
    out = LeanLM(model).completion_logits(b.prompt_ids, b.prompt_mask, b.completion_ids).float()
    assert out.dtype == torch.float32 and ((out - ref).abs() * m).max() < 0.05
    lean_lp = completion_logprobs(Policy(model), b)
    assert (lean_lp - completion_logprobs(Policy(model, impl="hf"), b)).abs().max() < 0.05


def test_mode_switch_only_where_it_changes_the_computation():
    """train()/eval() are skipped for a dropout-free policy; dropout (LoRA's included) or checkpointing needs them."""
    from mo_rl.models.load import enable_checkpointing, mode_matters

    assert not mode_matters(_llama())
    assert mode_matters(_llama(attention_dropout=0.1))
    gc = _llama()
    enable_checkpointing(gc)
    assert mode_matters(gc)
    peft = pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[lora]'")
    lora = peft.get_peft_model(_llama(), peft.LoraConfig(r=2, lora_dropout=0.1, target_modules=["q_proj"]))
    assert mode_matters(lora)
