"""Per-chunk rollout latency and attention FLOPs vs history length: dense, routed top-k,
sliding window (+ sink).

A model shaped like preset "tiny" (4 layers, 4 heads x 32, ffn 512; random weights) on
32x32 frames with patch 4 and one frame per chunk -> 64 tokens per chunk, so attention over
256 history chunks (16384 keys) dominates the dense cost. The cache is filled with random
keys/values directly (one append per layer), then `forward_chunk` (one denoising step of
the next chunk) is timed: median of `--repeats` runs after warm-up. Goal: a routed top-k
chunk's latency at 256 history chunks within 1.3x its latency at 16.

    OMP_NUM_THREADS=2 python benchmarks/bench_routing.py [--tokens-side 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from resforce.model import build_model
from resforce.model.attention import AttentionPolicy, HistoryAttentionConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import record  # noqa: E402  (benchmarks/summary.py: the table `make bench` ends with)

LENGTHS = (16, 32, 64, 128, 256)


def modes(window: int, sink: int) -> dict[str, HistoryAttentionConfig]:
    return {
        "dense": HistoryAttentionConfig(mode="dense"),
        "top1": HistoryAttentionConfig(mode="topk", topk=1),
        "top2": HistoryAttentionConfig(mode="topk", topk=2),
        "top4": HistoryAttentionConfig(mode="topk", topk=4),
        f"window{window}+sink{sink}": HistoryAttentionConfig(mode="window", window=window, sink=sink),
    }


def attention_flops(cfg: HistoryAttentionConfig, n: int, tokens: int, d: int, heads: int, layers: int) -> float:
    """Self-attention FLOPs of one chunk (QK^T and PV, 2 flops per MAC) plus the router's
    q . k_mean scores; projections/FFN excluded (they do not depend on the history)."""
    if cfg.mode == "dense":
        chunks, router = n, 0
    elif cfg.mode == "topk":
        chunks, router = min(cfg.topk, n), (2 * tokens * n * d if cfg.topk < n else 0)
    else:
        chunks, router = min(n, cfg.window + cfg.sink), 0
    per_head = 4 * tokens * (chunks * tokens + tokens) * d + router
    return per_head * heads * layers


def fill_cache(model, cache, n: int, batch: int, generator) -> None:
    mc = model.config
    tpc = cache.tokens_per_chunk
    for lc in cache.layers:
        k = torch.randn(batch, mc.num_attention_heads, n * tpc, mc.attention_head_dim, generator=generator)
        v = torch.randn(batch, mc.num_attention_heads, n * tpc, mc.attention_head_dim, generator=generator)
        lc.append(k, v, tpc)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32, help="frame height = width in pixels")
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--sink", type=int, default=1)
    ap.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model = build_model(preset="tiny", frames_per_chunk=1, patch_size=(1, args.patch, args.patch),
                        init="wan").eval()
    mc = model.config
    hw = args.size
    tpc = model.tokens_per_chunk(hw, hw)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, mc.in_channels, 1, hw, hw, generator=g)
    t = torch.full((args.batch, 1), 0.5)
    threads = torch.get_num_threads()
    print(f"model: tiny-like, {mc.num_layers} layers, {mc.num_attention_heads} heads x "
          f"{mc.attention_head_dim}, {hw}x{hw} frames, patch {args.patch} -> {tpc} tokens/chunk; "
          f"batch {args.batch}; torch threads {threads} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); "
          f"median of {args.repeats}")

    table: dict[str, dict[int, tuple[float, float, float]]] = {}
    t_start = time.perf_counter()
    with torch.inference_mode():
        for name, cfg in modes(args.window, args.sink).items():
            policy = AttentionPolicy(cfg)
            caches = {}
            for n in args.lengths:
                caches[n] = model.new_cache(hw, hw)
                fill_cache(model, caches[n], n, args.batch, g)
            times: dict[int, list[float]] = {n: [] for n in args.lengths}
            for r in range(args.repeats + 2):  # lengths interleaved, so load drift hits all alike
                for n, cache in caches.items():
                    t0 = time.perf_counter()
                    model.forward_chunk(x, t, cache, layout=policy.cached(cache, False))
                    if r >= 2:  # two warm-up rounds
                        times[n].append(time.perf_counter() - t0)
            table[name] = {
                n: (statistics.median(ts) * 1e3, min(ts) * 1e3,
                    attention_flops(cfg, n, tpc, mc.attention_head_dim, mc.num_attention_heads,
                                    mc.num_layers) / 1e6)
                for n, ts in times.items()}
            del caches

    lengths = args.lengths
    head = f"{'mode':>16} | " + " | ".join(f"{n:>5} ch: ms  MFLOP" for n in lengths) + \
        f" | {'ms ratio':>8} {'(min)':>6} {'FLOP ratio':>10}"
    print(head)
    print("-" * len(head))
    lo, hi = lengths[0], lengths[-1]
    for name, row in table.items():
        cells = " | ".join(f"{row[n][0]:>8.2f} {row[n][2]:>7.1f}" for n in lengths)
        print(f"{name:>16} | {cells} | {row[hi][0] / row[lo][0]:>8.2f} {row[hi][1] / row[lo][1]:>6.2f} "
              f"{row[hi][2] / row[lo][2]:>10.2f}")
        record("routing", f"{name} chunk latency, {hi} / {lo} chunks", row[hi][0] / row[lo][0],
               target="<= 1.3" if name.startswith("top") else None)
    print(f"ms = median forward_chunk latency; ratios are latency({hi}) / latency({lo}) (median, and "
          f"of the minima) and attention FLOPs({hi}) / FLOPs({lo}); total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
