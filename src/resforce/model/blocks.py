"""The CausalVideoDiT's pieces, named as in diffusers' WanTransformer3DModel: fp32 norms, the
timestep/text/action condition embedder, self- and cross-attention, the feed-forward network
and the transformer block with its per-chunk AdaLN modulation (precision rules: dit.py)."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from resforce.model.action_embedding import ActionEmbedder
from resforce.model.attention.layouts import Layout
from resforce.model.config import DiTConfig
from resforce.model.rope import apply_rope



class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (Wan's), whatever the autocast dtype; returns x's dtype
    (callers pass x.float() where the modulation that follows must stay in float32)."""

    def forward(self, x):
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class FP32RMSNorm(nn.RMSNorm):
    """RMSNorm computed in float32 whatever the weight / autocast dtype; returns x's dtype.
    (torch's rms_norm keeps bf16 input in bf16 under autocast and warns on mixed dtypes.)"""

    def forward(self, x):
        w = None if self.weight is None else self.weight.float()
        return F.rms_norm(x.float(), self.normalized_shape, w, self.eps).type_as(x)


def _autocast_off(device: torch.device):
    """No autocast inside (where the device type has one; meta has none)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t * 1000, [cos | sin] like diffusers' Timesteps(flip_sin_to_cos)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[..., None] * freqs
    return torch.cat([args.cos(), args.sin()], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class TextProjection(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act_1 = nn.GELU(approximate="tanh")
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(self.act_1(self.linear_1(x)))


class ConditionEmbedder(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.inner_dim
        self.freq_dim = cfg.freq_dim
        self.time_embedder = TimestepEmbedding(cfg.freq_dim, dim)
        self.act_fn = nn.SiLU()
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = TextProjection(cfg.text_dim, dim) if cfg.text_dim > 0 else None
        self.action_embedder = (ActionEmbedder(cfg.action_kind, cfg.action_dim, dim, cfg.frames_per_chunk)
                                if cfg.action_kind != "none" else None)

    def forward(self, t: torch.Tensor, context: torch.Tensor | None, actions: torch.Tensor | None = None):
        """t: (B, chunks) -> temb (B, chunks, D) and modulation (B, chunks, 6, D), both
        float32, and the projected context. actions: (B, chunks * frames_per_chunk[, D]) for
        an action model (their per-chunk embedding is added to the timestep embedding)."""
        # the modulation scales every activation: autocast off, each layer in its weight's
        # dtype (float32 for trained models and for load_wan's time_embedder, like diffusers)
        with _autocast_off(t.device):
            feats = timestep_features(t, self.freq_dim)
            temb = self.time_embedder(feats.to(self.time_embedder.linear_1.weight.dtype))
            if self.action_embedder is not None:
                temb = temb.float() + self.action_embedder(actions)
            mod = self.time_proj(self.act_fn(temb).to(self.time_proj.weight.dtype))
        if context is not None and self.text_embedder is not None:
            context = self.text_embedder(context.to(self.text_embedder.linear_1.weight.dtype))
        return temb.float(), mod.float().unflatten(-1, (6, -1)), context


class Attention(nn.Module):
    """Multi-head attention with Wan's q/k RMSNorm across heads; layout-driven if self-attn."""

    def __init__(self, dim: int, heads: int, eps: float, kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        kv_dim = kv_dim or dim
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(kv_dim, dim)
        self.to_v = nn.Linear(kv_dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.norm_q = FP32RMSNorm(dim, eps=eps)
        self.norm_k = FP32RMSNorm(dim, eps=eps)

    def _heads(self, x):
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x, layer: int, layout: Layout | None = None, rope=None, context=None):
        src = x if context is None else context
        q = self._heads(self.norm_q(self.to_q(x)))
        k = self._heads(self.norm_k(self.to_k(src)))
        v = self._heads(self.to_v(src))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if layout is None:  # cross-attention: every token sees every condition token
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = layout.attend(layer, q, k, v)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class GELUProj(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x):
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, hidden), nn.Dropout(0.0), nn.Linear(hidden, dim)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, tpc: int) -> torch.Tensor:
    """x (B, chunks*tpc, D) * (1 + scale) + shift, with per-chunk shift/scale (B, chunks, D);
    in the promoted dtype (float32 for float32 shift/scale)."""
    xc = x.unflatten(1, (-1, tpc))
    return (xc * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2)


def _gated_add(x: torch.Tensor, out: torch.Tensor, gate: torch.Tensor, tpc: int) -> torch.Tensor:
    """x + out * gate with a per-chunk gate (B, chunks, D), added in float32, in x's dtype.
    (A fresh tensor, not a view: FSDP2 warns about blocks that return views.)"""
    gated = (out.unflatten(1, (-1, tpc)) * gate[:, :, None]).flatten(1, 2)
    return (x.float() + gated).type_as(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, layer: int):
        super().__init__()
        dim = cfg.inner_dim
        self.layer = layer
        self.norm1 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.attn1 = Attention(dim, cfg.num_attention_heads, cfg.eps)
        if cfg.text_dim > 0:
            self.norm2 = (FP32LayerNorm(dim, cfg.eps, elementwise_affine=True)
                          if cfg.cross_attn_norm else nn.Identity())
            self.attn2 = Attention(dim, cfg.num_attention_heads, cfg.eps)
        else:
            self.norm2, self.attn2 = None, None
        self.ffn = FeedForward(dim, cfg.ffn_dim)
        self.norm3 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, x, mod, layout, rope, context, tpc: int):
        # mod: (B, chunks, 6, D) float32; one modulation per chunk, applied to all its tokens
        table = self.scale_shift_table.float()[:, None]
        shift, scale, gate, c_shift, c_scale, c_gate = (table + mod).unbind(2)
        h = modulate(self.norm1(x.float()), shift, scale, tpc).type_as(x)
        x = _gated_add(x, self.attn1(h, self.layer, layout, rope), gate, tpc)
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x.float()).type_as(x), self.layer, context=context)
        h = modulate(self.norm3(x.float()), c_shift, c_scale, tpc).type_as(x)
        return _gated_add(x, self.ffn(h), c_gate, tpc)
