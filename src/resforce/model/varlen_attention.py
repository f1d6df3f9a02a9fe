"""Attention of query groups, each against its own key chunk, returning the log-sum-exp.

The one attention primitive routed history attention needs (routing_grouped.py): queries
sorted by the key chunk they attend to ("group" g = one chunk of one (batch, head)),
`counts[g]` of them per group, and the chunks' keys/values `k_rows[g]`, `v_rows[g]` of L tokens
each. This is flash-attn's varlen interface (cu_seqlens_q = cumsum(counts); keys packed as R
sequences of L tokens), so on CUDA a varlen kernel returning (out, lse) can replace
`varlen_attention_lse` wholesale; nothing else in routing depends on how it is computed.

The pure-torch version here (any device, autograd through plain ops): each group's queries are
padded to blocks of `block` queries, every block is paired with its group's key chunk, and the
blocks are attended in batches of at most `budget` logits. So the largest tensors are a
batch's logits and its (per block, not per query) keys; the number of blocks is bounded from
the shapes alone (M // block + groups), so nothing waits on the device for a count.
"""

from __future__ import annotations

import math

import torch

LOGITS_BUDGET = 1 << 25
"""Logits per batched matmul (128 MiB in fp32): bounds the largest tensor of a call."""
MAX_BLOCK = 128
"""Most queries per padded block (see `block_size`)."""


def block_size(queries: int, groups: int) -> int:
    """Queries per padded block: the power of two <= the mean queries per group, at most
    MAX_BLOCK. A group pads at most block - 1 queries, so the padding is <= groups * block <=
    queries rows; a block reads one key chunk, so the keys materialised are about
    2 * groups chunks, i.e. 2 / block of what a per-query gather would copy."""
    mean = max(1, queries // max(1, groups))
    return min(MAX_BLOCK, 1 << (mean.bit_length() - 1))


def attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                  budget: int = LOGITS_BUDGET) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense softmax attention per group with its log-sum-exp, in float32.

    q (G, M, d), k/v (G, L, d) -> out (G, M, d) float32, lse (G, M) float32. Groups are
    processed `budget // (M * L)` at a time (at least one), so the logits never exceed
    max(budget, M * L) elements. The swap point for a fused kernel that returns its LSE."""
    g, m, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    step = max(1, budget // max(1, m * k.shape[1]))
    outs, lses = [], []
    for s in range(0, g, step):
        logits = (q[s:s + step] @ k[s:s + step].transpose(-1, -2)).float() * scale
        lse = logits.logsumexp(-1)
        probs = (logits - lse.unsqueeze(-1)).exp()
        outs.append((probs.to(v.dtype) @ v[s:s + step]).float())
        lses.append(lse)
    if len(outs) == 1:
        return outs[0], lses[0]
    return torch.cat(outs), torch.cat(lses)


def varlen_attention_lse(q: torch.Tensor, counts: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor,
                         groups: int | None = None, block: int | None = None,
                         budget: int = LOGITS_BUDGET) -> tuple[torch.Tensor, torch.Tensor]:
    """q (M, d) sorted by group: the first counts[0] queries attend to k_rows[0] / v_rows[0],
    the next counts[1] to row 1, ...; queries past counts.sum() are padding (out 0, lse -inf).
    counts (R,) integer, on q's device; k_rows, v_rows (R, L, d). `groups`: an upper bound on
    the groups with queries (default R), which sizes the padded blocks; block: queries per
    padded block (default `block_size`).
    -> out (M, d) float32, lse (M,) float32."""
    m, d = q.shape
    r, length, _ = k_rows.shape
    groups = r if groups is None else groups
    block = block or block_size(m, groups)
    num_blocks = m // block + min(groups, m)  # >= sum_g ceil(counts_g / block)

    counts = counts.long()
    q_end = counts.cumsum(0)
    blocks_end = ((counts + block - 1) // block).cumsum(0)
    pos = torch.arange(m, device=q.device)
    group = torch.searchsorted(q_end, pos, right=True)  # r for padding queries
    real = group < r
    group = group.clamp(max=r - 1)
    first_query = q_end[group] - counts[group]
    first_block = blocks_end[group] - (counts[group] + block - 1) // block
    slot = first_block * block + pos - first_query  # padded position of each query
    slot = torch.where(real, slot, num_blocks * block)  # padding queries go to a dropped slot
    source = torch.zeros(num_blocks * block + 1, dtype=torch.long, device=q.device)
    source = source.scatter(0, slot, pos)[:-1]  # the query in each padded slot (empty: query 0)
    block_row = torch.searchsorted(blocks_end, torch.arange(num_blocks, device=q.device),
                                   right=True).clamp(max=r - 1)

    q_blocks = q.index_select(0, source).view(num_blocks, block, d)
    step = max(1, budget // (block * length))
    outs, lses = [], []
    for s in range(0, num_blocks, step):  # one key chunk per block: gathered per block, not per query
        rows = block_row[s:s + step]
        o, lse = attention_lse(q_blocks[s:s + step], k_rows.index_select(0, rows),
                               v_rows.index_select(0, rows), budget=budget)
        outs.append(o.flatten(0, 1))
        lses.append(lse.flatten())
    out_pad, lse_pad = torch.cat(outs), torch.cat(lses)
    take = slot.clamp(max=num_blocks * block - 1)
    out = torch.where(real.unsqueeze(-1), out_pad.index_select(0, take), 0.0)
    lse = torch.where(real, lse_pad.index_select(0, take), float("-inf"))
    return out, lse
