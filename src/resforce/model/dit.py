"""CausalVideoDiT: an autoregressive video diffusion transformer laid out like Wan2.1.

Parameter names follow diffusers' `WanTransformer3DModel` one to one (patch_embedding,
condition_embedder.{time_embedder,time_proj,text_embedder}, blocks.i.{norm1, attn1, norm2,
attn2, ffn.net.0.proj, ffn.net.2, norm3, scale_shift_table}, scale_shift_table, proj_out), so
Wan weights can be mapped onto it. What differs from Wan:
- every chunk (`frames_per_chunk` latent frames) carries its own timestep and therefore its
  own AdaLN modulation (the paper's per-frame modulation);
- self-attention goes through a *layout* (see attention.py) that makes it causal over
  chunks: two-stream training, KV-cached rollout or plain block-causal.

Video tensors are (B, C, F, H, W); timesteps t are in [0, 1] (1 = pure noise), one per chunk:
(B, num_chunks). Like Wan, the sinusoidal embedding sees t * 1000.

Precision (as diffusers' WanTransformer3DModel, and for training under bf16 autocast with
fp32 master weights, torchtitan-style): the input is cast to the patch embedding's dtype; the
residual stream keeps the dtype the embedding produced (bf16 under autocast or for bf16
weights); the time embedding and its projection run in float32 with autocast off; the AdaLN
tables, the shift/scale/gate arithmetic and the residual adds it gates, the layer and RMS
norms and RoPE compute in float32, each cast back to the stream's dtype after; the output is
returned in the input's dtype. In float32 every cast is a no-op.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from resforce.model.action_embedding import ACTION_KINDS, ActionEmbedder, null_actions_for
from resforce.model.attention.layouts import CachedLayout, Layout, block_causal_layout, check_backend, two_stream_layout
from resforce.model.cache import KVCache
from resforce.model.attention.detached import CacheWritingLayout, DetachedLayout
from resforce.model.rope import RopeTables, apply_rope


@dataclass
class DiTConfig:
    """Shape and behaviour of the CausalVideoDiT (field names follow Wan's config)."""

    in_channels: int = 3
    """Channels of the (latent) video: 3 for RGB pixels, 16 for Wan's VAE latents."""
    out_channels: int = 3
    """Channels the model predicts (same as in_channels for velocity / x0 prediction)."""
    patch_size: tuple[int, int, int] = (1, 4, 4)
    """(pt, ph, pw) patch of the Conv3d patch embedding; pt must divide frames_per_chunk."""
    num_attention_heads: int = 4
    """Attention heads per layer."""
    attention_head_dim: int = 32
    """Per-head width; hidden size = heads * head_dim. Must be even (RoPE)."""
    ffn_dim: int = 512
    """Hidden width of each block's feed-forward network."""
    num_layers: int = 4
    """Transformer blocks."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep features."""
    text_dim: int = 0
    """Width of condition tokens for cross-attention (4096 for Wan's umT5); 0 = no attn2."""
    cross_attn_norm: bool = True
    """LayerNorm (with affine) before the text cross-attention, as in Wan."""
    eps: float = 1e-6
    """Epsilon of the layer and RMS norms."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding's frequencies."""
    frames_per_chunk: int = 1
    """Latent frames per autoregressive chunk (the paper: 3)."""
    prediction: str = "velocity"
    """What the network outputs: 'velocity' (v = eps - x, Wan) or 'x0' (the clean video,
    converted to velocity as v = (x_t - x0) / t). x0 trains better for tiny pixel-space
    models with wide patches (see CPU-BUDGET.md)."""
    attention_backend: str = "chunked"
    """Backend of the full-sequence (two-stream / block-causal) attention, see attention.py:
    'chunked' (block-sparse flash tiles merged by log-sum-exp, no S x S tensor; CPU and
    CUDA), 'sdpa' (the naive reference: dense (S, S) boolean mask; what checkpoints written
    before 'chunked' existed carry) or 'flex' (FlexAttention BlockMask, compiled on CUDA;
    forward only on the CPU). All three compute the same numbers."""
    gradient_checkpointing: str = "none"
    """Activation checkpointing of each block: 'none', 'full' (recompute the whole block in
    the backward pass) or 'selective' (keep the attention outputs, recompute the rest: the
    memory of 'full' without re-running attention). true / false mean full / none. Applied
    from outside the model, by the trainer (parallel.apply_activation_checkpointing)."""
    init: str = "zero_adaln"
    """'zero_adaln' (DiT: gates and output projection start at zero, for training from
    scratch) or 'wan' (Wan's random scale_shift_table, before loading weights)."""
    action_kind: str = "none"
    """Per-frame action conditioning (model/action_embedding.py): 'none' (off: Wan's layout,
    no extra weights), 'discrete' (an index per frame, nn.Embedding) or 'continuous' (a
    vector per frame, nn.Linear); the embedding joins the chunk's timestep embedding."""
    action_dim: int = 0
    """Discrete: the number of actions (buttons; may exceed what the game uses). Continuous:
    the width of the action vector. Must match the world's action space."""
    action_dropout: float = 0.0
    """Training: probability that a clip's actions are all replaced by the null action, so
    the model also learns the action-free distribution (guidance over actions)."""
    preset: str | None = None
    """A named preset (PRESETS: tiny, test, wan2.1-1.3b, wan2.1-14b) whose fields are the
    defaults of this config; fields set in the YAML or by overrides win (config.py applies
    it when the config loads)."""

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def validate(self) -> None:
        pt = self.patch_size[0]
        if len(self.patch_size) != 3:
            raise ValueError(f"model.patch_size must be (pt, ph, pw), got {self.patch_size}")
        if self.frames_per_chunk % pt:
            raise ValueError(f"model.frames_per_chunk={self.frames_per_chunk} must be a multiple "
                             f"of the temporal patch size {pt}")
        if self.prediction not in ("velocity", "x0"):
            raise ValueError(f"model.prediction must be 'velocity' or 'x0', got {self.prediction!r}")
        if self.attention_head_dim % 2:
            raise ValueError(f"model.attention_head_dim must be even, got {self.attention_head_dim}")
        check_backend(self.attention_backend, "model.attention_backend")
        if self.action_kind not in ACTION_KINDS:
            raise ValueError(f"model.action_kind must be one of {ACTION_KINDS}, got {self.action_kind!r}")
        if (self.action_kind == "none") != (self.action_dim == 0) or self.action_dim < 0:
            raise ValueError(f"model.action_dim={self.action_dim}: expected > 0 with action_kind "
                             f"'discrete'/'continuous' and 0 with 'none' (got action_kind={self.action_kind!r})")
        if not 0.0 <= self.action_dropout <= 1.0:
            raise ValueError(f"model.action_dropout must be in [0, 1], got {self.action_dropout}")


PRESETS: dict[str, dict] = {
    # 1.3M-parameter pixel-space model for 32x32 bouncing balls on the CPU
    "tiny": dict(in_channels=3, out_channels=3, patch_size=(1, 4, 4), num_attention_heads=4,
                 attention_head_dim=32, ffn_dim=512, num_layers=4),
    # for unit tests: 2 layers, 2 heads
    "test": dict(in_channels=3, out_channels=3, patch_size=(1, 2, 2), num_attention_heads=2,
                 attention_head_dim=12, ffn_dim=48, num_layers=2),
    # Wan2.1-T2V-1.3B shapes (latent space of Wan's VAE); for GPU users
    "wan2.1-1.3b": dict(in_channels=16, out_channels=16, patch_size=(1, 2, 2),
                        num_attention_heads=12, attention_head_dim=128, ffn_dim=8960,
                        num_layers=30, text_dim=4096, frames_per_chunk=3, init="wan",
                        attention_backend="chunked", gradient_checkpointing="selective"),
    "wan2.1-14b": dict(in_channels=16, out_channels=16, patch_size=(1, 2, 2),
                       num_attention_heads=40, attention_head_dim=128, ffn_dim=13824,
                       num_layers=40, text_dim=4096, frames_per_chunk=3, init="wan",
                       attention_backend="chunked", gradient_checkpointing="selective"),
}


# ----------------------------------------------------------------------------- pieces
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


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, tpc: int) -> torch.Tensor:
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
        h = _modulate(self.norm1(x.float()), shift, scale, tpc).type_as(x)
        x = _gated_add(x, self.attn1(h, self.layer, layout, rope), gate, tpc)
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x.float()).type_as(x), self.layer, context=context)
        h = _modulate(self.norm3(x.float()), c_shift, c_scale, tpc).type_as(x)
        return _gated_add(x, self.ffn(h), c_gate, tpc)


