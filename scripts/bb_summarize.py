"""Summarise results/bb/*.json (from scripts/bb_evaluate.sh) into Markdown tables.

Also writes failure-versus-horizon plots next to the JSON files (results/bb/*_vs_horizon.png).
Per method: each seed's mean over its rollouts per horizon segment; mean ± standard error
across seeds where there are several seeds (else across rollouts, marked †). Paired
differences use the same evaluation seeds (same prefixes and initial noise) for every run.
    python scripts/bb_summarize.py [results/bb] > results/bb/summary.md
docs/results.md holds this output between its <!-- results:begin --> and <!-- results:end -->
markers: paste summary.md there after a new evaluation.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from resforce.metrics.stats import paired_difference

ORDER = ["warmup", "teacher", "noise_aug", "diffusion_forcing", "parallel_resampling", "resampling"]
LABEL = {"warmup": "TF warm-up (step 1500)", "teacher": "teacher forcing", "noise_aug": "noise augmentation",
         "diffusion_forcing": "diffusion forcing", "parallel_resampling": "parallel resampling",
         "resampling": "Resampling Forcing (AR)"}
# 128x and dense: the shipped pair (seed 0) and TF/RF retrained from the re-run warm-up (bb_*_rerun_sN)
RERUN_ORDER = ["teacher", "teacher_rerun", "resampling", "resampling_rerun"]
RERUN_LABEL = {**LABEL, "teacher_rerun": "teacher forcing, re-runs", "resampling_rerun": "Resampling Forcing (AR), re-runs"}
# the resampling-shift ablation: s = 0.6 is the main recipe (bb_resampling)
SHIFT_ORDER = ["resampling_shift0.1", "resampling", "resampling_shift3.0"]
# training length: 800 vs 3000 steps after the warm-up (configs/bb_long_*.yaml)
LONG_ORDER = ["teacher", "long_teacher", "resampling", "long_resampling"]
LONG_LABEL = {"teacher": "TF, 800 steps", "long_teacher": "TF, 3000 steps",
              "resampling": "RF, 800 steps", "long_resampling": "RF, 3000 steps"}
SHIFT_LABEL = {"resampling_shift0.1": "RF, s = 0.1", "resampling": "RF, s = 0.6", "resampling_shift3.0": "RF, s = 3.0"}
# history gradient: the paper's two-stream step vs detached history (configs/bb_*_detached.yaml)
DETACHED_ORDER = ["teacher", "teacher_detached", "resampling", "resampling_detached"]
DETACHED_LABEL = {"teacher": "TF, two-stream", "teacher_detached": "TF, detached history",
                  "resampling": "RF, two-stream", "resampling_detached": "RF, detached history"}
# native long context: 800 steps on 32-chunk clips instead of 8 (configs/bb_native32_*.yaml)
NATIVE_ORDER = ["teacher", "native32_teacher", "resampling", "native32_resampling"]
NATIVE_LABEL = {"teacher": "TF, 8-chunk clips (context 8)", "native32_teacher": "TF, 32-chunk clips (context 32)",
                "resampling": "RF, 8-chunk clips (context 8)", "native32_resampling": "RF, 32-chunk clips (context 32)"}


def load(root: Path):
    runs = {}
    for f in sorted(root.glob("*.json")):
        d = json.loads(f.read_text())
        if "per_sample_segments" in d:
            runs[f.stem] = d
    return runs


def full_segments(d):
    """Indices of the whole segments (a short tail segment is left out of the tables)."""
    return [i for i, r in enumerate(d["rows"]) if r["end"] - r["start"] == d["segment_len"]]


def seg_labels(d):
    return [f"{r['start']}-{r['end']}" + (" *" if r["beyond_train"] else "")
            for i, r in enumerate(d["rows"]) if i in full_segments(d)]


def per_sample(d, metric):
    x = np.array([[np.nan if x is None else x for x in row] for row in d["per_sample_segments"][metric]])
    return x[:, full_segments(d)]


def md_row(cells):
    return "| " + " | ".join(cells) + " |"


def md_head(cells):
    """A Markdown table's header row and its separator."""
    return [md_row(cells), "|" + "---|" * len(cells)]


