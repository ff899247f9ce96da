"""A lean forward for Llama-family causal LMs (Llama, Mistral, Qwen2, Qwen3), over the model's own parameters.

transformers' forward is written for every feature at once: cache classes, mask builders for a dozen attention
back-ends, output dataclasses, hooks and kwargs plumbing. For a small policy on a CPU that bookkeeping costs more
than the arithmetic (a decode step of the embedded 2-layer model, 64 rows: 1.23 ms through it, 0.72 ms here).
This module computes the same function with plain torch ops:

- ``completion_logits``: the training forward, each group's shared prompt computed once; ``logits``: the plain one
  (causal, left padding handled by a key mask);
- ``prefill`` / ``decode``: sampling with a preallocated (static) KV cache, one new token per live row per step.

It reads the weights of the HF module in place (``nn.Linear`` layers through ``F.linear``, anything else, e.g. a
LoRA-wrapped linear, through its own ``forward``), so training, the optimizer, LoRA adapters and ``save_pretrained``
all stay with the HF model, and gradients flow to the same parameters. Equal to the HF forward to float rounding
(tests/test_lean.py: logits, gradients, sampled tokens). Architectures outside the family, or features it does not
reproduce (sliding windows, attention dropout, another activation), fall back to the HF forward
and ``unsupported`` says why.

Selected by ``model.impl`` (``auto`` | ``lean`` | ``hf``): ``models.policy.Policy`` builds one ``LeanLM`` when it
applies and keeps it for the policy's life.
The building blocks (resolved projections and norms, rotary and SwiGLU with their backwards, the decode attention)
are in ``lean_ops.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mo_rl.config import MODEL_IMPLS
from mo_rl.models.lean_ops import Norm, decode_attention, padded_causal, proj, rope, swiglu

FAMILY = ("llama", "mistral", "qwen2", "qwen3")
IMPLS = MODEL_IMPLS


def sharded(model) -> bool:
    """Whether FSDP holds the decoder weights as shards now: the lean forward reads whole weights and never calls
    the modules whose hooks would gather them, so it runs only while ``fsdp.full_weights`` has gathered them.
    ``Policy`` asks this only of a policy ``train/fsdp.py`` has sharded (its ``fsdp`` flag)."""
    p = next(_causal_lm(model).model.layers[0].parameters(), None)
    return type(p).__name__ == "DTensor"


def checkpointing_on(model) -> bool:
    """Whether activation checkpointing is on (transformers >= 5 renamed the flag; the old name warns)."""
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else \
        "is_gradient_checkpointing"
    return bool(getattr(model, flag, False))


def _causal_lm(model):
    """The ``*ForCausalLM`` inside a peft wrapper (its linears carry the adapters), or the model itself."""
    return model.get_base_model() if hasattr(model, "peft_config") and hasattr(model, "get_base_model") else model


def unsupported(model) -> str | None:
    """Why the lean forward cannot stand in for this model's forward, or None when it can."""
    lm = _causal_lm(model)
    cfg = getattr(lm, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in FAMILY:
        return f"architecture {kind!r} is not one of {', '.join(FAMILY)}"
    inner = getattr(lm, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return f"{type(lm).__name__} does not have the Llama module layout"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act={cfg.hidden_act!r} (only silu)"
    if getattr(cfg, "attention_dropout", 0.0):
        return f"attention_dropout={cfg.attention_dropout} (only 0)"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp != 1"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])) or (
            getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True)):
        return "sliding-window attention"
    if getattr(lm.model.embed_tokens, "weight", None) is None or not hasattr(lm, "lm_head"):
        return "no embedding matrix or lm_head"
    return None


class _Layer:
    """One decoder layer's pieces, looked up once (attribute access on nn.Modules costs ~1 us each, and a decode
    step would otherwise do dozens)."""

    def __init__(self, layer: nn.Module):
        a, m = layer.self_attn, layer.mlp
        self.ln1, self.ln2 = Norm(layer.input_layernorm), Norm(layer.post_attention_layernorm)
        self.q, self.k, self.v, self.o = (proj(x) for x in (a.q_proj, a.k_proj, a.v_proj, a.o_proj))
        self.gate, self.up, self.down = (proj(x) for x in (m.gate_proj, m.up_proj, m.down_proj))
        self.q_norm = Norm(a.q_norm) if hasattr(a, "q_norm") else None
        self.k_norm = Norm(a.k_norm) if hasattr(a, "k_norm") else None
        self.modules = (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj)  # for fusing (decode)

    def mlp(self, x: Tensor) -> Tensor:
        return self.down(swiglu(self.gate(x), self.up(x)))


