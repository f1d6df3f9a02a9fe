"""The whole routed attention of a layer as one autograd function, per head group.

Same definition as routing_grouped.attend_routes + merge_routes (every query token and head
attends to the union of its routes' key chunks: its own chunk plus the chunks it selected),
computed so that no per-route tensor outlives a head group, forward or backward:

- forward: the heads are cut into groups of a bounded number of routes (`heads_per_group`).
  Per group the routes are sorted by key chunk and padded to blocks of P queries (sizes from
  the shapes alone, as varlen.py does: nothing is read back to the host), ALL the group's
  blocks go to one batched flash-kernel call (`tile_kernels`: each block against its chunk's
  keys, returning (out, lse)), and the routes merge by log-sum-exp in float32 straight from the
  padded slots into the token's output. Kept for the backward: q, k, v, the route chunks and
  their validity, the merged output and the merged LSE (float32, per token and head).
- backward: per head group again, the flash backward of every block called with the MERGED
  output O and MERGED LSE of its tokens. P = exp(q k^T * scale - LSE) restricted to a route's
  chunk is exactly that route's block of the token's full softmax and D = rowsum(dO * O) is
  the full row's (chunked.py's ring-attention trick), so each block returns its route's exact
  share of dQ and its exact dK / dV; they are added into the tokens and key chunks in float32.

The only Python loop is over head groups (tens at most: one head per group at 15 s for
Wan2.1-1.3B), never over blocks. Under selective checkpointing (chunked.as_one_op) the
forward is one dispatcher op, resforce::routed_attention_forward, so the checkpoint keeps its
merged output and LSE and never re-runs the routed attention in the backward.
"""

from __future__ import annotations

import torch

from resforce.model.attention.chunked import _ONE_OP
from resforce.model.attention.tile_kernels import KERNELS, autocast_inputs, no_autocast, pick_kernel

ROUTE_BUDGET = 1 << 20
"""Routes per head group (B x heads x tokens x routes): bounds every per-route tensor. At
15 s (196,560 tokens x 6 routes) a group is one head."""


