"""Chunk-structured (block-sparse) attention: no tensor of size S x S (S = tokens), ever.

Every layout of this model decides visibility per *chunk*: a (Qc, Kc) boolean chunk mask
says which key chunks each query chunk sees, and all tokens of a chunk see the same keys.
Instead of expanding that mask to (S, S) tokens (attention.py's "sdpa" reference), this
module cuts the allowed part of the chunk mask into rectangular *tiles* (query chunks x key
chunks, all allowed) and runs a flash-attention kernel per tile, which returns the tile's
output and its log-sum-exp (LSE). A query's tiles are merged by LSE in float32:

    lse = logaddexp(lse_a, lse_b),   out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse)

which is exactly softmax over the union of the tiles' keys. Only allowed blocks are
computed, so the work is the mask's density (about 26% of (2N)^2 for the two-stream
layout at N = 32) instead of all of it.

Tiling (`plan_tiles`, cached per chunk mask): a quadtree over the mask padded to a power of
two emits every node that is fully allowed; a block-causal staircase becomes squares of
sizes 1, 2, 4, ... Tiles of one shape whose positions form an arithmetic progression in
both query and key chunks (e.g. the squares of one quadtree level) run as ONE batched kernel
call: the tiles are strided views of q/k/v (`as_strided`, no index tensors, so no host to
device copies and nothing device-specific to cache), folded into the batch dimension.
The two-stream layout at N = 32 takes 11 calls, block-causal 6.

Backward without S x S (the ring-attention trick): with the MERGED output O and MERGED LSE,
P = exp(q k^T * scale - LSE) restricted to a tile is exactly the tile's block of the full
softmax, and D = rowsum(dO * O) is the full row's, so the flash backward of each tile,
called with (dO, q, k_tile, v_tile, O, LSE), returns that tile's exact share of dQ and its
exact dK/dV. dQ is summed over tiles and dK/dV are added into their key chunks (float32).
PyTorch's context-parallel ring attention does the same across devices
(torch/distributed/tensor/experimental/_context_parallel/_attention.py).

Per-tile kernels (`pick_kernel`, the one place that chooses):
- CPU: aten._scaled_dot_product_flash_attention_for_cpu and its _backward (any float dtype);
- CUDA fp16/bf16, head_dim % 8 == 0 and <= 256: aten._scaled_dot_product_flash_attention
  and _scaled_dot_product_flash_attention_backward (FlashAttention-2);
- CUDA otherwise (fp32): aten._scaled_dot_product_efficient_attention (compute_log_sumexp)
  and _scaled_dot_product_efficient_attention_backward (memory-efficient attention; its LSE
  is padded to a multiple of 32 queries, which we slice off and pad back);
- anything else (meta tensors, odd head dims on CUDA): `_Math`, plain torch per tile,
  whose logits are one tile (tile queries x tile keys), never S x S.
The CUDA kernels were checked once on an H100 (torch 2.11): forward and backward against a
float32 dense-mask reference, for every kernel and fp32/fp16/bf16 (see the CUDA tests,
which skip without a GPU); on the CPU, fake CUDA tensors run their meta functions.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from resforce.model.attention.tile_kernels import (KERNELS, autocast_inputs, batched_tiles, no_autocast, tile_view,
                                                   unbatched_tiles, pick_kernel)
from resforce.model.attention.tile_plan import TileCall, host_chunk_mask, is_fake, plan_tiles

__all__ = ["KERNELS", "TileCall", "as_one_op", "chunk_attention", "chunk_attention_planned", "plan_of", "host_chunk_mask", "is_fake", "pick_kernel",
           "plan_tiles"]


# ----------------------------------------------------------------------------- forward / backward
def _merge_into(acc_o, acc_l, out, lse, fresh: bool) -> None:
    """Fold one partial (out, lse) into the float32 accumulators (views), in place."""
    if fresh:
        acc_o.copy_(out)
        acc_l.copy_(lse)
        return
    new = torch.logaddexp(acc_l, lse)
    acc_o.mul_((acc_l - new).exp_().unsqueeze(-1)).add_(out * (lse - new).exp().unsqueeze(-1))
    acc_l.copy_(new)


def _forward(q, k, v, calls, tpc, scale, kernel):
    b, h, sq = q.shape[:3]
    acc_o = q.new_zeros((b, h, sq, v.shape[-1]), dtype=torch.float32)
    acc_l = q.new_full((b, h, sq), float("-inf"), dtype=torch.float32)
    aux = []
    for c in calls:
        qs = (c.q0, c.q_step, c.count, c.nq, tpc)
        ks = (c.k0, c.k_step, c.count, c.nk, tpc)
        out, lse, a = kernel.forward(batched_tiles(q, *qs), batched_tiles(k, *ks), batched_tiles(v, *ks), scale)
        aux.append(a)
        _merge_into(tile_view(acc_o, *qs), tile_view(acc_l, *qs), unbatched_tiles(out, b), unbatched_tiles(lse, b),
                    c.fresh)
    return acc_o.to(q.dtype), acc_l, aux


def _backward(dout, q, k, v, out, lse, calls, aux, tpc, scale, kernel):
    grads = [torch.zeros(x.shape, dtype=torch.float32, device=x.device) for x in (q, k, v)]
    b = q.shape[0]
    for c, a in zip(calls, aux):
        qs = (c.q0, c.q_step, c.count, c.nq, tpc)
        ks = (c.k0, c.k_step, c.count, c.nk, tpc)
        gq, gk, gv = kernel.backward(
            batched_tiles(dout, *qs), batched_tiles(q, *qs), batched_tiles(k, *ks), batched_tiles(v, *ks),
            batched_tiles(out, *qs), batched_tiles(lse, *qs), a, scale)
        for acc, g, sl in zip(grads, (gq, gk, gv), (qs, ks, ks)):
            tile_view(acc, *sl).add_(unbatched_tiles(g, b))
    return tuple(g.to(x.dtype) for g, x in zip(grads, (q, k, v)))


# ----------------------------------------------------------------------------- one op (selective checkpointing)
_ONE_OP = [0]
"""Depth of `as_one_op()` contexts (a plain counter, not thread-local: a checkpoint's
recomputation runs on autograd's backward thread)."""


@contextlib.contextmanager
def as_one_op():
    """Inside, the forward runs as ONE dispatcher op, resforce::chunk_attention_forward,
    returning (out, lse, per-tile kernel aux) instead of dispatching its per-tile kernels and
    merges one by one.

    Why: selective activation checkpointing (parallel.apply_activation_checkpointing) is a
    dispatch mode that keeps the outputs of chosen ops and recomputes the rest. Seen op by
    op, the forward's ops to keep are the per-tile kernels: every tile's output and LSE,
    about log2(chunks) copies of the attention output per query (4.5 at 15 s: 2.6 GiB per
    Wan2.1-1.3B block instead of 0.57). As one op, what is kept is exactly the merged output
    and LSE that the backward needs. parallel enters this around the checkpointed forward
    and its recomputation; elsewhere (no or full checkpointing) the kernels stay visible to
    dispatch modes (the memory tracker, the S x S proofs), which see only the op's outputs
    inside this context."""
    _ONE_OP[0] += 1
    try:
        yield
    finally:
        _ONE_OP[0] -= 1


_CALL_FIELDS = 8


def _encode(calls: tuple[TileCall, ...]) -> list[int]:
    return [x for c in calls for x in (c.q0, c.k0, c.nq, c.nk, c.count, c.q_step, c.k_step, int(c.fresh))]


@functools.lru_cache(maxsize=256)
def _decode(plan: tuple[int, ...]) -> tuple[TileCall, ...]:
    f = _CALL_FIELDS
    return tuple(TileCall(*plan[i:i + f - 1], fresh=bool(plan[i + f - 1])) for i in range(0, len(plan), f))


def _op_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: list[int], tpc: int,
                scale: float | None, kernel: str) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    with no_autocast(q.device):
        out, lse, aux = _forward(q, k, v, _decode(tuple(plan)), tpc, scale, KERNELS[kernel])
    return out, lse, [t for a in aux for t in a]


