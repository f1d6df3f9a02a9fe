"""Routed history attention, THE naive reference (used by tests and benchmarks only).

`NaiveRoutedLayout`: dense scores over every key, with the chunks a query token did not
select masked out: a (B, heads, S, S) boolean mask handed to SDPA, i.e. O(S^2) memory per
layer, which is why no model path uses it. It states the definition as plainly as possible:
the two-stream pass ([history | noisy]: history chunk j routes over history chunks < j, noisy
chunk i over history chunks < i; each also always sees its own chunk), the block-causal pass,
and one KV-cached chunk (`routed_reference`). tests/model/test_routing.py proves the fast paths
equal to it: the grouped full-sequence layout (routing_grouped.py) and the cached rollout
layout (routing_fast.py), forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from resforce.model.attention.config import HistoryAttentionConfig
from resforce.model.attention.routing_grouped import block_causal_routes, two_stream_routes


def _select_chunks(cfg: HistoryAttentionConfig, q: torch.Tensor, k: torch.Tensor,
                   cand: torch.Tensor, window: torch.Tensor | None, tpc: int) -> torch.Tensor:
    """(B, H, T, Kc) bool: the candidate key chunks each query token selected.

    cand (T, Kc) bool: key chunks a query token may route to; window (T, Kc): window mode's
    chunk set. Dense scores q . mean(K_c) over all key chunks, non-candidates at -inf."""
    b, h, t, _ = q.shape
    if cfg.mode == "dense":
        return cand.expand(b, h, -1, -1)
    if cfg.mode == "window":
        return (cand & window).expand(b, h, -1, -1)
    with torch.no_grad():  # selection is an index choice: no gradient flows through it
        means = k.detach().unflatten(2, (-1, tpc)).mean(3)             # (B, H, Kc, d)
        scores = q.detach() @ means.transpose(-1, -2)                 # (B, H, T, Kc)
        scores = scores.masked_fill(~cand, float("-inf"))
        kk = min(cfg.topk, scores.shape[-1])
        top = scores.topk(kk, dim=-1)
        sel = torch.zeros_like(scores, dtype=torch.bool)
        sel.scatter_(-1, top.indices, top.values > float("-inf"))  # fewer candidates than k
    return sel


class NaiveRoutedLayout:
    """Full-sequence attention where each query token sees its own chunk plus the history
    chunks it selected (naive reference: dense SDPA under a per-token mask).

    Chunk-level structure (Qc query chunks x Kc key chunks, all of `tokens_per_chunk`):
    own (Qc, Kc) bool: always visible (the query's own chunk); cand (Qc, Kc) bool: history
    chunks the query may route to; q_index (Qc,), k_index (Kc,): the chunks' positions in
    time (for window mode: k_index >= q_index - window or k_index < sink)."""

    def __init__(self, cfg: HistoryAttentionConfig, own: torch.Tensor, cand: torch.Tensor,
                 q_index: torch.Tensor, k_index: torch.Tensor, tokens_per_chunk: int):
        cfg.validate()
        self.cfg = cfg
        self.tokens_per_chunk = tpc = tokens_per_chunk
        self.own = own.repeat_interleave(tpc, 0)       # (T, Kc)
        self.cand = cand.repeat_interleave(tpc, 0)     # (T, Kc)
        win = (k_index[None, :] >= q_index[:, None] - cfg.window) | (k_index[None, :] < cfg.sink)
        self.window = win.repeat_interleave(tpc, 0)    # (T, Kc)

    def chunk_mask(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, H, T, Kc) bool: key chunks each query token attends to (own | selected)."""
        sel = _select_chunks(self.cfg, q, k, self.cand, self.window, self.tokens_per_chunk)
        return sel | self.own

    def attend(self, layer, q, k, v):
        mask = self.chunk_mask(q, k).repeat_interleave(self.tokens_per_chunk, -1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def naive_two_stream_layout(cfg: HistoryAttentionConfig, num_chunks: int, tokens_per_chunk: int,
                            device=None) -> NaiveRoutedLayout:
    """Reference of routing_grouped.routed_two_stream_layout (same chunk structure)."""
    return NaiveRoutedLayout(cfg, *two_stream_routes(num_chunks, device), tokens_per_chunk)


def naive_block_causal_layout(cfg: HistoryAttentionConfig, num_chunks: int, tokens_per_chunk: int,
                              device=None) -> NaiveRoutedLayout:
    """Reference of routing_grouped.routed_block_causal_layout (same chunk structure)."""
    return NaiveRoutedLayout(cfg, *block_causal_routes(num_chunks, device), tokens_per_chunk)


def routed_reference(cfg: HistoryAttentionConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     hist_k: torch.Tensor | None, hist_v: torch.Tensor | None) -> torch.Tensor:
    """Naive routed attention of one chunk (q, k, v: (B, H, L, d)) over history chunks
    hist_k/hist_v (B, H, n, L, d): dense scores over [history | own], unselected chunks masked.
    The reference for RoutedCachedLayout."""
    if hist_k is None or hist_k.shape[2] == 0:
        return F.scaled_dot_product_attention(q, k, v)
    n, tpc = hist_k.shape[2], q.shape[2]
    idx = torch.arange(n + 1, device=q.device)
    own = torch.zeros(1, n + 1, dtype=torch.bool, device=q.device)
    own[0, n] = True
    cand = ~own
    layout = NaiveRoutedLayout(cfg, own, cand, idx[n:], idx, tpc)
    return layout.attend(0, q, torch.cat([hist_k.flatten(2, 3), k], 2),
                         torch.cat([hist_v.flatten(2, 3), v], 2))
