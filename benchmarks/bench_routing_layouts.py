"""Routed attention without S x S tensors: grouped (routing_grouped.py) vs the naive masked
reference (routing_naive.py), time and peak memory, at a few sizes, in one run.

Two tables, one attention call each on random q, k, v (batch 1, 4 heads x 32):
- training: the two-stream layout, forward + backward, top-2 and window 2 + sink 1, for
  N chunks of L tokens (S = 2 N L);
- rollout: one cached top-2 step of a chunk of L tokens over n cached chunks, no grad; also
  the previous fast path, which gathered the selected chunks' keys per query token.
Peak = the most bytes held at once by tensors the call allocated (op outputs recorded under a
TorchDispatchMode, freed when their storage dies; inputs and the cache not counted), from a
separate untimed run. Time = median of --repeats after one warm-up; the variants of a size
run interleaved, so background load hits them alike.

    OMP_NUM_THREADS=1 python benchmarks/bench_routing_layouts.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from resforce.model.cache import KVCache
from resforce.model.attention import (HistoryAttentionConfig, RoutedCachedLayout, naive_two_stream_layout,
                                    routed_reference, routed_two_stream_layout)
from resforce.model.attention.routing_grouped import merge_routes
from resforce.model.attention.varlen import attention_lse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import record  # noqa: E402  (benchmarks/summary.py: the table `make bench` ends with)

HEADS, DIM = 4, 32
TRAIN_SIZES = ((8, 32), (16, 32), (32, 32))  # (chunks N, tokens per chunk L): S = 512 .. 2048
ROLLOUT_SIZES = ((16, 128), (64, 128), (256, 128))  # (cached chunks n, tokens per chunk L)


class PeakMemory(TorchDispatchMode):
    """Peak bytes of live storages allocated by ops run inside the mode."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.now += storage.nbytes()
                    weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.now)
        return out


def per_token_gather(cache: KVCache, topk: int, q, k, v):
    """The previous rollout fast path, for comparison: the selected chunks' keys and values
    copied per query token (B, H, T, k * L, d), then one softmax per token, merged by LSE."""
    lc = cache[0]
    b, h, t, d = q.shape
    n, cap, tpc = lc.num_chunks, lc.k.shape[2], lc.k.shape[3]
    idx = (q @ lc.k_mean[:, :, :n].transpose(-1, -2)).topk(topk, dim=-1, sorted=False).indices
    rows = (idx + (torch.arange(b * h) * cap).view(b, h, 1, 1)).flatten()
    ks = lc.k.view(-1, tpc * d).index_select(0, rows).view(b * h * t, topk * tpc, d)
    vs = lc.v.view(-1, tpc * d).index_select(0, rows).view(b * h * t, topk * tpc, d)
    o_h, lse_h = attention_lse(q.reshape(b * h * t, 1, d), ks, vs)  # one block per token, no copy
    o_i, lse_i = attention_lse(q.reshape(b * h, t, d), k.reshape(b * h, t, d), v.reshape(b * h, t, d))
    return merge_routes(torch.stack([o_h.view(b, h, t, d), o_i.view(b, h, t, d)], -2),
                        torch.stack([lse_h.view(b, h, t), lse_i.view(b, h, t)], -1))


def measure(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """{name: (median ms, peak MiB)}; fns interleaved per repeat."""
    peaks = {}
    for name, fn in fns.items():
        with PeakMemory() as pm:
            fn()
        peaks[name] = pm.peak / 2**20
    times = {name: [] for name in fns}
    for r in range(repeats + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]) * 1e3, peaks[name]) for name in fns}


def fwd_bwd(layout, q, k, v):
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    layout.attend(0, *leaves).sum().backward()


