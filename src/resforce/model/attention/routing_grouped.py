"""Routed history attention without a token x token mask: queries grouped by the chunk they chose.

MoBA's varlen trick (MoonshotAI/MoBA, moba_efficient.py), for our chunk layouts. Every query
token and head has a few "routes": the history chunks it selected (top-k of q . mean(K_j), or
window mode's fixed chunks) plus its own chunk. Instead of a (B, heads, S, S) mask (the naive
reference, routing_naive.py) or keys gathered per query token:
1. each route (b, head, token, s) names one key chunk row (b, head, j);
2. the routes are sorted by that row, so every key chunk gets the run of queries that chose
   it, and each run attends to its chunk's L keys (model/attention/varlen.py: gather queries, not
   keys) giving (out, lse) per route;
3. the routes go back to their tokens and a token's routes merge by log-sum-exp in float32,
   which is one softmax over the union of its chunks, i.e. exactly the naive masked softmax.
Shapes depend only on (B, heads, tokens, routes per token), never on what was selected, so
no count is read back to the host.

Two implementations of the full-sequence layout: by default (`fused=True`) one autograd
function for the whole layer (routing_function.py: per head group, saving only q, k, v, the
routes, the merged output and LSE, so no per-route tensor outlives a head group); with
`fused=False` the steps above through plain autograd ops (gathers, varlen.py's block
attention, the merge), which keep every route's float32 output and padded copies for the
backward. The second is the reference the first is tested against (with routing_naive.py).

`GroupedRoutedLayout` is the full-sequence layout (two-stream training, block-causal); the
KV-cached rollout layout (routing_fast.py) uses `attend_routes` and `merge_routes` directly.
"""

from __future__ import annotations

import torch

from resforce.model.attention.chunked import is_fake
from resforce.model.attention.config import HistoryAttentionConfig
from resforce.model.attention.routing_function import heads_per_group, routed_attention
from resforce.model.attention.varlen import varlen_attention_lse


def attend_routes(q: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor, rows: torch.Tensor,
                  valid: torch.Tensor | None = None, groups: int | None = None):
    """Attention of every query route to one key chunk.

    q (B, H, T, d); k_rows, v_rows (R, L, d): key/value chunks; rows (B, H, T, m): the chunk
    row of each of a token's m routes (its keys must belong to the same (b, head)); valid
    (B, H, T, m) bool: routes to ignore (a token with fewer candidates than k); groups: bound on
    the distinct rows selected (sizes the padding, see varlen_attention_lse).
    -> out (B, H, T, m, d) float32, lse (B, H, T, m) float32 (-inf where not valid)."""
    b, h, t, m = rows.shape
    r = k_rows.shape[0]
    key = rows.flatten() if valid is None else rows.masked_fill(~valid, r).flatten()  # r sorts last
    order = key.argsort(stable=True)  # routes by key chunk row
    counts = torch.zeros(r + 1, dtype=torch.long, device=q.device).scatter_add_(0, key, torch.ones_like(key))[:r]
    q_sorted = q.reshape(b * h * t, -1).index_select(0, order // m)
    out, lse = varlen_attention_lse(q_sorted, counts, k_rows, v_rows, groups=groups)
    back = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=q.device))
    return out.index_select(0, back).view(b, h, t, m, -1), lse.index_select(0, back).view(b, h, t, m)


