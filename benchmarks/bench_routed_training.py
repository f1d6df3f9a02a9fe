"""Routed training attention, forward + backward: the one-function routed attention
(routing_function.py, the training default) vs the plain-autograd routed path
(routing_grouped.py with fused=False, over varlen.py) vs dense chunked attention (chunked.py).

The structure of the 15 s routed stage of Wan2.1-1.3B (21 chunks, the two-stream sequence of
42 chunks, top-5: 6 routes per query token) at reduced width so that it runs in about a minute
on a CPU: fewer heads, a smaller head size and fewer tokens per chunk (the 15 s step has 12
heads x 128 and 4,680 tokens per chunk). One attention call each on random q, k, v, batch 1.
Time = median of --repeats after one warm-up, the three interleaved; peak = the most bytes
held at once by tensors the call allocated (bench_routing_layouts.PeakMemory, a separate
untimed run). The three are checked to agree first (routed vs routed; dense has other numbers).

    OMP_NUM_THREADS=1 python benchmarks/bench_routed_training.py [--tokens 64 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from resforce.model.attention import HistoryAttentionConfig, routed_two_stream_layout
from resforce.model.attention.layouts import two_stream_layout

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_routing_layouts import measure  # noqa: E402
from summary import record  # noqa: E402  (benchmarks/summary.py: the table `make bench` ends with)

CHUNKS, TOPK = 21, 5  # the 15 s routed stage: 21 chunks (two-stream: 42), top-5


def fwd_bwd(layout, q, k, v):
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out = layout.attend(0, *leaves)
    out.sum().backward()
    return out.detach(), [x.grad for x in leaves]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[64, 128], help="tokens per chunk")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    cfg = HistoryAttentionConfig(mode="topk", topk=TOPK)
    t0 = time.perf_counter()
    print(f"torch threads {torch.get_num_threads()}; two-stream, {CHUNKS} chunks, top-{TOPK}, batch 1, "
          f"{args.heads} heads x {args.head_dim}, forward + backward, median of {args.repeats}")
    print(f"{'L':>5} {'S':>6} | {'old routed ms':>13} {'new routed ms':>13} {'dense ms':>9} {'old/new':>7} | "
          f"{'old MiB':>8} {'new MiB':>8} {'dense MiB':>9} {'old/new':>7}")
    for tpc in args.tokens:
        s = 2 * CHUNKS * tpc
        q, k, v = (torch.randn(1, args.heads, s, args.head_dim, generator=g) for _ in range(3))
        layouts = {"old": routed_two_stream_layout(cfg, CHUNKS, tpc, fused=False),
                   "new": routed_two_stream_layout(cfg, CHUNKS, tpc),
                   "dense": two_stream_layout(CHUNKS, tpc)}
        (o_old, g_old), (o_new, g_new) = fwd_bwd(layouts["old"], q, k, v), fwd_bwd(layouts["new"], q, k, v)
        assert (o_old - o_new).abs().max() <= 1e-4 and all((a - b).abs().max() <= 1e-3 for a, b in zip(g_old, g_new))
        res = measure({name: (lambda lay=lay: fwd_bwd(lay, q, k, v)) for name, lay in layouts.items()}, args.repeats)
        (to, mo), (tn, mn), (td, md) = res["old"], res["new"], res["dense"]
        print(f"{tpc:>5} {s:>6} | {to:>13.1f} {tn:>13.1f} {td:>9.1f} {to / tn:>7.2f} | "
              f"{mo:>8.1f} {mn:>8.1f} {md:>9.1f} {mo / mn:>7.2f}")
        if tpc == args.tokens[-1]:
            record("routed_training", f"top-{TOPK}, {CHUNKS} chunks x {tpc}: old / new routed time", to / tn)
            record("routed_training", f"top-{TOPK}, {CHUNKS} chunks x {tpc}: old / new routed peak memory", mo / mn)
            record("routed_training", f"top-{TOPK}, {CHUNKS} chunks x {tpc}: new routed / dense time", tn / td)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
