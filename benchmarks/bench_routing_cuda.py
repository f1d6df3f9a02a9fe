"""Grouped routed attention on a GPU: equality with the naive reference, host syncs, time and
peak memory against the naive masked layout, and one layer at Wan2.1-1.3B's 5 s scale.

    PYTHONPATH=src python benchmarks/bench_routing_cuda.py            # CUDA
    PYTHONPATH=src python benchmarks/bench_routing_cuda.py --smoke    # tiny sizes, any device

Without CUDA (and without --smoke) it prints one "skipped" line and exits 0, so `make bench`
runs on the CPU; it records nothing for the summary table.

1. fp32, TF32 off: grouped == naive (two-stream top-2 and window 2 + sink 1, forward and q/k/v
   gradients) and cached rollout == routed_reference, max abs errors printed.
2. Host syncs: torch.cuda.set_sync_debug_mode("error") around building the layout and its
   forward + backward, and around a cached rollout step.
3. Two-stream top-2, batch 1, 12 heads x 128, forward + backward, fp32 with TF32: naive vs
   grouped median time (CUDA events) and peak allocated memory.
4. Wan 1.3B, 5 s: S = 2 x 7 chunks x 4680 tokens = 65,520, 12 heads x 128, top-5, bf16 q/k/v;
   one grouped layer forward + backward, and one cached rollout step over 20 chunks. The naive
   layout would hold a (1, 12, S, S) mask (48 GiB as bool) and is not run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from resforce.model.cache import KVCache
from resforce.model.attention import (HistoryAttentionConfig, RoutedCachedLayout, naive_two_stream_layout,
                                    routed_reference, routed_two_stream_layout)

TOP2 = HistoryAttentionConfig(mode="topk", topk=2)
WINDOW = HistoryAttentionConfig(mode="window", window=2, sink=1)


def rand(*shape, dtype=torch.float32, device="cuda", g=None):
    return torch.randn(*shape, generator=g, device=device).to(dtype)


def fwd_bwd(layout, q, k, v, w):
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    out = layout.attend(0, *leaves)
    grads = torch.autograd.grad((out.float() * w).sum(), leaves)
    return out.detach(), grads


def filled_cache(b, h, n, L, d, dtype, device, g):
    hk, hv = rand(b, h, n, L, d, dtype=dtype, device=device, g=g), rand(b, h, n, L, d, dtype=dtype, device=device, g=g)
    cache = KVCache(1, L)
    cache[0].append(hk.flatten(2, 3), hv.flatten(2, 3), L)
    return cache, hk, hv


def equality(device, g, b, h, n, L, d):
    torch.backends.cuda.matmul.allow_tf32 = False
    s = 2 * n * L
    q, k, v, w = (rand(b, h, s, d, device=device, g=g) for _ in range(4))
    for name, cfg in (("top2", TOP2), ("window2+sink1", WINDOW)):
        out, grads = fwd_bwd(routed_two_stream_layout(cfg, n, L, device), q, k, v, w)
        ref, ref_grads = fwd_bwd(naive_two_stream_layout(cfg, n, L, device), q, k, v, w)
        errs = [(out - ref).abs().max().item()] + [(a - r).abs().max().item() for a, r in zip(grads, ref_grads)]
        print(f"  two-stream {name:>14}: max |grouped - naive| out {errs[0]:.1e}, dq {errs[1]:.1e}, "
              f"dk {errs[2]:.1e}, dv {errs[3]:.1e}")
    cache, hk, hv = filled_cache(b, h, 6, L, d, torch.float32, device, g)
    q, k, v = (rand(b, h, L, d, device=device, g=g) for _ in range(3))
    with torch.no_grad():
        err = (RoutedCachedLayout(cache, False, TOP2).attend(0, q, k, v) - routed_reference(TOP2, q, k, v, hk, hv))
    print(f"  cached rollout top2: max |grouped - reference| {err.abs().max().item():.1e}")


def host_syncs(device, g, n, L, d):
    """Runs the grouped paths under sync debug mode 'error': any synchronising op raises."""
    s = 2 * n * L
    q, k, v, w = (rand(1, 4, s, d, device=device, g=g) for _ in range(4))
    cache, _, _ = filled_cache(1, 4, 6, L, d, torch.float32, device, g)
    qc, kc, vc = (rand(1, 4, L, d, device=device, g=g) for _ in range(3))
    torch.cuda.synchronize()
    for name, fn in (("two-stream top2 build + fwd + bwd", lambda: fwd_bwd(routed_two_stream_layout(TOP2, n, L, device), q, k, v, w)),
                     ("two-stream window build + fwd + bwd", lambda: fwd_bwd(routed_two_stream_layout(WINDOW, n, L, device), q, k, v, w)),
                     ("cached rollout step top2", lambda: RoutedCachedLayout(cache, False, TOP2).attend(0, qc, kc, vc))):
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
            result = "no host sync"
        except RuntimeError as e:
            result = f"SYNC: {str(e).splitlines()[0][:120]}"
        finally:
            torch.cuda.set_sync_debug_mode(0)
        print(f"  {name}: {result}")


def timed(fn, repeats=3):
    """(median ms, peak GiB above the memory held before the call)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), peak


