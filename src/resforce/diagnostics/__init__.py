"""Diagnostics of what a model's history looks like, for any RGB world.

history_gap: how far the history a model is trained on (ground truth, or resampled at a
strength s) is from its ground truth, next to how far the model's own rollout is from the
ground truth it started from, per chunk position, by per-pixel MSE and by colour distances.

identity: how much a generated continuation's colours follow its history's colours (the
follow score: 1 = fully, 0 = not at all).

`python -m resforce.diagnostics RUN_OR_WEIGHTS` prints both as Markdown tables.
"""

from resforce.diagnostics.history_gap import (DISTANCES, chunk_distances, colour_histograms, frame_distances, history_gap,
                          model_rollout, resampled_history)
from resforce.diagnostics.identity import PERMUTATIONS, follow_score, identity_sensitivity, permute_channels

__all__ = ["DISTANCES", "PERMUTATIONS", "chunk_distances", "colour_histograms", "follow_score", "frame_distances",
           "history_gap", "identity_sensitivity", "model_rollout", "permute_channels", "resampled_history"]
