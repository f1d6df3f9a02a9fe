"""How degraded is the history Resampling Forcing trains on, next to the model's real errors?

Self-resampling (docs/method.md, "Self-resampling") is meant to imitate the errors the model makes at
inference. This scores, with the same per-frame metrics as `resforce eval`, 8-frame
ground-truth clips (a) as they are, (b) after autoregressive self-resampling with shift s (t_s
drawn per sample from the training distribution) by a given model, next to (c) the model's own
rollout frames 0-32 from its evaluation JSON (`scripts/bb_evaluate.sh`).

    python scripts/bb_history_gap.py runs/bb_warmup results/bb/bb_warmup.json [--out results/bb/history_gap.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from resforce.io.weights import load_model
from resforce.evaluation.evaluate import score_videos
from resforce.io.fileio import write_text_atomic
from resforce.history import HistoryConfig, build_history
from resforce.metrics.stats import mean_se
from resforce.generation.generate import world_clips

KEYS = ("failure", "count_error", "identity_error", "background_noise", "size_error", "position_error")


def score(videos: torch.Tensor, states, cfg) -> dict[str, float]:
    m = score_videos(videos.clamp(-1, 1), cfg, states)
    return {k: _nanmean(m[k]) for k in KEYS}


def _nanmean(x) -> float:
    """Mean ignoring NaN (JSON null -> NaN); NaN when nothing is defined."""
    return float(mean_se(np.asarray(x, dtype=float).ravel())[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run dir or weights whose model resamples")
    ap.add_argument("eval_json", help="the same model's `resforce eval --json` file (its rollouts)")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--shifts", default="0.1,0.6,3.0")
    ap.add_argument("--out", help="also write the Markdown table here")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    model, cfg = load_model(a.run)
    frames = max(st.clip_chunks for st in cfg.stages) * model.config.frames_per_chunk
    gt, states = world_clips(cfg, a.samples, frames, seed=1)
    rows = [("ground truth", score(gt, states, cfg))]
    g = torch.Generator().manual_seed(0)
    for s in (float(x) for x in a.shifts.split(",")):
        hc = HistoryConfig(strategy="resampling", resample_shift=s, resample_per_sample=True)
        hist, _ = build_history(hc, model, gt, generator=g)
        rows.append((f"self-resampled, s = {s:g}", score(hist, states, cfg)))
    ev = json.loads(Path(a.eval_json).read_text())
    seg = ev["per_frame_mean"]
    # its rollouts within the training length, then over the first segment; a rollout's position
    # error also counts its (legitimate) divergence from the ground-truth trajectory: left out
    lo = ev["prefix_frames"]
    for hi in (ev["train_frames"], lo + ev["segment_len"]):
        rows.append((f"its rollouts, frames {lo}-{hi}",
                     {k: _nanmean(seg[k][lo:hi]) if k != "position_error" else float("nan") for k in KEYS}))
    lines = [f"History gap of `{a.run}` ({a.samples} clips of {frames} frames; mean per frame):", "",
             "| frames | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    lines += ["| " + name + " | " + " | ".join("—" if np.isnan(r[k]) else f"{r[k]:.3f}" for k in KEYS) + " |" for name, r in rows]
    text = "\n".join(lines)
    print(text)
    if a.out:
        write_text_atomic(a.out, text + "\n")


if __name__ == "__main__":
    main()
