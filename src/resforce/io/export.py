"""Export: one self-contained weights file from a run, a checkpoint or a weights file (what
ships, what `resforce export` writes); sharded checkpoints are merged here, in one process."""

from __future__ import annotations

from pathlib import Path

import torch

from resforce.io.weights import inspect_weights, read_weights, save_weights
from resforce.model.lora import adapter_state_dict, has_adapters, merge_lora_state_dict


def export_weights(path: str | Path, out: str | Path, dtype: str = "float16", prefer_ema: bool = True,
                   merge_lora: bool = False) -> Path:
    """A single self-contained weights file (config and data SHA-256 in its metadata) from a
    run, in `dtype` (float16 halves the size of shipped checkpoints; loading upcasts to the
    model's dtype). A LoRA run (lora.rank > 0) exports its adapters alone (lora_A / lora_B
    tensors), or with merge_lora the full model with the adapters folded in (loads like any
    run's weights). A sharded checkpoint (checkpoint_format: sharded) is merged here, in this
    one process, no torchrun needed (io.sharded_weights)."""
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"export dtype must be float32, float16 or bfloat16, got {dtype!r}")
    from resforce.io.sharded_weights import read_sharded_weights, sharded_checkpoint_of

    sharded = sharded_checkpoint_of(path)
    if sharded is not None:  # merged here, in this process: every rank's pieces of each tensor
        sd, cfg_yaml, cfg = read_sharded_weights(sharded, prefer_ema)
    else:
        weights, _, cfg = inspect_weights(path, prefer_ema)
        sd, cfg_yaml = read_weights(weights)
    if merge_lora and not has_adapters(sd):
        raise ValueError(f"--merge-lora: {path} holds no LoRA adapters (a run with lora.rank 0, or weights already merged)")
    if has_adapters(sd):
        sd = merge_lora_state_dict(sd, cfg.lora) if merge_lora else adapter_state_dict(sd)
    cast = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in sd.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, cast, cfg_yaml)
    return out
