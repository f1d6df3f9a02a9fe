"""Adaptive resampling strength: match the training history's gap to the model's own.

The resampling shift s sets how degraded the training history is. Instead of a fixed s, a
stage with `history.calibrate_every: K` re-chooses it every K steps: the current (online)
model rolls out a few clips from their first chunk, its history gap is measured (per-pixel
MSE to the ground truth at the generated chunk positions, diagnostics.history_gap), and the
candidate shift (history.calibrate_shifts) whose resampled history of the same clips has
the closest gap at the same positions becomes the stage's resample_shift until the next
calibration. A rollout also drifts from the ground-truth trajectory legitimately, which
resampling cannot imitate: the chosen shift is an upper end of what the model's errors call
for.

The calibrated shift of each stage is part of the trainer's checkpoint state
(`state["calibration"]`), so a resumed run uses the same shift as the uninterrupted one;
calibration clips come from their own stream seeded by (run seed, step), and its noise from
its own generator, so the training data and noise streams are untouched.
"""

from __future__ import annotations

import dataclasses

import torch

from resforce.actions import commanded_actions
from resforce.diagnostics.history_gap import frame_distances, model_rollout, resampled_history
from resforce.history import HistoryConfig

CALIBRATION_SEED = 9_000_001
"""Offset of the calibration clips' stream seed (seed + CALIBRATION_SEED + step)."""


@torch.no_grad()
def calibrate_shift(model, clean: torch.Tensor, cfg: HistoryConfig, steps: int, sample_shift: float,
                    prefix_chunks: int = 1, seed: int = 0, attention=None,
                    actions: torch.Tensor | None = None) -> tuple[float, dict]:
    """(shift, gaps): the shift of cfg.calibrate_shifts whose resampled history (cfg's
    strategy and variants, t_s per sample; kept ground truth left out) has the per-pixel MSE
    to `clean` (B, C, F, H, W) closest to that of the model's rollout from the first
    `prefix_chunks` chunks (`steps` Euler steps, grid shift `sample_shift`), both over the
    generated chunk positions. gaps: {"rollout": mse, "s=<shift>": mse, ...}. `actions`: an
    action model's per-frame actions of the clips (B, F[, D]), commanding the rollout and seen
    by the resampling passes as in training."""
    fpc = model.config.frames_per_chunk
    was_training = model.training
    model.eval()
    try:
        gt = clean.float().clamp(-1, 1)
        video = model_rollout(model, gt, prefix_chunks, steps, sample_shift, seed=seed, attention=attention,
                              actions=actions)
        p = prefix_chunks * fpc

        def gap(v):
            return frame_distances(v[:, :, p:], gt[:, :, p:].cpu())["mse"].mean().item()

        gaps = {"rollout": gap(video)}
        g = torch.Generator(device=clean.device).manual_seed(seed)
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                  if f.name not in ("strategy", "resample_shift", "resample_per_sample", "keep_ground_truth_p",
                                    "calibrate_every")}
        for s in cfg.calibrate_shifts:
            hist = resampled_history(model, gt, cfg.strategy, float(s), g, attention=attention, actions=actions,
                                     **fields)
            gaps[f"s={float(s):g}"] = gap(hist)
    finally:
        model.train(was_training)
    best = min(cfg.calibrate_shifts, key=lambda s: abs(gaps[f"s={float(s):g}"] - gaps["rollout"]))
    return float(best), gaps


class Calibration:
    """The trainer's calibrated shifts, by stage index (checkpointed)."""

    def __init__(self):
        self.shifts: dict[int, float] = {}
        self.last: dict | None = None

    def stage(self, trainer, stage_idx: int, stage):
        """`stage` with its calibrated resample_shift (calibrating first when due: every
        calibrate_every steps of the stage from its first, or when no shift is known)."""
        every = stage.history.calibrate_every
        if not every:
            return stage
        cfg = trainer.cfg
        start = sum(s.steps for s in cfg.stages[:stage_idx])
        if (trainer.step - start) % every == 0 or stage_idx not in self.shifts:
            from resforce.worlds import world_of

            frames = stage.clip_chunks * cfg.model.frames_per_chunk
            stream = world_of(cfg.data).stream(cfg.seed + CALIBRATION_SEED + trainer.step)
            clean, info = stream.batch(stage.history.calibrate_samples, frames)
            clean = clean.to(trainer.device)
            actions = commanded_actions(trainer.model, info)
            from resforce.model.attention.policy import AttentionPolicy

            shift, gaps = calibrate_shift(trainer.model, clean, stage.history, cfg.sample.steps, cfg.sample.shift,
                                          seed=cfg.seed + trainer.step, attention=AttentionPolicy(stage.attention),
                                          actions=actions)
            self.shifts[stage_idx] = shift
            self.last = {"step": trainer.step, "shift": shift, **gaps}
        history = dataclasses.replace(stage.history, resample_shift=self.shifts[stage_idx])
        return dataclasses.replace(stage, history=history)

    def metrics(self, stage) -> dict:
        """The calibrated shift, for the step's metrics line (nothing for other stages)."""
        if not stage.history.calibrate_every:
            return {}
        return {"resample_shift": stage.history.resample_shift}

    def state_dict(self) -> dict:
        return {"shifts": {str(k): v for k, v in self.shifts.items()}}

    def load_state_dict(self, state: dict | None) -> None:
        self.shifts = {int(k): float(v) for k, v in (state or {}).get("shifts", {}).items()}