FUSE_MAX_BYTES = 256 * 2**20  # fuse projections for decoding only below this model size (the fused copy costs
# memory; it pays where per-op overhead dominates, i.e. small models, and is noise where matmuls dominate)


class KVCache:
    """What decoding carries from step to step: every layer's keys and values, preallocated as
    (N, H_kv, capacity, D) and filled up to ``length``, the key padding mask, the rotary tables of every position,
    and (small models) the q/k/v and gate/up projections fused into one matrix each."""

    def __init__(self, keys: list[Tensor], values: list[Tensor], length: int, key_mask: Tensor | None,
                 cos: Tensor, sin: Tensor, fused: list | None):
        self.keys, self.values, self.length = keys, values, length
        self.key_mask = key_mask  # (N, capacity) bool, None when no key is padding
        self.cos, self.sin = cos, sin  # (capacity, D); sin carries rotate-half's sign (see ``rope``)
        self.fused = fused  # per layer (W_qkv, b_qkv or None, W_gate_up, remaining attention scale), or None

    def select(self, rows: Tensor) -> None:
        """Keep only ``rows`` of the batch (rows that finished leave; a copy of the cache)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        if self.key_mask is not None:
            self.key_mask = self.key_mask.index_select(0, rows)


class LeanLM:
    """The forward of one Llama-family model, computed over its modules' parameters (see the module docstring)."""

    def __init__(self, model):
        lm = _causal_lm(model)
        self.lm, self.body = lm, lm.model
        self.layers = [_Layer(layer) for layer in lm.model.layers]
        attn = lm.model.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.qk_norm = self.layers[0].q_norm is not None
        emb = lm.model.embed_tokens
        self.embed = (lambda ids, w=emb.weight: F.embedding(ids, w)) if type(emb) is nn.Embedding else emb
        self.norm, self.lm_head = Norm(lm.model.norm), proj(lm.lm_head)
        half = self.head_dim // 2
        self.sign = torch.cat([-torch.ones(half), torch.ones(half)])  # rotate_half as a roll with a sign
        self.checkpointing = checkpointing_on(lm)
        self.param_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())  # counted once

    # -- shared pieces -------------------------------------------------------------------------------------------
    def _rotary(self, h: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """-> cos, signed sin (see ``rope``): (N, 1, L, D)."""
        cos, sin = self.body.rotary_emb(h, positions)  # handles every rope_scaling type the config names
        return cos.unsqueeze(1), (sin * self.sign.to(sin)).unsqueeze(1)

    def _qkv(self, layer, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Projections of the normed input x (N, L, hidden) -> q (N, H, L, D), k, v (N, H_kv, L, D), rope applied.

        (Concatenating the q/k/v weights into one matmul per forward measured no faster here, forward+backward,
        so training keeps the three; decoding, where weights stay fixed, fuses them once per rollout.)"""
        N, L, _ = x.shape
        q = layer.q(x).view(N, L, -1, self.head_dim)
        k = layer.k(x).view(N, L, -1, self.head_dim)
        v = layer.v(x).view(N, L, -1, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = layer.q_norm(q), layer.k_norm(k)
        return rope(q.transpose(1, 2), cos, sin), rope(k.transpose(1, 2), cos, sin), v

    def _attend(self, layer, h: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        """Attention output added to the residual, then the MLP block. h: (N, L, hidden)."""
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scaling,
                                           enable_gqa=q.shape[1] != k.shape[1])
        h = h + layer.o(o.transpose(1, 2).reshape(*h.shape[:2], -1))
        return h + layer.mlp(layer.ln2(h))

    def _layer(self, layer, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        q, k, v = self._qkv(layer, layer.ln1(h), cos, sin)
        return self._attend(layer, h, q, k, v, mask, mask is None)

    def _head(self, h: Tensor) -> Tensor:
        return self.lm_head(self.norm(h))

    # -- training forward ----------------------------------------------------------------------------------------
    def logits(self, ids: Tensor, attention_mask: Tensor | None = None, keep: int | None = None) -> Tensor:
        """Logits of the last ``keep`` positions (all when None). ids: (N, L) long; attention_mask: (N, L), 0 on
        left padding (positions then follow the mask, as in generation), None when nothing is padded.
        -> (N, keep, V), the model's dtype. Gradient checkpointing applies per layer when the HF model has it on.
        """
        N, L = ids.shape
        h = self.embed(ids)
        if attention_mask is None:
            positions, mask = torch.arange(L, device=ids.device).expand(N, L), None
        else:
            positions = (attention_mask.cumsum(1) - 1).clamp_min(0)
            mask = padded_causal(attention_mask.bool())
        cos, sin = self._rotary(h, positions)
        ckpt = self.checkpointing and torch.is_grad_enabled() and self.lm.training
        for layer in self.layers:
            if ckpt:
                h = checkpoint(self._layer, layer, h, cos, sin, mask, use_reentrant=False)
            else:
                h = self._layer(layer, h, cos, sin, mask)
        return self._head(h if keep is None else h[:, -keep:])

    def completion_logits(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor) -> Tensor:
        """Logits that predict each completion token, computing each distinct prompt once.

        The rows of a rollout batch come in groups that share one prompt; the prompt's hidden states, keys and
        values are the same for every completion of the group, so they are computed once per group and the
        completions attend to them (the gradient through them sums over the group, as the full forward's would).
        prompt_ids, prompt_mask: (N, P), left-padded, consecutive equal rows form a group; completion_ids: (N, T).
        -> (N, T, V): position t predicts completion token t (the last prompt position predicts token 0).
        Equal to ``logits`` on the concatenated rows at every position before a row's EOS.
        """
        N, T = completion_ids.shape
        new = torch.ones(N, dtype=torch.bool, device=prompt_ids.device)
        new[1:] = (prompt_ids[1:] != prompt_ids[:-1]).any(1) | (prompt_mask[1:] != prompt_mask[:-1]).any(1)
        starts = new.nonzero().squeeze(1)
        if len(starts) == N:  # nothing shared: the plain forward costs the same
            ids = torch.cat([prompt_ids, completion_ids], 1)
            attn = None if bool(prompt_mask.all()) else torch.cat([prompt_mask, torch.ones_like(completion_ids)], 1)
            return self.logits(ids, attn, keep=T + 1)[:, :-1]
        group = new.long().cumsum(0) - 1  # row -> its prompt
        pm = prompt_mask[starts].bool()
        U, P = pm.shape
        padded = not bool(pm.all())
        hp = self.embed(prompt_ids[starts])
        cos_p, sin_p = self._rotary(hp, (pm.long().cumsum(1) - 1).clamp_min(0))
        mask_p = padded_causal(pm) if padded else None
        hc = self.embed(completion_ids[:, :-1])  # token t-1 predicts token t; the last prompt position token 0
        C = T - 1
        pos_c = pm.sum(1).index_select(0, group)[:, None] + torch.arange(C, device=hc.device)
        cos_c, sin_c = self._rotary(hc, pos_c)
        causal_c = torch.ones((C, C), dtype=torch.bool, device=hc.device).tril()
        if padded:  # (N, 1, C, P + C): the row's prompt keys that are not padding, then its own past
            keys_p = pm.index_select(0, group)[:, None, None, :].expand(N, 1, C, P)
            mask_c = torch.cat([keys_p, causal_c.expand(N, 1, C, C)], -1)
        else:
            mask_c = torch.cat([causal_c.new_ones((C, P)), causal_c], -1)[None, None]

        def layer_fn(layer, hp: Tensor, hc: Tensor) -> tuple[Tensor, Tensor]:
            qp, kp, vp = self._qkv(layer, layer.ln1(hp), cos_p, sin_p)
            hp_out = self._attend(layer, hp, qp, kp, vp, mask_p, mask_p is None)
            if C == 0:
                return hp_out, hc
            qc, kc, vc = self._qkv(layer, layer.ln1(hc), cos_c, sin_c)
            k = torch.cat([kp.index_select(0, group), kc], 2)
            v = torch.cat([vp.index_select(0, group), vc], 2)
            return hp_out, self._attend(layer, hc, qc, k, v, mask_c, False)

        ckpt = self.checkpointing and torch.is_grad_enabled() and self.lm.training
        for layer in self.layers:
            if ckpt:
                hp, hc = checkpoint(layer_fn, layer, hp, hc, use_reentrant=False)
            else:
                hp, hc = layer_fn(layer, hp, hc)
        return self._head(torch.cat([hp[:, -1:].index_select(0, group), hc], 1))

    # -- sampling ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, ids: Tensor, attention_mask: Tensor, repeat: int, capacity: int) -> tuple[Tensor, KVCache]:
        """Run the prompts once, repeat their cache ``repeat`` times (prompt-major) into buffers of ``capacity``
        positions. ids, attention_mask: (B, P). -> (last-position logits (B*repeat, V), cache of length P)."""
        B, P = ids.shape
        padded = not bool(attention_mask.all())
        positions = (attention_mask.cumsum(1) - 1).clamp_min(0)
        mask = padded_causal(attention_mask.bool()) if padded else None
        h = self.embed(ids)
        cos, sin = self._rotary(h, positions)
        keys, values = [], []
        for layer in self.layers:
            q, k, v = self._qkv(layer, layer.ln1(h), cos, sin)
            h = self._attend(layer, h, q, k, v, mask, mask is None)
            kb = k.new_empty((B * repeat, k.shape[1], capacity, k.shape[3]))
            vb = torch.empty_like(kb)
            kb[:, :, :P] = k.repeat_interleave(repeat, 0)
            vb[:, :, :P] = v.repeat_interleave(repeat, 0)
            keys.append(kb)
            values.append(vb)
        key_mask = None
        if padded:
            key_mask = torch.ones((B * repeat, capacity), dtype=torch.bool, device=ids.device)
            key_mask[:, :P] = attention_mask.bool().repeat_interleave(repeat, 0)
        logits = self._head(h[:, -1:])[:, 0]
        # rotary tables of every position, computed once; rotate_half(x) == roll(x, D/2) with the first half negated
        cos_t, sin_t = self._rotary(h, torch.arange(capacity, device=ids.device)[None])
        cache = KVCache(keys, values, P, key_mask, cos_t[0, 0], sin_t[0, 0], self._fused())
        return logits.repeat_interleave(repeat, 0), cache

    def select(self, cache: KVCache, keep: Tensor) -> None:
        """Keep only the ``keep`` rows of the batch in ``cache`` (the sampler drops finished rows)."""
        cache.select(keep)

    def _fused(self) -> list | None:
        """Per layer (W_qkv, b_qkv, W_gate_up) for decoding, or None where fusing does not pay or apply."""
        plain = all(type(m) is nn.Linear for layer in self.layers for m in layer.modules)
        if not plain or self.qk_norm or self.param_bytes > FUSE_MAX_BYTES:
            return None
        if any(layer.modules[3].bias is not None or layer.modules[4].bias is not None for layer in self.layers):
            return None
        out = []
        for layer in self.layers:
            q, k, v, g, u = layer.modules
            # float32: the attention scale folded into q (rotation is linear, so scaling before or after it is the
            # same); in half precision that would round the weights differently from the training forward
            fold = self.scaling if q.weight.dtype == torch.float32 else 1.0
            w = torch.cat([q.weight * fold, k.weight, v.weight])
            b = None if q.bias is None else torch.cat([q.bias * fold, k.bias, v.bias])
            out.append((w, b, torch.cat([g.weight, u.weight]), self.scaling / fold))
        return out

    @torch.no_grad()
    def decode(self, tokens: Tensor, positions: Tensor, cache: KVCache) -> Tensor:
        """One new token per row. tokens, positions: (N,) long. Appends to ``cache``. -> logits (N, V).

        Written for one query per row: 2-D activations, the rotary tables indexed, attention as two batched
        matmuls (the query is the newest position, so every cached key is in its past: no causal mask).
        """
        t, D = cache.length, self.head_dim
        N = tokens.shape[0]
        h = self.embed(tokens)  # (N, hidden)
        if cache.key_mask is None:  # no padding: every row sits at position t (a view of the table, no gather)
            cos, sin = cache.cos[t:t + 1].unsqueeze(0), cache.sin[t:t + 1].unsqueeze(0)  # (1, 1, D)
        else:
            cos, sin = cache.cos[positions].unsqueeze(1), cache.sin[positions].unsqueeze(1)  # (N, 1, D)
        mask = None if cache.key_mask is None else cache.key_mask[:, None, None, :t + 1]
        for i, layer in enumerate(self.layers):
            x = layer.ln1(h)
            nk = cache.keys[i].shape[1]
            if cache.fused is not None:  # q and k rotated in one go (float32: q rows come pre-scaled)
                w, b, w_gu, scale = cache.fused[i]
                qkv = F.linear(x, w, b).view(N, -1, D)
                qk = rope(qkv[:, :-nk], cos, sin)  # (N, H + H_kv, D)
                q, k, v = qk[:, :-nk], qk[:, -nk:], qkv[:, -nk:]
            else:
                q, k, v = layer.q(x).view(N, -1, D), layer.k(x).view(N, -1, D), layer.v(x).view(N, -1, D)
                if self.qk_norm:
                    q, k = layer.q_norm(q), layer.k_norm(k)
                q, k = rope(q, cos, sin), rope(k, cos, sin)  # (N, H, D), (N, H_kv, D)
                scale = self.scaling
            kb, vb = cache.keys[i], cache.values[i]
            kb[:, :, t] = k
            vb[:, :, t] = v
            o = decode_attention(q.view(N, nk, -1, D), kb[:, :, :t + 1], vb[:, :, :t + 1], mask, scale)
            h = h + layer.o(o.reshape(N, -1))
            x = layer.ln2(h)
            if cache.fused is not None:
                g, u = F.linear(x, w_gu).chunk(2, -1)
                h = h + layer.down(F.silu(g) * u)
            else:
                h = h + layer.mlp(x)
        cache.length = t + 1
        return self._head(h)

