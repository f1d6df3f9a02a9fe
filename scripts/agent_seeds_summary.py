"""Summarise agent-world evaluations over training seeds: `resforce eval --samples 32 --chunks 128
--prefix-chunks 2 --frechet-reference 0 --json DIR/METHOD_sN.json` of one run per method and seed,
all branched from one warm-up, so rollout r of every file starts from the same given frames,
actions and initial noise (differences are paired over rollouts).

Prints, per metric, each method's mean over frames 8-128 and over the last segment (frames
120-128; the 2 frames past the last full segment are dropped) as mean ± s.e. over seeds, then
for each candidate method its paired difference (mean ± s.e. over rollouts) against every
baseline in every seed, and in how many seeds it is better, worse (by more than 1.5 paired
standard errors) or level.

    python scripts/agent_seeds_summary.py results/agent/seeds --candidate rf_per_chunk \
        --baselines teacher resampling parallel_resampling
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from resforce.evaluation.evaluate import saved_segments
from resforce.metrics.stats import mean_se, paired_difference

# metric -> +1 where higher is better, -1 where lower is better
METRICS = {"follow": +1, "agent_found": +1, "count_error": -1, "identity_error": -1, "lost": -1}
WHERE = {"frames 8-128": False, "frames 120-128": True}  # 16 segments of 8; the tail of 2 is dropped


def per_rollout(path: Path) -> dict[tuple[str, bool], np.ndarray]:
    """(metric, last segment only) -> per-rollout mean over the generated segments."""
    segs = saved_segments(json.loads(path.read_text()))
    out = {}
    for m in METRICS:
        a = segs[m]
        for last in WHERE.values():
            # segment 0 holds the 2 given frames: only generated segments are compared
            with warnings.catch_warnings():  # a rollout with no value in a segment stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                out[m, last] = np.nanmean(a[:, -1:] if last else a[:, 1:], axis=1)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--candidate", action="append", required=True, help="method name (file stem before _sN)")
    p.add_argument("--baselines", nargs="+", required=True)
    a = p.parse_args(argv)
    runs: dict[str, dict[int, dict]] = {}
    for f in sorted(a.folder.glob("*_s*.json")):
        method, seed = f.stem.rsplit("_s", 1)
        runs.setdefault(method, {})[int(seed)] = per_rollout(f)
    missing = [m for m in a.candidate + a.baselines if m not in runs]
    if missing:
        raise SystemExit(f"error: {a.folder}: no METHOD_sN.json for {', '.join(missing)}")
    methods = a.baselines + a.candidate
    print("## Means over seeds (each seed: mean over 32 rollouts)\n")
    print("| method | seeds | " + " | ".join(f"{m} {w}" for m in METRICS for w in WHERE) + " |")
    print("|---|---|" + "---:|" * (len(METRICS) * len(WHERE)))
    for name in methods:
        cells = []
        for m in METRICS:
            for last in WHERE.values():
                mu, se = mean_se(np.array([np.nanmean(r[m, last]) for r in runs[name].values()]))
                cells.append(f"{float(mu):.3f} ± {float(se):.3f}")
        print(f"| {name} | {','.join(map(str, sorted(runs[name])))} | " + " | ".join(cells) + " |")
    for cand in a.candidate:
        print(f"\n## {cand} minus each baseline, paired over rollouts, per seed\n")
        print("| baseline | metric | where | " + " | ".join(f"seed {s}" for s in sorted(runs[cand])) + " | better / level / worse |")
        print("|---|---|---|" + "---|" * len(runs[cand]) + "---|")
        for base in a.baselines:
            for m, sign in METRICS.items():
                for where, last in WHERE.items():
                    cells, tally = [], [0, 0, 0]
                    for s in sorted(runs[cand]):
                        if s not in runs[base]:
                            cells.append("n/a")
                            continue
                        if len(runs[cand][s][m, last]) != len(runs[base][s][m, last]):
                            raise SystemExit(f"error: {cand}_s{s} and {base}_s{s}: different numbers of rollouts (evaluate both with the same --samples)")
                        d, se = (float(x) for x in paired_difference(runs[cand][s][m, last], runs[base][s][m, last]))
                        cells.append(f"{d:+.3f} ± {se:.3f}")
                        tally[0 if sign * d > 1.5 * se else 2 if -sign * d > 1.5 * se else 1] += 1
                    print(f"| {base} | {m} | {where} | " + " | ".join(cells) + f" | {tally[0]} / {tally[1]} / {tally[2]} |")


if __name__ == "__main__":
    main()
