"""Routed history attention, the fast rollout path (`RoutedCachedLayout`).

Scores the cached chunks by q . k_mean (the cache's stored mean keys; no pass over old keys),
gathers only the selected chunks' K/V, attends over them (history branch) and over the
chunk's own keys (intra branch) and merges the two by their log-sum-exp. Its cost does not
grow with the history length except for the O(n * d) scoring and the top-k. Window mode (the
sliding-window + sink baseline) attends over chunk slices of the cache. The naive reference
it must equal is routing_naive.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .cache import KVCache
from .history_attention_config import HistoryAttentionConfig
from .router_stats import RouterRecorder


def _attend_lse(q, k, v, scale):
    """Softmax attention and its log-sum-exp. q (..., T, d), k/v (..., S, d) ->
    out (..., T, d) in v's dtype, lse (..., T, 1) float32: the logits and their softmax
    statistics are float32 whatever the input dtype (a bf16 log-sum-exp is off by ~1e-2
    absolute, a percent of weight after exp)."""
    logits = (q @ k.transpose(-1, -2)).float() * scale
    lse = logits.logsumexp(-1, keepdim=True)
    return (logits - lse).exp().to(v.dtype) @ v, lse


def merge_lse(o_a, lse_a, o_b, lse_b):
    """Combine two attentions over disjoint key sets into the one softmax over their union:
    (e^lse_a o_a + e^lse_b o_b) / (e^lse_a + e^lse_b), computed with max subtraction, in
    float32 (the result is float32; callers cast it back)."""
    lse_a, lse_b = lse_a.float(), lse_b.float()
    m = torch.maximum(lse_a, lse_b)
    w_a, w_b = (lse_a - m).exp(), (lse_b - m).exp()
    return (w_a * o_a.float() + w_b * o_b.float()) / (w_a + w_b)


class RoutedCachedLayout:
    """Rollout layout: the current chunk sees the history chunks its tokens select plus its
    own keys. topk: per query token and head, score the n cached chunks by q . k_mean,
    gather the selected chunks' K/V (index_select on the flattened chunk dim), attend over
    them and over the own chunk separately and merge by log-sum-exp. window: attend over
    the chunk slices [0, sink) and [n - window, n) plus the own chunk. With `write=True` the
    chunk's k/v (and their mean, by LayerCache.append) are appended to the cache afterwards."""

    def __init__(self, cache: KVCache, write: bool, cfg: HistoryAttentionConfig,
                 recorder: RouterRecorder | None = None, workspace: dict | None = None):
        cfg.validate()
        self.cache, self.write, self.cfg = cache, write, cfg
        self.recorder = recorder if (recorder is not None and (recorder.record_writes or not write)) else None
        # reusable buffers for the gathered K/V and history logits (inference only): a fresh
        # multi-MB tensor per call page-faults (glibc mmaps big blocks), which measured 3x
        # slower than the arithmetic; AttentionPolicy shares one workspace across its layouts
        self.workspace = {} if workspace is None else workspace

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

    def _buffer(self, name: str, shape, like: torch.Tensor) -> torch.Tensor:
        buf = self.workspace.get(name)
        if buf is None or buf.shape != torch.Size(shape) or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.workspace[name] = like.new_empty(shape)
        return buf

    def _topk(self, layer, lc, n, q, k, v):
        b, h, t, d = q.shape
        cap, tpc = lc.k.shape[2], lc.k.shape[3]
        scale = 1.0 / math.sqrt(d)
        kk = self.cfg.topk
        # router: per (b, head, token) scores over the cached mean keys; O(T n d)
        scores = q @ lc.k_mean[:, :, :n].transpose(-1, -2)               # (B, H, T, n)
        idx = scores.topk(kk, dim=-1, sorted=False).indices                # (B, H, T, k)
        if self.recorder is not None:
            self.recorder.record(layer, idx, n)
        # gather only the selected chunks: rows of the (B*H*cap, L*d) view of the buffer
        rows = (idx + (torch.arange(b * h, device=q.device) * cap).view(b, h, 1, 1)).flatten()
        k_rows, v_rows = lc.k.view(b * h * cap, tpc * d), lc.v.view(b * h * cap, tpc * d)
        q1 = q.unsqueeze(-2) * scale                                       # (B, H, T, 1, d)
        if torch.is_grad_enabled() and (q.requires_grad or lc.k.requires_grad or lc.v.requires_grad):
            ks = k_rows.index_select(0, rows).view(b, h, t, kk * tpc, d)
            vs = v_rows.index_select(0, rows).view(b, h, t, kk * tpc, d)
            o_h, lse_h = _attend_lse(q1, ks, vs, 1.0)
        else:  # same math in reused buffers, softmax in place
            ks = torch.index_select(k_rows, 0, rows, out=self._buffer("k", (rows.numel(), tpc * d), q))
            vs = torch.index_select(v_rows, 0, rows, out=self._buffer("v", (rows.numel(), tpc * d), q))
            ks, vs = ks.view(b, h, t, kk * tpc, d), vs.view(b, h, t, kk * tpc, d)
            logits = torch.matmul(q1, ks.transpose(-1, -2),
                                  out=self._buffer("logits", (b, h, t, 1, kk * tpc), q))
            logits = logits.float()  # softmax statistics in float32 (a no-op for float32 input)
            m = logits.amax(-1, keepdim=True)
            p = logits.sub_(m).exp_()
            denom = p.sum(-1, keepdim=True)
            o_h = (p.to(vs.dtype) @ vs).float().div_(denom)
            lse_h = denom.log_().add_(m)
        # history branch above: one query per (b, h, t) against its own k * L gathered keys
        o_h, lse_h = o_h.squeeze(-2), lse_h.squeeze(-2)                    # (B, H, T, d), (B, H, T, 1)
        # intra branch: the chunk's own tokens
        o_i, lse_i = _attend_lse(q, k, v, scale)
        return merge_lse(o_h, lse_h, o_i, lse_i).to(q.dtype)
