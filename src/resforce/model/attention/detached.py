"""Detached-history attention: the layouts of training with `history_grad: false`.

The two-stream pass (attention.py, layout a) runs [history | noisy] with gradients through
both streams. With detached history the noisy stream attends to history keys/values made
WITHOUT gradient, so only the noisy half of the tokens runs with autograd:
- `CacheWritingLayout`: one no-grad block-causal pass over the history chunks that appends
  every layer's (post-RoPE) keys/values to a KVCache. History chunk j sees chunks <= j, as the
  history stream of the two-stream pass does, so the cache holds what that stream computes.
  (Self-resampling's cache already holds them; the trainer reuses it, see detached_history.py.)
- `DetachedLayout`: the training pass over the noisy chunks only; noisy chunk i sees cached
  history chunks < i plus its own keys (`detached_attention`: model/attention/chunked.py's
  block-sparse kernel under a (N, 2N - 1) chunk mask; `detached_attention_reference`, one
  SDPA call per chunk, is the naive reference and the routed path).
- `HistoryDetachedTwoStream`: the naive reference, the two-stream layout with the history
  stream's keys/values detached; same forward, and the gradient detached training must have.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from resforce.model.attention.layouts import two_stream_layout
from resforce.model.cache import KVCache
from resforce.model.attention.chunked import chunk_attention
from resforce.model.attention.config import HistoryAttentionConfig
from resforce.model.attention.routing_naive import routed_reference


@functools.lru_cache(maxsize=64)
def detached_chunk_mask(num_chunks: int) -> torch.Tensor:
    """(N, 2N - 1) bool chunk mask of the detached pass: rows are noisy chunks 0..N-1, columns
    [history chunks 0..N-2 | noisy chunks 0..N-1]; noisy chunk i sees history < i and itself."""
    n = num_chunks
    idx = torch.arange(n)
    mask = torch.zeros(n, 2 * n - 1, dtype=torch.bool)
    mask[:, :n - 1] = idx[:, None] > idx[None, :n - 1]
    mask[:, n - 1:] = torch.eye(n, dtype=torch.bool)
    return mask


def detached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hist_k: torch.Tensor | None,
                       hist_v: torch.Tensor | None, tokens_per_chunk: int,
                       routing: HistoryAttentionConfig | None = None, backend: str = "chunked") -> torch.Tensor:
    """Noisy chunk i attends to history chunks < i plus its own keys.

    q, k, v (B, H, N * L, d): the noisy chunks' queries/keys/values; hist_k, hist_v
    (B, H, >= N - 1, L, d): the history chunks' keys/values (no gradient), or None when N = 1.
    Dense: [history 0..N-2 | noisy] keys under detached_chunk_mask through chunk_attention
    (block-sparse, no S x S tensor); backend 'sdpa' takes the naive per-chunk reference
    instead. routing: a routed / windowed policy (topk or window mode) always goes chunk by
    chunk through the naive routed attention (routing_naive.routed_reference), which selects
    like the two-stream routed layout does."""
    tpc = tokens_per_chunk
    n = q.shape[2] // tpc
    if n > 1 and (hist_k is None or hist_k.shape[2] < n - 1):
        have = 0 if hist_k is None else hist_k.shape[2]
        raise ValueError(f"detached attention over {n} chunks needs the keys of >= {n - 1} history "
                         f"chunks, the cache holds {have}")
    routed = routing is not None and routing.mode != "dense"
    if routed or backend == "sdpa":
        return detached_attention_reference(q, k, v, hist_k, hist_v, tpc, routing if routed else None)
    if n == 1:
        return F.scaled_dot_product_attention(q, k, v)
    keys = torch.cat([hist_k[:, :, :n - 1].flatten(2, 3), k], 2)
    values = torch.cat([hist_v[:, :, :n - 1].flatten(2, 3), v], 2)
    return chunk_attention(q, keys, values, detached_chunk_mask(n), tpc)


def detached_attention_reference(q, k, v, hist_k, hist_v, tokens_per_chunk: int,
                                 routing: HistoryAttentionConfig | None = None) -> torch.Tensor:
    """The naive detached attention (arguments as detached_attention): one SDPA call per noisy
    chunk over [its history chunks | its own keys] (routed: routed_reference per chunk)."""
    tpc = tokens_per_chunk
    out = []
    for i in range(q.shape[2] // tpc):
        sl = slice(i * tpc, (i + 1) * tpc)
        qi, ki, vi = q[:, :, sl], k[:, :, sl], v[:, :, sl]
        hk = None if i == 0 else hist_k[:, :, :i]
        hv = None if i == 0 else hist_v[:, :, :i]
        if routing is not None:
            out.append(routed_reference(routing, qi, ki, vi, hk, hv))
        elif hk is None:
            out.append(F.scaled_dot_product_attention(qi, ki, vi))
        else:
            out.append(F.scaled_dot_product_attention(qi, torch.cat([hk.flatten(2, 3), ki], 2),
                                                      torch.cat([hv.flatten(2, 3), vi], 2)))
    return torch.cat(out, 2)


class DetachedLayout:
    """The training pass of detached-history training: noisy chunks 0..N-1 at RoPE positions
    0..N-1, attending to the history keys/values held by `cache` (chunk j at position j)."""

    def __init__(self, cache: KVCache, routing: HistoryAttentionConfig | None = None, backend: str = "chunked"):
        if cache.layers[0].evicted:
            raise ValueError("detached attention needs a cache that evicted nothing (chunk j at slot j)")
        self.cache, self.routing, self.backend = cache, routing, backend

    def attend(self, layer, q, k, v):
        hist_k, hist_v = self.cache[layer].chunks()
        return detached_attention(q, k, v, hist_k, hist_v, self.cache.tokens_per_chunk, self.routing,
                                  self.backend)


class CacheWritingLayout:
    """Wraps a full-sequence layout (block-causal, dense or routed): attends through it and
    appends each layer's keys/values, all chunks at once, to `cache`. Meant for no-grad passes:
    the stored keys are detached either way."""

    def __init__(self, inner, cache: KVCache):
        self.inner, self.cache = inner, cache

    def attend(self, layer, q, k, v):
        out = self.inner.attend(layer, q, k, v)
        self.cache[layer].append(k.detach(), v.detach(), self.cache.tokens_per_chunk)
        return out


class HistoryDetachedTwoStream:
    """Reference: the two-stream layout (dense, or `inner` for a routed one) with the history
    stream's keys/values detached. The forward is the two-stream forward; no gradient reaches
    the history stream (its only way into the loss is through these keys/values)."""

    def __init__(self, num_chunks: int, tokens_per_chunk: int, inner=None, device=None):
        self.inner = inner or two_stream_layout(num_chunks, tokens_per_chunk, "sdpa", device)
        self.split = num_chunks * tokens_per_chunk

    def attend(self, layer, q, k, v):
        s = self.split
        k = torch.cat([k[:, :, :s].detach(), k[:, :, s:]], 2)
        v = torch.cat([v[:, :, :s].detach(), v[:, :, s:]], 2)
        return self.inner.attend(layer, q, k, v)


class HistoryDetachedPolicy:
    """An attention policy (AttentionPolicy's `masked` hook) whose two-stream layout is
    HistoryDetachedTwoStream: `model(x, t, history=h, attention=HistoryDetachedPolicy(p))` is
    the reference pass of detached-history training under policy p (None = dense)."""

    def __init__(self, policy=None):
        self.policy = policy

    def masked(self, kind, num_chunks, tokens_per_chunk, backend="sdpa", device=None):
        if kind != "two_stream":
            raise ValueError("HistoryDetachedPolicy only builds the two-stream layout")
        inner = None if self.policy is None else self.policy.masked(kind, num_chunks, tokens_per_chunk,
                                                                     "sdpa", device)
        return HistoryDetachedTwoStream(num_chunks, tokens_per_chunk, inner, device)
