"""Wall-time of a Resampling Forcing step vs a teacher-forcing step (8 chunks).

Prints the median step times, their ratio (goal <= 1.25) and what the resampling part
costs. Steps of the two kinds are interleaved so background load hits both alike.
Torch threads: --threads, else OMP_NUM_THREADS, else 2 (two threads that share a core with
other work wait for each other at every small op: use one there).
Usage: python benchmarks/bench_resampling.py [--config configs/bb_resampling.yaml] [--steps 6] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from resforce.config import load_config
from resforce.history import HistoryConfig, build_history
from resforce.loss import flow_matching_loss
from resforce.model.dit import CausalVideoDiT
from resforce.worlds import world_of

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import record  # noqa: E402  (benchmarks/summary.py: the table `make bench` ends with)


def step(model, opt, cfg, clean, hist_cfg, gen):
    t0 = time.perf_counter()
    history, t_hist = build_history(hist_cfg, model, clean, gen)
    t1 = time.perf_counter()
    loss = flow_matching_loss(model, clean, history, t_hist, cfg.timesteps, gen, space=cfg.loss_space)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0, t1 - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/bb_resampling.yaml")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "").strip() or 2),
                    help="torch threads (default: OMP_NUM_THREADS, else 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    torch.manual_seed(0)
    model = CausalVideoDiT(cfg.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = world_of(cfg.data).stream()
    gen = torch.Generator().manual_seed(0)
    frames = args.chunks * cfg.model.frames_per_chunk
    clean = data.batch(cfg.optim.batch_size, frames)[0]
    tf_cfg, rf_cfg = HistoryConfig(strategy="teacher"), HistoryConfig(strategy="resampling")
    for _ in range(2):  # warm-up
        step(model, opt, cfg, clean, tf_cfg, gen)
        step(model, opt, cfg, clean, rf_cfg, gen)
    tf, rf, rs = [], [], []
    for _ in range(args.steps):
        tf.append(step(model, opt, cfg, clean, tf_cfg, gen)[0])
        total, resample = step(model, opt, cfg, clean, rf_cfg, gen)
        rf.append(total)
        rs.append(resample)
    tf_m, rf_m, rs_m = (statistics.median(x) for x in (tf, rf, rs))
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model {n_params:.1f}M params, batch {cfg.optim.batch_size}, {args.chunks} chunks x "
          f"{model.tokens_per_chunk(*clean.shape[-2:])} tokens, {args.threads} threads")
    print(f"teacher-forcing step      {tf_m * 1000:8.1f} ms")
    print(f"resampling-forcing step   {rf_m * 1000:8.1f} ms   (of which resampling {rs_m * 1000:.1f} ms)")
    print(f"ratio RF / TF             {rf_m / tf_m:8.3f}   (goal <= 1.25)")
    record("resampling", "RF / TF step", rf_m / tf_m, target="<= 1.25")
    print(f"resampling share of an RF step: {rs_m / rf_m:.1%}; the rest is the two-stream "
          f"forward + backward, identical in both")


if __name__ == "__main__":
    main()
