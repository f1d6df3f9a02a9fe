"""History strategies: how the history stream of a training step is built.

Each strategy maps a batch of clean chunks (and the model) to (history, t_history):
the history video the noisy chunks are conditioned on, and its per-chunk timestep, which
the model is told (0 = clean). The training target never changes; only the history does.

| strategy              | history                                                          |
|-----------------------|------------------------------------------------------------------|
| teacher               | ground truth, t = 0                                              |
| noise_aug             | ground truth + Gaussian noise at a small sampled level (told)    |
| diffusion_forcing     | ground truth noised to independent per-chunk levels (told)       |
| parallel_resampling   | each chunk noised to t_s, denoised given GROUND-TRUTH history    |
| resampling            | the paper's: chunk by chunk, denoised given the DEGRADED history |

Resampling runs under no_grad with the current online weights and returns a detached
history (METHOD.md section 3).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from resforce.training import distributed as parallel
from resforce.flow import add_noise, euler_integrate, shift_timesteps, truncated_schedule
from resforce.rollout import chunk_step

STRATEGIES = ("teacher", "noise_aug", "diffusion_forcing", "parallel_resampling", "resampling")


@dataclass
class HistoryConfig:
    """Which history the model is trained on, and its knobs."""

    strategy: str = "teacher"
    """One of: teacher, noise_aug, diffusion_forcing, parallel_resampling, resampling."""
    noise_max: float = 0.1
    """noise_aug: the history noise level is drawn uniformly in [0, noise_max] per chunk."""
    resample_shift: float = 0.6
    """Resampling strength shift s: t_s <- s t_s / (1 + (s - 1) t_s); s < 1 favours weak
    degradation (the paper: 0.6)."""
    resample_mean: float = 0.0
    """Mean of the logit-normal draw of t_s before the shift."""
    resample_std: float = 1.0
    """Std of the logit-normal draw of t_s before the shift."""
    resample_steps: int = 1
    """Euler steps from t_s to 0 when resampling (the paper: 1)."""
    resample_per_sample: bool = False
    """Draw t_s per sample instead of once per iteration (the paper: per iteration)."""
    route_resampling: bool = True
    """With history routing on, the resampling pass routes too (the paper does not say);
    False makes it attend densely."""
    resample_unsharded: bool = True
    """Under FSDP, gather the model's weights once for the whole resampling pass
    (parallel.unsharded) instead of once per model call (2N - 1 calls). Costs the full
    weights on every rank during the pass (fp32: 5.3 GiB for Wan2.1-1.3B, 53 GiB for 14B:
    set false there). No effect without FSDP."""

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"history.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.resample_steps < 1:
            raise ValueError(f"history.resample_steps must be >= 1, got {self.resample_steps}")
        if not 0.0 <= self.noise_max <= 1.0:
            raise ValueError(f"history.noise_max must be in [0, 1], got {self.noise_max}")
        if self.resample_shift <= 0:
            raise ValueError(f"history.resample_shift must be > 0, got {self.resample_shift}")


def sample_resample_strength(cfg: HistoryConfig, batch: int, generator=None, device=None) -> torch.Tensor:
    """t_s for each sample, (B,): logit-normal, then shifted by s; one value per iteration
    unless resample_per_sample."""
    n = torch.randn(batch if cfg.resample_per_sample else 1, generator=generator, device=device)
    t_s = shift_timesteps(torch.sigmoid(cfg.resample_mean + cfg.resample_std * n), cfg.resample_shift)
    return t_s.expand(batch).clone()


@torch.no_grad()
def autoregressive_resample(model, clean, t_s, steps, generator=None, context=None, attention=None,
                            noise=None, return_cache=False, skip_last=False, actions=None):
    """The paper's self-resampling: for i = 1..N, noise chunk i to t_s and finish its
    denoising with the online model, attending (KV cache) to the already degraded chunks < i.
    Each chunk goes through rollout's own chunk step (denoise against the cache, commit to
    it), so training history is made exactly as inference makes a video. The noise of all chunks is drawn at once, as parallel_resample draws it. `attention`: the
    history attention policy (AttentionPolicy) of the cached calls; None = dense.
    return_cache: also return the KV cache, which then holds every layer's keys/values of the
    degraded chunks 0..N-2 at t = 0 (the last is not committed): (history, cache).
    skip_last: do not resample the last chunk, which is nobody's history (detached-history
    training needs only the cache): the history holds chunks 0..N-2, the cache is the same.
    actions: the clip's per-frame actions (action model): each chunk is resampled and
    committed with its own, as a rollout makes it."""
    fpc = model.config.frames_per_chunk
    b, _, f, h, w = clean.shape
    if noise is None:
        noise = torch.randn(clean.shape, generator=generator, device=clean.device)
    n = f // fpc
    # exact capacity: n - 1 committed chunks plus the one being denoised. The cache is local
    # (freed when this returns, before the training loss) unless return_cache hands it to
    # detached-history training, whose training pass reads it
    cache = model.new_cache(h, w, capacity=n)
    out = []
    for i in range(n - 1 if skip_last else n):
        sl = slice(i * fpc, (i + 1) * fpc)
        x_ts = add_noise(clean[:, :, sl], noise[:, :, sl], t_s[:, None], fpc)
        # the last chunk is nobody's history: no commit
        out.append(chunk_step(model, x_ts, truncated_schedule(t_s, steps), cache, context, attention,
                              commit=i < n - 1, actions=None if actions is None else actions[:, sl]))
    video = torch.cat(out, dim=2) if out else clean[:, :, :0]  # skip_last of a 1-chunk clip
    return (video, cache) if return_cache else video


@torch.no_grad()
def parallel_resample(model, clean, t_s, steps, generator=None, context=None, noise=None, attention=None,
                      actions=None):
    """Table 2's baseline: every chunk noised to t_s and denoised at once, conditioned on the
    GROUND-TRUTH history (one two-stream pass per Euler step, under the `attention` policy)."""
    fpc = model.config.frames_per_chunk
    n = clean.shape[2] // fpc
    if noise is None:
        noise = torch.randn(clean.shape, generator=generator, device=clean.device)
    x_ts = add_noise(clean, noise, t_s[:, None].expand(-1, n), fpc)

    def v(xx, tt):
        return model(xx, tt.expand(-1, n), history=clean, context=context, attention=attention, actions=actions)

    return euler_integrate(v, x_ts, truncated_schedule(t_s, steps))


def build_history(cfg: HistoryConfig, model, clean: torch.Tensor, generator=None, context=None,
                  attention=None, actions=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(history, t_history) for a batch of clean videos (B, C, F, H, W); both detached.
    `attention`: the stage's history attention policy; parallel resampling always runs under
    it (its two-stream pass is the training pass), self-resampling only if route_resampling.
    `actions`: the clips' per-frame actions (action model), seen by the resampling passes."""
    history, t_history, _ = build_history_and_cache(cfg, model, clean, generator, context, attention,
                                                    actions=actions)
    return history, t_history