def heads_per_group(batch: int, heads: int, tokens: int, routes: int) -> int:
    """Heads per group: as many as keep B x G x T x routes within ROUTE_BUDGET, at least one."""
    return max(1, min(heads, ROUTE_BUDGET // max(1, batch * tokens * routes)))


def block_size(routes: int, rows: int, chunk: int) -> int:
    """Queries per padded block: the power of two <= a quarter of the mean routes per key
    chunk row and <= the chunk's tokens. The padding (below one block per row, plus the
    blocks that the bound from the shapes adds) stays under half the routes, and the keys
    gathered per block (a chunk each) no more than its queries."""
    return 1 << (max(1, min(routes // (4 * rows), chunk)).bit_length() - 1)


def _blocks(chunks: torch.Tensor, valid: torch.Tensor, kc: int, tpc: int):
    """The padded block layout of one head group's routes.

    chunks, valid (B, G, T, m) -> (route_of_slot (N * P,): the route in each padded slot, or
    M = B G T m for an empty one; block_row (N,): the key chunk row (of B * G * kc) of each
    block; P). Routes are sorted by chunk row (invalid ones last, never placed); each row's
    routes fill whole blocks of P from the row's first block on. N bounds sum_g ceil(count_g / P)
    from the shapes alone."""
    b, g, t, m = chunks.shape
    r = b * g * kc
    rows = chunks + (torch.arange(b * g, device=chunks.device) * kc).view(b, g, 1, 1)
    key = rows.masked_fill(~valid, r).flatten()  # r sorts last
    total = key.numel()
    block = block_size(total, r, tpc)
    num_blocks = min(total // block + min(r, total), total)
    order = key.argsort(stable=True)
    sorted_key = key.index_select(0, order)
    counts = torch.zeros(r + 1, dtype=torch.long, device=key.device).scatter_add_(0, key, torch.ones_like(key))[:r]
    blocks_end = ((counts + block - 1) // block).cumsum(0)
    real = sorted_key < r
    grp = sorted_key.clamp(max=r - 1)
    first_route = counts.cumsum(0) - counts
    first_block = blocks_end - (counts + block - 1) // block
    pos = torch.arange(total, device=key.device)
    slot = first_block[grp] * block + pos - first_route[grp]
    slot = torch.where(real, slot, num_blocks * block)  # invalid routes go to a dropped slot
    route_of_slot = torch.full((num_blocks * block + 1,), total, dtype=torch.long, device=key.device)
    route_of_slot = route_of_slot.scatter(0, slot, order)[:-1]
    block_row = torch.searchsorted(blocks_end, torch.arange(num_blocks, device=key.device), right=True)
    return route_of_slot, block_row.clamp(max=r - 1), block


def _with_zero_row(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) -> (n + 1, ...): row n is what empty slots read (zeros)."""
    return torch.cat([x, x.new_zeros((1, *x.shape[1:]))])


def _group(q, k, v, chunks, valid, h0, h1, tpc):
    """One head group's tensors: q (B G T, d), k/v rows (B G kc, L, d), its routes and blocks."""
    b, _, t, d = q.shape
    kc = k.shape[2] // tpc
    sl = slice(h0, h1)
    route_of_slot, block_row, block = _blocks(chunks[:, sl], valid[:, sl], kc, tpc)
    m = chunks.shape[-1]
    tokens = b * (h1 - h0) * t
    token_of_slot = torch.where(route_of_slot < tokens * m, route_of_slot // m, tokens)
    k_rows = k[:, sl].reshape(-1, tpc, d)
    v_rows = v[:, sl].reshape(-1, tpc, d)
    return q[:, sl].reshape(tokens, d), k_rows, v_rows, route_of_slot, token_of_slot, block_row, block


def _kernel_blocks(x_rows: torch.Tensor, block_row: torch.Tensor) -> torch.Tensor:
    """(R, L, d) chunk rows -> (N, 1, L, d): each block's chunk, as the kernels' (batch, head)."""
    return x_rows.index_select(0, block_row).unsqueeze(1)


def _forward(q, k, v, chunks, valid, tpc, scale, kernel_name):
    kernel = KERNELS[kernel_name]
    b, h, t, d = q.shape
    m = chunks.shape[-1]
    acc = torch.promote_types(q.dtype, torch.float32)
    out = torch.empty((b, h, t, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h, t), dtype=acc, device=q.device)
    step = heads_per_group(b, h, t, m)
    for h0 in range(0, h, step):  # head groups: every per-route tensor below dies in the group
        h1 = min(h, h0 + step)
        qg, k_rows, v_rows, route_of_slot, token_of_slot, block_row, block = _group(q, k, v, chunks, valid, h0, h1, tpc)
        tokens = qg.shape[0]
        q_blk = _with_zero_row(qg).index_select(0, token_of_slot).view(-1, 1, block, d)
        o_blk, l_blk, _ = kernel.forward(q_blk, _kernel_blocks(k_rows, block_row),
                                         _kernel_blocks(v_rows, block_row), scale)
        l_slot = l_blk.reshape(-1).to(acc)
        # merged LSE: logsumexp over each token's routes (empty slots write the dropped route M)
        l_route = torch.full((tokens * m + 1,), float("-inf"), dtype=acc, device=q.device)
        l_route = l_route.scatter(0, route_of_slot, l_slot)[:-1].view(tokens, m)
        l_tok = l_route.logsumexp(-1)
        w = torch.where(token_of_slot < tokens,
                        (l_slot - _with_zero_row(l_tok).index_select(0, token_of_slot)).exp(), 0.0)
        o_tok = torch.zeros((tokens + 1, d), dtype=acc, device=q.device)
        o_tok.index_add_(0, token_of_slot, o_blk.reshape(-1, d).to(acc) * w.unsqueeze(-1))
        out[:, h0:h1] = o_tok[:-1].view(b, h1 - h0, t, d)
        lse[:, h0:h1] = l_tok.view(b, h1 - h0, t)
    return out, lse


def _backward(dout, q, k, v, chunks, valid, out, lse, tpc, scale, kernel_name):
    kernel = KERNELS[kernel_name]
    b, h, t, d = q.shape
    m = chunks.shape[-1]
    acc = torch.promote_types(q.dtype, torch.float32)
    dq, dk, dv = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))
    dout = dout.to(q.dtype)
    step = heads_per_group(b, h, t, m)
    for h0 in range(0, h, step):
        h1 = min(h, h0 + step)
        qg, k_rows, v_rows, _, token_of_slot, block_row, block = _group(q, k, v, chunks, valid, h0, h1, tpc)
        tokens = qg.shape[0]

        def slots(x):  # per token (B, G, T, ...) -> per padded slot (N, 1, P, ...); empty slots 0
            x = _with_zero_row(x[:, h0:h1].reshape(tokens, *x.shape[3:]))
            return x.index_select(0, token_of_slot).view(-1, 1, block, *x.shape[1:])

        # empty slots: q = dO = O = 0 and LSE 0, so their P is finite and their gradients are 0
        dq_blk, dk_blk, dv_blk = kernel.backward(
            slots(dout), slots(q), _kernel_blocks(k_rows, block_row), _kernel_blocks(v_rows, block_row),
            slots(out), slots(lse), _aux(kernel_name, block, q.device), scale)
        dq_tok = torch.zeros((tokens + 1, d), dtype=acc, device=q.device)
        dq_tok.index_add_(0, token_of_slot, dq_blk.reshape(-1, d).to(acc))
        dq[:, h0:h1] = dq_tok[:-1].view(b, h1 - h0, t, d)
        for grad, g_blk in ((dk, dk_blk), (dv, dv_blk)):  # blocks sharing a chunk add up
            rows = torch.zeros((k_rows.numel() // d, d), dtype=acc, device=q.device).view(k_rows.shape)
            rows.index_add_(0, block_row, g_blk.squeeze(1).to(acc))
            grad[:, h0:h1] = rows.view(b, h1 - h0, -1, d)
    return dq, dk, dv


def _aux(kernel_name: str, block: int, device) -> tuple:
    """What a kernel's backward reads of its forward besides (out, lse), rebuilt from the
    shapes (the forward's own is per head group and not kept): CUDA flash takes the dropout
    rng state, unread at dropout 0; memory-efficient attention its LSE's padded width."""
    if kernel_name == "cuda_flash":
        return torch.zeros(2, dtype=torch.int64, device=device), torch.zeros((), dtype=torch.int64, device=device)
    if kernel_name == "cuda_efficient":
        z = torch.zeros((), dtype=torch.int64, device=device)
        return z, z, torch.empty((0, -(-block // 32) * 32), device=device)
    return ()


def _op_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunks: torch.Tensor, valid: torch.Tensor,
                tpc: int, scale: float | None, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    with no_autocast(q.device):
        return _forward(q, k, v, chunks, valid, tpc, scale, kernel)


# the op's fake (and meta) implementation is the forward itself, on fake tensors
_routed_attention_forward = torch.library.custom_op(
    "resforce::routed_attention_forward", _op_forward, mutates_args=())
_routed_attention_forward.register_fake(_op_forward)


class RoutedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, chunks, valid, tpc, scale, kernel_name):
        if _ONE_OP[0]:  # selective checkpointing keeps this op's (out, lse)
            out, lse = torch.ops.resforce.routed_attention_forward(q, k, v, chunks, valid, tpc, scale, kernel_name)
        else:
            out, lse = _op_forward(q, k, v, chunks, valid, tpc, scale, kernel_name)
        ctx.save_for_backward(q, k, v, chunks, valid, out, lse)
        ctx.tpc, ctx.scale, ctx.kernel = tpc, scale, kernel_name
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, chunks, valid, out, lse = ctx.saved_tensors
        with no_autocast(q.device):
            dq, dk, dv = _backward(dout, q, k, v, chunks, valid, out, lse, ctx.tpc, ctx.scale, ctx.kernel)
        return dq, dk, dv, None, None, None, None, None


def routed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunks: torch.Tensor, valid: torch.Tensor,
                     tokens_per_chunk: int, scale: float | None = None, kernel: str | None = None) -> torch.Tensor:
    """Routed attention: q (B, H, T, d) over k, v (B, H, Kc * tokens_per_chunk, d); token
    (b, h, i) attends to the union of key chunks chunks[b, h, i, s] (long, in [0, Kc)) whose
    valid[b, h, i, s] is True (at least one per token; the chunks of a token distinct).
    -> (B, H, T, d) in q's dtype (the autocast dtype under autocast, as SDPA). Equals
    merge_routes(attend_routes(...)) forward and backward."""
    q, k, v = autocast_inputs(q, k, v)
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"routed attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape[2] % tokens_per_chunk or v.shape[2] != k.shape[2]:
        raise ValueError(f"routed attention: k/v have {k.shape[2]}/{v.shape[2]} tokens, expected a "
                         f"multiple of tokens_per_chunk {tokens_per_chunk}")
    name = kernel or pick_kernel(q)
    return RoutedAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), chunks, valid,
                                 tokens_per_chunk, scale, name)
