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
history (arXiv 2512.15702, section 3).

Variants of the resampling strategies (all off by default; HistoryConfig documents each):
the strength drawn per chunk (resample_per_chunk; mixed with per-clip draws:
resample_per_chunk_p), the ground-truth history kept for a share of clips or chunks
(keep_ground_truth_p), an identity-preserving resampling that puts back
the ground truth's per-channel statistics or low spatial frequencies (preserve_colour), the
first chunks kept clean with self-resampling continuing from them (anchor_chunks), a
strength calibrated to the model's own rollout error (calibrate_every, calibration.py), and a
history taken from the previous optimizer step's predictions (history_from_previous_step,
previous_step_history.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from resforce.flow import add_noise, euler_integrate, per_frame, shift_timesteps, truncated_schedule
from resforce.rollout import chunk_step

STRATEGIES = ("teacher", "noise_aug", "diffusion_forcing", "parallel_resampling", "resampling")
RESAMPLING = ("parallel_resampling", "resampling")
PRESERVE_COLOUR = ("none", "channel_stats", "lowpass")
KEEP_GROUND_TRUTH_PER = ("clip", "chunk")


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
    (the trainer's `gather_weights`, training.distributed.unsharded) instead of once per model call (2N - 1 calls). Costs the full
    weights on every rank during the pass (fp32: 5.3 GiB for Wan2.1-1.3B, 53 GiB for 14B:
    set false there). No effect without FSDP."""
    resample_per_chunk: bool = False
    """Resampling strategies: draw t_s for every chunk of a clip instead of one per clip (per
    sample with resample_per_sample, else one row shared by the batch): t_s is (B, chunks)."""
    resample_per_chunk_p: float = 1.0
    """With resample_per_chunk: the probability, per iteration, that t_s is drawn per chunk;
    otherwise that iteration draws one t_s per clip (the paper). 1 = always per chunk, 0 =
    never. A mixture of the two draws: per-chunk histories keep the objects' identity,
    per-clip ones (every chunk degraded together) teach the model to restore lost objects."""
    keep_ground_truth_p: float = 0.0
    """Any strategy but teacher: with this probability, per sample, the history is the clean
    ground truth (t = 0) instead of the strategy's (per clip or per chunk:
    keep_ground_truth_per). 0 = off; 1 = teacher forcing."""
    keep_ground_truth_per: str = "clip"
    """'clip': a kept sample keeps its whole history; 'chunk': each history chunk is kept on
    its own draw. Self-resampling's later chunks are still made from the degraded chunks
    (the kept chunks are put back after resampling)."""
    preserve_colour: str = "none"
    """Resampling strategies: identity-preserving resampling. 'channel_stats': each
    resampled chunk is renormalised to the ground-truth chunk's per-channel mean and std
    (over its frames and pixels), keeping the resampled spatial errors. 'lowpass': the
    resampled chunk takes the ground truth's low spatial frequencies: history +
    upsample(avgpool(clean - history)), pooled over preserve_lowpass x preserve_lowpass
    pixels, so its pooled image equals the ground truth's and the high-frequency errors stay.
    'none': the resampled history as it is."""
    anchor_chunks: int = 0
    """Resampling strategies: the first this many chunks of every clip's history stay the
    clean ground truth (t_s = 0, told t = 0), and self-resampling continues from them: every
    training history keeps a faithful source of the objects' identity (colours), however far
    its later chunks are degraded. 0 = off (every chunk resampled, the paper)."""
    preserve_lowpass: int = 4
    """preserve_colour 'lowpass': the pooling window in pixels (the frame's height and width
    must be multiples of it)."""
    calibrate_every: int = 0
    """Resampling strategies: every this many steps of the stage (from its first step), the
    trainer rolls the online model out on a few clips, measures its history gap (per-pixel
    MSE to the ground truth, calibration.py) and sets resample_shift to the one of
    calibrate_shifts whose resampled history has the closest gap. 0 = off (resample_shift
    as configured). The calibrated shift is saved in the checkpoint state."""
    calibrate_shifts: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.6, 1.0, 2.0, 3.0])
    """calibrate_every: the candidate resampling shifts."""
    calibrate_samples: int = 8
    """calibrate_every: clips rolled out (and resampled) per calibration."""
    history_from_previous_step: bool = False
    """No resampling pass: each step draws half a batch of new clips, trained with the
    ground-truth history, and re-uses the other half from the previous step, whose history is
    the x0 prediction the previous step's training forward made for those clips (detached).
    Each clip is trained twice (half the new clips per step); the degraded half is like
    parallel resampling at the training timesteps, per chunk, with the weights of one step
    before. Needs strategy 'teacher' (for the new clips); previous_step_history.py."""

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"history.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.resample_steps < 1:
            raise ValueError(f"history.resample_steps must be >= 1, got {self.resample_steps}")
        if not 0.0 <= self.noise_max <= 1.0:
            raise ValueError(f"history.noise_max must be in [0, 1], got {self.noise_max}")
        if self.resample_shift <= 0:
            raise ValueError(f"history.resample_shift must be > 0, got {self.resample_shift}")
        resampling = self.strategy in RESAMPLING
        if not 0.0 <= self.keep_ground_truth_p <= 1.0:
            raise ValueError(f"history.keep_ground_truth_p must be in [0, 1], got {self.keep_ground_truth_p}")
        if self.keep_ground_truth_per not in KEEP_GROUND_TRUTH_PER:
            raise ValueError(f"history.keep_ground_truth_per must be one of {KEEP_GROUND_TRUTH_PER}, "
                             f"got {self.keep_ground_truth_per!r}")
        if self.preserve_colour not in PRESERVE_COLOUR:
            raise ValueError(f"history.preserve_colour must be one of {PRESERVE_COLOUR}, got {self.preserve_colour!r}")
        if self.anchor_chunks < 0:
            raise ValueError(f"history.anchor_chunks must be >= 0 (0 = off), got {self.anchor_chunks}")
        if self.preserve_lowpass < 1:
            raise ValueError(f"history.preserve_lowpass must be >= 1, got {self.preserve_lowpass}")
        if self.calibrate_every < 0:
            raise ValueError(f"history.calibrate_every must be >= 0 (0 = off), got {self.calibrate_every}")
        if self.calibrate_every and (not self.calibrate_shifts or min(self.calibrate_shifts) <= 0):
            raise ValueError(f"history.calibrate_shifts must be a non-empty list of shifts > 0, "
                             f"got {list(self.calibrate_shifts)}")
        if not 0.0 <= self.resample_per_chunk_p <= 1.0:
            raise ValueError(f"history.resample_per_chunk_p must be in [0, 1], got {self.resample_per_chunk_p}")
        if self.resample_per_chunk_p < 1 and not self.resample_per_chunk:
            raise ValueError("history.resample_per_chunk_p mixes per-chunk and per-clip draws: "
                             "set resample_per_chunk: true")
        if self.calibrate_samples < 1:
            raise ValueError(f"history.calibrate_samples must be >= 1, got {self.calibrate_samples}")
        for name, on in (("resample_per_chunk", self.resample_per_chunk),
                         ("preserve_colour", self.preserve_colour != "none"),
                         ("calibrate_every", self.calibrate_every > 0),
                         ("anchor_chunks", self.anchor_chunks > 0)):
            if on and not resampling:
                raise ValueError(f"history.{name} applies to the resampling strategies {RESAMPLING}, "
                                 f"not strategy {self.strategy!r}")
        if self.keep_ground_truth_p > 0 and self.strategy == "teacher":
            raise ValueError("history.keep_ground_truth_p: strategy 'teacher' always keeps the ground truth")
        if self.history_from_previous_step and self.strategy != "teacher":
            raise ValueError(f"history.history_from_previous_step builds its own history from the previous "
                             f"step's predictions: set strategy 'teacher' (for its new clips), "
                             f"not {self.strategy!r}")


def sample_resample_strength(cfg: HistoryConfig, batch: int, generator=None, device=None) -> torch.Tensor:
    """t_s for each sample, (B,): logit-normal, then shifted by s; one value per iteration
    unless resample_per_sample."""
    n = torch.randn(batch if cfg.resample_per_sample else 1, generator=generator, device=device)
    t_s = shift_timesteps(torch.sigmoid(cfg.resample_mean + cfg.resample_std * n), cfg.resample_shift)
    return t_s.expand(batch).clone()


def sample_resample_strength_per_chunk(cfg: HistoryConfig, batch: int, chunks: int, generator=None,
                                       device=None) -> torch.Tensor:
    """t_s for each sample and chunk, (B, chunks): independent logit-normal draws per chunk,
    shifted by s; one row shared by the batch unless resample_per_sample."""
    n = torch.randn(batch if cfg.resample_per_sample else 1, chunks, generator=generator, device=device)
    t_s = shift_timesteps(torch.sigmoid(cfg.resample_mean + cfg.resample_std * n), cfg.resample_shift)
    return t_s.expand(batch, chunks).clone()


def preserve_colour(history: torch.Tensor, clean: torch.Tensor, mode: str, frames_per_chunk: int,
                    window: int = 4, eps: float = 1e-6) -> torch.Tensor:
    """The resampled `history` with the ground truth's colour put back (HistoryConfig.
    preserve_colour): 'channel_stats' renormalises each chunk's channels to the ground-truth
    chunk's mean and std over (frames, H, W); 'lowpass' adds the upsampled average-pool
    (window x window) of clean - history, so both pool to the same image."""
    if mode == "none":
        return history
    b, c, f, h, w = history.shape
    if mode == "channel_stats":
        n = f // frames_per_chunk
        hh = history.reshape(b, c, n, frames_per_chunk * h * w)
        cc = clean.reshape(b, c, n, frames_per_chunk * h * w)
        mh, sh = hh.mean(-1, keepdim=True), hh.std(-1, unbiased=False, keepdim=True)
        mc, sc = cc.mean(-1, keepdim=True), cc.std(-1, unbiased=False, keepdim=True)
        return ((hh - mh) / (sh + eps) * sc + mc).reshape(history.shape)
    if mode == "lowpass":
        if h % window or w % window:
            raise ValueError(f"history.preserve_lowpass={window} must divide the frame size {h}x{w}")
        d = (clean - history).transpose(1, 2).reshape(b * f, c, h, w)
        low = F.interpolate(F.avg_pool2d(d, window), scale_factor=window, mode="nearest")
        return history + low.reshape(b, f, c, h, w).transpose(1, 2)
    raise ValueError(f"preserve_colour mode must be one of {PRESERVE_COLOUR}, got {mode!r}")


def keep_ground_truth(cfg: HistoryConfig, history: torch.Tensor, t_history: torch.Tensor, clean: torch.Tensor,
                      frames_per_chunk: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(history, t_history) with the ground truth (t = 0) put back for the samples (or
    chunks) drawn with probability keep_ground_truth_p."""
    b, n = t_history.shape
    shape = (b, 1) if cfg.keep_ground_truth_per == "clip" else (b, n)
    keep = torch.rand(shape, generator=generator, device=clean.device) < cfg.keep_ground_truth_p
    keep = keep.expand(b, n)
    mask = per_frame(keep, frames_per_chunk)
    return torch.where(mask, clean, history), torch.where(keep, torch.zeros_like(t_history), t_history)


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
        ts = t_s if t_s.ndim == 1 else t_s[:, i]  # (B,), or (B, n): a strength per chunk
        x_ts = add_noise(clean[:, :, sl], noise[:, :, sl], ts[:, None], fpc)
        # the last chunk is nobody's history: no commit
        out.append(chunk_step(model, x_ts, truncated_schedule(ts, steps), cache, context, attention,
                              commit=i < n - 1, actions=None if actions is None else actions[:, sl]))
    video = torch.cat(out, dim=2) if out else clean[:, :, :0]  # skip_last of a 1-chunk clip
    return (video, cache) if return_cache else video


