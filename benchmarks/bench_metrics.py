"""How long the bouncing-balls world's renderer and metrics take on a 256-frame clip.

Two balls of 4-3.5 px on the 32x32 canvas, 256 frames: the world's renderer
(resforce.worlds.bouncing_balls.simulator.render), then the per-frame ball metrics, the generic metrics and the
Frechet frame features of one rollout (resforce.metrics.facade). Median of --repeats runs after a
warm-up. Speed targets live here, not in the unit tests (tests/worlds/test_metrics.py,
tests/worlds/test_bouncing_balls_simulator.py check what these functions return).

    OMP_NUM_THREADS=1 python benchmarks/bench_metrics.py [--frames 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from resforce.metrics.frechet import frame_features
from resforce.metrics.video import evaluate_generic
from resforce.worlds.bouncing_balls.metrics import evaluate_bouncing_balls
from resforce.worlds.bouncing_balls.simulator import render

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import record  # noqa: E402  (benchmarks/summary.py: the table `make bench` ends with)

PALETTE = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.4, 1.0), (1.0, 1.0, 0.0)]
BG = (0.0, 0.0, 0.0)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    pos = rng.uniform(5, 27, size=(a.frames, 2, 2))
    radii, colors = np.array([4.0, 3.5]), np.array([PALETTE[0], PALETTE[2]])
    clip = render(pos, radii, colors, 32).transpose(1, 0, 2, 3)[None]  # (1, 3, F, H, W) in [-1, 1]
    rows = [("render (world renderer)", timed(lambda: render(pos, radii, colors, 32), a.repeats)),
            ("ball metrics (evaluate_bouncing_balls)",
             timed(lambda: evaluate_bouncing_balls(clip, PALETTE, BG, radii=[[4.0, 3.5]]), a.repeats)),
            ("generic metrics (evaluate_generic)", timed(lambda: evaluate_generic(clip), a.repeats)),
            ("Frechet frame features (frame_features)", timed(lambda: frame_features(clip), a.repeats))]
    print(f"{a.frames} frames of 32x32, 2 balls, median of {a.repeats} runs:")
    for name, t in rows:
        print(f"  {name:42s} {t * 1000:8.1f} ms")
    print(f"  {'total':42s} {sum(t for _, t in rows) * 1000:8.1f} ms")
    record("metrics", f"render + metrics of {a.frames} frames", sum(t for _, t in rows) * 1000, "ms")


if __name__ == "__main__":
    main()