def merge_routes(out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """One softmax over the union of a token's routes (disjoint key sets), from each route's
    attention and log-sum-exp: sum_s e^lse_s out_s / sum_s e^lse_s, in float32.
    out (..., m, d), lse (..., m) with at least one finite lse per token -> (..., d)."""
    # the max is only a stabiliser (the result does not depend on it), so no gradient through it
    top = lse.amax(-1, keepdim=True).detach()
    w = (lse.float() - top).exp()
    return (w.unsqueeze(-1) * out.float()).sum(-2) / w.sum(-1, keepdim=True)


class GroupedRoutedLayout:
    """Full-sequence routed attention: each query token (and head) sees its own chunk plus the
    history chunks it selected, computed by grouping queries per selected chunk.

    Same chunk structure as the naive reference (routing_naive.NaiveRoutedLayout), which it
    equals: own (Qc, Kc) bool with exactly one True per row (the query chunk's own key chunk);
    cand (Qc, Kc) bool: chunks a query may route to; q_index (Qc,), k_index (Kc,): the chunks'
    positions in time (window mode keeps k_index >= q_index - window or k_index < sink).
    Building it reads nothing back from the device (no host sync). fused: the one-function
    implementation (routing_function.py); False: plain autograd ops (the reference)."""

    def __init__(self, cfg: HistoryAttentionConfig, own: torch.Tensor, cand: torch.Tensor,
                 q_index: torch.Tensor, k_index: torch.Tensor, tokens_per_chunk: int, fused: bool = True):
        cfg.validate()
        self.fused = fused
        # (a check on a GPU would sync; fake tensors, as `resforce memory` uses, have no values)
        if own.device.type == "cpu" and not is_fake(own) and not (own.sum(1) == 1).all():
            raise ValueError("own: every query chunk must have exactly one own key chunk")
        self.cfg, self.tokens_per_chunk = cfg, tokens_per_chunk
        self.cand_tokens = cand.repeat_interleave(tokens_per_chunk, 0)                 # (T, Kc)
        self.own_tokens = own.long().argmax(1).repeat_interleave(tokens_per_chunk)     # (T,)
        if cfg.mode != "topk":  # dense / window: the same chunks for every token of a query chunk
            win = (k_index[None, :] >= q_index[:, None] - cfg.window) | (k_index[None, :] < cfg.sink)
            allowed = cand & win if cfg.mode == "window" else cand
            kc = cand.shape[1]
            width = max(1, min(cfg.window + cfg.sink, kc) if cfg.mode == "window" else kc)  # >= allowed per row
            # allowed chunks first (stable: in time order), then padding marked invalid
            chunks = allowed.long().argsort(dim=1, descending=True, stable=True)[:, :width]
            valid = torch.arange(width, device=cand.device) < allowed.sum(1, keepdim=True)
            self.static_chunks = chunks.repeat_interleave(tokens_per_chunk, 0)  # (T, width)
            self.static_valid = valid.repeat_interleave(tokens_per_chunk, 0)

    def _select(self, q: torch.Tensor, k: torch.Tensor):
        """(B, H, T, m) chunk indices each query token routes to, and their validity."""
        b, h, t, _ = q.shape
        tpc = self.tokens_per_chunk
        if self.cfg.mode != "topk":
            expand = (b, h, t, self.static_chunks.shape[1])
            return self.static_chunks.expand(expand), self.static_valid.expand(expand)
        kk = min(self.cfg.topk, self.cand_tokens.shape[-1])
        step = heads_per_group(b, h, t, kk + 1)  # the (B, heads, T, Kc) scores, a head group at a time
        indices, values = [], []
        with torch.no_grad():  # an index choice: no gradient flows through it
            for h0 in range(0, h, step):
                means = k[:, h0:h0 + step].detach().unflatten(2, (-1, tpc)).mean(3)   # (B, G, Kc, d)
                scores = q[:, h0:h0 + step].detach() @ means.transpose(-1, -2)       # (B, G, T, Kc)
                scores = scores.masked_fill(~self.cand_tokens, float("-inf"))
                top = scores.topk(kk, dim=-1)
                indices.append(top.indices)
                values.append(top.values > float("-inf"))  # fewer candidates than k: invalid
        return torch.cat(indices, 1), torch.cat(values, 1)

    def attend(self, layer, q, k, v):
        b, h, t, d = q.shape
        tpc = self.tokens_per_chunk
        kc = k.shape[2] // tpc
        sel, valid = self._select(q, k)
        own = self.own_tokens.view(t, 1).expand(b, h, t, 1)
        chunks = torch.cat([sel, own], -1)
        valid = torch.cat([valid, torch.ones_like(own, dtype=torch.bool)], -1)
        if self.fused:
            return routed_attention(q, k, v, chunks, valid, tpc)
        rows = chunks + (torch.arange(b * h, device=q.device) * kc).view(b, h, 1, 1)
        k_rows = k.unflatten(2, (kc, tpc)).reshape(b * h * kc, tpc, d)
        v_rows = v.unflatten(2, (kc, tpc)).reshape(b * h * kc, tpc, d)
        out, lse = attend_routes(q, k_rows, v_rows, rows, valid)
        return merge_routes(out, lse).to(q.dtype)


def two_stream_routes(num_chunks: int, device=None):
    """Chunk structure of the two-stream pass [history 0..N-1 | noisy 0..N-1]: (own, cand,
    q_index, k_index) as GroupedRoutedLayout takes them. History chunk j routes over history
    chunks < j (+ own), noisy chunk i over history chunks < i (+ itself): the history stream
    is the KV cache."""
    n = num_chunks
    idx = torch.arange(n, device=device)
    q_index = torch.cat([idx, idx])
    cand = torch.zeros(2 * n, 2 * n, dtype=torch.bool, device=device)
    cand[:, :n] = q_index[:, None] > idx[None, :]
    return torch.eye(2 * n, dtype=torch.bool, device=device), cand, q_index, q_index


def block_causal_routes(num_chunks: int, device=None):
    """Chunk structure of one block-causal stream: chunk i routes over chunks < i (+ itself)."""
    idx = torch.arange(num_chunks, device=device)
    return torch.eye(num_chunks, dtype=torch.bool, device=device), idx[:, None] > idx[None, :], idx, idx


def routed_two_stream_layout(cfg: HistoryAttentionConfig, num_chunks: int, tokens_per_chunk: int,
                             device=None, fused: bool = True) -> GroupedRoutedLayout:
    return GroupedRoutedLayout(cfg, *two_stream_routes(num_chunks, device), tokens_per_chunk, fused)


def routed_block_causal_layout(cfg: HistoryAttentionConfig, num_chunks: int, tokens_per_chunk: int,
                               device=None, fused: bool = True) -> GroupedRoutedLayout:
    return GroupedRoutedLayout(cfg, *block_causal_routes(num_chunks, device), tokens_per_chunk, fused)
