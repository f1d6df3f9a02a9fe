"""History strategies: the resampling proofs (a)-(c): resampled history is detached, made chunk by chunk like a rollout, and degraded by t_s."""

import pytest
import torch

from resforce.history import (HistoryConfig, autoregressive_resample, build_history,
                              parallel_resample, sample_resample_strength)
from resforce.model import build_model

FPC, H, W, N = 1, 8, 8, 4


@pytest.fixture
def model(randomize):
    return randomize(build_model(preset="test", frames_per_chunk=FPC, patch_size=(1, 4, 4)))


def clean(b=2, seed=0):
    return torch.randn(b, 3, N * FPC, H, W, generator=torch.Generator().manual_seed(seed))


def test_resampling_with_tiny_strength_returns_ground_truth(model):
    x = clean()
    t_s = torch.full((2,), 1e-6)
    out = autoregressive_resample(model, x, t_s, steps=1, generator=torch.Generator().manual_seed(0))
    assert (out - x).abs().max() < 1e-4
    # and through the config: a vanishing shift sends t_s -> 0
    hist, t_hist = build_history(HistoryConfig(strategy="resampling", resample_shift=1e-7), model, x,
                                 torch.Generator().manual_seed(0))
    assert (hist - x).abs().max() < 1e-4 and torch.equal(t_hist, torch.zeros(2, N))


def test_resampling_strength_moves_history(model):
    x = clean()
    out = autoregressive_resample(model, x, torch.full((2,), 0.5), 1, torch.Generator().manual_seed(0))
    assert (out - x).abs().mean() > 1e-2


def test_first_chunk_same_later_chunks_differ(model):
    x = clean()
    t_s = torch.full((2,), 0.4)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    ar = autoregressive_resample(model, x, t_s, 1, noise=noise)
    par = parallel_resample(model, x, t_s, 1, noise=noise)
    # chunk 1 has no history: both compute it identically
    assert (ar[:, :, :FPC] - par[:, :, :FPC]).abs().max() < 1e-5
    # later chunks see degraded (AR) vs ground-truth (parallel) history
    assert (ar[:, :, FPC:] - par[:, :, FPC:]).abs().max() > 1e-3
    # and drawing the noise from the same generator seed gives the same as passing it
    ar2 = autoregressive_resample(model, x, t_s, 1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ar, ar2)


@pytest.mark.parametrize("strategy", ["parallel_resampling", "resampling", "noise_aug", "diffusion_forcing"])
def test_history_carries_no_gradient_and_leaves_weights(model, strategy):
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = clean().requires_grad_(False)
    hist, t_hist = build_history(HistoryConfig(strategy=strategy), model, x, torch.Generator().manual_seed(0))
    assert not hist.requires_grad and hist.grad_fn is None
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training  # the strategy restores train mode after its no-grad inference
    assert hist.shape == x.shape and t_hist.shape == (2, N)


def test_teacher_and_noise_levels(model):
    x = clean()
    h, t = build_history(HistoryConfig(strategy="teacher"), model, x)
    assert h is x and (t == 0).all()
    h, t = build_history(HistoryConfig(strategy="noise_aug", noise_max=0.1), model, x, torch.Generator().manual_seed(0))
    assert (t >= 0).all() and (t <= 0.1).all() and not torch.equal(h, x)
    h, t = build_history(HistoryConfig(strategy="diffusion_forcing"), model, x, torch.Generator().manual_seed(0))
    assert t.max() > 0.1  # full-range, independent per chunk
    assert len(set(t[0].tolist())) == N


def test_resample_strength_distribution():
    g = torch.Generator().manual_seed(0)
    cfg = HistoryConfig(strategy="resampling", resample_shift=0.6)
    draws = torch.stack([sample_resample_strength(cfg, 4, g) for _ in range(4000)])
    assert (draws[:, 0] == draws[:, 3]).all()  # one t_s per iteration by default
    # s < 1 pulls the median of sigmoid(N(0,1)) (0.5) down to 0.6*0.5/(1-0.4*0.5) = 0.375
    assert abs(draws[:, 0].median().item() - 0.375) < 0.02
    per = sample_resample_strength(HistoryConfig(strategy="resampling", resample_per_sample=True), 4, g)
    assert len(set(per.tolist())) == 4


def test_bad_strategy_names_the_field():
    with pytest.raises(ValueError, match="history.strategy"):
        HistoryConfig(strategy="magic")


@pytest.mark.parametrize("steps", [1, 3])
def test_full_strength_resampling_is_a_rollout(model, steps):
    """Self-resampling steps through rollout's own chunk step and Euler integrator: at t_s = 1
    it ignores the clean video and IS a rollout (unshifted grid) from the same noise."""
    from resforce.rollout import SampleConfig, rollout

    b, fpc = 2, model.config.frames_per_chunk
    g = torch.Generator().manual_seed(4)
    noise = torch.cat([torch.randn(b, 3, fpc, H, W, generator=g) for _ in range(N)], dim=2)
    video = rollout(model, b, H, W, SampleConfig(chunks=N, steps=steps, shift=1.0, seed=4))
    ar = autoregressive_resample(model, clean(b), torch.ones(b), steps, noise=noise)
    assert (ar - video).abs().max() < 1e-5
    assert (ar - clean(b)).abs().max() > 0.1