def naive_vs_grouped(device, g, sizes, h, d):
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"  {'N x L':>9} {'S':>6} | {'naive ms':>9} {'grouped ms':>10} | {'naive GiB':>9} {'grouped GiB':>11}")
    for n, L in sizes:
        s = 2 * n * L
        q, k, v, w = (rand(1, h, s, d, device=device, g=g) for _ in range(4))
        tn, mn = timed(lambda: fwd_bwd(naive_two_stream_layout(TOP2, n, L, device), q, k, v, w))
        tg, mg = timed(lambda: fwd_bwd(routed_two_stream_layout(TOP2, n, L, device), q, k, v, w))
        print(f"  {f'{n}x{L}':>9} {s:>6} | {tn:>9.1f} {tg:>10.1f} | {mn:>9.2f} {mg:>11.2f}")
        del q, k, v, w


def wan_scale(device, g, n, L, h, d, topk, cached):
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = HistoryAttentionConfig(mode="topk", topk=topk)
    s = 2 * n * L
    q, k, v, w = (rand(1, h, s, d, dtype=torch.bfloat16, device=device, g=g) for _ in range(4))
    t, m = timed(lambda: fwd_bwd(routed_two_stream_layout(cfg, n, L, device), q, k, v, w.float()), repeats=1)
    per_head_mask = h * s * s / 2**30
    print(f"  two-stream layer, S = {s}, {h} heads x {d}, top-{topk}, bf16 q/k/v: forward + backward "
          f"{t:.0f} ms, peak {m:.2f} GiB (inputs excluded; naive mask would be {per_head_mask:.0f} GiB as bool)")
    del q, k, v, w
    cache, _, _ = filled_cache(1, h, cached, L, d, torch.bfloat16, device, g)
    qc, kc, vc = (rand(1, h, L, d, dtype=torch.bfloat16, device=device, g=g) for _ in range(3))
    with torch.no_grad():
        t, m = timed(lambda: RoutedCachedLayout(cache, False, cfg).attend(0, qc, kc, vc))
    per_token = h * L * topk * L * d * 2 / 2**30
    print(f"  cached rollout step over {cached} chunks of {L}, top-{topk}, bf16, no grad: {t:.1f} ms, peak "
          f"{m:.2f} GiB (per-token key gather would copy {per_token:.1f} GiB of K alone)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (any device): checks the script runs")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        print("bench_routing_cuda: skipped (no CUDA device; --smoke runs tiny sizes on the CPU)")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=device).manual_seed(0)
    t0 = time.perf_counter()
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; torch {torch.__version__}")
    print("1. equality (fp32, TF32 off)")
    equality(device, g, 2, 3, 6, 16 if args.smoke else 64, 16 if args.smoke else 64)
    if device != "cuda":
        print("(no CUDA: sections 2-4 skipped)")
        return
    print("2. host syncs (torch.cuda.set_sync_debug_mode('error'))")
    host_syncs(device, g, 6, 64, 64)
    print("3. naive vs grouped, two-stream top-2, batch 1, fp32 + TF32, forward + backward")
    naive_vs_grouped(device, g, ((8, 64), (16, 64)) if args.smoke else ((8, 512), (16, 512)),
                     4 if args.smoke else 12, 64 if args.smoke else 128)
    print("4. Wan2.1-1.3B at 5 s")
    if args.smoke:
        wan_scale(device, g, 7, 128, 4, 64, 5, 20)
    else:
        wan_scale(device, g, 7, 4680, 12, 128, 5, 20)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
