"""History from the previous optimizer step's predictions: degraded history without a
resampling pass.

Design (history.history_from_previous_step). Every training forward already predicts the
clean video: x0_hat = x_t - t v_hat, per chunk at the chunk's training timestep t. Each step
of such a stage trains one micro-batch made of

- ``fresh``: ceil(B/2) new clips from the data stream, conditioned on their ground truth
  (teacher forcing), and
- ``reused``: the B/2 clips that were fresh in the previous step, conditioned on the x0
  prediction that step's training forward made for them (detached; as the model predicted
  it, not clamped), with new timesteps and noise for the loss.

The fresh clips' predictions are kept for the next step. So every clip is trained twice,
once with a clean and once with a degraded history, and a step reads half as many new clips
as a resampling step (the data cost: twice the reuse of each clip for the same number of
steps). The degraded half is parallel resampling at the training timesteps (a strength per
chunk, logit-normal: stronger on average than s = 0.6) made with the weights of one step
before, at no extra forward pass. The first step of the stage (nothing kept yet) trains a
whole fresh micro-batch with teacher forcing.

The kept clips and predictions are part of the checkpoint state (`state["previous_step"]`),
so a resumed run trains what the uninterrupted one does. An action model's kept clips keep
the actions they were trained with (after action dropout) and are conditioned on them again;
models with text conditioning are not supported.
"""

from __future__ import annotations

import torch

from resforce.actions import training_actions
from resforce.training import distributed as parallel
from resforce.flow import add_noise, per_frame
from resforce.loss import prediction_loss


def loss_and_prediction(model, clean: torch.Tensor, history: torch.Tensor, sampler, generator=None,
                        space: str = "velocity", attention=None, actions=None, motion_weight: float = 0.0,
                        motion_threshold: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, x0_hat): loss.flow_matching_loss (same draws: t, then the noise) and the
    forward's clean-video prediction x0_hat = x_t - t v_hat, detached."""
    fpc = model.config.frames_per_chunk
    b, n = clean.shape[0], clean.shape[2] // fpc
    t = sampler((b, n), generator=generator, device=clean.device)
    noise = torch.randn(clean.shape, generator=generator, device=clean.device)
    x_t = add_noise(clean, noise, t, fpc)
    v = model(x_t, t, history=history, t_history=torch.zeros(b, n, device=clean.device), attention=attention,
              actions=actions)
    x0_hat = (x_t - per_frame(t, fpc).to(x_t.dtype) * v).detach()
    return prediction_loss(v, clean, noise, t, fpc, space, motion_weight, motion_threshold), x0_hat


class PreviousStepHistory:
    """The clips kept from the previous step and their predictions, per micro-batch index."""

    def __init__(self):
        self.clean: dict[int, torch.Tensor] = {}
        self.pred: dict[int, torch.Tensor] = {}
        self.actions: dict[int, torch.Tensor] = {}

    def micro_step(self, trainer, k: int, micro: int, frames: int, attention, forward,
                   motion_weight: float = 0.0) -> torch.Tensor:
        """Forward and backward of micro-batch k of a step (see the module docstring); returns
        its loss, detached. motion_weight: the stage's loss_motion_weight."""
        cfg, o = trainer.cfg, trainer.cfg.optim
        if cfg.model.text_dim > 0:
            raise ValueError("history.history_from_previous_step does not support text conditioning (model.text_dim > 0)")
        half = micro // 2
        kept = self.clean.get(k)
        if kept is not None and (kept.shape[0] != half or kept.shape[2] != frames):
            kept = None  # the batch or clip length changed (a new stage): start over
        fresh, info = trainer.data.batch(micro if kept is None else micro - half, frames)
        fresh = fresh.to(trainer.device)
        fresh_actions = training_actions(info, cfg.model, trainer.device, trainer.gen)  # None: no action model
        actions = fresh_actions
        if kept is None:
            clean, history = fresh, fresh
        else:
            clean = torch.cat([fresh, kept.to(trainer.device)])
            history = torch.cat([fresh, self.pred[k].to(trainer.device)])
            if fresh_actions is not None:
                actions = torch.cat([fresh_actions, self.actions[k].to(trainer.device)])
        with parallel.no_grad_sync(trainer.model, parallel.skips_grad_sync(trainer.parallel, o.grad_sync, k, o.grad_accum)):
            with forward():
                loss, x0_hat = loss_and_prediction(trainer.model, clean, history, cfg.timesteps, trainer.gen,
                                                   space=cfg.loss_space, attention=attention, actions=actions,
                                                   motion_weight=motion_weight,
                                                   motion_threshold=cfg.loss_motion_threshold)
            (loss / o.grad_accum).backward()
        self.clean[k], self.pred[k] = fresh[:half].detach(), x0_hat[:half].float()
        if fresh_actions is not None:
            self.actions[k] = fresh_actions[:half].detach()
        return loss.detach()

    def clear(self) -> None:
        self.clean, self.pred, self.actions = {}, {}, {}

    def state_dict(self) -> dict:
        return {"clean": {str(k): v for k, v in self.clean.items()},
                "pred": {str(k): v for k, v in self.pred.items()},
                "actions": {str(k): v for k, v in self.actions.items()}}

    def load_state_dict(self, state: dict | None, device=None) -> None:
        state = state or {}
        self.clean = {int(k): v.to(device) for k, v in state.get("clean", {}).items()}
        self.pred = {int(k): v.to(device) for k, v in state.get("pred", {}).items()}
        self.actions = {int(k): v.to(device) for k, v in state.get("actions", {}).items()}