# ----------------------------------------------------------------------------- model
class CausalVideoDiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        dim = cfg.inner_dim
        self.patch_embedding = nn.Conv3d(cfg.in_channels, dim, kernel_size=cfg.patch_size,
                                         stride=cfg.patch_size)
        self.condition_embedder = ConditionEmbedder(cfg)
        self.blocks = nn.ModuleList([TransformerBlock(cfg, i) for i in range(cfg.num_layers)])
        self.norm_out = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, cfg.out_channels * math.prod(cfg.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)
        self.rope_tables = RopeTables(cfg.attention_head_dim, cfg.rope_theta)
        if cfg.init == "zero_adaln":
            self._zero_adaln_init()

    def _zero_adaln_init(self) -> None:
        """DiT's init: every block starts as the identity and the output at zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:  # the continuous action projection has none
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.condition_embedder.time_proj.weight)
        nn.init.zeros_(self.condition_embedder.time_proj.bias)
        for b in self.blocks:
            nn.init.zeros_(b.scale_shift_table)
        nn.init.zeros_(self.scale_shift_table)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    # -- geometry ---------------------------------------------------------------------
    def token_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        pt, ph, pw = self.config.patch_size
        if frames % pt or height % ph or width % pw:
            raise ValueError(f"video of {frames}x{height}x{width} (F x H x W) is not divisible by "
                             f"the patch size {self.config.patch_size}")
        return frames // pt, height // ph, width // pw

    def tokens_per_chunk(self, height: int, width: int) -> int:
        f, h, w = self.token_grid(self.config.frames_per_chunk, height, width)
        return f * h * w

    def num_chunks(self, frames: int) -> int:
        if frames % self.config.frames_per_chunk:
            raise ValueError(f"{frames} frames is not a whole number of chunks of "
                             f"{self.config.frames_per_chunk} frames")
        return frames // self.config.frames_per_chunk

    def new_cache(self, height: int, width: int, max_chunks: int | None = None, sink: int = 0,
                  capacity: int | None = None) -> KVCache:
        """An empty KV cache; max_chunks: history chunks kept (rolling context), None = all;
        capacity: the most chunks it will hold at once, the one being denoised included (its
        buffer is then allocated once, at exactly that size; see model/cache.py)."""
        return KVCache(self.config.num_layers, self.tokens_per_chunk(height, width), max_chunks, sink,
                       capacity)

    def _rope(self, frames: int, height: int, width: int, chunk_offset: int, device):
        f, h, w = self.token_grid(frames, height, width)
        pt = self.config.patch_size[0]
        offset = chunk_offset * self.config.frames_per_chunk // pt
        return self.rope_tables.grid(f, h, w, offset, device)  # cached on the device

    # -- the trunk --------------------------------------------------------------------
    def _embed(self, x):
        x = x.to(self.patch_embedding.weight.dtype)  # fp32 noise into a bf16 model
        return self.patch_embedding(x).flatten(2).transpose(1, 2)  # (B, tokens, D)

    def _trunk(self, tokens, t, layout, rope, context, tpc, actions=None):
        """tokens (B, chunks*tpc, D), t (B, chunks) -> hidden states before the head, temb.
        actions: per-frame actions of the chunks (checked by _actions)."""
        if self.config.text_dim > 0 and context is None:
            # without it attn2 would attend over the video tokens themselves, across chunks;
            # an unconditional pass takes the embedding of an empty prompt, like Wan's
            raise ValueError("this model has text cross-attention (text_dim > 0): pass context")
        temb, mod, context = self.condition_embedder(t, context, actions)
        for block in self.blocks:
            tokens = block(tokens, mod, layout, rope, context, tpc)
        return tokens, temb

    def _head(self, tokens, temb, tpc, shape):
        b, _, f, h, w = shape
        shift, scale = (self.scale_shift_table.float()[:, None] + temb[:, :, None]).unbind(2)
        out = self.proj_out(_modulate(self.norm_out(tokens.float()), shift, scale, tpc).type_as(tokens))
        pt, ph, pw = self.config.patch_size
        gf, gh, gw = self.token_grid(f, h, w)
        out = out.reshape(b, gf, gh, gw, pt, ph, pw, self.config.out_channels)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, self.config.out_channels, f, h, w)

    def _to_velocity(self, out, x_t, t):
        out = out.to(x_t.dtype)  # the caller's dtype (float32 latents stay float32)
        if self.config.prediction == "velocity":
            return out
        # x0-prediction: v = (x_t - x0) / t; t is clamped away from 0 where v is undefined
        tt = t.clamp_min(1e-3).repeat_interleave(self.config.frames_per_chunk, dim=1)
        return (x_t - out) / tt[:, None, :, None, None]

    def _actions(self, actions, x, what="actions"):
        """The per-frame actions of video x (B, C, F, H, W): checked, on x's device; for an
        action model given none, the null action (unconditional); None for a model without."""
        cfg = self.config
        if cfg.action_kind == "none":
            if actions is not None:
                raise ValueError(f"{what} given but this model has no action conditioning "
                                 f"(model.action_kind='none')")
            return None
        b, f = x.shape[0], x.shape[2]
        if actions is None:
            return null_actions_for(cfg.action_kind, cfg.action_dim, b, f, x.device)
        self.condition_embedder.action_embedder.check(actions, b, f, what)
        return actions.to(x.device)

    def _check(self, x, t, name="x"):
        if x.ndim != 5:
            raise ValueError(f"{name} must be (B, C, F, H, W), got shape {tuple(x.shape)}")
        n = self.num_chunks(x.shape[2])
        if t.shape != (x.shape[0], n):
            raise ValueError(f"timesteps for {name} must be (B, chunks) = ({x.shape[0]}, {n}), "
                             f"got {tuple(t.shape)}")

    # -- the three layouts ------------------------------------------------------------
    def forward(self, x, t, *, history=None, t_history=None, context=None, attention=None,
                history_kv: KVCache | None = None, actions=None):
        """Velocity for x (B, C, F, H, W) at per-chunk times t (B, chunks).

        With `history` (same shape as x, per-chunk times t_history, 0 = clean) this is the
        two-stream training pass: noisy chunk i sees history chunks < i and itself.
        With `history_kv` instead (a KVCache of the history chunks' keys/values, made without
        gradient: `write_history`, or self-resampling's cache) it is the detached-history
        training pass: the same attention pattern, only x's tokens run (detached_layout.py).
        Without either, x is one block-causal stream: chunk i sees chunks <= i.
        `attention`: the history attention policy (AttentionPolicy: routed top-k or window
        layouts, via its `masked(kind, ...)`); None = dense.
        `actions`: per-frame actions of x's frames, (B, F) int64 or (B, F, D) float, for an
        action model (model.action_kind); the history stream has the same frames, so the same
        actions. None on an action model: the null action (unconditional).
        """
        self._check(x, t)
        actions = self._actions(actions, x)
        b, _, f, hh, ww = x.shape
        n, tpc = self.num_chunks(f), self.tokens_per_chunk(hh, ww)
        rope = self._rope(f, hh, ww, 0, x.device)
        if history_kv is not None:
            if history is not None:
                raise ValueError("pass history (two-stream pass) or history_kv (detached pass), not both")
            layout = DetachedLayout(history_kv, None if attention is None else attention.cfg,
                                    self.config.attention_backend)
            hidden, temb = self._trunk(self._embed(x), t, layout, rope, context, tpc, actions)
            return self._to_velocity(self._head(hidden, temb, tpc, x.shape), x, t)
        if history is None:
            layout = self._masked_layout(attention, "block_causal", n, tpc, x.device)
            hidden, temb = self._trunk(self._embed(x), t, layout, rope, context, tpc, actions)
            return self._to_velocity(self._head(hidden, temb, tpc, x.shape), x, t)
        if t_history is None:
            t_history = torch.zeros_like(t)
        self._check(history, t_history, "history")
        if history.shape != x.shape:
            raise ValueError(f"history {tuple(history.shape)} and x {tuple(x.shape)} must match")
        tokens = torch.cat([self._embed(history), self._embed(x)], dim=1)
        layout = self._masked_layout(attention, "two_stream", n, tpc, x.device)
        rope2 = tuple(torch.cat([r, r], dim=0) for r in rope)  # same positions in both streams
        both = None if actions is None else torch.cat([actions, actions], dim=1)  # the streams' frames, in order
        hidden, temb = self._trunk(tokens, torch.cat([t_history, t], dim=1), layout, rope2, context, tpc, both)
        noisy = hidden[:, n * tpc:]
        return self._to_velocity(self._head(noisy, temb[:, n:], tpc, x.shape), x, t)

    def _masked_layout(self, attention, kind: str, n: int, tpc: int, device):
        if attention is not None:
            return attention.masked(kind, n, tpc, self.config.attention_backend, device)
        make = two_stream_layout if kind == "two_stream" else block_causal_layout
        return make(n, tpc, self.config.attention_backend, device)

    def forward_chunk(self, x, t, cache: KVCache, context=None, layout=None, actions=None):
        """Velocity for one chunk x (B, C, frames_per_chunk, H, W) at times t (B, 1),
        attending to the cached history (layout b). The cache is not changed. actions: the
        chunk's per-frame actions (B, frames_per_chunk[, D])."""
        self._check(x, t)
        actions = self._actions(actions, x)
        tpc = self.tokens_per_chunk(*x.shape[-2:])
        rope = self._rope(x.shape[2], *x.shape[-2:], cache.position, x.device)
        layout = layout or CachedLayout(cache, write=False)
        hidden, temb = self._trunk(self._embed(x), t, layout, rope, context, tpc, actions)
        return self._to_velocity(self._head(hidden, temb, tpc, x.shape), x, t)

    @torch.no_grad()
    def write_cache(self, x, cache: KVCache, t=None, context=None, layout=None, actions=None) -> None:
        """Run finished chunk(s) x through the model once (at t = 0 unless given) and append
        their keys/values to the cache; this is how a chunk becomes history. actions: the
        chunks' per-frame actions (a chunk's history keys are made with its own actions)."""
        n = self.num_chunks(x.shape[2])
        t = torch.zeros(x.shape[0], n, device=x.device) if t is None else t
        self._check(x, t)
        actions = self._actions(actions, x)
        if n > 1:  # several chunks (a given prefix): one at a time, each seeing the previous
            fpc = self.config.frames_per_chunk
            for i in range(n):
                self.write_cache(x[:, :, i * fpc:(i + 1) * fpc], cache, t[:, i:i + 1], context, layout,
                                 None if actions is None else actions[:, i * fpc:(i + 1) * fpc])
            return
        tpc = self.tokens_per_chunk(*x.shape[-2:])
        rope = self._rope(x.shape[2], *x.shape[-2:], cache.position, x.device)
        layout = layout or CachedLayout(cache, write=True)
        self._trunk(self._embed(x), t, layout, rope, context, tpc, actions)

    @torch.no_grad()
    def write_history(self, x, cache: KVCache, t=None, context=None, attention=None, actions=None) -> None:
        """Run history chunks x (B, C, F, H, W) through the model in ONE block-causal pass (at
        t = 0 unless given, (B, chunks)) and append every layer's keys/values of all of them to
        an empty cache: what the history stream of the two-stream pass computes, without
        gradient (detached-history training). `attention`: the history attention policy;
        `actions`: x's per-frame actions."""
        if cache.num_chunks or cache.position:
            raise ValueError("write_history fills an empty cache (its chunks sit at positions 0..)")
        n = self.num_chunks(x.shape[2])
        t = torch.zeros(x.shape[0], n, device=x.device) if t is None else t
        self._check(x, t)
        actions = self._actions(actions, x)
        tpc = self.tokens_per_chunk(*x.shape[-2:])
        rope = self._rope(x.shape[2], *x.shape[-2:], 0, x.device)
        layout = CacheWritingLayout(self._masked_layout(attention, "block_causal", n, tpc, x.device), cache)
        self._trunk(self._embed(x), t, layout, rope, context, tpc, actions)


def build_model(cfg: DiTConfig | None = None, preset: str | None = None, **overrides) -> CausalVideoDiT:
    """A model from a config, or from a named preset (PRESETS) with field overrides."""
    if cfg is None:
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; known: {sorted(PRESETS)}")
        cfg = DiTConfig(**{**(PRESETS[preset] if preset else {}), **overrides})
    return CausalVideoDiT(cfg)
