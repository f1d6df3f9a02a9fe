"""Paired differences of two `resforce eval` JSONs made on the same seeds (same given frames,
actions and initial noise): per rollout, the metric's mean over the whole rollout and over
its last segment (segment 0, which holds the given frames, is left out), then B - A, mean ± standard error over rollouts.

    python scripts/agent_paired.py A.json B.json [metric ...]
"""

import json
import sys

import numpy as np

from resforce.evaluation.evaluate import saved_segments
from resforce.metrics.stats import paired_difference

DEFAULT = ("follow", "follow_chance", "agent_found", "lost", "identity_error", "count_error")


def per_rollout(ev: dict, metric: str, last: bool) -> np.ndarray:
    a = saved_segments(ev)[metric]
    # segment 0 holds the given frames: the rest (all generated) is compared
    a = a[:, -1:] if last else a[:, 1:] if a.shape[1] > 1 else a
    return np.nanmean(a, axis=1)


def main(argv):
    a_path, b_path, *metrics = argv
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    name_a, name_b = a["name"], b["name"]
    print(f"{len(a['per_sample_segments']['lost'])} paired rollouts of {a['frames']} frames "
          f"(segments of {a['segment_len']}); B - A with B = {name_b}, A = {name_a}")
    for m in metrics or DEFAULT:
        if m not in a["per_sample_segments"] or m not in b["per_sample_segments"]:
            continue
        for last in (False, True):
            xa, xb = per_rollout(a, m, last), per_rollout(b, m, last)
            d, se = paired_difference(xb, xa)
            where = "last segment" if last else f"frames {a['segment_len']}+"
            print(f"{m:15s} {where:13s} A {np.nanmean(xa):.3f}  B {np.nanmean(xb):.3f}  B-A {float(d):+.3f} ± {float(se):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
