"""The HF engine: prompt-major order, EOS masking, seeded determinism, and sampling log-probs that the training
forward pass reproduces (the ratio is 1 before any update); the engine registry that ``make_engine`` reads."""

from __future__ import annotations

import pytest
import torch

from mo_rl.errors import MoRLError
from mo_rl.models.policy import Policy
from mo_rl.rollout import SamplingParams, check_engine, make_engine, register_engine
from mo_rl.rollout.base import _ENGINES, completion_mask
from mo_rl.train.loss import completion_logprobs


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 3, 9, 3], [3, 3, 3, 3], [1, 2, 4, 6]])
    assert completion_mask(ids, eos_id=3).tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]


def test_generate_shapes_order_and_logprobs(tiny_policy):
    model, tok = tiny_policy
    engine = make_engine("hf", Policy(model, tok))
    prompts = ["a>", "xyz=", "q>"]
    b = engine.generate(prompts, 4, SamplingParams(max_new_tokens=10, temperature=0.9, seed=3))
    assert b.completion_ids.shape[0] == 12 and len(b.texts) == 12 and b.n == 4
    # prompt-major: rows 4..7 all carry the second prompt
    assert all(tok.decode(b.prompt_ids[i], skip_special_tokens=True) == "xyz=" for i in range(4, 8))
    assert set(b.completion_mask.unique().tolist()) <= {0.0, 1.0}
    assert (b.logprobs[b.completion_mask == 0] == 0).all() and (b.logprobs[b.completion_mask == 1] < 0).all()
    with torch.no_grad():
        lp = completion_logprobs(Policy(model), b, temperature=0.9)
    torch.testing.assert_close(lp, b.logprobs, atol=2e-4, rtol=0)
    assert b.texts[0] == tok.decode(b.completion_ids[0], skip_special_tokens=True)


def test_same_seed_same_completions(tiny_policy):
    model, tok = tiny_policy
    engine = make_engine("hf", Policy(model, tok))
    a = engine.generate(["a>", "b>"], 3, SamplingParams(seed=11))
    b = engine.generate(["a>", "b>"], 3, SamplingParams(seed=11))
    c = engine.generate(["a>", "b>"], 3, SamplingParams(seed=12))
    assert a.texts == b.texts and a.texts != c.texts


def test_unpadded_prompts_skip_the_mask_without_changing_logprobs(tiny_policy):
    """Same-length prompts take the mask-free forward; completion log-probs equal the masked computation."""
    model, tok = tiny_policy
    b = make_engine("hf", Policy(model, tok)).generate(["a>", "b>"], 4, SamplingParams(max_new_tokens=10, seed=5))
    assert bool(b.prompt_mask.all()) and bool((b.completion_mask == 0).any())  # right padding present
    with torch.no_grad():
        fast = completion_logprobs(Policy(model), b)
        # the masked computation, by hand
        ids = torch.cat([b.prompt_ids, b.completion_ids], 1)
        attn = torch.cat([b.prompt_mask, b.completion_mask.long()], 1)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(1) - 1).clamp_min(0)).logits
        T = b.completion_ids.shape[1]
        slow = logits[:, -T - 1:-1].float().log_softmax(-1).gather(-1, b.completion_ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(fast, slow * b.completion_mask, atol=1e-5, rtol=0)


class _FakeEngine:
    def __init__(self, policy, **options):
        self.policy, self.options = policy, options


def test_engines_come_from_the_registry_by_factory_or_by_module_path(monkeypatch, tiny_policy):
    monkeypatch.setattr("mo_rl.rollout.base._ENGINES", dict(_ENGINES))
    register_engine("fake")(_FakeEngine)
    register_engine("lazy", f"{__name__}:_FakeEngine", requires="no_such_package_for_mo_rl")
    e = make_engine("fake", "p", knob=1)
    assert (type(e), e.policy, e.options) == (_FakeEngine, "p", {"knob": 1})
    assert type(make_engine("lazy", "p")) is _FakeEngine  # the module named by path, imported when chosen
    hf = make_engine("hf", Policy(*tiny_policy), gpu_memory_utilization=0.3)  # a vllm knob: not the hf engine's
    assert type(hf).__name__ == "HFEngine"
    check_engine("fake")  # nothing to look for
    with pytest.raises(MoRLError, match="rollout=lazy needs no_such_package_for_mo_rl: pip install no_such_package"):
        check_engine("lazy")
    with pytest.raises(MoRLError, match="rollout.engine.*'beam'.*hf, vllm, fake, lazy"):
        make_engine("beam", "p")
