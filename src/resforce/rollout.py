"""Chunk-by-chunk generation with a KV cache (docs/method.md, inference).

For chunk i: start from noise, take `steps` Euler steps on the shifted grid while attending
to the cached history, then run the model once on the finished chunk (at t = 0, or at a
small re-noising level for diffusion-forcing models) to append its keys/values to the cache.
Any number of chunks can be generated, far past the training length; a given prefix (image
or video to video) is written into the cache first and returned as part of the video.
With `context` set, the cache keeps only the most recent `context - 1` chunks (a rolling
context; model/cache.py), so each chunk sees at most as much history as in training, the
given prefix leaves the view once enough chunks follow it, and memory stays constant.

`reference_rollout` is the naive version: no cache, it re-runs the block-causal model over
the whole prefix at every step. It is slow and exists so a test can prove the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from resforce.flow import (EulerSchedule, add_noise, euler_grid, euler_integrate, euler_sample, grid_schedule,
                   guided)
from resforce.device import autocast
from resforce.model.attention.policy import AttentionPolicy, cached_layout
from resforce.model.attention.config import HistoryAttentionConfig
from resforce.model.dit import CausalVideoDiT
from resforce.actions import null_actions
from resforce.model.action_embedding import null_actions_for
from resforce.text_context import check_context



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
    """Seed of the initial noise of every chunk (and of the re-noising of history)."""
    context: Optional[int] = None
    """Chunks the model sees at once, its own chunk included, like a training clip: the KV
    cache keeps the last context - 1 chunks and evicts older ones (rolling context, constant
    memory). None: the run's training context (its longest training clip) when generating
    from a run, all history in a bare `rollout` call. 0: all history (dense attention over
    the whole video: tests context extrapolation past the training length)."""
    sink: int = 0
    """With a rolling context: the first `sink` chunks stay in view for good (an attention
    sink, LongLive-style). Use it only for runs trained with one."""

    def cache_chunks(self) -> int | None:
        """History chunks the cache keeps (None = all)."""
        if self.context is None or self.context == 0:
            return None
        if self.context < 1:
            raise ValueError(f"sample.context must be >= 1 chunk (or 0 for all history), got {self.context}")
        if not 0 <= self.sink < self.context:
            raise ValueError(f"sample.sink={self.sink} must be >= 0 and < sample.context={self.context}")
        return self.context - 1


def guidance_text(text: torch.Tensor | None, uncond_text: torch.Tensor | None, batch: int) -> torch.Tensor:
    """[text; uncond_text] embeddings on the batch dim, (2B, L, D): classifier-free guidance
    runs the conditional and unconditional branches as one batch over one KV cache. Text of
    batch 1 is shared by the B samples. (The model calls text embeddings `context`, Wan's name
    for the cross-attention input.)"""
    if text is None or uncond_text is None:
        raise ValueError("cfg_scale != 1 needs text embeddings and unconditional ones (uncond_text)")
    pair = [c.expand(batch, *c.shape[1:]) if c.shape[0] == 1 else c for c in (text, uncond_text)]
    if pair[0].shape != pair[1].shape or pair[0].shape[0] != batch:
        raise ValueError(f"text {tuple(text.shape)} and uncond_text {tuple(uncond_text.shape)} "
                         f"must both be (batch={batch} or 1, tokens, dim) with the same tokens and dim "
                         f"(pad the unconditional prompt's embedding like the conditional one, as Wan does)")
    return torch.cat(pair, dim=0)


def _chunk_velocity(model, cache, context, attention, actions=None):
    def v(x, t):
        layout = cached_layout(attention, cache, False)
        return model.forward_chunk(x, t, cache, context=context, layout=layout, actions=actions)
    return v


def write_chunk(model, chunk, cache, context, history_noise, generator, attention, guide, actions=None):
    b, fpc = chunk.shape[0], model.config.frames_per_chunk
    t = torch.full((b, 1), float(history_noise), device=chunk.device)
    if history_noise > 0:
        noise = torch.randn(chunk.shape, generator=generator, device=chunk.device)
        chunk = add_noise(chunk, noise, t, fpc)
    if guide:  # both branches see the same finished chunk
        chunk, t = torch.cat([chunk, chunk]), torch.cat([t, t])
    model.write_cache(chunk, cache, t=t, context=context, layout=cached_layout(attention, cache, True),
                      actions=actions)


def chunk_step(model: CausalVideoDiT, x: torch.Tensor, schedule: EulerSchedule, cache,
               context: torch.Tensor | None, attention: AttentionPolicy | None = None,
               cfg_scale: float = 1.0, commit: bool = True, history_noise: float = 0.0,
               generator=None, actions: torch.Tensor | None = None) -> torch.Tensor:
    """One autoregressive step, shared by rollout and self-resampling (history.py): denoise
    chunk x (B, ...) along the Euler schedule while attending to the KV cache, then commit the
    finished chunk to it as history (unless commit=False). With guidance (cfg_scale != 1) the
    cache has batch 2B and `context` (the text embeddings, Wan's name) is guidance_text(cond, uncond): both branches run as
    one batch of 2B. `actions`: the chunk's per-frame actions for an action model, (B,
    frames_per_chunk[, D]); with guidance (2B, ...): guidance_actions(actions), the null
    action in the unconditional half, which its history is written with too."""
    guide = cfg_scale != 1.0
    v = _chunk_velocity(model, cache, context, attention, actions)
    chunk = euler_integrate(guided(v, cfg_scale) if guide else v, x, schedule)
    if commit:
        write_chunk(model, chunk, cache, context, history_noise, generator, attention, guide, actions)
    return chunk


def guidance_actions(actions: torch.Tensor) -> torch.Tensor:
    """[actions; null] on the batch dim: guidance over actions runs the action-conditioned and
    the action-free branch (trained by model.action_dropout) as one batch of 2B."""
    return torch.cat([actions, null_actions(actions)])


@torch.no_grad()
def rollout(model: CausalVideoDiT, batch: int, height: int, width: int, cfg: SampleConfig,
            prefix: torch.Tensor | None = None, text: torch.Tensor | None = None,
            uncond_text: torch.Tensor | None = None,
            attention: AttentionPolicy | None = None,
            callback: Callable[[int, torch.Tensor], None] | None = None,
            device=None, return_video: bool = True, precision: str = "fp32",
            actions: torch.Tensor | None = None) -> torch.Tensor | None:
    """Generate (batch, C, F, H, W): the prefix chunks (if any) followed by cfg.chunks new ones.

    `actions`: for an action model, the per-frame actions of the whole video, prefix frames
    included: (batch, F) int64 or (batch, F, D) float (None: the null action, unconditional).
    With cfg_scale != 1 on an action model without text, guidance is over the actions.

    `callback(i, chunk)` is called as each chunk is finished (streaming). With
    `return_video=False` finished chunks go only to the callback and nothing is returned, so
    with a rolling context a rollout of any length runs in constant memory. `attention`: the
    history attention policy (routed / windowed layouts); None = dense. `precision`: 'fp32'
    or 'bf16' (model calls under bf16 autocast; the latents and the Euler steps stay fp32).
    Guidance (cfg_scale != 1) runs both branches as one batch of 2B over one KV cache."""
    mc = model.config
    device = device or next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    guide = cfg.cfg_scale != 1.0
    text, uncond_text = _text_pair(mc, batch, device, text, uncond_text)
    action_guide = guide and mc.action_kind != "none" and mc.text_dim == 0
    ctx = guidance_text(text, uncond_text, batch) if guide and not action_guide else text
    n_prefix = 0
    if prefix is not None:
        if prefix.shape[0] != batch or prefix.shape[-2:] != (height, width):
            raise ValueError(f"prefix of shape {tuple(prefix.shape)} does not match batch={batch}, "
                             f"size={height}x{width}")
        n_prefix = model.num_chunks(prefix.shape[2])  # validates whole chunks
    keep = cfg.cache_chunks()
    # every chunk is committed: the cache holds at most prefix + chunks (fewer if it rolls)
    cache = model.new_cache(height, width, keep, cfg.sink if keep is not None else 0,
                            capacity=n_prefix + cfg.chunks)
    chunks = []
    grid = euler_grid(cfg.steps, cfg.shift)
    fpc = mc.frames_per_chunk
    shape = (batch, mc.in_channels, fpc, height, width)
    acts = video_actions(model, actions, batch, (n_prefix + cfg.chunks) * fpc, device, guide)
    at = (lambda i: None) if acts is None else (lambda i: acts[:, i * fpc:(i + 1) * fpc])  # noqa: E731
    with autocast(precision, device):
        for i in range(n_prefix):
            c = prefix[:, :, i * fpc:(i + 1) * fpc].to(device)
            write_chunk(model, c, cache, ctx, cfg.history_noise, generator, attention, guide, at(i))
            if return_video:
                chunks.append(c)
        for i in range(cfg.chunks):
            noise = torch.randn(shape, generator=generator, device=device)
            chunk = chunk_step(model, noise, grid_schedule(grid, batch, device), cache, ctx, attention,
                               cfg.cfg_scale, history_noise=cfg.history_noise, generator=generator,
                               actions=at(n_prefix + i))
            if callback is not None:
                callback(n_prefix + i, chunk)
            if return_video:
                chunks.append(chunk)
    return torch.cat(chunks, dim=2) if return_video else None


@torch.no_grad()
def reference_rollout(model: CausalVideoDiT, batch: int, height: int, width: int,
                      cfg: SampleConfig, prefix: torch.Tensor | None = None,
                      text: torch.Tensor | None = None, device=None,
                      precision: str = "fp32", actions: torch.Tensor | None = None) -> torch.Tensor:
    """The same generation without a cache (clean history, no guidance): every Euler step
    runs the block-causal model over [finished chunks at t = 0 | current chunk at t]; with a
    rolling context, under the banded mask that context implies (`_banded`)."""
    mc = model.config
    device = device or next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    text = _text_pair(mc, batch, device, text, None)[0]
    fpc = mc.frames_per_chunk
    done = prefix.to(device) if prefix is not None else None
    grid = euler_grid(cfg.steps, cfg.shift)
    shape = (batch, mc.in_channels, fpc, height, width)
    banded, alone = _banded(cfg), cfg.cache_chunks() == 0  # context 1: every chunk alone
    n_prefix = 0 if prefix is None else prefix.shape[2] // fpc
    acts = video_actions(model, actions, batch, (n_prefix + cfg.chunks) * fpc, device)
    with autocast(precision, device):
        for _ in range(cfg.chunks):
            seen = None if alone else done
            n_seen = 0 if seen is None else seen.shape[2] // fpc
            end = (0 if done is None else done.shape[2]) + fpc  # frames up to this chunk's last
            a = None if acts is None else acts[:, end - (n_seen + 1) * fpc:end]

            def v(x, t, seen=seen, n_seen=n_seen, a=a):
                full = x if seen is None else torch.cat([seen, x], dim=2)
                t_full = torch.cat([torch.zeros(batch, n_seen, device=device), t], dim=1)
                return model(full, t_full, context=text, attention=banded, actions=a)[:, :, -fpc:]

            chunk = euler_sample(v, torch.randn(shape, generator=generator, device=device), grid)
            done = chunk if done is None else torch.cat([done, chunk], dim=2)
    return done


def video_actions(model, actions, batch: int, frames: int, device, guide: bool = False):
    """A rollout's per-frame actions (batch, frames[, D]) on `device`, checked; the null
    action where an action model is given none; [actions; null] with guidance; None for a
    model without actions (ValueError if some are given)."""
    mc = model.config
    if mc.action_kind == "none":
        if actions is not None:
            raise ValueError("actions given but this model has no action conditioning (model.action_kind='none')")
        return None
    if actions is None:
        actions = null_actions_for(mc.action_kind, mc.action_dim, batch, frames, device)
    model.condition_embedder.action_embedder.check(actions, batch, frames, "rollout actions (prefix + chunks frames)")
    actions = actions.to(device)
    return guidance_actions(actions) if guide else actions


def _text_pair(mc, batch: int, device, text, uncond_text):
    """(text, uncond_text) embeddings on `device`, each (batch, tokens, text_dim) (batch-1 text
    is shared by every sample); a model with cross-attention needs text (ValueError)."""
    if mc.text_dim == 0:
        return text, uncond_text
    if text is None:
        raise ValueError(f"this model has text cross-attention (model.text_dim={mc.text_dim}): pass "
                         f"text embeddings (batch, tokens, {mc.text_dim}); without a prompt, "
                         f"text_context.empty_prompt(...) is what the trainer used")
    return tuple(None if c is None else check_context(c.to(device), mc.text_dim, batch, name)
                 for c, name in ((text, "text"), (uncond_text, "uncond_text")))


def _banded(cfg: SampleConfig) -> AttentionPolicy | None:
    """With a rolling context, the block-causal pass under a banded chunk mask: chunk j sees
    the `context - 1` chunks before it (and the sink). A rolling KV cache computes exactly
    this: each chunk's cached keys were made when it was written, seeing its own band, and
    keep their absolute RoPE positions. (It is not a re-encoding of the last chunks from
    scratch: those would see less history at deeper layers.)"""
    keep = cfg.cache_chunks()
    if not keep:  # None: all history (dense); 0 (context 1): every chunk alone, see reference_rollout
        return None
    return AttentionPolicy(HistoryAttentionConfig(mode="window", window=keep - cfg.sink, sink=cfg.sink))
