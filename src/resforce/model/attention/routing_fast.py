"""Routed history attention, the fast rollout path (`RoutedCachedLayout`).

Scores the cached chunks by q . k_mean (the cache's stored mean keys; no pass over old keys),
groups the query tokens by the chunk they selected and attends each group to that chunk's
keys in the cache buffer (history branch, routing_grouped.attend_routes: no keys are copied
per query token), attends over the chunk's own keys (intra branch) and merges all of a
token's branches by log-sum-exp in float32. Its attention cost does not grow with the history
length; the O(n * d) scoring, the top-k and the route sort do. Window mode (the
sliding-window + sink baseline) attends over chunk slices of the cache. The naive reference
it must equal is routing_naive.routed_reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from resforce.model.cache import KVCache
from resforce.model.attention.config import HistoryAttentionConfig
from resforce.model.attention.router_stats import RouterRecorder
from resforce.model.attention.routing_grouped import attend_routes, merge_routes
from resforce.model.attention.varlen import attention_lse


class RoutedCachedLayout:
    """Rollout layout: the current chunk sees the history chunks its tokens select plus its
    own keys. topk: per query token and head, score the n cached chunks by q . k_mean, group
    the queries by selected chunk, attend each group to its chunk and the chunk to its own
    keys, and merge by log-sum-exp. window: attend over the chunk slices [0, sink) and
    [n - window, n) plus the own chunk. With `write=True` the chunk's k/v (and their mean,
    by LayerCache.append) are appended to the cache afterwards."""

    def __init__(self, cache: KVCache, write: bool, cfg: HistoryAttentionConfig,
                 recorder: RouterRecorder | None = None):
        cfg.validate()
        self.cache, self.write, self.cfg = cache, write, cfg
        self.recorder = recorder if (recorder is not None and (recorder.record_writes or not write)) else None

    def attend(self, layer, q, k, v):
        lc = self.cache[layer]
        n = lc.num_chunks
        if n == 0:
            out = F.scaled_dot_product_attention(q, k, v)
        elif self.cfg.mode == "window":
            out = self._window(layer, lc, n, q, k, v)
        elif self.cfg.mode == "dense" or self.cfg.topk >= n:
            hk, hv = lc.chunks()
            out = F.scaled_dot_product_attention(q, torch.cat([hk.flatten(2, 3), k], 2),
                                                 torch.cat([hv.flatten(2, 3), v], 2))
            if self.recorder is not None:
                b, h, t, _ = q.shape
                all_idx = torch.arange(n, device=q.device).expand(b, h, t, n)
                self.recorder.record(layer, all_idx, n)
        else:
            out = self._topk(layer, lc, n, q, k, v)
        if self.write:
            lc.append(k, v, self.cache.tokens_per_chunk)
        return out

    def _window(self, layer, lc, n, q, k, v):
        s = min(self.cfg.sink, n)
        lo = max(s, n - self.cfg.window)
        parts_k = [lc.k[:, :, :s].flatten(2, 3), lc.k[:, :, lo:n].flatten(2, 3), k]
        parts_v = [lc.v[:, :, :s].flatten(2, 3), lc.v[:, :, lo:n].flatten(2, 3), v]
        if self.recorder is not None:
            b, h, t, _ = q.shape
            idx = torch.cat([torch.arange(s, device=q.device), torch.arange(lo, n, device=q.device)])
            self.recorder.record(layer, idx.expand(b, h, t, -1), n)
        return F.scaled_dot_product_attention(q, torch.cat(parts_k, 2), torch.cat(parts_v, 2))

    def _topk(self, layer, lc, n, q, k, v):
        b, h, t, d = q.shape
        cap, tpc = lc.k.shape[2], lc.k.shape[3]
        # router: per (b, head, token) scores over the cached mean keys; O(T n d)
        scores = q @ lc.k_mean[:, :, :n].transpose(-1, -2)               # (B, H, T, n)
        idx = scores.topk(self.cfg.topk, dim=-1, sorted=False).indices    # (B, H, T, k)
        if self.recorder is not None:
            self.recorder.record(layer, idx, n)
        # history branch: queries grouped by the cached chunk they chose, each group against
        # that chunk's keys, read in place from the (B * H * cap, L, d) view of the buffer
        rows = idx + (torch.arange(b * h, device=q.device) * cap).view(b, h, 1, 1)
        o_h, lse_h = attend_routes(q, lc.k.view(b * h * cap, tpc, d), lc.v.view(b * h * cap, tpc, d),
                                   rows, groups=b * h * n)
        # intra branch: the chunk's own tokens
        o_i, lse_i = attention_lse(q.reshape(b * h, t, d), k.reshape(b * h, -1, d), v.reshape(b * h, -1, d))
        o_i, lse_i = o_i.view(b, h, t, 1, d), lse_i.view(b, h, t, 1)
        return merge_routes(torch.cat([o_h, o_i], -2), torch.cat([lse_h, lse_i], -1)).to(q.dtype)
