"""Summarise the identity variants (results/identity/bb_rf_*_sN.json) against the baselines of
the same evaluation seeds (results/bb/bb_{teacher,parallel_resampling,resampling}_sN.json).

Every file is a `resforce eval --chunks 128 --samples 64 --segment 32 --seed 0 --json` of one
run (scripts/identity_experiments.sh, scripts/bb_evaluate.sh), so rollout r of every file
starts from the same 2 given frames and the same initial noise: differences are paired over
the 64 rollouts (mean ± standard error). Per metric and segment: each run's mean over its
rollouts, then each variant minus RF s = 0.6 and minus the best baseline of that metric.

    python scripts/identity_summarize.py [results/identity] [results/bb] > results/identity/summary.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from resforce.evaluation.evaluate import saved_segments
from resforce.metrics.stats import mean_se, paired_difference

METRICS = ("count_error", "identity_error", "failure")
BASELINES = {"teacher": "teacher forcing", "noise_aug": "noise augmentation",
             "parallel_resampling": "parallel resampling", "resampling": "RF, s = 0.6"}
SEGMENTS = (0, 3)  # frames 0-32 and 96-128 (16x the 8-frame training clips)


def segments(path: Path) -> dict[str, np.ndarray]:
    """metric -> (rollouts, segments) per-sample segment means (NaN where undefined)."""
    segs = saved_segments(json.loads(path.read_text()))
    return {m: segs[m] for m in METRICS}


def label(seg: int) -> str:
    return f"{32 * seg}-{32 * seg + 32}"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ident = Path(argv[0] if argv else "results/identity")
    base = Path(argv[1] if len(argv) > 1 else "results/bb")
    variants = sorted(p for p in ident.glob("bb_rf_*_s*.json"))
    if not variants:
        raise SystemExit(f"no bb_rf_*_sN.json in {ident}")
    out = ["| run | " + " | ".join(f"{m} {label(s)}" for m in METRICS for s in SEGMENTS) + " |",
           "|---|" + "---:|" * (len(METRICS) * len(SEGMENTS))]
    runs: dict[str, dict[str, np.ndarray]] = {}
    for seed in sorted({p.stem.rsplit("_s", 1)[1] for p in variants}):
        for key, name in BASELINES.items():
            f = base / f"bb_{key}_s{seed}.json"
            if f.is_file():
                runs[f"{name} (seed {seed})"] = segments(f)
    for p in variants:
        name, seed = p.stem.removeprefix("bb_").rsplit("_s", 1)
        runs[f"{name} (seed {seed})"] = segments(p)
    for name, segs in runs.items():
        cells = [f"{np.nanmean(segs[m][:, s]):.3f}" for m in METRICS for s in SEGMENTS]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "Paired differences over the 64 shared rollouts (variant − baseline, mean ± s.e.; negative = "
            "the variant is better):", "",
            "| variant − baseline | " + " | ".join(f"{m} {label(s)}" for m in METRICS for s in SEGMENTS) + " |",
            "|---|" + "---:|" * (len(METRICS) * len(SEGMENTS))]
    for p in variants:
        seed = p.stem.rsplit("_s", 1)[1]
        v = segments(p)
        for key, name in BASELINES.items():
            f = base / f"bb_{key}_s{seed}.json"
            if not f.is_file():
                continue
            b = segments(f)
            cells = []
            for m in METRICS:
                for s in SEGMENTS:
                    d, se = paired_difference(v[m][:, s], b[m][:, s])
                    cells.append(f"{d:+.3f} ± {se:.3f}")
            out.append(f"| {p.stem.removeprefix('bb_')} − {name} | " + " | ".join(cells) + " |")
    out += across_seeds(variants, base)
    print("\n".join(out))


def across_seeds(variants: list[Path], base: Path) -> list[str]:
    """Per variant trained in 2+ seeds: the paired difference to each baseline of the same seed,
    averaged over the seeds (mean ± s.e. over seeds: the training seed is the unit here), and
    in how many seeds the variant is better (a negative difference)."""
    by_variant: dict[str, list[tuple[str, Path]]] = {}
    for p in variants:
        name, seed = p.stem.removeprefix("bb_").rsplit("_s", 1)
        by_variant.setdefault(name, []).append((seed, p))
    rows = []
    for name, runs in sorted(by_variant.items()):
        for key, label_ in BASELINES.items():
            pairs = [(segments(p), segments(base / f"bb_{key}_s{seed}.json"))
                     for seed, p in runs if (base / f"bb_{key}_s{seed}.json").is_file()]
            if len(pairs) < 2:
                continue
            cells = []
            for m in METRICS:
                for s in SEGMENTS:
                    d = np.array([paired_difference(v[m][:, s], b[m][:, s])[0] for v, b in pairs])
                    mean, se = mean_se(d)
                    cells.append(f"{mean:+.3f} ± {se:.3f} ({(d < 0).sum()}/{len(d)})")
            rows.append(f"| {name} − {label_} ({len(pairs)} seeds) | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", "Across training seeds (per seed the paired difference over its 64 rollouts; mean ± s.e. over "
            "the seeds; in brackets: seeds where the variant is better):", "",
            "| variant − baseline | " + " | ".join(f"{m} {label(s)}" for m in METRICS for s in SEGMENTS) + " |",
            "|---|" + "---:|" * (len(METRICS) * len(SEGMENTS)), *rows]


if __name__ == "__main__":
    main()
