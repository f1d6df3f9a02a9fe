"""Mixed precision, the way torchtitan does it for single-device and DDP training
(`maybe_enable_amp`): float32 master weights and optimizer state, the model's forward passes
under `torch.autocast(bfloat16)`; plus TF32 for the float32 matmuls that remain (CUDA).
(Under FSDP torchtitan uses fully_shard's MixedPrecisionPolicy instead; here autocast runs in
every parallel mode, which is correct under FSDP2 too, with float32 all-gathers.)

`precision` (TrainConfig.precision, rollout's `precision=`) is 'fp32' (no autocast) or
'bf16'. Autocast wraps forward passes only: the training forward, self-resampling and
rollout; the backward runs outside it (PyTorch's recommendation) and the loss is taken in
float32. Inside the model, modulation, norms, RoPE and log-sum-exp merges stay float32
(model/dit.py, model/routing_fast.py), as diffusers' Wan keeps them.

bf16 is for CUDA. On a CPU without native bf16 (this project's CPUs) autocast measured ~29x
slower than float32, so bf16 there runs with a warning saying so.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, field: str = "precision") -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"{field} must be one of {PRECISIONS}, got {precision!r}")


def autocast(precision: str, device) -> contextlib.AbstractContextManager:
    """The context the model's forward passes run in: nothing for 'fp32', bf16 autocast on the
    device's type for 'bf16' (with a warning on the CPU, where it is slow)."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    if device_type == "cpu":
        warnings.warn("precision=bf16 on the CPU: bf16 autocast measured ~29x slower than fp32 on CPUs "
                      "without native bf16; use precision=fp32 for CPU runs", stacklevel=2)
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def enable_tf32(device) -> None:
    """TF32 for float32 matmuls and convolutions on CUDA (Ampere and later); a no-op elsewhere. Process-wide flags: set once by the trainer and by generation."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else cpu; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
