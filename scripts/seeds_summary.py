"""Summarise evaluations over training seeds: `resforce eval ... --json DIR/METHOD_sN.json` of
one run per method and seed, all branched from one warm-up and evaluated on the same seeds, so
rollout r of every file starts from the same given frames, actions and initial noise
(differences are paired over rollouts). Any world: the metrics are named on the command line
(default: the agent world's).

Prints, per metric, each method's mean over the generated segments and over the last segment
(segment 0 holds the given frames and is left out) as mean ± s.e. over seeds, then for each
candidate method its paired difference (mean ± s.e. over rollouts) against every baseline in
every seed, and in how many seeds it is better, worse (by more than 1.5 paired standard
errors) or level. With `eval --inverse-dynamics`, `following_above_floor` (each rollout's
action-following accuracy minus its floor, over all its generated frames) is a metric too.

    python scripts/seeds_summary.py results/agent/seeds --candidate rf_per_chunk \
        --baselines teacher resampling parallel_resampling
    python scripts/seeds_summary.py results/atari/seeds --candidate resampling --baselines teacher \
        --metric missing:- --metric ball_found:+ --metric following_above_floor:+
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from resforce.evaluation.evaluate import saved_following, saved_segments
from resforce.metrics.stats import mean_se, paired_difference

# the agent world's metrics: +1 where higher is better, -1 where lower is better
AGENT_METRICS = {"follow": +1, "agent_found": +1, "count_error": -1, "identity_error": -1, "lost": -1}
FOLLOWING = "following_above_floor"


def per_rollout(path: Path, metrics: dict[str, int]) -> dict[tuple[str, str], np.ndarray]:
    """(metric, where) -> per-rollout mean: over the generated segments and over the last one."""
    ev = json.loads(path.read_text())
    segs = saved_segments(ev)
    out = {}
    for m in metrics:
        if m == FOLLOWING:
            saved = saved_following(ev)
            if saved is None:
                raise SystemExit(f"error: {path}: no per-rollout action following (evaluate with --inverse-dynamics)")
            out[m, "generated frames"] = saved[0] - saved[1]
            continue
        if m not in segs:
            raise SystemExit(f"error: {path}: no metric {m!r} (it has: {', '.join(sorted(segs))})")
        a = segs[m]
        seg, n = ev.get("segment_len", 8), a.shape[1]
        with warnings.catch_warnings():  # a rollout with no value in a segment stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            out[m, f"frames {seg}-{seg * n}"] = np.nanmean(a[:, 1:], axis=1)
            out[m, f"frames {seg * (n - 1)}-{seg * n}"] = np.nanmean(a[:, -1:], axis=1)
    return out


def metric_arg(text: str) -> tuple[str, int]:
    name, _, sign = text.rpartition(":")
    if not name or sign not in ("+", "-"):
        raise argparse.ArgumentTypeError(f"--metric {text!r}: expected NAME:+ (higher is better) or NAME:- (lower)")
    return name, +1 if sign == "+" else -1


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--candidate", action="append", required=True, help="method name (file stem before _sN)")
    p.add_argument("--baselines", nargs="+", required=True)
    p.add_argument("--metric", action="append", type=metric_arg, default=None,
                   help="NAME:+ or NAME:- (higher / lower is better); default: the agent world's metrics")
    a = p.parse_args(argv)
    metrics = dict(a.metric) if a.metric else AGENT_METRICS
    runs: dict[str, dict[int, dict]] = {}
    for f in sorted(a.folder.glob("*_s*.json")):
        method, seed = f.stem.rsplit("_s", 1)
        if method in a.candidate + a.baselines and seed.isdigit():
            runs.setdefault(method, {})[int(seed)] = per_rollout(f, metrics)
    missing = [m for m in a.candidate + a.baselines if m not in runs]
    if missing:
        raise SystemExit(f"error: {a.folder}: no METHOD_sN.json for {', '.join(missing)}")
    methods = a.baselines + [c for c in a.candidate if c not in a.baselines]
    columns = list(next(iter(runs[methods[0]].values())))
    rollouts = len(next(iter(next(iter(runs[methods[0]].values())).values())))
    print(f"## Means over seeds (each seed: mean over {rollouts} rollouts)\n")
    print("| method | seeds | " + " | ".join(f"{m} {w}" for m, w in columns) + " |")
    print("|---|---|" + "---:|" * len(columns))
    for name in methods:
        cells = []
        for key in columns:
            mu, se = mean_se(np.array([np.nanmean(r[key]) for r in runs[name].values()]))
            cells.append(f"{float(mu):.3f} ± {float(se):.3f}")
        print(f"| {name} | {','.join(map(str, sorted(runs[name])))} | " + " | ".join(cells) + " |")
    for cand in a.candidate:
        print(f"\n## {cand} minus each baseline, paired over rollouts, per seed\n")
        print("| baseline | metric | where | " + " | ".join(f"seed {s}" for s in sorted(runs[cand])) + " | better / level / worse |")
        print("|---|---|---|" + "---|" * len(runs[cand]) + "---|")
        for base in (b for b in a.baselines if b != cand):
            for m, where in columns:
                sign, cells, tally = metrics[m], [], [0, 0, 0]
                for s in sorted(runs[cand]):
                    if s not in runs[base]:
                        cells.append("n/a")
                        continue
                    x, y = runs[cand][s][m, where], runs[base][s][m, where]
                    if len(x) != len(y):
                        raise SystemExit(f"error: {cand}_s{s} and {base}_s{s}: different numbers of rollouts (evaluate both with the same --samples)")
                    d, se = (float(v) for v in paired_difference(x, y))
                    cells.append(f"{d:+.3f} ± {se:.3f}")
                    tally[0 if sign * d > 1.5 * se else 2 if -sign * d > 1.5 * se else 1] += 1
                print(f"| {base} | {m} | {where} | " + " | ".join(cells) + f" | {tally[0]} / {tally[1]} / {tally[2]} |")


if __name__ == "__main__":
    main()