@torch.no_grad()
def parallel_resample(model, clean, t_s, steps, generator=None, context=None, noise=None, attention=None,
                      actions=None):
    """Table 2's baseline: every chunk noised to t_s and denoised at once, conditioned on the
    GROUND-TRUTH history (one two-stream pass per Euler step, under the `attention` policy).
    t_s: (B,), or (B, n) for a strength per chunk."""
    fpc = model.config.frames_per_chunk
    n = clean.shape[2] // fpc
    if noise is None:
        noise = torch.randn(clean.shape, generator=generator, device=clean.device)
    if t_s.ndim == 2:  # per chunk: each chunk from its own t_s down to 0 in equal steps
        x = add_noise(clean, noise, t_s, fpc)
        for k in range(steps):
            v = model(x, t_s * (1 - k / steps), history=clean, context=context, attention=attention,
                      actions=actions)
            x = x - per_frame(t_s / steps, fpc).to(x.dtype) * v
        return x
    x_ts = add_noise(clean, noise, t_s[:, None].expand(-1, n), fpc)

    def v(xx, tt):
        return model(xx, tt.expand(-1, n), history=clean, context=context, attention=attention, actions=actions)

    return euler_integrate(v, x_ts, truncated_schedule(t_s, steps))


def build_history(cfg: HistoryConfig, model, clean: torch.Tensor, generator=None, context=None,
                  attention=None, actions=None, gather_weights=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(history, t_history) for a batch of clean videos (B, C, F, H, W); both detached.
    `attention`: the stage's history attention policy; parallel resampling always runs under
    it (its two-stream pass is the training pass), self-resampling only if route_resampling.
    `actions`: the clips' per-frame actions (action model), seen by the resampling passes.
    `gather_weights(model)`: a context manager that gathers sharded weights for the whole
    resampling pass (used when cfg.resample_unsharded; the trainer passes
    training.distributed.unsharded); None: the model's weights are used as they are."""
    history, t_history, _ = build_history_and_cache(cfg, model, clean, generator, context, attention,
                                                    actions=actions, gather_weights=gather_weights)
    return history, t_history


def build_history_and_cache(cfg: HistoryConfig, model, clean: torch.Tensor, generator=None, context=None,
                            attention=None, skip_last=False, actions=None, gather_weights=None):
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
        return _kept(cfg, add_noise(clean, noise, level, fpc), level, clean, fpc, generator, None)
    per_chunk = cfg.resample_per_chunk
    if per_chunk and cfg.resample_per_chunk_p < 1:  # no extra draw at p = 1: the random stream of resample_per_chunk
        per_chunk = bool(torch.rand(1, generator=generator, device=clean.device) < cfg.resample_per_chunk_p)
    if per_chunk:
        t_s = sample_resample_strength_per_chunk(cfg, b, n, generator, clean.device)
    else:
        t_s = sample_resample_strength(cfg, b, generator, clean.device)
    if cfg.anchor_chunks:  # strength 0: one Euler step of size 0 leaves the clean chunk as it is
        t_s = (t_s if t_s.ndim == 2 else t_s[:, None].expand(b, n)).clone()
        t_s[:, :cfg.anchor_chunks] = 0
    was_training = model.training
    model.eval()  # resampling is inference with the online weights
    cache = None
    gathered = gather_weights(model) if cfg.resample_unsharded and gather_weights else contextlib.nullcontext()
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
    hist = hist.detach()
    if cfg.preserve_colour != "none":
        hist = preserve_colour(hist, clean[:, :, :hist.shape[2]], cfg.preserve_colour, fpc, cfg.preserve_lowpass)
        cache = None  # the cache holds the resampled chunks, not these: not the history's keys/values
    return _kept(cfg, hist, zeros, clean, fpc, generator, cache)


def _kept(cfg: HistoryConfig, history, t_history, clean, fpc, generator, cache):
    """(history, t_history, cache) with keep_ground_truth_p applied (the cache is dropped
    where the history changed)."""
    if cfg.keep_ground_truth_p <= 0:
        return history, t_history, cache
    n_hist = history.shape[2] // fpc  # skip_last: the history lacks the last chunk
    h, t = keep_ground_truth(cfg, history, t_history[:, :n_hist], clean[:, :, :history.shape[2]], fpc, generator)
    return h, torch.cat([t, t_history[:, n_hist:]], dim=1), None
