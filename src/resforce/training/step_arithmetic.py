"""Arithmetic of a training step, from the model config alone: tokens, parameters, the bytes
of weights / gradients / AdamW / EMA per GPU, and the FLOPs of the two-stream step and of the
self-resampling pass.

Nothing here runs the model: these are closed-form counts, written independently of
model/dit.py, so that tests can hold the fake-tensor measurement (memory_estimate.py) and
the model's real parameter count against them, and docs/wan.md can show its working.

Conventions. Clip length: a video of `seconds` at `fps` frames is 1 + fps * seconds frames
(Wan's 4k+1), the VAE keeps 1 + frames // 4 latent frames, rounded up to whole chunks. A MAC
is a multiply-add; FLOPs = 2 MACs. The backward costs twice the forward (the usual count);
"model FLOPs" leave out recomputation (MFU), "hardware FLOPs" count it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from resforce.model.dit import DiTConfig

GIB = 1024 ** 3
H100_BF16_DENSE_FLOPS = 989e12
"""NVIDIA H100 SXM, dense bf16 tensor-core peak (the spec sheet's 1979 TFLOP/s is with sparsity)."""


@dataclass(frozen=True)
class ClipGeometry:
    """Tokens of one training clip."""

    chunks: int
    frames_per_chunk: int
    latent_height: int
    latent_width: int
    tokens_per_chunk: int

    @property
    def latent_frames(self) -> int:
        return self.chunks * self.frames_per_chunk

    @property
    def clip_tokens(self) -> int:
        """Tokens of the noisy stream (the clip itself)."""
        return self.chunks * self.tokens_per_chunk

    @property
    def two_stream_tokens(self) -> int:
        """Tokens of the training pass: [history | noisy]."""
        return 2 * self.clip_tokens


def chunks_for_seconds(seconds: float, frames_per_chunk: int, fps: int = 16, vae_time: int = 4) -> int:
    """Chunks of a clip of `seconds`: 1 + fps * seconds frames -> 1 + frames // vae_time latent
    frames (Wan's causal VAE), rounded up to whole chunks. 5 s -> 21 latent frames = 7 chunks
    of 3; 15 s -> 61 -> 21 chunks (63 latent frames)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    latent = 1 + round(fps * seconds) // vae_time
    return math.ceil(latent / frames_per_chunk)


def clip_geometry(cfg: DiTConfig, chunks: int, latent_height: int, latent_width: int) -> ClipGeometry:
    pt, ph, pw = cfg.patch_size
    if latent_height % ph or latent_width % pw:
        raise ValueError(f"latent size {latent_height}x{latent_width} is not divisible by the patch {ph}x{pw}")
    tpc = (cfg.frames_per_chunk // pt) * (latent_height // ph) * (latent_width // pw)
    return ClipGeometry(chunks, cfg.frames_per_chunk, latent_height, latent_width, tpc)


# ----------------------------------------------------------------------------- parameters
def parameter_count(cfg: DiTConfig) -> int:
    """Parameters of the CausalVideoDiT (Wan2.1's layout), counted from the config."""
    d, f = cfg.inner_dim, cfg.ffn_dim
    linear = lambda i, o: i * o + o  # noqa: E731  (weight + bias)
    patch = cfg.in_channels * math.prod(cfg.patch_size) * d + d
    cond = linear(cfg.freq_dim, d) + linear(d, d) + linear(d, 6 * d)
    if cfg.text_dim > 0:
        cond += linear(cfg.text_dim, d) + linear(d, d)
    attention = 4 * linear(d, d) + 2 * d  # q, k, v, out + the q/k RMSNorm weights
    block = attention + linear(d, f) + linear(f, d) + 6 * d  # + the block's scale_shift_table
    if cfg.text_dim > 0:
        block += attention + (2 * d if cfg.cross_attn_norm else 0)  # attn2 and its affine norm
    head = linear(d, cfg.out_channels * math.prod(cfg.patch_size)) + 2 * d
    return patch + cond + cfg.num_layers * block + head


def state_bytes(params: int, gpus: int = 1) -> dict[str, float]:
    """Bytes per GPU of the training state: fp32 master weights, fp32 gradients, AdamW's two
    fp32 moments, the fp32 EMA; FSDP shards all four over `gpus` (1 = no sharding)."""
    per = params / gpus
    return {"weights": 4 * per, "gradients": 4 * per, "adam": 8 * per, "ema": 4 * per, "total": 20 * per}


# ----------------------------------------------------------------------------- FLOPs
def call_flops(cfg: DiTConfig, tokens: int, attended_pairs: int, text_tokens: int, head_tokens: int,
               timestep_rows: int) -> dict[str, float]:
    """FLOPs of one model call (batch 1), split into linear (every matmul with a weight: patch
    embedding, timestep and text embedders, the blocks' projections and FFN, the head),
    self-attention (QK^T and PV over `attended_pairs` (query, key) pairs) and cross-attention
    (every video token against every text token).

    tokens: video tokens through the trunk; head_tokens: tokens through the output head (the
    noisy stream; none when writing the KV cache); timestep_rows: timestep embeddings (one per
    chunk of each stream)."""
    d, layers, patch = cfg.inner_dim, cfg.num_layers, math.prod(cfg.patch_size)
    macs = tokens * cfg.in_channels * patch * d  # patch embedding
    macs += timestep_rows * (cfg.freq_dim * d + d * d + d * 6 * d)  # timestep MLP + modulation
    macs += layers * tokens * (4 * d * d + 2 * d * cfg.ffn_dim)  # q, k, v, out; the FFN
    macs += head_tokens * d * cfg.out_channels * patch
    cross = 0
    if cfg.text_dim > 0 and text_tokens:
        macs += text_tokens * (cfg.text_dim * d + d * d)  # the text projection
        macs += layers * (tokens * 2 * d * d + text_tokens * 2 * d * d)  # attn2: q, out; k, v of the text
        cross = layers * tokens * text_tokens * 2 * d
    return {"linear": 2.0 * macs, "self_attention": 2.0 * layers * attended_pairs * 2 * d,
            "cross_attention": 2.0 * cross}


def two_stream_pairs(chunks: int, tokens_per_chunk: int) -> int:
    """(query, key) pairs of the two-stream mask: history chunk j sees history 1..j, noisy chunk
    i sees history 1..i-1 and itself: sum_j j + sum_i i = N (N + 1) chunk pairs."""
    return chunks * (chunks + 1) * tokens_per_chunk ** 2


def training_forward_flops(cfg: DiTConfig, geom: ClipGeometry, text_tokens: int = 512,
                           dense_mask: bool = False) -> dict[str, float]:
    """The two-stream pass: both streams through the trunk, the noisy one through the head.
    dense_mask: all S x S pairs are scored and masked afterwards (a masked SDPA call) instead
    of only the pairs the two-stream layout allows (block-sparse attention)."""
    pairs = geom.two_stream_tokens ** 2 if dense_mask else two_stream_pairs(geom.chunks, geom.tokens_per_chunk)
    return call_flops(cfg, geom.two_stream_tokens, pairs, text_tokens, geom.clip_tokens, 2 * geom.chunks)


def resampling_flops(cfg: DiTConfig, geom: ClipGeometry, text_tokens: int = 512, steps: int = 1) -> dict[str, float]:
    """The self-resampling pass (no grad): chunk i (1..N) is denoised `steps` times against the
    i - 1 cached chunks and itself, then (all but the last) written to the cache by one more
    call without the head. Each call embeds the text context again."""
    n, tpc = geom.chunks, geom.tokens_per_chunk
    total = {"linear": 0.0, "self_attention": 0.0, "cross_attention": 0.0}
    for i in range(1, n + 1):
        calls = [(steps, tpc)] + ([(1, 0)] if i < n else [])  # (how many, head tokens)
        for count, head in calls:
            f = call_flops(cfg, tpc, i * tpc * tpc, text_tokens, head, 1)
            for k in total:
                total[k] += count * f[k]
    return total


def step_flops(cfg: DiTConfig, geom: ClipGeometry, strategy: str = "resampling", text_tokens: int = 512,
               checkpointing: str = "selective", resample_steps: int = 1,
               dense_mask: bool = False) -> dict[str, float]:
    """FLOPs of one training step for one clip (batch 1).

    training_forward: the two-stream pass; model = 3 x forward (forward + backward);
    recompute: what activation checkpointing re-runs in the backward (full: the forward;
    selective: the forward without its self-attention kernels); resampling: the no-grad
    self-resampling pass (strategy 'resampling' only). hardware = model + recompute +
    resampling; model_step = model + resampling (what MFU counts)."""
    if strategy not in ("teacher", "resampling"):
        raise ValueError(f"strategy must be 'teacher' or 'resampling', got {strategy!r}")
    fwd = training_forward_flops(cfg, geom, text_tokens, dense_mask)
    forward = sum(fwd.values())
    recompute = {"none": 0.0, "full": forward, "selective": forward - fwd["self_attention"]}[checkpointing]
    resampling = 0.0
    if strategy == "resampling":
        resampling = sum(resampling_flops(cfg, geom, text_tokens, resample_steps).values())
    return {"training_forward": forward, **{f"forward_{k}": v for k, v in fwd.items()},
            "model": 3 * forward, "recompute": recompute, "resampling": resampling,
            "model_step": 3 * forward + resampling, "hardware": 3 * forward + recompute + resampling}


def step_seconds(flops: float, gpus: int = 1, mfu: float = 0.4, peak: float = H100_BF16_DENSE_FLOPS) -> float:
    """Seconds for `flops` spread over `gpus` at the given model-FLOPs utilisation."""
    return flops / (gpus * mfu * peak)
