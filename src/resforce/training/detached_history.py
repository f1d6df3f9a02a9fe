"""Detached-history training (`history_grad: false` in a stage): the history keys/values.

The paper's two-stream step runs the history stream and the noisy stream with gradients
(about 6 chunk-passes per chunk). With detached history the noisy stream attends to history
keys/values computed WITHOUT gradient and only the noisy stream runs with autograd; the
loss value is the two-stream loss (same noise, same t), the gradient lacks the history
stream's part (model/detached_layout.py holds the layouts and the naive reference).

Where the keys/values come from:
- self-resampling (strategy 'resampling'): its KV cache after resampling already holds, per
  layer, the keys/values of the degraded chunks 0..N-2 at t = 0 with the current weights at
  their RoPE positions, which is what the history stream computes (history chunk N-1 is
  nobody's history, so resampling skips it). It is reused: no second history pass. Only when the stage routes and
  `route_resampling` is off did resampling attend differently from the history stream (dense
  vs routed); then the cache is not the history stream's and one history pass runs instead.
  Resampling runs in eval mode: the model has no mode-dependent layer (dropout p = 0 is the
  identity in train mode too), so eval and train give the same keys.
- every other strategy: one no-grad block-causal pass over history chunks 0..N-2 at
  t_history (CausalVideoDiT.write_history).

Self Forcing builds its training rollout's KV cache the same way: in guandeh17/Self-Forcing,
pipeline/self_forcing_training.py (SelfForcingTrainingPipeline.inference_with_trajectory),
`_initialize_kv_cache` allocates zeroed per-block K/V buffers, and after each block is
denoised, "Step 3.3: rerun with timestep zero to update the cache" runs the generator on the
finished block under `torch.no_grad()`; later blocks attend to those keys/values, so their
loss sends no gradient into earlier blocks' keys/values.
"""

from __future__ import annotations

import torch

from resforce.history import HistoryConfig
from resforce.model.cache import KVCache


def resampling_cache_is_history(cfg: HistoryConfig, attention) -> bool:
    """True when self-resampling's cache holds the two-stream history stream's keys/values:
    strategy 'resampling', attending as the training pass does (dense, or routed with
    route_resampling)."""
    if cfg.strategy != "resampling":
        return False
    dense = attention is None or attention.cfg.mode == "dense"
    return dense or cfg.route_resampling


def history_kv(cfg: HistoryConfig, model, history: torch.Tensor, t_history: torch.Tensor,
               resample_cache: KVCache | None = None, attention=None, context=None, actions=None) -> KVCache:
    """The history keys/values of a detached-history training step, without gradient:
    self-resampling's cache when it holds them (resampling_cache_is_history), else one
    no-grad block-causal pass over history chunks 0..N-2 at t_history (B, N). `history` may
    lack the last chunk (build_history_and_cache's skip_last): it is nobody's history.
    `actions`: the clips' per-frame actions (action model), (B, F[, D]) of the whole clip."""
    if resample_cache is not None and resampling_cache_is_history(cfg, attention):
        return resample_cache
    fpc = model.config.frames_per_chunk
    n = t_history.shape[1]
    cache = model.new_cache(*history.shape[-2:], capacity=max(n - 1, 1))  # exact: allocated once
    if n > 1:  # the last chunk is nobody's history
        with torch.no_grad():
            a = None if actions is None else actions[:, :(n - 1) * fpc]
            model.write_history(history[:, :, :(n - 1) * fpc], cache, t_history[:, :n - 1], context, attention, a)
    return cache
