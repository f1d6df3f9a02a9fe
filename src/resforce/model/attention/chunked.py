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
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

aten = torch.ops.aten


# ----------------------------------------------------------------------------- tiling
@dataclass(frozen=True)
class TileCall:
    """`count` tiles of nq x nk chunks in one kernel call: tile r covers query chunks
    [q0 + r*q_step, +nq) and key chunks [k0 + r*k_step, +nk). Tiles of one call never share
    a query chunk or a key chunk (so their outputs and key gradients write disjoint rows)."""

    q0: int
    k0: int
    nq: int
    nk: int
    count: int = 1
    q_step: int = 0
    k_step: int = 0
    fresh: bool = False
    """No query chunk of this call was written by an earlier call: its outputs are stored,
    not merged."""


def _quadtree(mask: np.ndarray, r0: int, c0: int, size: int, out: list) -> None:
    """Append (q0, k0, nq, nk) for every fully allowed quadtree node (clipped to the mask)."""
    block = mask[r0:r0 + size, c0:c0 + size]
    if block.size == 0 or not block.any():
        return
    if block.all():
        out.append((r0, c0, block.shape[0], block.shape[1]))
        return
    half = size // 2
    for dr in (0, half):
        for dc in (0, half):
            _quadtree(mask, r0 + dr, c0 + dc, half, out)


def _progressions(tiles: list) -> list[tuple]:
    """Split same-shape tiles (sorted) into runs whose query and key starts both advance by
    a constant step of at least the tile size: each run is one batched kernel call."""
    nq, nk = tiles[0][2], tiles[0][3]
    left = list(tiles)
    runs = []
    while left:
        first = left.pop(0)
        run = [first]
        second = next((t for t in left if t[0] >= first[0] + nq and t[1] >= first[1] + nk), None)
        if second is not None:
            dq, dk = second[0] - first[0], second[1] - first[1]
            members = set(left)
            nxt = (first[0] + dq, first[1] + dk, nq, nk)
            while nxt in members:
                run.append(nxt)
                members.discard(nxt)
                nxt = (nxt[0] + dq, nxt[1] + dk, nq, nk)
            left = [t for t in left if t in members]
            runs.append((first[0], first[1], nq, nk, len(run), dq, dk))
        else:
            runs.append((first[0], first[1], nq, nk, 1, 0, 0))
    return runs


@functools.lru_cache(maxsize=256)
def _plan_cached(mask_bytes: bytes, rows: int, cols: int) -> tuple[TileCall, ...]:
    # numpy, not torch: planning must read real values even under FakeTensorMode
    mask = np.frombuffer(mask_bytes, dtype=np.bool_).reshape(rows, cols)
    empty = np.flatnonzero(~mask.any(1)).tolist()
    if empty:
        raise ValueError(f"chunk mask row(s) {empty} allow no key chunk: softmax over no keys "
                         "is undefined; every query chunk must see at least one key chunk")
    size = 1  # the quadtree's root: the mask padded to a power of two
    while size < max(rows, cols):
        size *= 2
    tiles: list = []
    _quadtree(mask, 0, 0, size, tiles)
    by_shape: dict = {}
    for t in sorted(tiles):
        by_shape.setdefault((t[2], t[3]), []).append(t)
    calls, written = [], set()
    # largest tiles first: most query chunks get their first (stored, not merged) output there
    for shape in sorted(by_shape, key=lambda s: -s[0] * s[1]):
        for q0, k0, nq, nk, count, dq, dk in _progressions(by_shape[shape]):
            chunks = {q0 + r * dq + i for r in range(count) for i in range(nq)}
            calls.append(TileCall(q0, k0, nq, nk, count, dq, dk, fresh=not (chunks & written)))
            written |= chunks
    return tuple(calls)


def plan_tiles(chunk_mask: torch.Tensor) -> tuple[TileCall, ...]:
    """The kernel calls that cover exactly the True entries of a (Qc, Kc) chunk mask.

    The mask must be a real CPU tensor: it is tiny, and planning reads its values on the
    host (a CUDA mask would cost a device sync per call; a fake or meta one has no values).
    Build it with `host_chunk_mask` when a FakeTensorMode or meta device may be active."""
    if chunk_mask.dtype != torch.bool or chunk_mask.dim() != 2:
        raise ValueError(f"chunk_mask must be a 2-D bool tensor, got {chunk_mask.dtype} "
                         f"{tuple(chunk_mask.shape)}")
    if chunk_mask.device.type != "cpu" or is_fake(chunk_mask):
        raise ValueError("chunk_mask must be a real CPU tensor (planning reads its values on "
                         f"the host), got {type(chunk_mask).__name__} on {chunk_mask.device}; "
                         "build it with host_chunk_mask(...)")
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():  # .numpy() detaches: under FakeTensorMode that is fake
        m = np.ascontiguousarray(chunk_mask.numpy())
    return _plan_cached(m.tobytes(), m.shape[0], m.shape[1])


