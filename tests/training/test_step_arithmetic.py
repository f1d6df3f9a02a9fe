"""The closed-form step arithmetic (resforce.training.step_arithmetic, the numbers of docs/wan.md)
against the model itself: its parameter count, the two-stream mask, and torch's FLOP counter
on a real two-stream forward and a real self-resampling pass."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from resforce.history import autoregressive_resample
from resforce.model import build_model
from resforce.model.attention.layouts import expand_chunk_mask, two_stream_chunk_mask
from resforce.model.dit import PRESETS, DiTConfig
from resforce.training.step_arithmetic import (chunks_for_seconds, clip_geometry, parameter_count, resampling_flops,
                                      state_bytes, step_flops, training_forward_flops, two_stream_pairs)

SHAPES = dict(num_layers=2, text_dim=8, ffn_dim=40)


@pytest.mark.parametrize("preset,extra", [("test", {}), ("tiny", {}), ("test", SHAPES),
                                          ("test", dict(text_dim=8, cross_attn_norm=False)),
                                          ("wan2.1-1.3b", {}), ("wan2.1-14b", {})])
def test_parameter_count_is_the_models(preset, extra):
    cfg = DiTConfig(**{**PRESETS[preset], **extra})
    with torch.device("meta"):  # 14B parameters cost nothing on the meta device
        model = build_model(cfg)
    assert parameter_count(cfg) == sum(p.numel() for p in model.parameters())


def test_wan_clip_geometry():
    cfg = DiTConfig(**PRESETS["wan2.1-1.3b"])
    five, fifteen = (clip_geometry(cfg, chunks_for_seconds(s, 3), 480 // 8, 832 // 8) for s in (5, 15))
    assert (five.chunks, five.latent_frames, five.tokens_per_chunk, five.two_stream_tokens) == (7, 21, 4680, 65_520)
    assert (fifteen.chunks, fifteen.two_stream_tokens) == (21, 196_560)
    assert parameter_count(cfg) == 1_418_996_800
    assert state_bytes(parameter_count(cfg), 8)["total"] == 20 * parameter_count(cfg) / 8


def test_two_stream_pairs_count_the_mask():
    for n, tpc in ((1, 3), (4, 5), (7, 2)):
        assert two_stream_pairs(n, tpc) == int(expand_chunk_mask(two_stream_chunk_mask(n), tpc).sum())


def counted(fn) -> float:
    """FLOPs torch's counter sees (matmuls, convolutions, attention via the math backend)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_total_flops()


def test_training_forward_flops_match_the_flop_counter(randomize):
    # the dense-mask reference backend: FlopCounterMode counts its SDPA over all (2N)^2 pairs
    # (it has no formula for the chunked backend's CPU flash tiles)
    cfg = DiTConfig(**{**PRESETS["test"], **SHAPES, "attention_backend": "sdpa"})
    model, n = randomize(build_model(cfg)), 3
    x, ctx = torch.randn(1, 3, n, 16, 16), torch.randn(1, 5, 8)
    geom = clip_geometry(cfg, n, 16, 16)
    f = training_forward_flops(cfg, geom, text_tokens=5, dense_mask=True)  # masked SDPA scores all pairs
    assert counted(lambda: model(x, torch.rand(1, n), history=x, context=ctx)) == sum(f.values())
    sparse = training_forward_flops(cfg, geom, text_tokens=5)
    assert sparse["self_attention"] == f["self_attention"] * two_stream_pairs(n, 64) / (2 * n * 64) ** 2


@pytest.mark.parametrize("steps", [1, 2])
def test_resampling_flops_match_the_flop_counter(randomize, steps):
    cfg = DiTConfig(**{**PRESETS["test"], **SHAPES, "frames_per_chunk": 2})
    model, n = randomize(build_model(cfg)), 3
    clean, ctx = torch.randn(1, 3, 2 * n, 8, 8), torch.randn(1, 5, 8)
    expected = sum(resampling_flops(cfg, clip_geometry(cfg, n, 8, 8), text_tokens=5, steps=steps).values())
    assert counted(lambda: autoregressive_resample(model, clean, torch.tensor([0.5]), steps, context=ctx)) == expected


def test_step_flops_add_up():
    cfg = DiTConfig(**PRESETS["wan2.1-1.3b"])
    geom = clip_geometry(cfg, 7, 60, 104)
    tf, rf = step_flops(cfg, geom, "teacher"), step_flops(cfg, geom, "resampling")
    assert tf["model"] == rf["model"] == 3 * tf["training_forward"]
    assert tf["resampling"] == 0 < rf["resampling"] < tf["training_forward"]
    assert step_flops(cfg, geom, "teacher", checkpointing="full")["recompute"] == tf["training_forward"]
    assert tf["recompute"] == tf["training_forward"] - tf["forward_self_attention"]