def training_table(repeats: int, g: torch.Generator) -> None:
    cfgs = {"top2": HistoryAttentionConfig(mode="topk", topk=2),
            "win2+sink1": HistoryAttentionConfig(mode="window", window=2, sink=1)}
    print(f"training: two-stream layout, forward + backward, batch 1, {HEADS} heads x {DIM}")
    print(f"{'mode':>10} {'N x L':>8} {'S':>6} | {'naive ms':>9} {'grouped ms':>10} {'speedup':>7} | "
          f"{'naive MiB':>9} {'grouped MiB':>11} {'ratio':>6} | {'S^2 fp32 MiB':>12}")
    for name, cfg in cfgs.items():
        for n, L in TRAIN_SIZES:
            s = 2 * n * L
            q, k, v = (torch.randn(1, HEADS, s, DIM, generator=g) for _ in range(3))
            res = measure({"naive": lambda: fwd_bwd(naive_two_stream_layout(cfg, n, L), q, k, v),
                           "grouped": lambda: fwd_bwd(routed_two_stream_layout(cfg, n, L), q, k, v)}, repeats)
            (tn, mn), (tg, mg) = res["naive"], res["grouped"]
            print(f"{name:>10} {f'{n}x{L}':>8} {s:>6} | {tn:>9.1f} {tg:>10.1f} {tn / tg:>7.2f} | "
                  f"{mn:>9.1f} {mg:>11.1f} {mn / mg:>6.1f} | {s * s * 4 / 2**20:>12.1f}")
            if (n, L) == TRAIN_SIZES[-1]:
                record("routing_layouts", f"training {name}, S = {s}: naive / grouped time", tn / tg)
                record("routing_layouts", f"training {name}, S = {s}: naive / grouped peak memory", mn / mg)


def rollout_table(repeats: int, g: torch.Generator, topk: int = 2) -> None:
    cfg = HistoryAttentionConfig(mode="topk", topk=topk)
    print(f"\nrollout: one cached top-{topk} step (no grad), batch 1, {HEADS} heads x {DIM}")
    print(f"{'n x L':>9} | {'naive ms':>9} {'per-token ms':>12} {'grouped ms':>10} | "
          f"{'naive MiB':>9} {'per-token MiB':>13} {'grouped MiB':>11}")
    for n, L in ROLLOUT_SIZES:
        hk = torch.randn(1, HEADS, n, L, DIM, generator=g)
        hv = torch.randn(1, HEADS, n, L, DIM, generator=g)
        cache = KVCache(1, L)
        cache[0].append(hk.flatten(2, 3), hv.flatten(2, 3), L)
        q, k, v = (torch.randn(1, HEADS, L, DIM, generator=g) for _ in range(3))
        with torch.no_grad():
            grouped = RoutedCachedLayout(cache, False, cfg).attend(0, q, k, v)
            err = (grouped - routed_reference(cfg, q, k, v, hk, hv)).abs().max().item()
            assert err <= 1e-4 and (per_token_gather(cache, topk, q, k, v) - grouped).abs().max() <= 1e-4, err
            res = measure({"naive": lambda: routed_reference(cfg, q, k, v, hk, hv),
                           "per-token": lambda: per_token_gather(cache, topk, q, k, v),
                           "grouped": lambda: RoutedCachedLayout(cache, False, cfg).attend(0, q, k, v)}, repeats)
        (tn, mn), (tp, mp), (tg, mg) = res["naive"], res["per-token"], res["grouped"]
        print(f"{f'{n}x{L}':>9} | {tn:>9.1f} {tp:>12.1f} {tg:>10.1f} | {mn:>9.1f} {mp:>13.1f} {mg:>11.1f}")
        if (n, L) == ROLLOUT_SIZES[-1]:
            record("routing_layouts", f"rollout top-{topk}, {n} x {L}: per-token / grouped time", tp / tg)
            record("routing_layouts", f"rollout top-{topk}, {n} x {L}: naive / grouped peak memory", mn / mg)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    print(f"torch threads {torch.get_num_threads()}; median of {args.repeats}; naive/grouped outputs "
          f"are proven equal by tests/model/test_routing_grouped.py")
    training_table(args.repeats, g)
    rollout_table(args.repeats, g)
    print(f"total {time.perf_counter() - t0:.0f} s; S^2 fp32 MiB = one (S, S) float32 tensor "
          f"(the naive layout's mask is (1, {HEADS}, S, S) bool, its SDPA mask per head float)")


if __name__ == "__main__":
    main()
