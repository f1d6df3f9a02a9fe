"""Variants of the resampling histories (history.HistoryConfig): each changes the history
as intended and nothing else; the defaults reproduce the plain strategies bit for bit."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from resforce.flow import add_noise
from resforce.history import (HistoryConfig, autoregressive_resample, build_history, build_history_and_cache,
                              parallel_resample, preserve_colour, sample_resample_strength,
                              sample_resample_strength_per_chunk)
from resforce.model import build_model

FPC, H, W, N = 1, 8, 8, 4


@pytest.fixture
def model(randomize):
    return randomize(build_model(preset="test", frames_per_chunk=FPC, patch_size=(1, 4, 4)))


def clean(b=3, seed=0):
    return torch.rand(b, 3, N * FPC, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def g(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("per_sample", [False, True])
def test_defaults_reproduce_the_plain_strategies_bit_for_bit(model, per_sample):
    x = clean()
    cfg = HistoryConfig(strategy="resampling", resample_per_sample=per_sample)
    gen = g()
    t_s = sample_resample_strength(cfg, 3, gen)
    ref = autoregressive_resample(model, x, t_s, 1, gen)
    hist, t = build_history(cfg, model, x, g())
    assert torch.equal(hist, ref) and torch.equal(t, torch.zeros(3, N))
    cfg = HistoryConfig(strategy="parallel_resampling", resample_per_sample=per_sample)
    gen = g()
    t_s = sample_resample_strength(cfg, 3, gen)
    assert torch.equal(build_history(cfg, model, x, g())[0], parallel_resample(model, x, t_s, 1, gen))
    gen = g()
    u = torch.rand(3, N, generator=gen)
    ref = add_noise(x, torch.randn(x.shape, generator=gen), u * 0.1, FPC)
    assert torch.equal(build_history(HistoryConfig(strategy="noise_aug"), model, x, g())[0], ref)


@pytest.mark.parametrize("strategy", ["resampling", "parallel_resampling"])
def test_strength_per_chunk(model, strategy):
    cfg = HistoryConfig(strategy=strategy, resample_per_chunk=True, resample_per_sample=True)
    t_s = sample_resample_strength_per_chunk(cfg, 3, N, g())
    assert t_s.shape == (3, N) and len(set(t_s[0].tolist())) == N and len(set(t_s[:, 0].tolist())) == 3
    shared = sample_resample_strength_per_chunk(dataclasses.replace(cfg, resample_per_sample=False), 3, N, g())
    assert torch.equal(shared[0], shared[1]) and len(set(shared[0].tolist())) == N
    x = clean()
    # the per-chunk draw is what build_history resamples with
    gen = g()
    t_s = sample_resample_strength_per_chunk(cfg, 3, N, gen)
    fn = autoregressive_resample if strategy == "resampling" else parallel_resample
    assert torch.equal(build_history(cfg, model, x, g())[0], fn(model, x, t_s, 1, gen))
    # a per-chunk strength equal in every chunk is the per-clip resampling (2 Euler steps)
    noise = torch.randn(x.shape, generator=g(5))
    one = torch.tensor([0.2, 0.5, 0.8])
    a = fn(model, x, one, 2, noise=noise)
    b = fn(model, x, one[:, None].expand(3, N), 2, noise=noise)
    assert torch.allclose(a, b, atol=1e-5)
    # each chunk is resampled at its own strength: the first chunk (no history) equals a
    # per-clip resampling at the first chunk's strength
    mixed = torch.tensor([[0.1, 0.9, 0.9, 0.9]]).expand(3, N)
    c = fn(model, x, mixed, 1, noise=noise)
    d = fn(model, x, torch.full((3,), 0.1), 1, noise=noise)
    assert torch.allclose(c[:, :, :FPC], d[:, :, :FPC], atol=1e-5)
    assert (c[:, :, FPC:] - d[:, :, FPC:]).abs().max() > 1e-2


def test_strength_per_chunk_mixed_with_per_clip(model):
    x = clean()
    per_chunk = HistoryConfig(strategy="resampling", resample_per_chunk=True)
    # p = 1 is resample_per_chunk as it is, bit for bit (no extra random draw)
    assert torch.equal(build_history(dataclasses.replace(per_chunk, resample_per_chunk_p=1.0), model, x, g())[0],
                       build_history(per_chunk, model, x, g())[0])
    # otherwise one uniform draw per iteration picks the per-chunk or the per-clip strength
    mixed = dataclasses.replace(per_chunk, resample_per_chunk_p=0.5)
    picked = set()
    for seed in range(12):
        gen = g(seed)
        chunkwise = bool(torch.rand(1, generator=gen) < 0.5)
        t_s = (sample_resample_strength_per_chunk(mixed, 3, N, gen) if chunkwise
               else sample_resample_strength(mixed, 3, gen))
        ref = autoregressive_resample(model, x, t_s, 1, gen)
        assert torch.equal(build_history(mixed, model, x, g(seed))[0], ref), seed
        picked.add(chunkwise)
    assert picked == {True, False}
    # p = 0 is the paper's per-clip draw after the one uniform draw
    gen = g(3)
    torch.rand(1, generator=gen)
    ref = autoregressive_resample(model, x, sample_resample_strength(per_chunk, 3, gen), 1, gen)
    assert torch.equal(build_history(dataclasses.replace(per_chunk, resample_per_chunk_p=0.0), model, x, g(3))[0], ref)


@pytest.mark.parametrize("strategy", ["resampling", "parallel_resampling", "noise_aug", "diffusion_forcing"])
def test_keep_ground_truth(model, strategy):
    x = clean(b=8)
    hist, t = build_history(HistoryConfig(strategy=strategy, keep_ground_truth_p=1.0), model, x, g())
    assert torch.equal(hist, x) and torch.equal(t, torch.zeros(8, N))
    base, t_base = build_history(HistoryConfig(strategy=strategy), model, x, g())
    for per in ("clip", "chunk"):
        cfg = HistoryConfig(strategy=strategy, keep_ground_truth_p=0.5, keep_ground_truth_per=per)
        hist, t = build_history(cfg, model, x, g(1 if per == "clip" else 2))
        base, t_base = build_history(HistoryConfig(strategy=strategy), model, x, g(1 if per == "clip" else 2))
        kept = (hist == x).flatten(3).all(-1).all(1)  # (B, F): chunk is the ground truth
        same = (hist == base).flatten(3).all(-1).all(1)
        assert (kept | same).all() and kept.any() and (~kept).any()  # every chunk one or the other
        assert torch.equal(t[kept], torch.zeros_like(t[kept])) and torch.equal(t[~kept], t_base[~kept])
        if per == "clip":
            assert (kept.all(1) | (~kept).all(1)).all()
        else:
            assert ((kept.any(1)) & (~kept).any(1)).any()


@pytest.mark.parametrize("strategy", ["resampling", "parallel_resampling"])
def test_anchor_chunks_stay_clean_and_self_resampling_continues_from_them(model, strategy):
    x = clean()
    cfg = HistoryConfig(strategy=strategy, anchor_chunks=1)
    hist, t = build_history(cfg, model, x, g())
    plain, _ = build_history(HistoryConfig(strategy=strategy), model, x, g())
    assert torch.equal(hist[:, :, :FPC], x[:, :, :FPC]) and torch.equal(t, torch.zeros(3, N))
    assert (hist[:, :, FPC:] - x[:, :, FPC:]).abs().max() > 1e-2  # the other chunks are resampled
    # the same draws (strength, noise) as without the anchor: resampling at strength 0 in the
    # first chunk and the drawn strength elsewhere
    gen = g()
    t_s = sample_resample_strength(cfg, 3, gen)[:, None].expand(3, N).clone()
    t_s[:, 0] = 0
    fn = autoregressive_resample if strategy == "resampling" else parallel_resample
    assert torch.allclose(hist, fn(model, x, t_s, 1, gen), atol=1e-6)
    if strategy == "parallel_resampling":  # conditioned on the ground truth anyway: the rest unchanged
        assert torch.allclose(hist[:, :, FPC:], plain[:, :, FPC:], atol=1e-5)
    else:  # each later chunk attends to the clean first chunk instead of its resampled version
        assert (hist[:, :, FPC:2 * FPC] - plain[:, :, FPC:2 * FPC]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="anchor_chunks"):
        HistoryConfig(strategy="teacher", anchor_chunks=1)
    with pytest.raises(ValueError, match="anchor_chunks must be >= 0"):
        HistoryConfig(strategy="resampling", anchor_chunks=-1)


def test_preserve_colour_channel_stats(model):
    x = clean()
    base, _ = build_history(HistoryConfig(strategy="resampling"), model, x, g())
    hist, _ = build_history(HistoryConfig(strategy="resampling", preserve_colour="channel_stats"), model, x, g())
    per = lambda v: v.reshape(3, 3, N, -1)  # noqa: E731  (B, C, chunk, pixels)
    assert torch.allclose(per(hist).mean(-1), per(x).mean(-1), atol=1e-5)
    assert torch.allclose(per(hist).std(-1, unbiased=False), per(x).std(-1, unbiased=False), atol=1e-4)
    # the resampled errors stay: the standardised history is the resampled one's
    z = lambda v: (per(v) - per(v).mean(-1, keepdim=True)) / per(v).std(-1, unbiased=False, keepdim=True)  # noqa: E731
    assert torch.allclose(z(hist), z(base), atol=1e-4)
    assert (hist - x).abs().mean() > 1e-2


def test_preserve_colour_lowpass(model):
    x = clean()
    base, _ = build_history(HistoryConfig(strategy="parallel_resampling"), model, x, g())
    cfg = HistoryConfig(strategy="parallel_resampling", preserve_colour="lowpass", preserve_lowpass=4)
    hist, _ = build_history(cfg, model, x, g())
    pool = lambda v: F.avg_pool2d(v.transpose(1, 2).reshape(-1, 3, H, W), 4)  # noqa: E731
    up = lambda p: F.interpolate(p, scale_factor=4, mode="nearest")  # noqa: E731
    flat = lambda v: v.transpose(1, 2).reshape(-1, 3, H, W)  # noqa: E731
    assert torch.allclose(pool(hist), pool(x), atol=1e-5)
    # the high frequencies are the resampled history's
    assert torch.allclose(flat(hist) - up(pool(hist)), flat(base) - up(pool(base)), atol=1e-5)
    assert (hist - x).abs().mean() > 1e-2
    with pytest.raises(ValueError, match="preserve_lowpass=3 must divide"):
        preserve_colour(x, x, "lowpass", FPC, window=3)


def test_changed_history_drops_the_resampling_cache(model):
    x = clean()
    _, _, cache = build_history_and_cache(HistoryConfig(strategy="resampling"), model, x, g(), skip_last=True)
    assert cache is not None
    for extra in ({"preserve_colour": "channel_stats"}, {"keep_ground_truth_p": 0.5}):
        h, t, cache = build_history_and_cache(HistoryConfig(strategy="resampling", **extra), model, x, g(),
                                              skip_last=True)
        assert cache is None and h.shape[2] == (N - 1) * FPC and t.shape == (3, N)


@pytest.mark.parametrize("fields, match", [
    ({"strategy": "teacher", "resample_per_chunk": True}, "resample_per_chunk applies"),
    ({"strategy": "noise_aug", "preserve_colour": "lowpass"}, "preserve_colour applies"),
    ({"strategy": "teacher", "calibrate_every": 10}, "calibrate_every applies"),
    ({"strategy": "resampling", "resample_per_chunk": True, "resample_per_chunk_p": 1.5},
     r"resample_per_chunk_p must be in \[0, 1\]"),
    ({"strategy": "resampling", "resample_per_chunk_p": 0.5}, "set resample_per_chunk: true"),
    ({"strategy": "resampling", "preserve_colour": "hue"}, "preserve_colour must be one of"),
    ({"strategy": "resampling", "keep_ground_truth_p": 1.5}, r"keep_ground_truth_p must be in \[0, 1\]"),
    ({"strategy": "teacher", "keep_ground_truth_p": 0.5}, "always keeps the ground truth"),
    ({"strategy": "resampling", "keep_ground_truth_per": "frame"}, "keep_ground_truth_per must be one of"),
    ({"strategy": "resampling", "calibrate_every": -1}, "calibrate_every must be >= 0"),
    ({"strategy": "resampling", "calibrate_every": 5, "calibrate_shifts": []}, "calibrate_shifts must be"),
    ({"strategy": "resampling", "history_from_previous_step": True}, "set strategy 'teacher'"),
])
def test_invalid_variants_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        HistoryConfig(**fields)