def host_chunk_mask(make, *args) -> torch.Tensor:
    """`make(*args, device="cpu")` as a real CPU tensor, even inside FakeTensorMode (e.g. a
    fake-tensor memory estimate) or a `torch.device("meta")` context."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        return make(*args, device="cpu")


def is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


# ----------------------------------------------------------------------------- tile views
def _tiles(x: torch.Tensor, start: int, step: int, count: int, n: int, tpc: int) -> torch.Tensor:
    """(B, H, S, *rest) -> strided view (B, H, count, n * tpc, *rest) of tiles along dim 2:
    tile r covers chunks [start + r * step, + n)."""
    st = x.stride()
    size = (*x.shape[:2], count, n * tpc, *x.shape[3:])
    stride = (st[0], st[1], step * tpc * st[2], st[2], *st[3:])
    return x.as_strided(size, stride, x.storage_offset() + start * tpc * st[2])


def _batched(x: torch.Tensor, start: int, step: int, count: int, n: int, tpc: int) -> torch.Tensor:
    """The tiles folded into the batch: (B * count, H, n * tpc, *rest). One tile is a plain
    slice (no copy); several are copied once into the kernel's batch layout."""
    if count == 1:
        return x.narrow(2, start * tpc, n * tpc)
    t = _tiles(x, start, step, count, n, tpc).transpose(1, 2)
    return t.reshape(-1, *t.shape[2:])


def _unbatched(y: torch.Tensor, batch: int) -> torch.Tensor:
    """Kernel output (B * count, H, L, *rest) -> (B, H, count, L, *rest), matching `_tiles`."""
    return y.unflatten(0, (batch, -1)).transpose(1, 2)


# ----------------------------------------------------------------------------- kernels
class _CpuFlash:
    """CPU flash attention (aten), forward with LSE and backward from a given LSE."""

    @staticmethod
    def forward(q, k, v, scale):
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
        return out, lse, ()

    @staticmethod
    def backward(dout, q, k, v, out, lse, aux, scale):
        return aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, False, scale=scale)


class _CudaFlash:
    """FlashAttention-2 (CUDA, fp16/bf16). The backward gets the forward's bookkeeping
    outputs as autograd would pass them: the rng state (seed, offset) kept from the forward
    (with dropout 0 it is not read); cum_seq (undefined, None, outside varlen) and the max
    lengths (the tile's query and key lengths) rebuilt from the shapes, so that aux holds
    tensors only (see as_one_op)."""

    @staticmethod
    def forward(q, k, v, scale):
        out, lse, _cum_q, _cum_k, _max_q, _max_k, seed, offset, _ = aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, False, False, scale=scale)
        return out, lse, (seed, offset)

    @staticmethod
    def backward(dout, q, k, v, out, lse, aux, scale):
        seed, offset = aux
        # the kernel reads the LSE as a contiguous (B, H, Lq) buffer
        return aten._scaled_dot_product_flash_attention_backward(
            dout, q, k, v, out, lse.contiguous(), None, None, q.shape[2], k.shape[2], 0.0, False,
            seed, offset, scale=scale)


class _CudaEfficient:
    """Memory-efficient attention (CUDA, any float dtype incl. fp32). Its LSE comes padded
    to a multiple of 32 queries: sliced off for merging, padded back for the backward."""

    @staticmethod
    def forward(q, k, v, scale):
        out, lse, seed, offset = aten._scaled_dot_product_efficient_attention(
            q, k, v, None, True, 0.0, False, scale=scale)
        # aux holds tensors only: the padded width travels as the shape of an empty tensor
        width = lse.new_empty((0, lse.shape[-1]))
        return out, lse.narrow(-1, 0, q.shape[2]), (seed, offset, width)

    @staticmethod
    def backward(dout, q, k, v, out, lse, aux, scale):
        seed, offset, width = aux
        lse = F.pad(lse, (0, width.shape[-1] - lse.shape[-1])).contiguous()
        # The fp16/bf16 kernels read `out` (as B, M, H, K) with its batch and head strides
        # only, assuming rows H * K apart: a view of the merged output is not, so it gets
        # that layout (on an H100, without this dQ and dK came back NaN in bf16).
        out = out.transpose(1, 2).contiguous().transpose(1, 2)
        dq, dk, dv, _ = aten._scaled_dot_product_efficient_attention_backward(
            dout, q, k, v, None, out, lse, seed, offset, 0.0, [True, True, True, False], False,
            scale=scale)
        return dq, dk, dv


