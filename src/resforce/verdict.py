"""One line that says which of two methods held up better, computed from paired numbers.

The comparison page and `make demo` lead with it. It compares the last whole horizon segment
of two evaluations made on the same rollout seeds (same given frames, same initial noise):
the per-rollout difference, its mean and standard error. A difference under two standard
errors is reported as no clear difference, whatever its sign.
"""

from __future__ import annotations

import numpy as np


def paired_verdict(evs, verdict_metrics: dict[str, tuple[str, str]]) -> str:
    """A sentence comparing evs[1] with evs[0] on the first of `verdict_metrics` (the world's
    World.verdict_metrics: metric -> (what the better method does, what the number is), lower
    is better) both have; '' if the evaluations are not a pair on the same seeds or have no
    such metric."""
    if len(evs) != 2:
        return ""
    a, b = evs
    seg_a, seg_b = a.per_sample_segments(), b.per_sample_segments()
    metric = next((m for m in verdict_metrics if m in seg_a and m in seg_b), None)
    if metric is None or not a.rows or len(seg_a[metric]) != len(seg_b[metric]):
        return ""
    xa = np.array([np.nan if r[-1] is None else r[-1] for r in seg_a[metric]], dtype=float)
    xb = np.array([np.nan if r[-1] is None else r[-1] for r in seg_b[metric]], dtype=float)
    diff = xb - xa
    ok = np.isfinite(diff)
    if ok.sum() < 2:
        return ""
    d, se = diff[ok].mean(), diff[ok].std(ddof=1) / np.sqrt(ok.sum())
    row = a.rows[-1]
    times = row["end"] / a.generated.train_frames
    where = f"At {times:.0f}x the training length (frames {row['start']}-{row['end']})"
    better, number = verdict_metrics[metric]
    numbers = (f"{number}: {b.name} {np.nanmean(xb):.2f}, {a.name} {np.nanmean(xa):.2f}; paired difference "
               f"{b.name} − {a.name} = {d:+.2f} ± {se:.2f} (s.e. over {ok.sum()} shared rollouts)")
    if abs(d) < 2 * se:
        return f"{where}, no clear difference between {b.name} and {a.name}: {numbers}."
    winner = b.name if d < 0 else a.name
    return f"{where}, {winner} {better}: {numbers}."