# the op's fake (and meta) implementation is the forward itself, on fake tensors: exact shapes
# and dtypes of out, LSE and every kernel's aux
_chunk_attention_forward = torch.library.custom_op(
    "resforce::chunk_attention_forward", _op_forward, mutates_args=())
_chunk_attention_forward.register_fake(_op_forward)


def _op_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, aux: list[torch.Tensor], plan: list[int], tpc: int, scale: float | None,
                 kernel: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    calls = _decode(tuple(plan))
    # a compiled graph may hand over other strides than eager autograd does; the tiles are views
    dout, q, k, v, out, lse = (t.contiguous() for t in (dout, q, k, v, out, lse))
    with no_autocast(q.device):
        return _backward(dout, q, k, v, out, lse, calls, _regroup(list(aux), calls), tpc, scale, KERNELS[kernel])


def _op_backward_fake(dout, q, k, v, out, lse, aux, plan, tpc, scale, kernel):
    # contiguous, as _backward returns them (whatever the inputs' strides)
    return tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))


_chunk_attention_backward = torch.library.custom_op(
    "resforce::chunk_attention_backward", _op_backward, mutates_args=())
_chunk_attention_backward.register_fake(_op_backward_fake)


def _setup_context(ctx, inputs, output):
    q, k, v, plan, tpc, scale, kernel = inputs
    out, lse, aux = output
    ctx.save_for_backward(q, k, v, out, lse, *aux)
    ctx.plan, ctx.tpc, ctx.scale, ctx.kernel = plan, tpc, scale, kernel