def paired_head(d):
    return md_head(["paired difference (same rollout seeds)"] + seg_labels(d))


def fmt(m, se, dagger=False):
    return f"{m:.3f} ± {se:.3f}" + ("†" if dagger else "")


def method_table(runs, metric, order=ORDER, label=LABEL):
    groups = defaultdict(list)
    for name, d in runs.items():
        m = re.fullmatch(r"bb_(.+?)(?:_s(\d+))?", name)
        if m and m.group(1) in order and (m.group(2) is not None or m.group(1) == "warmup"):
            groups[m.group(1)].append(d)
    groups = {k: ds for k, ds in groups.items() if all(metric in d["per_sample_segments"] for d in ds)}
    if not groups:
        return ""
    any_d = next(iter(groups.values()))[0]
    head = ["method", "seeds"] + seg_labels(any_d)
    lines = md_head(head)
    for key in order:
        if key not in groups:
            continue
        ds = groups[key]
        seed_means = np.stack([np.nanmean(per_sample(d, metric), axis=0) for d in ds])  # seeds x segs
        if len(ds) > 1:
            cells = [fmt(m, s) for m, s in zip(seed_means.mean(0), seed_means.std(0, ddof=1) / np.sqrt(len(ds)))]
        else:
            x = per_sample(ds[0], metric)
            n = np.isfinite(x).sum(0)
            cells = [fmt(m, s, True) for m, s in zip(np.nanmean(x, 0), np.nanstd(x, 0, ddof=1) / np.sqrt(n))]
        lines.append(md_row([label[key], str(len(ds))] + cells))
    return "\n".join(lines)


def paired_table(runs, metric, pairs):
    lines = []
    for a, b, title in pairs:
        if a not in runs or b not in runs or any(metric not in runs[x]["per_sample_segments"] for x in (a, b)):
            continue
        mean, se = paired_difference(per_sample(runs[a], metric), per_sample(runs[b], metric))
        cells = [fmt(m, s) for m, s in zip(mean, se)]
        lines = lines or paired_head(runs[a])
        lines.append(md_row([title] + cells))
    return "\n".join(lines)


def seed_paired_table(runs, metric, comparisons):
    """Per-seed paired differences bb_{a}_s{N} - bb_{b}_s{N} for each (a, b, title), and where
    two or more seeds have both runs a row "mean over seeds": the mean of the per-seed paired
    means ± their standard error across seeds (training-seed noise; n = seeds)."""
    lines = []
    for a, b, title in comparisons:
        lines += seed_rows(runs, metric, title, [(s, f"bb_{a}_s{s}", f"bb_{b}_s{s}") for s in seeds_of(runs, a)],
                           head=not lines)
    return "\n".join(lines)


def seed_rows(runs, metric, title, named, head: bool) -> list[str]:
    """Table rows of one comparison over training seeds: named = [(seed, run a, run b)]; a
    seed missing either run (or the metric) is left out. head: start with the table's head."""
    rows = []
    for s, a, b in named:
        if a in runs and b in runs and all(metric in runs[x]["per_sample_segments"] for x in (a, b)):
            rows.append((s, a, *paired_difference(per_sample(runs[a], metric), per_sample(runs[b], metric))))
    if not rows:
        return []
    lines = list(paired_head(runs[rows[0][1]])) if head else []
    for s, _, mean, se in rows:
        lines.append(md_row([f"{title}, seed {s}"] + [fmt(m, e) for m, e in zip(mean, se)]))
    if len(rows) > 1:
        means = np.stack([r[2] for r in rows])
        cells = [fmt(m, e) for m, e in zip(means.mean(0), means.std(0, ddof=1) / np.sqrt(len(rows)))]
        lines.append(md_row([f"{title}, mean over {len(rows)} seeds"] + cells))
    return lines


