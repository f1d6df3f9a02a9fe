"""The Atari object metrics on ground truth (the ceiling) and the pixel detector's agreement with
the RAM, for docs/atari.md.

For Pong and Breakout at 32x32 and 64x64: CLIPS evaluation clips of FRAMES frames of the world
(AtariWorld.clips, seed 0: what `resforce eval` compares rollouts with) are scored
  * as `resforce eval` scores a rollout: against the RAM of the same clips;
  * as `resforce score` scores video files: against the objects of their first 2 frames;
  * after a round trip through .mp4 as `resforce generate` writes it (upscaled, read back and
    block-averaged) and as `resforce record` writes it (at the world's size), against the RAM;
  * with i.i.d. noise of s.d. 0.1 added, or a 3x3 blur (the detector's agreement only).
The detector's agreement: found on the frames the RAM shows the object / on those it hides
it, and the distance (world px) of a found object from the RAM's position (mean, max).

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/atari_object_ceiling.py [--clips 8] [--frames 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from resforce.cli.score import load_video_array, to_world_resolution
from resforce.config import DataConfig
from resforce.io.video_io import DEFAULT_CRF, save_video
from resforce.worlds import world_of
from resforce.worlds.atari import objects
from resforce.worlds.atari.world import AtariConfig

COLUMNS = ("missing", "spurious", "found_rate", "position_error", "ball_error", "player_error", "enemy_error",
           "brick_error")


def mp4_round_trip(videos: np.ndarray, scale: int | None, crf: int) -> np.ndarray:
    """The videos written as .mp4 (scale None: resforce generate's upscale; 1 and crf 10:
    resforce record's) and read back at the world's size, as `resforce score` reads them."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, v in enumerate(videos):
            path = Path(tmp) / f"{i}.mp4"
            save_video(path, v, fps=15, scale=scale, crf=crf)
            out.append(to_world_resolution(load_video_array(path), v.shape[-2:])[0][0])
    return np.stack(out)


def blur(videos: np.ndarray) -> np.ndarray:
    """A 3x3 binomial blur of every frame ([1, 2, 1] / 4 along rows and columns, edges repeated)."""
    v = np.pad(videos, [(0, 0)] * 3 + [(1, 1), (1, 1)], mode="edge")
    v = 0.25 * v[..., :-2, :] + 0.5 * v[..., 1:-1, :] + 0.25 * v[..., 2:, :]
    return 0.25 * v[..., :-2] + 0.5 * v[..., 1:-1] + 0.25 * v[..., 2:]


def agreement(videos, states, game, resolution) -> str:
    found = objects.detect(videos, game)
    ram = objects.shown_in_ram(game, states.objects, resolution)
    parts = []
    for name, shown in ram.found.items():
        got = found.found[name]
        err = np.linalg.norm(found.position[name] - ram.position[name], axis=-1)[shown & got]
        hidden = f"{got[~shown].mean():.3f}" if (~shown).any() else "-"
        error = f"{err.mean():.2f} / {err.max():.2f} px" if err.size else "-"
        parts.append(f"{name} {got[shown].mean():.3f} / {hidden}, {error}")
    if found.bricks is not None:
        parts.append(f"bricks = RAM's on {(np.abs(found.bricks - ram.bricks) < 0.5).mean():.3f}")
    return "; ".join(parts)


def means(metrics: dict) -> str:
    """Each column's mean over samples and frames where defined ('-': nowhere)."""
    return "  ".join(f"{k} {np.nanmean(metrics[k]):.3f}" if np.isfinite(metrics[k]).any() else f"{k} -"
                     for k in COLUMNS if k in metrics)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--frames", type=int, default=64)
    a = p.parse_args()
    for game in ("pong", "breakout"):
        for resolution in (32, 64):
            t = time.perf_counter()
            world = world_of(DataConfig(kind="atari", atari=AtariConfig(game=game, resolution=resolution)))
            videos, states = world.clips(a.clips, a.frames, seed=0)
            v = videos.numpy()
            print(f"## {game} {resolution}x{resolution}: {a.clips} clips of {a.frames} frames")
            print(f"detector vs RAM (found when shown / when hidden, error mean / max): {agreement(v, states, game, resolution)}")
            print(f"  eval (vs RAM):              {means(world.score(v, states))}")
            print(f"  score (vs given frames):    {means(world.score(v, ref_frames=2))}")
            for label, scale, crf in (("generate's .mp4", None, DEFAULT_CRF), ("record's .mp4", 1, 10)):
                m = mp4_round_trip(v, scale, crf)
                print(f"  {label + ' (vs RAM):':27} {means(world.score(m, states))}")
                print(f"    detector: {agreement(m, states, game, resolution)}")
            rng = np.random.default_rng(0)
            for label, m in (("noise s.d. 0.1", np.clip(v + rng.normal(0, 0.1, v.shape), -1, 1)),
                             ("3x3 blur", blur(v))):
                print(f"  {label}: detector: {agreement(m, states, game, resolution)}")
            print(f"  ({time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main()