def _op_autograd(ctx, dout, dlse, daux):
    q, k, v, out, lse, *aux = ctx.saved_tensors
    dq, dk, dv = torch.ops.resforce.chunk_attention_backward(dout, q, k, v, out, lse, aux, ctx.plan, ctx.tpc,
                                                             ctx.scale, ctx.kernel)
    return dq, dk, dv, None, None, None, None


# the forward op differentiates through the backward op: how a compiled region (torch.compile
# of a block) calls chunk attention, as two opaque ops it neither traces into nor breaks on
_chunk_attention_forward.register_autograd(_op_autograd, setup_context=_setup_context)


def chunk_attention_planned(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: list[int], tpc: int,
                            scale: float | None = None, kernel: str | None = None) -> torch.Tensor:
    """chunk_attention with the tile plan made beforehand on the host (`plan_of`), as one
    autograd-aware op: what runs inside torch.compile'd blocks, so no planning is traced."""
    q, k, v = autocast_inputs(q, k, v)
    return torch.ops.resforce.chunk_attention_forward(q, k, v, plan, tpc, scale, kernel or pick_kernel(q))[0]


def plan_of(chunk_mask: torch.Tensor) -> list[int]:
    """The encoded tile plan of a (real CPU) chunk mask, for chunk_attention_planned."""
    return _encode(plan_tiles(chunk_mask))


def _regroup(flat: list, calls: tuple) -> list[tuple]:
    """The op's flat aux list back into one tuple per call (every call of a plan uses one
    kernel, so each carries the same number of aux tensors)."""
    per = len(flat) // len(calls)
    return [tuple(flat[i * per:(i + 1) * per]) for i in range(len(calls))]


class _ChunkAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, calls, tpc, scale, kernel_name):
        kernel = KERNELS[kernel_name]
        with no_autocast(q.device):
            if _ONE_OP[0]:
                out, lse, flat = torch.ops.resforce.chunk_attention_forward(
                    q, k, v, _encode(calls), tpc, scale, kernel_name)
                aux = _regroup(flat, calls)
            else:
                out, lse, aux = _forward(q, k, v, calls, tpc, scale, kernel)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.calls, ctx.aux, ctx.tpc, ctx.scale, ctx.kernel = calls, aux, tpc, scale, kernel
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        with no_autocast(q.device):
            dq, dk, dv = _backward(dout, q, k, v, out, lse, ctx.calls, ctx.aux, ctx.tpc,
                                   ctx.scale, ctx.kernel)
        return dq, dk, dv, None, None, None, None


def chunk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_mask: torch.Tensor,
                    tokens_per_chunk: int, scale: float | None = None,
                    kernel: str | None = None) -> torch.Tensor:
    """Attention of q (B, H, Qc * tpc, d) over k, v (B, H, Kc * tpc, d) where query chunk i
    sees key chunk j iff chunk_mask[i, j] (CPU bool, (Qc, Kc)). Equals
    F.scaled_dot_product_attention(q, k, v, attn_mask=expand_chunk_mask(chunk_mask, tpc))
    forward and backward, without building that (S, S) mask or any S x S tensor.
    `kernel`: one of KERNELS (default: pick_kernel(q)); `scale`: SDPA's (1/sqrt(d) if None)."""
    tpc = tokens_per_chunk
    qc, kc = chunk_mask.shape
    if q.shape[2] != qc * tpc or k.shape[2] != kc * tpc or v.shape[2] != k.shape[2]:
        raise ValueError(f"chunk attention: q has {q.shape[2]} tokens and k/v {k.shape[2]}/"
                         f"{v.shape[2]}, expected {qc} x {tpc} and {kc} x {tpc} "
                         f"(chunk mask {tuple(chunk_mask.shape)}, tokens_per_chunk {tpc})")
    q, k, v = autocast_inputs(q, k, v)
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"chunk attention: q, k, v must share a dtype, got {q.dtype}, "
                         f"{k.dtype}, {v.dtype}")
    name = kernel or pick_kernel(q)
    if name not in KERNELS:
        raise ValueError(f"chunk attention kernel must be one of {sorted(KERNELS)}, got {name!r}")
    return _ChunkAttention.apply(q, k, v, plan_tiles(chunk_mask), tpc, scale, name)