def seeds_of(runs, key):
    """Training seeds N of the evaluated runs bb_{key}_s{N}."""
    return sorted(int(m.group(1)) for n in runs if (m := re.fullmatch(rf"bb_{re.escape(key)}_s(\d+)", n)))


def seed_curves(runs, key, metric):
    """(seeds, frames) per-frame means of one method's runs bb_{key}_s{N}."""
    ds = [d for n, d in runs.items() if re.fullmatch(rf"bb_{re.escape(key)}_s\d+", n)]
    return np.stack([np.asarray(d["per_frame_mean"][metric], dtype=float) for d in ds]) if ds else None


def write_plots(runs, root: Path):
    """Per-frame metric vs horizon, mean ± s.e. over training seeds (n = seeds), 9-frame smoothing."""
    from resforce.evaluation.report import plot_metric_vs_horizon

    any_d = next(iter(runs.values()))
    for order, label, tag in ((ORDER[1:], LABEL, "methods"), (SHIFT_ORDER, SHIFT_LABEL, "shift")):
        for metric in ("failure", "count_error"):
            curves = {label[k]: c for k in order if (c := seed_curves(runs, k, metric)) is not None}
            if len(curves) < 2:
                continue
            out = root / f"{tag}_{metric}_vs_horizon.png"
            plot_metric_vs_horizon({k: {metric: v} for k, v in curves.items()}, metric, out,
                                   train_len=any_d["train_frames"], smooth=9,
                                   title=f"{metric} vs frame (mean ± s.e. over n training seeds)")
            print(f"<!-- plot: {out} -->")


def variant(runs, suffix):
    """The runs evaluated under another protocol (bb_x_s0<suffix>.json), keyed like the main ones."""
    return {n[: -len(suffix)]: d for n, d in runs.items() if n.endswith(suffix)}


def main_runs(runs):
    return {n: d for n, d in runs.items() if not re.search(r"_(dense|x128)$", n)}


METRICS = (("failure", "aggregate failure score (0 = every check passes; a lost or spawned ball fails every "
                       "per-ball term; lower is better)"),
           ("count_error", "ball-count error (|balls on screen − given balls|, lower is better)"),
           ("lost", "balls of the given frames missing per frame (lower is better)"),
           ("identity_error", "identity error ((lost + spawned) / given balls; a colour change is one of each)"))


def protocol_line(d, what):
    return (f"_{what}: {d['samples']} rollouts per model, {d['frames']} frames ({d['prefix_frames']} given), "
            f"context {d.get('context_chunks', '?') or 'all'} chunks (0/all = dense), segments of {d['segment_len']} "
            f"frames; * = beyond the {d['train_frames']}-frame training clips._")


def frechet_table(runs, names):
    rows = [(n, runs[n]) for n in names if n in runs and all("frechet" in r.get("mean", {}) for r in runs[n]["rows"])]
    if not rows:
        return ""
    d0 = rows[0][1]
    segs = [r for r in d0["rows"]]
    head = ["Fréchet distance to 256 ground-truth clips"] + [f"{r['start']}-{r['end']}" for r in segs]
    lines = md_head(head)
    for n, d in rows:
        lines.append(md_row([n] + [f"{r['mean'].get('frechet', float('nan')):.3f}" for r in d["rows"]]))
    floor = [r["mean"].get("frechet_floor") for r in d0["rows"]]
    if all(f is not None for f in floor):
        lines.append(md_row(["floor: ground truth vs ground truth"] + [f"{f:.3f}" for f in floor]))
    return "\n".join(lines)


# how the runs of the routed comparison evaluated before eval --json recorded its history
# attention attend to history: routed runs use their last stage's top-4 routing,
# bb_resampling_s0_topk4 adds it at inference
ROUTED_ATTENTION = {"bb_resampling_routed_s0": "top-4", "bb_resampling_routed_s0_ctx8": "top-4",
                    "bb_resampling_s0_topk4": "top-4", "bb_resampling_s0": "dense", "bb_resampling_s1": "dense",
                    "bb_resampling_s2": "dense"}


