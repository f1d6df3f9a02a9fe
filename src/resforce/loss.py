"""The training objective: per-chunk timesteps, velocity MSE on the noisy stream.

L = mean over chunks of || (eps^i - x^i) - v_theta(x_t^i, history^{<i}, t^i, c) ||^2,
computed in ONE parallel two-stream forward pass (docs/method.md: notation, the two-stream mask), or, with
detached history, in one pass over the noisy chunks attending to history keys/values made
without gradient (detached_history.py). The target is
always the clean ground truth; only the history (built by history.py) is degraded.

Motion weighting (loss_motion_weight > 0) multiplies each element's squared error by
1 + w * m, where m marks what moves in the ground truth: pixels (and their 3x3 neighbours)
where a frame differs from the clip's previous frame by more than loss_motion_threshold in
any channel. In a game world the few moving pixels (a ball, a paddle the action moves) are
well under 1 % of a frame, so the unweighted loss is almost all static background, which a
model learns first and well; the weight gives the moving part a stated share of the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from resforce.flow import TimestepSampler, add_noise, per_frame, velocity_target


def motion_mask(clean: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, 1, F, H, W) float mask of what moves in clean videos (B, C, F, H, W): 1 where a frame
    differs from the previous frame of its clip by more than `threshold` in any channel, grown
    by one pixel (3x3 max-pool: a moved object's old and new place and its blurred edge);
    the first frame of a clip has no previous frame and is 0."""
    diff = (clean[:, :, 1:].float() - clean[:, :, :-1].float()).abs().amax(dim=1) > threshold  # (B, F-1, H, W)
    grown = F.max_pool2d(diff.float(), kernel_size=3, stride=1, padding=1)
    first = torch.zeros_like(grown[:, :1])
    return torch.cat([first, grown], dim=1).unsqueeze(1)


def weigh_motion(err: torch.Tensor, clean: torch.Tensor, weight: float, threshold: float) -> torch.Tensor:
    """err * (1 + weight * motion_mask(clean)); err unchanged (the same tensor) when weight is 0."""
    if weight == 0:
        return err
    return err * (1 + weight * motion_mask(clean, threshold))


def flow_matching_loss(model, clean: torch.Tensor, history: torch.Tensor, t_history: torch.Tensor,
                       sampler: TimestepSampler, generator: torch.Generator | None = None,
                       context: torch.Tensor | None = None, space: str = "velocity",
                       attention=None, history_kv=None, actions=None, motion_weight: float = 0.0,
                       motion_threshold: float = 0.1) -> torch.Tensor:
    """Velocity MSE for a batch of clean videos (B, C, F, H, W) given a (detached) history.

    space='x0' measures the same error in clean-video space: x0_hat = x_t - t v_hat, so the
    error is t (v - v_hat), i.e. velocity MSE weighted by t^2 per chunk. It keeps the small-t
    terms of an x0-predicting model (v = (x_t - x0_hat) / t) from dominating the loss.
    attention: the history attention policy of the two-stream pass (None = dense).
    history_kv: the history's keys/values made without gradient (detached_history.py): the
    noisy stream attends to them instead of a history stream; same loss value, and no
    gradient reaches the history. actions: the clips' per-frame actions (action model).
    motion_weight, motion_threshold: the extra weight of what moves (weigh_motion; 0: none)."""
    fpc = model.config.frames_per_chunk
    b, n = clean.shape[0], clean.shape[2] // fpc
    t = sampler((b, n), generator=generator, device=clean.device)
    noise = torch.randn(clean.shape, generator=generator, device=clean.device)
    x_t = add_noise(clean, noise, t, fpc)
    if history_kv is None:
        v = model(x_t, t, history=history, t_history=t_history, context=context, attention=attention,
                  actions=actions)
    else:
        v = model(x_t, t, history_kv=history_kv, context=context, attention=attention, actions=actions)
    return prediction_loss(v, clean, noise, t, fpc, space, motion_weight, motion_threshold)


def prediction_loss(v: torch.Tensor, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, fpc: int,
                    space: str = "velocity", motion_weight: float = 0.0, motion_threshold: float = 0.1) -> torch.Tensor:
    """The loss of a velocity prediction v for clean videos noised with `noise` at per-chunk
    timesteps t: squared velocity error (times t^2 in space 'x0'), weighted on what moves, mean."""
    err = (v.float() - velocity_target(clean, noise).float()).pow(2)
    if space == "x0":
        err = err * per_frame(t, fpc).pow(2)
    elif space != "velocity":
        raise ValueError(f"loss space must be 'velocity' or 'x0', got {space!r}")
    return weigh_motion(err, clean, motion_weight, motion_threshold).mean()
