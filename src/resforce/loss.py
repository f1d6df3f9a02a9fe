"""The training objective: per-chunk timesteps, velocity MSE on the noisy stream.

L = mean over chunks of || (eps^i - x^i) - v_theta(x_t^i, history^{<i}, t^i, c) ||^2,
computed in ONE parallel two-stream forward pass (docs/method.md: notation, the two-stream mask), or, with
detached history, in one pass over the noisy chunks attending to history keys/values made
without gradient (detached_history.py). The target is
always the clean ground truth; only the history (built by history.py) is degraded.
"""

from __future__ import annotations

import torch

from resforce.flow import TimestepSampler, add_noise, per_frame, velocity_target


def flow_matching_loss(model, clean: torch.Tensor, history: torch.Tensor, t_history: torch.Tensor,
                       sampler: TimestepSampler, generator: torch.Generator | None = None,
                       context: torch.Tensor | None = None, space: str = "velocity",
                       attention=None, history_kv=None, actions=None) -> torch.Tensor:
    """Velocity MSE for a batch of clean videos (B, C, F, H, W) given a (detached) history.

    space='x0' measures the same error in clean-video space: x0_hat = x_t - t v_hat, so the
    error is t (v - v_hat), i.e. velocity MSE weighted by t^2 per chunk. It keeps the small-t
    terms of an x0-predicting model (v = (x_t - x0_hat) / t) from dominating the loss.
    attention: the history attention policy of the two-stream pass (None = dense).
    history_kv: the history's keys/values made without gradient (detached_history.py): the
    noisy stream attends to them instead of a history stream; same loss value, and no
    gradient reaches the history. actions: the clips' per-frame actions (action model)."""
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
    err = (v.float() - velocity_target(clean, noise).float()).pow(2)
    if space == "x0":
        err = err * per_frame(t, fpc).pow(2)
    elif space != "velocity":
        raise ValueError(f"loss space must be 'velocity' or 'x0', got {space!r}")
    return err.mean()