def attention_of(runs, run) -> str:
    """'dense', 'top-4', 'window 4': from the evaluation's own record (history_attention), else
    (evaluations written before it was recorded) from ROUTED_ATTENTION."""
    a = runs[run].get("history_attention")
    if a is None:
        return ROUTED_ATTENTION[run]
    return {"dense": "dense", "topk": f"top-{a.get('topk')}", "window": f"window {a.get('window')}"}[a["mode"]]


INFERENCE_VARIANTS = ("topk4", "topk1", "window1", "window4")


def rf_base(runs, seed):
    """(seed label, run) of RF s = 0.6 to pair inference-only attention changes and the routed
    fine-tune with, for one training seed: bb_resampling_sN where its inference variants were
    evaluated, else bb_resampling_rerun_sN where it exists (the same recipe and seed retrained
    from the re-run warm-up, with its own dense evaluation, for seeds whose original weights are
    gone; the routed fine-tunes branch from that warm-up too), else bb_resampling_sN."""
    original, rerun = f"bb_resampling_s{seed}", f"bb_resampling_rerun_s{seed}"
    if not any(f"{original}_{v}" in runs for v in INFERENCE_VARIANTS) and rerun in runs:
        return f"{seed} (re-run)", rerun
    return str(seed), original


def inference_bases(runs):
    """[(seed label, base run)] per training seed of RF s = 0.6 (rf_base): one base per seed,
    so a mean over seeds never counts a seed twice."""
    return [rf_base(runs, s) for s in sorted(set(seeds_of(runs, "resampling")) | set(seeds_of(runs, "resampling_rerun")))]


def inference_attention_table(runs, metric="failure"):
    """RF s = 0.6 with its history attention changed only at inference (<base>_<v>,
    scripts/bb_evaluate.sh) against the same model's dense attention, per training seed and,
    with two or more seeds, their mean."""
    comparisons = [(v, "", f"RF {v} − RF dense within the context") for v in INFERENCE_VARIANTS]
    comparisons += [("topk1", "_window1", "RF top-1 − RF window-1")]
    lines = []
    for a, b, title in comparisons:
        named = [(s, f"{base}_{a}", f"{base}{b}") for s, base in inference_bases(runs)]
        lines += seed_rows(runs, metric, title, [n for n in named if same_weights(runs, n[1], n[2])], head=not lines)
    return "\n".join(lines)


def same_weights(runs, a, b) -> bool:
    """False (with a warning) where both evaluations record their weights' SHA-256 and they
    differ: an inference-only change must be paired with the same model (a retrained run is
    not bit-identical; re-evaluate the stale one)."""
    da, db = (runs[x].get("weights_sha256") if x in runs else None for x in (a, b))
    if da and db and da != db:
        print(f"warning: {a} and {b} evaluated different weights; left out (re-evaluate the older one)",
              file=sys.stderr)
        return False
    return True


def rf_tf_pairs(runs):
    """(RF, TF, title) per training seed of the shipped recipes, then per seed of their re-runs
    (bb_{resampling,teacher}_rerun_sN: both retrained from the re-run warm-up)."""
    return ([(f"bb_resampling_s{s}", f"bb_teacher_s{s}", f"RF − TF, seed {s}") for s in seeds_of(runs, "teacher")]
            + [(f"bb_resampling_rerun_s{s}", f"bb_teacher_rerun_s{s}", f"RF − TF, seed {s} (re-runs)")
               for s in seeds_of(runs, "teacher_rerun")])


