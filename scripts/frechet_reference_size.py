"""How many ground-truth clips does the Frechet reference need to be stable?

Frechet distances of `resforce eval` compare each segment's frames with a reference set of
ground-truth clips of the world. A small reference makes the distance noisy and biased
(covariance of 91 features estimated from few clips). This prints, for reference sizes n:
  * ground truth vs ground truth: two independent sets of n clips (the distance would be 0 with
    infinite data), mean ± s.d. over independent pairs;
  * a segment-sized ground-truth set (default 16 clips x 32 frames, like one table row of 16
    rollouts) vs n reference clips: mean ± s.d. over independent references, i.e. how much the
    reference alone moves a table entry;
  * independent segment-sized ground-truth sets vs one reference of n clips: mean ± s.d. over
    the segments, i.e. the floor a perfect model would score and how much it varies with the
    clips drawn (the reason the floor is computed on the evaluated clips' own ground truth).

    python scripts/frechet_reference_size.py [--config configs/bb_base.yaml] [--frames 32]
"""

from __future__ import annotations

import argparse

import numpy as np

from resforce.config import load_config
from resforce.metrics.frechet import frame_features, frechet_distance
from resforce.generation.generate import world_clips


def features(cfg, clips: int, frames: int, seed: int) -> np.ndarray:
    video, _ = world_clips(cfg, clips, frames, seed)
    return frame_features(video.numpy())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/bb_base.yaml")
    ap.add_argument("--frames", type=int, default=32, help="frames per clip (a table segment)")
    ap.add_argument("--sizes", default="16,64,128,256,512")
    ap.add_argument("--segment-clips", type=int, default=16, help="clips of the segment-sized set")
    ap.add_argument("--repeats", type=int, default=4)
    a = ap.parse_args(argv)
    cfg = load_config(a.config)
    seed = iter(range(10_000, 20_000))  # fresh, independent world seeds
    segments = [features(cfg, a.segment_clips, a.frames, next(seed)) for _ in range(a.repeats)]
    print(f"world: {a.config}; clips of {a.frames} frames; mean ± s.d. over {a.repeats} draws\n")
    print(f"| reference clips | GT vs GT (two sets of n) | one GT segment ({a.segment_clips} clips) vs "
          f"{a.repeats} references | {a.repeats} GT segments vs one reference |")
    print("|---:|---|---|---|")
    for n in (int(x) for x in a.sizes.split(",")):
        refs = [features(cfg, n, a.frames, next(seed)) for _ in range(a.repeats)]
        others = [features(cfg, n, a.frames, next(seed)) for _ in range(a.repeats)]
        pair = [frechet_distance(r, o) for r, o in zip(refs, others)]
        seg = [frechet_distance(segments[0], r) for r in refs]  # same segment, other references
        floor = [frechet_distance(s, refs[0]) for s in segments]  # other segments, same reference
        print(f"| {n} | {np.mean(pair):.4f} ± {np.std(pair, ddof=1):.4f} | {np.mean(seg):.4f} ± {np.std(seg, ddof=1):.4f} "
              f"| {np.mean(floor):.4f} ± {np.std(floor, ddof=1):.4f} |")


if __name__ == "__main__":
    main()
