"""Per-tile attention kernels of chunked attention, each returning the tile's output and its
log-sum-exp, with its backward (`pick_kernel` is the one place that chooses; chunked.py says
which kernel runs where), and the strided tile views they read."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

aten = torch.ops.aten


# ----------------------------------------------------------------------------- tile views
def tile_view(x: torch.Tensor, start: int, step: int, count: int, n: int, tpc: int) -> torch.Tensor:
    """(B, H, S, *rest) -> strided view (B, H, count, n * tpc, *rest) of tiles along dim 2:
    tile r covers chunks [start + r * step, + n)."""
    st = x.stride()
    size = (*x.shape[:2], count, n * tpc, *x.shape[3:])
    stride = (st[0], st[1], step * tpc * st[2], st[2], *st[3:])
    return x.as_strided(size, stride, x.storage_offset() + start * tpc * st[2])


def batched_tiles(x: torch.Tensor, start: int, step: int, count: int, n: int, tpc: int) -> torch.Tensor:
    """The tiles folded into the batch: (B * count, H, n * tpc, *rest). One tile is a plain
    slice (no copy); several are copied once into the kernel's batch layout."""
    if count == 1:
        return x.narrow(2, start * tpc, n * tpc)
    t = tile_view(x, start, step, count, n, tpc).transpose(1, 2)
    return t.reshape(-1, *t.shape[2:])


def unbatched_tiles(y: torch.Tensor, batch: int) -> torch.Tensor:
    """Kernel output (B * count, H, L, *rest) -> (B, H, count, L, *rest), matching `tile_view`."""
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


def autocast_inputs(q, k, v):
    """Under autocast, q, k, v in the autocast dtype, as scaled_dot_product_attention
    does (it is on autocast's lower-precision list)."""
    dev = q.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
        return q.to(dtype), k.to(dtype), v.to(dtype)
    return q, k, v


def no_autocast(device: torch.device):
    """Merges and the math kernel run in float32 whatever the surrounding autocast."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
