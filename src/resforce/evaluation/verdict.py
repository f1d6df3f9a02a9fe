"""One line that says which of two methods held up better, computed from paired numbers.

The comparison page and `make demo` lead with it. It compares the last whole horizon segment
of two evaluations made on the same rollout seeds (same given frames, same initial noise):
the per-rollout difference, its mean and standard error. A difference under two standard
errors is reported as no clear difference, whatever its sign.
"""

from __future__ import annotations

import numpy as np

from resforce.metrics.stats import paired_difference


def _last_segment(ev, metric) -> np.ndarray:
    return np.array([np.nan if r[-1] is None else r[-1] for r in ev.per_sample_segments()[metric]], dtype=float)


def _clause(a, b, metric: str, better: str, number: str) -> str:
    xa, xb = _last_segment(a, metric), _last_segment(b, metric)
    if xa.shape != xb.shape:
        return ""
    if np.isfinite(xb - xa).sum() < 2:
        return ""
    d, se = paired_difference(xb, xa)
    numbers = (f"{number} {b.name} {np.nanmean(xb):.2f}, {a.name} {np.nanmean(xa):.2f}, paired "
               f"{b.name} − {a.name} = {d:+.2f} ± {se:.2f}")
    if abs(d) < 2 * se:
        return f"no clear difference in {number} ({numbers})"
    return f"{b.name if d < 0 else a.name} {better} ({numbers})"


def paired_verdict(evs, verdict_metrics: dict[str, tuple[str, str]]) -> str:
    """A sentence comparing evs[1] with evs[0], one clause per metric of `verdict_metrics`
    (the world's World.verdict_metrics: metric -> (what the better method does, what the
    number is), lower is better) that both have; '' if the evaluations are not a pair on the
    same seeds or share none of those metrics."""
    if len(evs) != 2 or not evs[0].rows:
        return ""
    a, b = evs
    have = [m for m in verdict_metrics if m in a.per_sample_segments() and m in b.per_sample_segments()]
    clauses = [c for c in (_clause(a, b, m, *verdict_metrics[m]) for m in have) if c]
    if not clauses:
        return ""
    row = a.rows[-1]
    times = row["end"] / a.generated.train_frames
    n = len(a.per_sample_segments()[have[0]])
    return (f"At {times:.0f}x the training length (frames {row['start']}-{row['end']}, {n} shared rollouts, "
            f"± s.e.): " + "; ".join(clauses) + ".")
