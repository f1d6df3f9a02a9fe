"""Chunk-by-chunk generation with a KV cache (METHOD.md section 6).

For chunk i: start from noise, take `steps` Euler steps on the shifted grid while attending
to the cached history, then run the model once on the finished chunk (at t = 0, or at a
small re-noising level for diffusion-forcing models) to append its keys/values to the cache.
Any number of chunks can be generated, far past the training length; a given prefix (image
or video to video) is written into the cache first and returned as part of the video.

`reference_rollout` is the naive version: no cache, it re-runs the block-causal model over
the whole prefix at every step. It is slow and exists so a test can prove the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .flow import add_noise, euler_grid, euler_sample, guided
from .model.cache import KVCache
from .model.dit import CausalVideoDiT

LayoutFactory = Callable[[KVCache, bool], object]
"""(cache, write) -> attention layout; lets routing/window baselines replace dense attention."""


@dataclass
class SampleConfig:
    """How to generate."""

    chunks: int = 32
    """Chunks to generate (after the prefix)."""
    steps: int = 16
    """Euler steps per chunk (the paper: 32)."""
    shift: float = 5.0
    """Shift of the Euler grid toward noise (the paper: 5.0)."""
    cfg_scale: float = 1.0
    """Classifier-free guidance scale; needs an unconditional context (the paper: 5.0)."""
    history_noise: float = 0.0
    """Re-noise each finished chunk to this level before caching it and tell the model so
    (diffusion forcing / noise augmentation inference); 0 = clean history."""
    seed: int = 0


def _chunk_velocity(model, cache, context, layout_fn):
    def v(x, t):
        layout = layout_fn(cache, False) if layout_fn else None
        return model.forward_chunk(x, t, cache, context=context, layout=layout)
    return v


def _write(model, chunk, caches, contexts, history_noise, generator, layout_fn):
    b, fpc = chunk.shape[0], model.config.frames_per_chunk
    t = torch.full((b, 1), float(history_noise), device=chunk.device)
    if history_noise > 0:
        noise = torch.randn(chunk.shape, generator=generator, device=chunk.device)
        chunk = add_noise(chunk, noise, t, fpc)
    for cache, ctx in zip(caches, contexts):
        layout = layout_fn(cache, True) if layout_fn else None
        model.write_cache(chunk, cache, t=t, context=ctx, layout=layout)


@torch.no_grad()
def rollout(model: CausalVideoDiT, batch: int, height: int, width: int, cfg: SampleConfig,
            prefix: torch.Tensor | None = None, context: torch.Tensor | None = None,
            uncond_context: torch.Tensor | None = None,
            layout_fn: LayoutFactory | None = None,
            callback: Callable[[int, torch.Tensor], None] | None = None,
            device=None) -> torch.Tensor:
    """Generate (batch, C, F, H, W): the prefix chunks (if any) followed by cfg.chunks new ones.

    `callback(i, chunk)` is called as each chunk is finished (streaming)."""
    mc = model.config
    device = device or next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    use_cfg = cfg.cfg_scale != 1.0
    if use_cfg and uncond_context is None:
        raise ValueError("cfg_scale != 1 needs an unconditional context (uncond_context)")
    # guidance needs its own cache: the unconditional branch's history keys differ
    contexts = [context, uncond_context] if use_cfg else [context]
    caches = [model.new_cache(height, width) for _ in contexts]
    chunks = []
    if prefix is not None:
        if prefix.shape[0] != batch or prefix.shape[-2:] != (height, width):
            raise ValueError(f"prefix of shape {tuple(prefix.shape)} does not match batch={batch}, "
                             f"size={height}x{width}")
        model.num_chunks(prefix.shape[2])  # validates whole chunks
        for i in range(prefix.shape[2] // mc.frames_per_chunk):
            c = prefix[:, :, i * mc.frames_per_chunk:(i + 1) * mc.frames_per_chunk].to(device)
            _write(model, c, caches, contexts, cfg.history_noise, generator, layout_fn)
            chunks.append(c)
    grid = euler_grid(cfg.steps, cfg.shift, device=device)
    shape = (batch, mc.in_channels, mc.frames_per_chunk, height, width)
    for i in range(cfg.chunks):
        noise = torch.randn(shape, generator=generator, device=device)
        v = guided(_chunk_velocity(model, caches[0], context, layout_fn),
                   _chunk_velocity(model, caches[1], uncond_context, layout_fn) if use_cfg else None,
                   cfg.cfg_scale)
        chunk = euler_sample(v, noise, grid)
        _write(model, chunk, caches, contexts, cfg.history_noise, generator, layout_fn)
        chunks.append(chunk)
        if callback is not None:
            callback(len(chunks) - 1, chunk)
    return torch.cat(chunks, dim=2)


@torch.no_grad()
def reference_rollout(model: CausalVideoDiT, batch: int, height: int, width: int,
                      cfg: SampleConfig, prefix: torch.Tensor | None = None,
                      context: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """The same generation without a cache (clean history, no guidance): every Euler step
    runs the block-causal model over [finished chunks at t = 0 | current chunk at t]."""
    mc = model.config
    device = device or next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    done = prefix.to(device) if prefix is not None else None
    grid = euler_grid(cfg.steps, cfg.shift, device=device)
    shape = (batch, mc.in_channels, mc.frames_per_chunk, height, width)
    for _ in range(cfg.chunks):
        n_done = 0 if done is None else done.shape[2] // mc.frames_per_chunk

        def v(x, t, done=done, n_done=n_done):
            full = x if done is None else torch.cat([done, x], dim=2)
            t_full = torch.cat([torch.zeros(batch, n_done, device=device), t], dim=1)
            return model(full, t_full, context=context)[:, :, -mc.frames_per_chunk:]

        chunk = euler_sample(v, torch.randn(shape, generator=generator, device=device), grid)
        done = chunk if done is None else torch.cat([done, chunk], dim=2)
    return done
