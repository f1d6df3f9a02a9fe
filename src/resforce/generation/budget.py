"""What a rollout will hold in memory, estimated from the config before anything is built, and
refused up front when it cannot fit (instead of an allocator failure minutes in).

  videos    batch x channels x frames x H x W float32, held about 3 times over (the chunks as
            made, the concatenated video, its clamped copy), twice more with ground truth
  KV cache  2 (keys, values) x layers x batch (x2 with guidance) x cached chunks x tokens per
            chunk x heads x head dim, float32; cached chunks = the rolling context, or the
            whole video with context 0 (all history)
  model     the parameters, float32
The budget is the memory available now (MemAvailable; a CUDA device's free memory for the
model and cache), or MAX_ROLLOUT_BYTES, whichever is smaller.
"""

from __future__ import annotations

import math
import os

GIB = 1024 ** 3
MAX_ROLLOUT_BYTES = 1024 * GIB
"""A clear cap even where the available memory cannot be read."""


def available_host_bytes() -> int:
    """Memory available to a new allocation on this machine (Linux MemAvailable, else total)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return MAX_ROLLOUT_BYTES


def rollout_bytes(cfg, sample, batch: int, prefix_chunks: int = 0, with_ground_truth: bool = False,
                  param_count: int = 0) -> dict[str, int]:
    """Bytes of the rollout's videos, KV cache and model (see the module doc)."""
    from resforce.worlds import world_of

    m = cfg.model
    h, w = world_of(cfg.data).resolution
    chunks = prefix_chunks + sample.chunks
    frames = chunks * m.frames_per_chunk
    video = batch * m.in_channels * frames * h * w * 4
    videos = video * (3 + (2 if with_ground_truth else 0))
    pt, ph, pw = m.patch_size
    tokens = math.ceil(m.frames_per_chunk / pt) * (h // ph) * (w // pw)
    cached = min(sample.context, chunks) if sample.context else chunks
    branches = 2 if sample.cfg_scale != 1.0 else 1
    kv = 2 * m.num_layers * batch * branches * cached * tokens * m.num_attention_heads * m.attention_head_dim * 4
    return {"videos": videos, "KV cache": kv, "model": param_count * 4}


def check_rollout_fits(cfg, sample, batch: int, prefix_chunks: int = 0, with_ground_truth: bool = False,
                       param_count: int = 0, device=None, batch_flag: str = "--batch") -> None:
    """ValueError naming --batch and --chunks if the rollout needs more memory than is
    available (or MAX_ROLLOUT_BYTES)."""
    need = rollout_bytes(cfg, sample, batch, prefix_chunks, with_ground_truth, param_count)
    host = min(available_host_bytes(), MAX_ROLLOUT_BYTES)
    total = sum(need.values())
    parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in need.items())
    what = f"{batch_flag} {batch} x --chunks {sample.chunks}"
    if total > host:
        raise ValueError(f"{what}: the rollout needs about {total / GIB:.1f} GiB ({parts} GiB), more than the "
                         f"{host / GIB:.1f} GiB available here; lower {batch_flag} or --chunks "
                         f"(or --context, which bounds the KV cache)")
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        import torch

        free = torch.cuda.mem_get_info(device)[0]
        on_device = need["KV cache"] + need["model"] + need["videos"] // 3
        if on_device > free:
            raise ValueError(f"{what}: the rollout needs about {on_device / GIB:.1f} GiB on {device}, which has "
                             f"{free / GIB:.1f} GiB free; lower {batch_flag} or --chunks (or --context)")
