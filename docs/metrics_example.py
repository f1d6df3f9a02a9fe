"""The worked example of docs/metrics.md: healthy, degraded and collapsed videos side by side.

    .venv/bin/python docs/metrics_example.py      # from the repository root; a few seconds on a CPU

16 ground-truth clips of the demo models' world (configs/bb_base.yaml: 16 px, 1-2 balls), 64
frames, the first 2 given; each column is the mean over frames 2-63 of all clips (NaN-aware).
"""

import numpy as np

from resforce.config import load_config
from resforce.worlds.bouncing_balls.simulator import render
from resforce.evaluation.evaluate import score_videos
from resforce.generation.generate import world_clips

cfg = load_config("configs/bb_base.yaml")
video, states = world_clips(cfg, 16, 64, seed=0)
healthy = video.numpy()
collapsed = healthy.copy()
collapsed[:, :, 2:] = -1.0  # the background (black) after the 2 given frames
rng = np.random.default_rng(0)
noisy = np.clip(healthy + 0.2 * rng.standard_normal(healthy.shape), -1, 1).astype(np.float32)
noisy[:, :, :2] = healthy[:, :, :2]
noisier = np.clip(healthy + 0.3 * rng.standard_normal(healthy.shape), -1, 1).astype(np.float32)
noisier[:, :, :2] = healthy[:, :, :2]
# one ball lost: the 2-ball clips re-rendered without their second ball after the given frames
two = np.flatnonzero(states.valid.sum(1) == 2)
one_lost = healthy[two].copy()
for i, m in enumerate(two):
    keep = states.valid[m].copy()
    keep[-1] = False
    frames = render(states.positions[m], states.radii[m], states.colors[m], 16, valid=keep)  # (F, 3, H, W)
    one_lost[i, :, 2:] = frames.transpose(1, 0, 2, 3)[:, 2:]


def old_drift(r):
    """The naive aggregate, for comparison: undefined terms counted as passes."""
    t = [np.minimum(r["count_error"], 1), 1 - r["color_integrity"], np.minimum(r["size_error"], 1),
         np.minimum(r["shape_error"], 1), np.minimum(r["background_noise"] / 0.1, 1),
         np.minimum(r["accel_error"], 1), r["teleport"]]
    return np.mean([np.nan_to_num(np.clip(x, 0, 1), nan=0.0) for x in t], 0)


cols = ["identity_error", "color_integrity", "size_term", "shape_term", "background_noise", "accel_term",
        "teleport_term", "failure"]
print("| video | " + " | ".join(cols) + " | naive drift |")
print("|---|" + "---:|" * (len(cols) + 1))
for name, v in (("healthy (ground truth)", healthy), ("noisy (σ = 0.1)", noisy), ("noisier (σ = 0.15)", noisier),
                ("one of two balls lost", one_lost), ("collapsed (empty)", collapsed)):
    r = score_videos(v, cfg, ref_frames=2)  # reference balls: those of the first 2 frames
    cells = [f"{np.nanmean(r[k][:, 2:]):.3f}" for k in cols] + [f"{old_drift(r)[:, 2:].mean():.3f}"]
    print(f"| {name} | " + " | ".join(cells) + " |")
