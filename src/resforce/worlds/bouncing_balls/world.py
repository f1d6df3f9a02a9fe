"""The built-in procedural world: bouncing balls (data/worlds.py simulates it).

Scored against what the world allows (ball count, colour, size, shape, background, steady
motion; worlds/bouncing_balls/metrics.py) and, where the world states are known, against them; the generic
metrics get a ``generic_`` prefix.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from resforce.worlds.bouncing_balls import identity as ball_identity
from resforce.worlds.bouncing_balls.identity import FAILURE_DEFINITION
from resforce.worlds.bouncing_balls.metrics import evaluate_bouncing_balls
from resforce.worlds.bouncing_balls.simulator import BouncingBalls
from resforce.metrics.video import evaluate_generic
from resforce.worlds.bouncing_balls.simulator import BouncingBallsConfig
from resforce.worlds.base import EVAL_SEED_OFFSET, World

PIXEL_CENTER = 0.5
"""The renderer's pixel j covers [j, j + 1): ball positions are measured from pixel centres."""


class BouncingBallsWorld(World):
    kind = "bouncing_balls"
    config_class = BouncingBallsConfig
    config_doc = "The bouncing-balls world (used when kind = bouncing_balls)."
    table_metrics = ("failure", "count_error", "identity_error", "color_integrity", "size_error",
                     "background_noise", "accel_error", "position_error", "generic_flicker")
    plot_metrics = ("failure", "count_error", "identity_error", "color_integrity", "accel_error",
                    "background_noise")
    per_sample_metrics = ("failure", "count_error", "identity_error", "lost", "spawned", "color_integrity",
                          "size_error", "size_term", "shape_term", "accel_error", "accel_term", "teleport_term",
                          "background_noise", "position_error")
    summary_definition = FAILURE_DEFINITION
    verdict_metrics = {"count_error": ("keeps the number of balls better", "ball-count error"),
                       "identity_error": ("keeps the balls' identity better (a recoloured ball is lost and spawned)",
                                          "identity error")}
    title = "bouncing balls"
    scores_files = True

    def reference_note(self, prefix_frames: int) -> str:
        return f"reference balls: those of the first {prefix_frames} frame(s)"


    def stream(self, seed: int = 0) -> BouncingBalls:
        return BouncingBalls(dataclasses.replace(self.config, seed=self.config.seed + seed))

    def clips(self, batch: int, frames: int, seed: int):
        bb = dataclasses.replace(self.config, seed=self.config.seed + EVAL_SEED_OFFSET + seed)
        return BouncingBalls(bb).batch(batch, frames)

    def score(self, videos: np.ndarray, states=None, ground_truth=None, ref_frames: int = 2) -> dict[str, np.ndarray]:
        """The world's metrics, against the world states where given (their balls are the
        reference; radii, positions), else against the balls of the first `ref_frames` frames."""
        bb = self.config
        known = {}
        if states is not None:
            known = dict(radii=[list(r[v]) for r, v in zip(states.radii, states.valid)],
                         gt_positions=np.where(states.valid[:, None, :, None], states.positions, np.nan),
                         reference_balls=[ball_identity.palette_indices(c[v], bb.colors)
                                          for c, v in zip(states.colors, states.valid)])
        balls = evaluate_bouncing_balls(
            videos, bb.colors, bb.background, gt_frames=None if ground_truth is None else ground_truth.numpy(),
            pixel_center=PIXEL_CENTER, ref_frames=ref_frames, **known)
        generic = evaluate_generic(videos)
        return {**{f"generic_{k}": v for k, v in generic.items()}, **balls}