class _Math:
    """Plain torch, float32, per tile (logits are tile x tile, never S x S): the fallback
    for devices without a fused kernel (e.g. meta tensors) and a cross-check in the tests."""

    @staticmethod
    def _logits(q, k, scale):
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        return (q.float() @ k.float().transpose(-1, -2)) * scale, scale

    @staticmethod
    def forward(q, k, v, scale):
        s, _ = _Math._logits(q, k, scale)
        lse = s.logsumexp(-1)
        out = (s - lse.unsqueeze(-1)).exp() @ v.float()
        return out.to(q.dtype), lse, ()

    @staticmethod
    def backward(dout, q, k, v, out, lse, aux, scale):
        s, scale = _Math._logits(q, k, scale)
        p = (s - lse.unsqueeze(-1)).exp()
        do = dout.float()
        dv = p.transpose(-1, -2) @ do
        delta = (do * out.float()).sum(-1, keepdim=True)
        ds = p * (do @ v.float().transpose(-1, -2) - delta)
        dq = (ds @ k.float()) * scale
        dk = (ds.transpose(-1, -2) @ q.float()) * scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


KERNELS = {"cpu_flash": _CpuFlash, "cuda_flash": _CudaFlash, "cuda_efficient": _CudaEfficient,
           "math": _Math}


def pick_kernel(q: torch.Tensor) -> str:
    """The per-tile kernel for q's device, dtype and head size (the one place to swap it)."""
    dev, d = q.device.type, q.shape[-1]
    half = q.dtype in (torch.float16, torch.bfloat16)
    if dev == "cpu":
        return "cpu_flash"
    if dev == "cuda":
        if half and d % 8 == 0 and d <= 256:
            return "cuda_flash"
        if d % (8 if half else 4) == 0:
            return "cuda_efficient"
    return "math"


def _autocast_inputs(q, k, v):
    """Under autocast, q, k, v in the autocast dtype, as scaled_dot_product_attention
    does (it is on autocast's lower-precision list)."""
    dev = q.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
        return q.to(dtype), k.to(dtype), v.to(dtype)
    return q, k, v


def _no_autocast(device: torch.device):
    """Merges and the math kernel run in float32 whatever the surrounding autocast."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


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
        out, lse, a = kernel.forward(_batched(q, *qs), _batched(k, *ks), _batched(v, *ks), scale)
        aux.append(a)
        _merge_into(_tiles(acc_o, *qs), _tiles(acc_l, *qs), _unbatched(out, b), _unbatched(lse, b),
                    c.fresh)
    return acc_o.to(q.dtype), acc_l, aux


def _backward(dout, q, k, v, out, lse, calls, aux, tpc, scale, kernel):
    grads = [torch.zeros(x.shape, dtype=torch.float32, device=x.device) for x in (q, k, v)]
    b = q.shape[0]
    for c, a in zip(calls, aux):
        qs = (c.q0, c.q_step, c.count, c.nq, tpc)
        ks = (c.k0, c.k_step, c.count, c.nk, tpc)
        gq, gk, gv = kernel.backward(
            _batched(dout, *qs), _batched(q, *qs), _batched(k, *ks), _batched(v, *ks),
            _batched(out, *qs), _batched(lse, *qs), a, scale)
        for acc, g, sl in zip(grads, (gq, gk, gv), (qs, ks, ks)):
            _tiles(acc, *sl).add_(_unbatched(g, b))
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
    with _no_autocast(q.device):
        out, lse, aux = _forward(q, k, v, _decode(tuple(plan)), tpc, scale, KERNELS[kernel])
    return out, lse, [t for a in aux for t in a]


# the op's fake (and meta) implementation is the forward itself, on fake tensors: exact shapes
# and dtypes of out, LSE and every kernel's aux
_chunk_attention_forward = torch.library.custom_op(
    "resforce::chunk_attention_forward", _op_forward, mutates_args=())
_chunk_attention_forward.register_fake(_op_forward)


def _regroup(flat: list, calls: tuple) -> list[tuple]:
    """The op's flat aux list back into one tuple per call (every call of a plan uses one
    kernel, so each carries the same number of aux tensors)."""
    per = len(flat) // len(calls)
    return [tuple(flat[i * per:(i + 1) * per]) for i in range(len(calls))]


class _ChunkAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, calls, tpc, scale, kernel_name):
        kernel = KERNELS[kernel_name]
        with _no_autocast(q.device):
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
        with _no_autocast(q.device):
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
    q, k, v = _autocast_inputs(q, k, v)
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"chunk attention: q, k, v must share a dtype, got {q.dtype}, "
                         f"{k.dtype}, {v.dtype}")
    name = kernel or pick_kernel(q)
    if name not in KERNELS:
        raise ValueError(f"chunk attention kernel must be one of {sorted(KERNELS)}, got {name!r}")
    return _ChunkAttention.apply(q, k, v, plan_tiles(chunk_mask), tpc, scale, name)
