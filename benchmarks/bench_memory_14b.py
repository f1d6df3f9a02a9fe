"""Wan2.1-14B: what one training step costs, before renting GPUs.

By default (instant) it prints the closed-form arithmetic of resforce.training.step_arithmetic for the
14B preset: tokens, training state per GPU (fp32 weights, gradients, AdamW, EMA) on 1, 8 and
64 GPUs under FSDP, and the FLOPs and step time of a teacher-forcing and a Resampling Forcing
step at 5 s and 15 s. With --measure it also measures the peak memory per GPU of one step
with fake tensors (resforce.training.memory_estimate, the same as `resforce memory --preset
wan2.1-14b`): each measurement takes a few CPU minutes, so it is opt-in. --preset prints the
same for another preset (docs/wan.md's 1.3B numbers come from it).

Usage: python benchmarks/bench_memory_14b.py [--measure] [--gpus 8] [--seconds 5 15]
       [--strategy teacher resampling] [--mfu 0.4] [--preset wan2.1-1.3b]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from resforce.training.memory_estimate import MemoryPlan, estimate_memory
from resforce.model.dit import PRESETS, DiTConfig
from resforce.training.step_arithmetic import (GIB, chunks_for_seconds, clip_geometry, parameter_count, state_bytes,
                                      step_flops, step_seconds)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import record  # noqa: E402  (benchmarks/summary.py: the table `make bench` ends with)



def arithmetic(preset: str, seconds: list[float], mfu: float) -> None:
    cfg = DiTConfig(**PRESETS[preset])
    p = parameter_count(cfg)
    print(f"{preset}: {p / 1e9:.2f}B parameters, {cfg.num_layers} blocks, width {cfg.inner_dim}")
    for gpus in (1, 8, 64):
        s = state_bytes(p, gpus)
        print(f"  training state per GPU on {gpus:>2} GPU(s): weights {s['weights'] / GIB:6.1f} + grads "
              f"{s['gradients'] / GIB:6.1f} + AdamW {s['adam'] / GIB:6.1f} + EMA {s['ema'] / GIB:6.1f} "
              f"= {s['total'] / GIB:6.1f} GiB")
    for sec in seconds:
        geom = clip_geometry(cfg, chunks_for_seconds(sec, cfg.frames_per_chunk), 60, 104)
        print(f"  {sec:g} s: {geom.chunks} chunks x {geom.tokens_per_chunk} tokens, two-stream "
              f"{geom.two_stream_tokens} tokens")
        flops = {}
        for strategy in ("teacher", "resampling"):
            flops[strategy] = f = step_flops(cfg, geom, strategy)
            share = f["forward_self_attention"] / f["training_forward"]
            print(f"    {strategy:<10} {f['model_step'] / 1e15:6.2f} PFLOP per clip (training forward "
                  f"{f['training_forward'] / 1e15:.2f}, self-attention {share:.0%} of it; resampling pass "
                  f"{f['resampling'] / 1e15:.2f}; recompute {f['recompute'] / 1e15:.2f}): "
                  f"{step_seconds(f['model_step'], 1, mfu):5.1f} s per clip on one H100 at {mfu:.0%} MFU")
        record("memory_14b", f"{preset} RF / TF step FLOPs, {sec:g} s",
               flops["resampling"]["model_step"] / flops["teacher"]["model_step"])
        dense = step_flops(cfg, geom, "teacher", dense_mask=True)
        print(f"    (a masked dense attention scores all S x S pairs: training forward "
              f"{dense['training_forward'] / 1e15:.2f} PFLOP, self-attention "
              f"{dense['forward_self_attention'] / dense['training_forward']:.0%} of it)")


def measure(preset: str, seconds: list[float], strategies: list[str], gpus: int) -> None:
    for sec in seconds:
        for strategy in strategies:
            t0 = time.perf_counter()
            r = estimate_memory(MemoryPlan(preset=preset, seconds=sec, strategy=strategy, gpus=gpus))
            top = sorted(r["peak_breakdown_bytes"].items(), key=lambda kv: -kv[1])[:4]
            parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in top)
            print(f"  measured {sec:g} s {strategy:<10} gpus={gpus}: peak {r['peak_gib']:6.1f} GiB per GPU "
                  f"({parts}) [{time.perf_counter() - t0:.0f} s on the CPU]", flush=True)
            record("memory_14b", f"{preset} {strategy} peak per GPU, {sec:g} s, {gpus} GPU(s)", r["peak_gib"], "GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="wan2.1-14b", choices=sorted(PRESETS))
    ap.add_argument("--measure", action="store_true", help="also measure with fake tensors (minutes)")
    ap.add_argument("--gpus", type=int, default=8, help="FSDP ranks for --measure (1 = one GPU)")
    ap.add_argument("--seconds", type=float, nargs="+", default=[5.0, 15.0])
    ap.add_argument("--strategy", nargs="+", default=["teacher", "resampling"], choices=["teacher", "resampling"])
    ap.add_argument("--mfu", type=float, default=0.4, help="model-FLOPs utilisation for the step time")
    args = ap.parse_args()
    arithmetic(args.preset, args.seconds, args.mfu)
    if args.measure:
        measure(args.preset, args.seconds, args.strategy, args.gpus)
    else:
        print("  (peak memory per GPU with fake tensors: add --measure; a few CPU minutes per configuration)")


if __name__ == "__main__":
    main()
