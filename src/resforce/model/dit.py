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

import math

import torch
import torch.nn as nn

from resforce.model.action_embedding import null_actions_for
from resforce.model.attention.layouts import CachedLayout, block_causal_layout, two_stream_layout
from resforce.model.cache import KVCache
from resforce.model.attention.detached import CacheWritingLayout, DetachedLayout
from resforce.model.rope import RopeTables
from resforce.model.config import PRESETS, DiTConfig
from resforce.model.blocks import ConditionEmbedder, FP32LayerNorm, TransformerBlock, modulate


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
        out = self.proj_out(modulate(self.norm_out(tokens.float()), shift, scale, tpc).type_as(tokens))
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
        training pass: the same attention pattern, only x's tokens run (model/attention/detached.py).
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
