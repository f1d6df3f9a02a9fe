"""Paired differences of two `resforce eval` JSONs made on the same seeds (same given frames,
actions and initial noise), for any world: per rollout, the metric's mean over the generated
segments and over the last segment (segment 0, which holds the given frames, is left out),
then B - A, mean ± standard error over rollouts. With `eval --inverse-dynamics`, also each
rollout's action-following accuracy and its accuracy above the floor (another episode's actions).

    python scripts/eval_paired.py A.json B.json [metric ...]
"""

import json
import sys
import warnings

import numpy as np

from resforce.evaluation.evaluate import saved_following, saved_segments
from resforce.metrics.stats import paired_difference

DEFAULT = ("follow", "follow_chance", "agent_found", "lost", "identity_error", "count_error",
           "missing", "spurious", "ball_found", "player_found", "player_error", "bricks", "brick_error")


def per_rollout(ev: dict, metric: str, last: bool) -> np.ndarray:
    a = saved_segments(ev)[metric]
    # segment 0 holds the given frames: the rest (all generated) is compared
    a = a[:, -1:] if last else a[:, 1:] if a.shape[1] > 1 else a
    with warnings.catch_warnings():  # a rollout whose frames never scored it (e.g. no ball): NaN, left out
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=1)


def following(ev: dict) -> dict[str, np.ndarray]:
    """Per-rollout action following (accuracy; accuracy - floor), when the eval measured it."""
    saved = saved_following(ev)
    if saved is None:
        return {}
    own, floor = saved
    return {"action_following": own, "following_above_floor": own - floor}


def line(name: str, where: str, xa, xb) -> str:
    d, se = paired_difference(xb, xa)
    return f"{name:22s} {where:13s} A {np.nanmean(xa):.3f}  B {np.nanmean(xb):.3f}  B-A {float(d):+.3f} ± {float(se):.3f}"


def main(argv):
    a_path, b_path, *metrics = argv
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    rollouts = len(next(iter(a["per_sample_segments"].values())))
    print(f"{rollouts} paired rollouts of {a['frames']} frames (segments of {a['segment_len']}); "
          f"B - A with B = {b['name']}, A = {a['name']}")
    for m in metrics or DEFAULT:
        if m not in a["per_sample_segments"] or m not in b["per_sample_segments"]:
            continue
        for last in (False, True):
            where = "last segment" if last else f"frames {a['segment_len']}+"
            print(line(m, where, per_rollout(a, m, last), per_rollout(b, m, last)))
    fa, fb = following(a), following(b)
    for m in fa.keys() & fb.keys():
        print(line(m, "generated", fa[m], fb[m]))


if __name__ == "__main__":
    main(sys.argv[1:])