def routed_tables(runs):
    """The routed fine-tune stage (configs/bb_resampling_routed.yaml: 600 RF steps, then 200 on
    16-chunk clips with top-4 routing) against RF s = 0.6 (800 RF steps) routed only at
    inference or dense (the run of rf_base), per training seed N: bb_resampling_routed_sN (at its
    own context 16) and bb_resampling_routed_sN_ctx8 (the same model at context 8)."""
    def label(run):
        return f"{attention_of(runs, run)}, context {runs[run].get('context_chunks', '?') or 'all'}"

    bases = {s: rf_base(runs, s) for s in seeds_of(runs, "resampling_routed")}
    out = []
    for metric in ("failure", "count_error"):
        lines = []
        for a, b in (("", "_topk4"), ("", ""), ("_ctx8", "_topk4"), ("_ctx8", "")):
            named = [(tag, f"bb_resampling_routed_s{s}{a}", f"{base}{b}") for s, (tag, base) in bases.items()]
            present = [(x, y) for _, x, y in named if x in runs and y in runs]
            if present:
                title = f"routed fine-tune ({label(present[0][0])}) − RF ({label(present[0][1])})"
                lines += seed_rows(runs, metric, title, named, head=not lines)
        if lines:
            out.append(f"**Routed fine-tune stage vs routing only at inference** ({metric}, paired):\n\n" + "\n".join(lines))
    return "\n\n".join(out)


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/bb")
    every = load(root)
    runs = main_runs(every)
    print(f"<!-- generated by scripts/bb_summarize.py from {root}/*.json -->")
    if not runs:
        print(f"no evaluations in {root}")
        return
    write_plots(runs, root)
    if runs:
        print("\n" + protocol_line(next(iter(runs.values())), "Rolling context of the training length"))
    for metric, what in METRICS:
        t = method_table(runs, metric)
        if t:
            print(f"\n**{what}**, by frame segment:\n\n{t}")
    comparisons = [("resampling", "teacher", "RF − TF"),
                   ("resampling_rerun", "teacher_rerun", "RF − TF, both retrained from the re-run warm-up"),
                   ("resampling", "parallel_resampling", "AR − parallel resampling"),
                   ("parallel_resampling", "noise_aug", "parallel resampling − noise aug"),
                   ("noise_aug", "teacher", "noise aug − TF"),
                   ("diffusion_forcing", "teacher", "diffusion forcing − TF")]
    warm = [(f"bb_teacher_s{s}", "bb_warmup", f"TF (step 2300) − warm-up (step 1500), seed {s}")
            for s in seeds_of(runs, "teacher")]  # pairs whose other run is missing are left out
    for metric in ("failure", "count_error", "lost"):
        t = "\n".join(x for x in (seed_paired_table(runs, metric, comparisons), paired_table(runs, metric, warm)) if x)
        if t:
            print(f"\n**Paired {metric} differences** over the same rollouts (mean ± s.e. over rollouts; "
                  f"negative = first method better; \"mean over N seeds\": s.e. across training seeds):\n\n{t}")
    t = frechet_table(runs, ["bb_teacher_s0", "bb_resampling_s0"])
    if t:
        print(f"\n{t}")
    if sum(f"bb_{k}_s{s}" in runs for k in SHIFT_ORDER for s in range(3)) > 1:
        for metric in ("failure", "count_error"):
            t = method_table(runs, metric, SHIFT_ORDER, SHIFT_LABEL)
            print(f"\n**Resampling shift s** ({metric}; history degraded less for small s):\n\n{t}")
            t = seed_paired_table(runs, metric, [(k, ref, f"{SHIFT_LABEL[k]} − {name}")
                                                 for ref, name in (("resampling", "s = 0.6"), ("teacher", "TF"))
                                                 for k in SHIFT_ORDER if k != "resampling"])  # s = 0.6 − TF: above
            if t:
                print(f"\n{t}")
    if any(n.startswith("bb_long_") for n in runs):
        t = method_table(runs, "failure", LONG_ORDER, LONG_LABEL)
        print(f"\n**Training length** (failure; steps after the shared warm-up):\n\n{t}")
        t = paired_table(runs, "failure", [(f"bb_long_resampling_s{s}", f"bb_long_teacher_s{s}", f"RF − TF, 3000 steps, seed {s}")
                                         for s in seeds_of(runs, "long_resampling")])
        if t:
            print(f"\n{t}")
    if any(re.fullmatch(r"bb_\w+_detached_s\d+", n) for n in runs):
        for metric in ("failure", "count_error"):
            print(f"\n**History gradient: two-stream vs detached history** ({metric}):\n\n"
                  f"{method_table(runs, metric, DETACHED_ORDER, DETACHED_LABEL)}")
            t = seed_paired_table(runs, metric, [("teacher_detached", "teacher", "TF detached − TF two-stream"),
                                                 ("resampling_detached", "resampling", "RF detached − RF two-stream"),
                                                 ("resampling_detached", "teacher", "RF detached − TF two-stream"),
                                                 ("teacher_detached", "resampling", "TF detached − RF two-stream"),
                                                 # control: TF two-stream retrained from the same warm-up as
                                                 # the detached runs (bb_teacher.yaml, run_dir=runs/bb_teacherctl)
                                                 ("teacher_detached", "teacherctl", "TF detached − TF two-stream retrained"),
                                                 ("teacherctl", "teacher", "control: TF retrained − TF of the tables")])
            if t:
                print(f"\n{t}")
    if any(n.startswith("bb_native32_") for n in runs):
        for metric in ("failure", "count_error"):
            print(f"\n**Native long context: 32-chunk training clips, rolling context 32** ({metric}; "
                  f"* marks frames past 8-frame clips):\n\n{method_table(runs, metric, NATIVE_ORDER, NATIVE_LABEL)}")
            t = seed_paired_table(runs, metric, [("native32_resampling", "native32_teacher", "RF − TF, 32-chunk clips"),
                                                 ("native32_teacher", "teacher", "TF 32-chunk − TF 8-chunk clips"),
                                                 ("native32_resampling", "resampling", "RF 32-chunk − RF 8-chunk clips")])
            if t:
                print(f"\n{t}")
    for metric in ("failure", "count_error"):
        t = inference_attention_table(runs, metric)
        if t:
            print(f"\n**History attention at inference, within the rolling context** ({metric}, paired):\n\n{t}")
    # control: the same RF recipe and seed retrained from the re-run warm-up (bb_resampling_rerun_sN)
    # against the run of the tables: how far a retrain moves the numbers (training noise)
    for metric in ("failure", "count_error"):
        t = seed_paired_table(runs, metric, [("resampling_rerun", "resampling", "control: RF re-run − RF of the tables")])
        if t:
            print(f"\n**Control: RF s = 0.6 retrained from the re-run warm-up** ({metric}, paired):\n\n{t}")
    t = routed_tables(runs)
    if t:
        print(f"\n{t}")
    long = variant(every, "_x128")
    if long:
        print("\n" + protocol_line(next(iter(long.values())), "128x the training length, rolling context"))
        for metric, what in METRICS[:3]:
            print(f"\n**{what}**, 1024 generated chunks:\n\n{method_table(long, metric, RERUN_ORDER, RERUN_LABEL)}")
        for metric in ("failure", "count_error", "lost"):
            t = paired_table(long, metric, rf_tf_pairs(long))
            if t:
                print(f"\n**Paired {metric} differences**, 1024 generated chunks:\n\n{t}")
    dense = variant(every, "_dense")
    if dense:
        print("\n### Context extrapolation (a different question: dense attention over all history)\n")
        print(protocol_line(next(iter(dense.values())), "Dense attention over every chunk, given frames always in view"))
        for metric, what in METRICS[:3]:
            t = method_table(dense, metric, RERUN_ORDER, RERUN_LABEL)
            if t:
                print(f"\n**{what}**, dense history:\n\n{t}")
        t = paired_table(dense, "failure", rf_tf_pairs(dense))
        if t:
            print(f"\n{t}")


if __name__ == "__main__":
    main()
