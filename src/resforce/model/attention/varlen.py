"""Attention of query groups, each against its own key chunk, returning the log-sum-exp.

The one attention primitive routed history attention needs (routing_grouped.py): queries
sorted by the key chunk they attend to ("group" g = one chunk of one (batch, head)),
`counts[g]` of them per group, and the chunks' keys/values `k_rows[g]`, `v_rows[g]` of L tokens
each. This is flash-attn's varlen interface (cu_seqlens_q = cumsum(counts); keys packed as R
sequences of L tokens), so on CUDA a varlen kernel returning (out, lse) can replace
`varlen_attention_lse` wholesale; nothing else in routing depends on how it is computed.

The pure-torch version here (any device): each group's queries are padded to blocks of
`block` queries, every block is paired with its group's key chunk, and the blocks are attended
in batches of at most `budget` logits (BlockAttention, which recomputes in its backward). So
the largest tensors are a batch's logits and its (per block, not per query) keys, and autograd
keeps O(queries x head_dim); the number of blocks is bounded from the shapes alone
(M // block + groups), so nothing waits on the device for a count.
"""

from __future__ import annotations

import contextlib
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


class BlockAttention(torch.autograd.Function):
    """Blocks of queries, each against one key chunk, with the log-sum-exp, in float32 (float64
    for float64 inputs).

    q (N, P, d): N blocks of P queries; k_rows, v_rows (R, L, d); rows (N,) long: the key
    chunk of each block (None: block i attends to chunk i, nothing gathered) -> out (N, P, d) float32, lse (N, P) float32. Blocks run in batches of
    at most `budget` logits, and the key chunks are gathered per batch. Like FlashAttention
    (in plain torch ops) the forward keeps only (out, lse) and the backward recomputes each
    batch's probabilities, so what autograd holds is O(N P d + R L d), not the N P L logits.
    The gradient of lse is exact too: d lse / d logits = the probabilities."""

    @staticmethod
    def forward(ctx, q, k_rows, v_rows, rows, scale, budget):
        with _no_autocast(q.device):
            return BlockAttention._forward(ctx, q, k_rows, v_rows, rows, scale, budget)

    @staticmethod
    def _forward(ctx, q, k_rows, v_rows, rows, scale, budget):
        outs, lses = [], []
        for s, kb, vb in _batches(q, k_rows, v_rows, rows, budget):
            logits = (q[s].to(kb.dtype) @ kb.transpose(-1, -2)) * scale
            lse = logits.logsumexp(-1)
            outs.append((logits - lse.unsqueeze(-1)).exp() @ vb)
            lses.append(lse)
        out, lse = torch.cat(outs), torch.cat(lses)
        ctx.save_for_backward(q, k_rows, v_rows, rows, out, lse)
        ctx.scale, ctx.budget = scale, budget
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlse):
        with _no_autocast(dout.device if dout is not None else dlse.device):
            return BlockAttention._backward(ctx, dout, dlse)

    @staticmethod
    def _backward(ctx, dout, dlse):
        q, k_rows, v_rows, rows, out, lse = ctx.saved_tensors
        scale = ctx.scale
        dout = torch.zeros_like(out) if dout is None else dout.to(out.dtype)
        dlse = torch.zeros_like(lse) if dlse is None else dlse.to(lse.dtype)
        delta = (dout * out).sum(-1) - dlse  # softmax backward: ds = p * (dp - delta)
        dq = torch.empty(q.shape, dtype=out.dtype, device=q.device)
        dk = torch.zeros(k_rows.shape, dtype=out.dtype, device=q.device).flatten(1)
        dv = torch.zeros_like(dk)
        for s, kb, vb in _batches(q, k_rows, v_rows, rows, ctx.budget):
            qb = q[s].to(kb.dtype)
            p = ((qb @ kb.transpose(-1, -2)) * scale - lse[s].unsqueeze(-1)).exp()
            ds = p * (dout[s] @ vb.transpose(-1, -2) - delta[s].unsqueeze(-1))
            dq[s] = (ds @ kb) * scale
            dk_b = ((ds.transpose(-1, -2) @ qb) * scale).flatten(1)
            dv_b = (p.transpose(-1, -2) @ dout[s]).flatten(1)
            if rows is None:
                dk[s], dv[s] = dk_b, dv_b
            else:  # blocks sharing a chunk add up
                dk.index_add_(0, rows[s], dk_b)
                dv.index_add_(0, rows[s], dv_b)
        return (dq.to(q.dtype), dk.view(k_rows.shape).to(k_rows.dtype), dv.view(v_rows.shape).to(v_rows.dtype),
                None, None, None)


def _no_autocast(device) -> contextlib.AbstractContextManager:
    """Autocast off on `device`: the forward's matmuls must run in float32 as documented (under
    bf16 autocast they would run in bf16, and the backward, which autocast does not reach,
    would then multiply bf16 by float32)."""
    device_type = torch.device(device).type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _batches(q, k_rows, v_rows, rows, budget):
    """(slice of blocks, their key chunks, their value chunks) in float32 (or float64), at most
    `budget` logits each."""
    n, p, _ = q.shape
    length, d = k_rows.shape[1:]
    acc = torch.promote_types(q.dtype, torch.float32)
    step = max(1, budget // max(1, p * length))
    if rows is not None:  # rows as (R, L * d): index_select over 2-D rows is several times faster
        k_flat, v_flat = k_rows.flatten(1), v_rows.flatten(1)
    for start in range(0, n, step):
        s = slice(start, min(n, start + step))
        if rows is None:
            yield s, k_rows[s].to(acc), v_rows[s].to(acc)
        else:
            yield (s, k_flat.index_select(0, rows[s]).view(-1, length, d).to(acc),
                   v_flat.index_select(0, rows[s]).view(-1, length, d).to(acc))


def block_attention_lse(q: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor, rows: torch.Tensor | None,
                        scale: float | None = None, budget: int = LOGITS_BUDGET):
    """BlockAttention: q (N, P, d) blocks against key chunks k_rows[rows] -> (out, lse) float32.
    The swap point for a fused kernel that returns its LSE (one call per batch of blocks)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return BlockAttention.apply(q, k_rows, v_rows, rows, scale, budget)


def attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                  budget: int = LOGITS_BUDGET) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense softmax attention per group with its log-sum-exp: q (G, M, d), k/v (G, L, d) ->
    out (G, M, d) float32, lse (G, M) float32 (block_attention_lse with group g -> chunk g)."""
    return block_attention_lse(q, k, v, None, scale, budget)


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
    # >= sum_g ceil(counts_g / block): one partial block per group at most, and every block
    # holds a query
    num_blocks = min(m // block + min(groups, m), m)

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
    out_pad, lse_pad = block_attention_lse(q_blocks, k_rows, v_rows, block_row, budget=budget)
    out_pad, lse_pad = out_pad.flatten(0, 1), lse_pad.flatten()
    take = slot.clamp(max=num_blocks * block - 1)
    out = torch.where(real.unsqueeze(-1), out_pad.index_select(0, take), 0.0)
    lse = torch.where(real, lse_pad.index_select(0, take), float("-inf"))
    return out, lse
