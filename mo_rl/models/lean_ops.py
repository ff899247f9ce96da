"""The pieces of the lean forward (``mo_rl.models.lean``) below the model: projections and RMSNorm with their
weights resolved once, rotary embedding and SwiGLU with hand-written backwards that save fewer activations, the
attention of one decoding query, and the padded causal mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def proj(m: nn.Module):
    """A projection as a plain function: ``F.linear`` on the weights of an ``nn.Linear`` (no module-call overhead),
    the module itself for anything else (a LoRA-wrapped or quantized linear runs its own forward)."""
    if type(m) is nn.Linear:
        w, b = m.weight, m.bias
        return lambda x: F.linear(x, w, b)
    return m


class Norm:
    """transformers' RMSNorm (normalize in float32, cast back, scale by the weight), weight and eps resolved."""

    __slots__ = ("weight", "eps")

    def __init__(self, norm: nn.Module):
        self.weight = norm.weight
        self.eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))

    def __call__(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)


class Rope(torch.autograd.Function):
    """Rotary embedding whose backward is the inverse rotation: it saves no activation (autograd's version of the
    same three ops keeps two copies of q and of k per layer)."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin)

    @staticmethod
    def backward(ctx, g: Tensor):
        cos, sin = ctx.saved_tensors
        # y = x * cos + roll(x, D/2) * sin  =>  dx = g * cos + roll(g * sin, -D/2)
        return g * cos + (g * sin).roll(-(g.shape[-1] // 2), -1), None, None


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding, rotate-half layout. x: (N, H, L, D) (or (N, H, D) when decoding); cos, sin broadcast to it
    ((N, 1, L, D) or (N, 1, D)), ``sin`` with its first half
    negated (``LeanLM._rotary``), so that ``rotate_half(x) * sin == roll(x, D/2) * signed sin``."""
    if torch.is_grad_enabled() and x.requires_grad:
        return Rope.apply(x, cos, sin)
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin)


class SwiGLU(torch.autograd.Function):
    """``silu(gate) * up`` saving only its two inputs (autograd's version also keeps ``silu(gate)``)."""

    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor) -> Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, g: Tensor):
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        silu = gate * sig
        # d silu(x) / dx = sig * (1 + x * (1 - sig)) = sig + silu * (1 - sig)
        return g * up * (sig + silu * (1 - sig)), g * silu


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return SwiGLU.apply(gate, up)
    return F.silu(gate) * up


def decode_attention(q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """Attention of one query per row. q: (N, H_kv, group, D) (query heads grouped by the key head they share);
    K, V: (N, H_kv, L, D); mask: (N, 1, 1, L) bool or None; scale: 1.0 where q comes pre-scaled.
    -> (N, H_kv, group, D).

    On a CPU with short rows, two torch kernels are slow for this shape (a 1 x L by L x D batched matmul costs a
    fixed ~0.3 us per matrix, and softmax over fewer than 16 entries leaves its vectorized path): there the
    probabilities weight the values by broadcasting and the softmax is written out; the results are the same.
    """
    s = torch.matmul(q, K.transpose(-1, -2))  # (N, H_kv, group, L)
    if scale != 1.0:
        s = s.mul_(scale)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    L, D = K.shape[2], K.shape[3]
    small = q.device.type == "cpu" and L * D <= 2048
    if small and L < 32:
        e = (s - s.amax(-1, keepdim=True)).exp_()
        p = e / e.sum(-1, keepdim=True)
    else:
        p = s.softmax(-1)
    if small:
        return (p.unsqueeze(-1) * V.unsqueeze(2)).sum(-2)
    return torch.matmul(p, V)


def padded_causal(key_mask: Tensor) -> Tensor:
    """(N, L) bool key mask -> (N, 1, L, L) bool: causal and not padding. A padding query attends to itself alone
    (an all-masked row would give NaN, which the next layer's keys and values would carry)."""
    L = key_mask.shape[1]
    causal = torch.ones((L, L), dtype=torch.bool, device=key_mask.device).tril()
    eye = torch.eye(L, dtype=torch.bool, device=key_mask.device)
    return ((causal & key_mask[:, None, :]) | eye)[:, None]