def build_history_and_cache(cfg: HistoryConfig, model, clean: torch.Tensor, generator=None, context=None,
                            attention=None, skip_last=False, actions=None):
    """build_history, plus the KV cache self-resampling made on the way (strategy
    'resampling': history chunks 0..N-2, see autoregressive_resample; None otherwise):
    (history, t_history, cache). Detached-history training reuses that cache, and passes
    skip_last: self-resampling then skips the last chunk (its history holds N - 1 chunks);
    the random draws and the cache stay the same."""
    fpc = model.config.frames_per_chunk
    b, n = clean.shape[0], clean.shape[2] // fpc
    zeros = torch.zeros(b, n, device=clean.device)
    s = cfg.strategy
    if s == "teacher":
        return clean, zeros, None
    if s in ("noise_aug", "diffusion_forcing"):
        u = torch.rand(b, n, generator=generator, device=clean.device)
        level = u * cfg.noise_max if s == "noise_aug" else u
        noise = torch.randn(clean.shape, generator=generator, device=clean.device)
        return add_noise(clean, noise, level, fpc), level, None
    t_s = sample_resample_strength(cfg, b, generator, clean.device)
    was_training = model.training
    model.eval()  # resampling is inference with the online weights
    cache = None
    gathered = parallel.unsharded(model) if cfg.resample_unsharded else contextlib.nullcontext()
    try:
        with gathered:
            if s == "parallel_resampling":
                hist = parallel_resample(model, clean, t_s, cfg.resample_steps, generator, context,
                                         attention=attention, actions=actions)
            else:
                routed = attention if cfg.route_resampling else None
                hist, cache = autoregressive_resample(model, clean, t_s, cfg.resample_steps, generator,
                                                      context, routed, return_cache=True, skip_last=skip_last,
                                                      actions=actions)
    finally:
        model.train(was_training)
    return hist.detach(), zeros, cache
