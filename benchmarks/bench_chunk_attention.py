"""Two-stream attention, forward + backward: block-sparse "chunked" vs the dense-mask "sdpa"
reference (and compiled "flex" on CUDA), at N = 8, 16 and 32 chunks.

The two-stream layout [history 1..N | noisy 1..N] allows about 26% of the (2N)^2 chunk
pairs at N = 32; "sdpa" computes all of them under an (S, S) boolean mask, "chunked" only
the allowed tiles (model/attention/chunked.py). The defaults are the tiny 32x32 model:
batch 4, 4 heads x 32, 64 tokens per chunk (32x32 frames, patch 4). Each (N, backend) is
timed `--repeats` times after `--warmup` untimed runs (median printed); one small warm-up
per backend runs first. The dense reference is skipped where its (S, S) mask would exceed
`--max-mask-gib`. The first line checks that the backends agree. Goal: sdpa / chunked >= 2
at N = 32.

    OMP_NUM_THREADS=1 python benchmarks/bench_chunk_attention.py
    python benchmarks/bench_chunk_attention.py --device cuda --dtype bfloat16 \\
        --tokens-per-chunk 4680 --heads 12 --head-dim 128 --batch 1 --chunks 2 4 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from resforce.model.attention.layouts import MaskedLayout, two_stream_chunk_mask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import record  # noqa: E402  (benchmarks/summary.py: the table `make bench` ends with)

GOAL_N = 32  # the goal: chunked at least 2x faster than the dense mask at N = 32 chunks


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(layout: MaskedLayout, q, k, v, dout) -> torch.Tensor:
    """One forward + backward of the attention alone."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = layout.attend(0, q, k, v)
    out.backward(dout)
    return out.detach()


def inputs(args, n: int, device, dtype):
    g = torch.Generator(device=device).manual_seed(n)
    shape = (args.batch, args.heads, 2 * n * args.tokens_per_chunk, args.head_dim)
    return [torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(4)]


def timed(layout, tensors, device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step(layout, *tensors)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step(layout, *tensors)
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def backends(args, device) -> list[str]:
    names = ["chunked", "sdpa"]
    if device.type == "cuda" and not args.no_flex:
        names.append("flex")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--tokens-per-chunk", type=int, default=64)
    ap.add_argument("--chunks", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--repeats", type=int, default=None, help="default: 1 on the CPU, 5 on CUDA")
    ap.add_argument("--warmup", type=int, default=None, help="default: 0 on the CPU, 2 on CUDA")
    ap.add_argument("--max-mask-gib", type=float, default=8.0,
                    help="skip the dense reference where its (S, S) mask is larger")
    ap.add_argument("--no-flex", action="store_true", help="on CUDA, skip compiled flex")
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    repeats = args.repeats or (5 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (2 if cuda else 0)
    names = backends(args, device)
    card = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"# two-stream attention fwd+bwd on {card}, torch {torch.__version__}, {args.dtype}: "
          f"batch {args.batch}, {args.heads} heads x {args.head_dim}, "
          f"{args.tokens_per_chunk} tokens/chunk (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")

    # warm-up at the smallest N, and a check that the backends compute the same numbers
    n0, tpc = min(args.chunks), args.tokens_per_chunk
    small = inputs(args, n0, device, dtype)
    outs = {b: step(MaskedLayout(two_stream_chunk_mask(n0), tpc, b), *small).float() for b in names}
    diffs = ", ".join(f"{b} {(outs[b] - outs['sdpa']).abs().max().item():.1e}" for b in names if b != "sdpa")
    print(f"# max |out - sdpa| at N={n0}: {diffs}")

    print(f"{'N':>4} {'tokens':>8} " + " ".join(f"{b + ' ms':>11}" for b in names)
          + f" {'sdpa/chunked':>13}" + (f" {'flex/chunked':>13}" if "flex" in names else ""))
    for n in args.chunks:
        tensors = inputs(args, n, device, dtype)
        s = 2 * n * tpc
        ms = {}
        for b in names:
            if b == "sdpa" and s * s / 2**30 > args.max_mask_gib:
                ms[b] = float("nan")  # the (S, S) mask alone would not fit the budget
                continue
            layout = MaskedLayout(two_stream_chunk_mask(n), tpc, b)
            ms[b] = 1000 * timed(layout, tensors, device, warmup, repeats)
        row = f"{n:>4} {s:>8} " + " ".join(f"{ms[b]:>11.1f}" for b in names)
        row += f" {ms['sdpa'] / ms['chunked']:>12.2f}x"
        if "flex" in names:
            row += f" {ms['flex'] / ms['chunked']:>12.2f}x"
        print(row, flush=True)
        if n == max(args.chunks):  # the headline: the longest sequence
            record("chunk_attention", f"sdpa / chunked time, N = {n}", ms["sdpa"] / ms["chunked"],
                   target=">= 2" if n == GOAL_N else None)
            if "flex" in names:
                record("chunk_attention", f"flex / chunked time, N = {n}", ms["flex"] / ms["chunked"])


if __name__ == "__main__":
    main()
