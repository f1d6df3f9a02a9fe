"""Routed history attention, the naive reference (and the routed training layout).

`RoutedMaskedLayout`: dense scores over every key, with the chunks a query token did not
select masked out (a per (batch, head, token) boolean mask handed to SDPA). Built for the
two-stream training pass ([history | noisy]: history chunk j routes over history chunks < j,
noisy chunk i over history chunks < i; each also always sees its own chunk) and for the
block-causal pass. In the two-stream pass the history stream plays the role of the KV cache,
so this is, chunk by chunk, what the fast cached path (routing_fast.py) computes; the tests
in tests/test_routing.py prove the two equal.
Routed masked layouts always use SDPA (the mask is data dependent), whatever the model's
attention_backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .history_attention_config import HistoryAttentionConfig


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


class RoutedMaskedLayout:
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


def routed_two_stream_layout(cfg: HistoryAttentionConfig, num_chunks: int, tokens_per_chunk: int,
                             device=None) -> RoutedMaskedLayout:
    """[history 0..N-1 | noisy 0..N-1]: history chunk j routes over history chunks < j (+ own),
    noisy chunk i over history chunks < i (+ itself). The history stream is the KV cache."""
    n = num_chunks
    idx = torch.arange(n, device=device)
    q_index = torch.cat([idx, idx])
    own = torch.eye(2 * n, dtype=torch.bool, device=device)
    cand = torch.zeros(2 * n, 2 * n, dtype=torch.bool, device=device)
    cand[:, :n] = q_index[:, None] > idx[None, :]
    return RoutedMaskedLayout(cfg, own, cand, q_index, q_index, tokens_per_chunk)


def routed_block_causal_layout(cfg: HistoryAttentionConfig, num_chunks: int, tokens_per_chunk: int,
                               device=None) -> RoutedMaskedLayout:
    """One stream: chunk i routes over chunks < i (+ itself)."""
    idx = torch.arange(num_chunks, device=device)
    own = torch.eye(num_chunks, dtype=torch.bool, device=device)
    cand = idx[:, None] > idx[None, :]
    return RoutedMaskedLayout(cfg, own, cand, idx, idx, tokens_per_chunk)


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
    layout = RoutedMaskedLayout(cfg, own, cand, idx[n:], idx, tpc)
    return layout.attend(0, q, torch.cat([hist_k.flatten(2, 3), k], 2),
                         torch.cat([hist_v.flatten(2, 3), v], 2))
