"""Wall-time of training steps with and without history gradient (bouncing-balls model).

Four kinds of step on the configs/bb_base.yaml model, 8 chunks: teacher forcing (TF) and
Resampling Forcing (RF), each two-stream (history_grad: true, the paper's) and detached
(history_grad: false: the noisy stream over history keys/values made without gradient; RF
reuses its resampling cache). Kinds are interleaved so background load hits all alike;
prints median step times (wall and process CPU time) and the ratios RF detached / TF
two-stream (goal <= 0.9) and RF detached / RF two-stream.
About 30 s of CPU at the defaults (batch 16, 1 thread, 4 rounds of 4 steps). Small batches favour
the two-stream step: resampling's one-chunk calls use the CPU less well than a two-stream pass.
Usage: python benchmarks/bench_detached_history.py [--batch 16] [--steps 3] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from resforce.config import load_config
from resforce.training.detached_history import history_kv
from resforce.history import HistoryConfig, build_history_and_cache
from resforce.loss import flow_matching_loss
from resforce.model.dit import CausalVideoDiT
from resforce.worlds import world_of

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import record  # noqa: E402  (benchmarks/summary.py: the table `make bench` ends with)


def step(model, opt, cfg, clean, hist_cfg, history_grad, gen):
    """One optimizer step as the trainer takes it (train.Trainer.train_step): (wall, CPU) seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    history, t_hist, cache = build_history_and_cache(hist_cfg, model, clean, gen, skip_last=not history_grad)
    kv = None if history_grad else history_kv(hist_cfg, model, history, t_hist, cache)
    loss = flow_matching_loss(model, clean, history, t_hist, cfg.timesteps, gen, space=cfg.loss_space,
                              history_kv=kv)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if clean.is_cuda:  # CUDA runs asynchronously: wait for the step's kernels
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


KINDS = {"TF two-stream": ("teacher", True), "RF two-stream": ("resampling", True),
         "TF detached": ("teacher", False), "RF detached": ("resampling", False)}


def median_step_times(cfg, batch: int, chunks: int, steps: int, device="cpu", seed: int = 0):
    """({kind: median wall s}, {kind: median process CPU s}, model, clean) over `steps` timed
    rounds of the four KINDS, interleaved, after one warm-up round (also used by
    bench_throughput.py)."""
    torch.manual_seed(seed)
    model = CausalVideoDiT(cfg.model).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = world_of(cfg.data).stream()
    gen = torch.Generator(device=device).manual_seed(seed)
    clean = data.batch(batch, chunks * cfg.model.frames_per_chunk)[0].to(device)
    wall, cpu = {k: [] for k in KINDS}, {k: [] for k in KINDS}
    for i in range(steps + 1):  # the first round warms up
        for name, (strategy, history_grad) in KINDS.items():
            dt, dc = step(model, opt, cfg, clean, HistoryConfig(strategy=strategy), history_grad, gen)
            if i:
                wall[name].append(dt)
                cpu[name].append(dc)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return med, med_cpu, model, clean


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/bb_resampling.yaml")
    ap.add_argument("--batch", type=int, default=None, help="clips per step (default: the config's, 16)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps of each kind, after one warm-up")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    args.batch = args.batch or cfg.optim.batch_size
    med, med_cpu, model, clean = median_step_times(cfg, args.batch, args.chunks, args.steps, args.device)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model {n_params:.1f}M params, batch {args.batch}, {args.chunks} chunks x "
          f"{model.tokens_per_chunk(*clean.shape[-2:])} tokens, {args.device}, {args.threads} thread(s), "
          f"median of {args.steps} steps")
    print(f"{'':16s} {'wall':>9s} {'CPU':>9s}   (CPU time: the steadier number when other work shares the cores)")
    for name in KINDS:
        print(f"{name:16s} {med[name] * 1000:6.1f} ms {med_cpu[name] * 1000:6.1f} ms")
    for label, a, b, goal in [("RF detached / TF two-stream", "RF detached", "TF two-stream", "   (goal <= 0.9)"),
                              ("RF detached / RF two-stream", "RF detached", "RF two-stream", ""),
                              ("TF detached / TF two-stream", "TF detached", "TF two-stream", ""),
                              ("RF / TF, two-stream", "RF two-stream", "TF two-stream", ""),
                              ("RF / TF, detached", "RF detached", "TF detached", "")]:
        print(f"ratio {label:28s} {med[a] / med[b]:6.3f}    {med_cpu[a] / med_cpu[b]:6.3f}{goal}")
    record("detached_history", "RF detached / TF two-stream step", med["RF detached"] / med["TF two-stream"],
           target="<= 0.9")
    record("detached_history", "RF / TF step, two-stream", med["RF two-stream"] / med["TF two-stream"])


if __name__ == "__main__":
    main()
