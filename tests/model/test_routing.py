"""History routing: naive reference == fast cached path == brute-force python loop; per-head
and per-token selection; routed two-stream training pass == routed KV-cached rollout; window
/ sink baselines; routed rollout with the recorder. Tiny tensors, seconds in all."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resforce.model import build_model
from resforce.model.attention.layouts import CachedLayout, two_stream_chunk_mask
from resforce.model.cache import KVCache
from resforce.model.attention import (AttentionPolicy, HistoryAttentionConfig, RoutedCachedLayout,
                                    RouterRecorder, merge_routes, naive_block_causal_layout,
                                    naive_two_stream_layout, routed_reference)
from resforce.rollout import SampleConfig, rollout
from resforce.evaluation.router_plot import plot_router_selections

N, FPC, H, W = 4, 2, 8, 8


def topk(k):
    return HistoryAttentionConfig(mode="topk", topk=k)


def filled_cache(b, h, n, L, d, seed=0):
    """A one-layer cache holding n random chunks (written one by one, so the buffer has
    grown past n: capacity offsets are exercised), plus the raw history tensors."""
    g = torch.Generator().manual_seed(seed)
    hk = torch.randn(b, h, n, L, d, generator=g)
    hv = torch.randn(b, h, n, L, d, generator=g)
    cache = KVCache(1, L)
    for j in range(n):
        cache[0].append(hk[:, :, j], hv[:, :, j], L)
    return cache, hk, hv


def qkv(b, h, L, d, seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, L, d, generator=g) for _ in range(3))


def brute_force(q, k, v, hk, hv, chosen):
    """Per (b, h, token) python loop: softmax over [chosen history chunks | own chunk], float64.
    chosen(b, h, t, scores) -> list of chunk indices."""
    q, k, v, hk, hv = (x.double() for x in (q, k, v, hk, hv))
    b_, h_, t_, d = q.shape
    n = hk.shape[2]
    out = torch.empty_like(q)
    for b in range(b_):
        for h in range(h_):
            for t in range(t_):
                qq = q[b, h, t]
                scores = [float(qq @ hk[b, h, j].mean(0)) for j in range(n)]
                sel = sorted(chosen(b, h, t, scores))
                keys = torch.cat([hk[b, h, j] for j in sel] + [k[b, h]])
                vals = torch.cat([hv[b, h, j] for j in sel] + [v[b, h]])
                out[b, h, t] = torch.softmax(keys @ qq / math.sqrt(d), 0) @ vals
    return out.float()


def top_of(kk):
    return lambda b, h, t, s: sorted(range(len(s)), key=lambda j: -s[j])[:kk]


# ----------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("b,h", [(1, 1), (2, 3)])
@pytest.mark.parametrize("n", [1, 3, 5, 9])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_fast_equals_naive_equals_brute_force(b, h, n, k):
    L, d = 4, 8
    cache, hk, hv = filled_cache(b, h, n, L, d, seed=n + 10 * k)
    q, kk_, v = qkv(b, h, L, d, seed=b + h)
    cfg = topk(k)
    fast = RoutedCachedLayout(cache, False, cfg).attend(0, q, kk_, v)
    naive = routed_reference(cfg, q, kk_, v, hk, hv)
    brute = brute_force(q, kk_, v, hk, hv, top_of(k))
    assert (fast - naive).abs().max().item() <= 1e-5
    assert (fast - brute).abs().max().item() <= 1e-5
    if k < n:  # the selection matters: attending to all history gives something else
        dense = CachedLayout(cache).attend(0, q, kk_, v)
        assert (fast - dense).abs().max().item() > 1e-3
        # ... and so does *which* chunks: the k lowest-scoring ones give something else
        worst = brute_force(q, kk_, v, hk, hv, lambda b, h, t, s: sorted(range(n), key=lambda j: s[j])[:k])
        assert (fast - worst).abs().max().item() > 1e-3


@pytest.mark.parametrize("n", [1, 3, 6])
def test_k_at_least_history_equals_dense(n):
    b, h, L, d = 2, 2, 3, 8
    cache, hk, hv = filled_cache(b, h, n, L, d)
    q, k, v = qkv(b, h, L, d)
    dense = CachedLayout(cache).attend(0, q, k, v)
    ref = F.scaled_dot_product_attention(q, torch.cat([hk.flatten(2, 3), k], 2),
                                         torch.cat([hv.flatten(2, 3), v], 2))
    assert (dense - ref).abs().max() <= 1e-5
    for kk in (n, n + 3):
        cfg = topk(kk)
        assert (RoutedCachedLayout(cache, False, cfg).attend(0, q, k, v) - dense).abs().max() <= 1e-5
        assert (routed_reference(cfg, q, k, v, hk, hv) - dense).abs().max() <= 1e-5
    # the gather + log-sum-exp merge path itself, forced to select all n chunks
    lay = RoutedCachedLayout(cache, False, topk(n))
    assert (lay._topk(0, cache[0], n, q, k, v) - dense).abs().max() <= 1e-5


def test_merge_routes_is_one_softmax_over_the_union():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 8, generator=g)
    ka, va, kb, vb = (torch.randn(2, n, 8, generator=g) * 4 for n in (7, 7, 3, 3))
    scale = 8 ** -0.5

    def att(k, v):
        logits = q @ k.transpose(-1, -2) * scale
        return torch.softmax(logits, -1) @ v, logits.logsumexp(-1, keepdim=True)

    oa, la = att(ka, va)
    ob, lb = att(kb, vb)
    ou, _ = att(torch.cat([ka, kb], 1), torch.cat([va, vb], 1))
    def merge(oa, la, ob, lb):
        return merge_routes(torch.stack([oa, ob], -2), torch.cat([la, lb], -1))

    assert (merge(oa, la, ob, lb) - ou).abs().max() <= 1e-5
    # stable for huge logits (max subtraction)
    big = merge(oa, la + 200, ob, lb + 200)  # e^200 overflows float32
    assert torch.isfinite(big).all() and (big - ou).abs().max() <= 1e-4
    # a route with lse = -inf (not taken) has no weight
    assert (merge(oa, la, ob, torch.full_like(lb, float("-inf"))) - oa).abs().max() <= 1e-6


def test_selection_is_per_head_and_per_token():
    """Hand-built keys: history chunk j's keys all point along e_j, so q = e_c selects c."""
    b, h, L, d, n = 1, 2, 2, 4, 3
    hk = torch.zeros(b, h, n, L, d)
    hv = torch.zeros(b, h, n, L, d)
    for j in range(n):
        hk[:, :, j, :, j] = 5.0
        hv[:, :, j] = float(j + 1)  # chunk j's values are all j + 1
    cache = KVCache(1, L)
    for j in range(n):
        cache[0].append(hk[:, :, j], hv[:, :, j], L)
    want = [[0, 2], [1, 0]]  # head -> token -> chunk it must pick
    q = torch.zeros(b, h, L, d)
    for hh in range(h):
        for t in range(L):
            q[0, hh, t, want[hh][t]] = 3.0
    k = torch.zeros(b, h, L, d)
    k[..., 3] = -5.0  # own chunk: low logits, so history dominates
    v = torch.zeros(b, h, L, d)
    cfg = topk(1)
    rec = RouterRecorder()
    out = RoutedCachedLayout(cache, False, cfg, rec).attend(0, q, k, v)
    brute = brute_force(q, k, v, hk, hv, lambda b_, hh, t, s: [want[hh][t]])
    assert (out - brute).abs().max() <= 1e-5
    for hh in range(h):
        for t in range(L):  # mostly the picked chunk's value, never another chunk's
            assert abs(out[0, hh, t, 0].item() - (want[hh][t] + 1)) < 0.05, (hh, t)
    # the recorder saw exactly these picks: chunk index per head
    assert rec.by_index[0].tolist() == [[1, 0, 1], [1, 1, 0]]
    assert rec.by_distance[0].tolist() == [[0, 1, 0, 1], [0, 0, 1, 1]]  # d = 3 - j
    # naive layout: same per-token chunk mask
    lay_mask = naive_two_stream_layout(cfg, n + 1, L)
    kk_all = torch.cat([hk.flatten(2, 3), k], 2)
    hist_stream_k = torch.cat([kk_all, torch.zeros_like(kk_all)], 2)  # noisy stream unused
    qq = torch.zeros(b, h, 2 * (n + 1) * L, d)
    qq[:, :, (2 * (n + 1) - 1) * L:] = q  # queries of the last noisy chunk (i = n)
    mask = lay_mask.chunk_mask(qq, hist_stream_k)[0, :, -L:]  # (h, L, 2(n+1))
    for hh in range(h):
        for t in range(L):
            expect = torch.zeros(2 * (n + 1), dtype=torch.bool)
            expect[want[hh][t]] = True
            expect[2 * (n + 1) - 1] = True  # own noisy chunk
            assert torch.equal(mask[hh, t], expect), (hh, t)


def test_masked_topk_selection_matches_python_loop():
    """Two-stream routed mask: every (b, head, token) row selects exactly the top-k history
    chunks before it (by q . mean K), and nothing in the noisy stream but itself."""
    n, L, d, b, h, kk = 5, 3, 6, 2, 2, 2
    g = torch.Generator().manual_seed(3)
    q = torch.randn(b, h, 2 * n * L, d, generator=g)
    k = torch.randn(b, h, 2 * n * L, d, generator=g)
    mask = naive_two_stream_layout(topk(kk), n, L).chunk_mask(q, k)
    means = k.unflatten(2, (2 * n, L)).mean(3)
    for bb in range(b):
        for hh in range(h):
            for row in range(2 * n * L):
                c = row // L
                i = c % n
                scores = {j: float(q[bb, hh, row] @ means[bb, hh, j]) for j in range(i)}
                expect = torch.zeros(2 * n, dtype=torch.bool)
                for j in sorted(scores, key=lambda j: -scores[j])[:kk]:
                    expect[j] = True
                expect[c] = True  # own chunk (history j, or noisy i)
                assert torch.equal(mask[bb, hh, row], expect), (bb, hh, row)
    # dense mode and a k covering all chunks give the plain two-stream mask
    plain = two_stream_chunk_mask(n).repeat_interleave(L, 0)
    for cfg in (HistoryAttentionConfig(mode="dense"), topk(n)):
        m = naive_two_stream_layout(cfg, n, L).chunk_mask(q, k)
        assert torch.equal(m, plain.expand_as(m))


# ----------------------------------------------------------------------------- window / sink
@pytest.mark.parametrize("window,sink", [(2, 0), (2, 1), (0, 2), (3, 1)])
def test_window_sink_selects_exactly(window, sink):
    cfg = HistoryAttentionConfig(mode="window", window=window, sink=sink)
    n, L, d = 7, 2, 4
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 2 * n * L, d, generator=g)
    k = torch.randn(1, 1, 2 * n * L, d, generator=g)
    mask = naive_two_stream_layout(cfg, n, L).chunk_mask(q, k)[0, 0, ::L]  # one row per chunk
    for c in range(2 * n):
        i = c % n
        expect = torch.zeros(2 * n, dtype=torch.bool)
        for j in range(i):
            if j >= i - window or j < sink:
                expect[j] = True
        expect[c] = True
        assert torch.equal(mask[c], expect), c
    # cached path: output == attention over exactly those chunks, for every history length
    for n_hist in range(0, 7):
        cache, hk, hv = filled_cache(2, 2, n_hist, L, d, seed=n_hist) if n_hist else (KVCache(1, L), None, None)
        qq, kk, vv = qkv(2, 2, L, d)
        out = RoutedCachedLayout(cache, False, cfg).attend(0, qq, kk, vv)
        chosen = [j for j in range(n_hist) if j >= n_hist - window or j < sink]
        if n_hist:
            ref = brute_force(qq, kk, vv, hk, hv, lambda *a: chosen)
        else:
            ref = F.scaled_dot_product_attention(qq, kk, vv)
        assert (out - ref).abs().max() <= 1e-5, n_hist


# ----------------------------------------------------------------------------- model parity
def make(randomize, **kw):
    kw = {"frames_per_chunk": FPC, "patch_size": (1, 4, 4), **kw}
    return randomize(build_model(preset="test", **kw))


def data(b=2, n=N, seed=1):
    g = torch.Generator().manual_seed(seed)
    hist = torch.randn(b, 3, n * FPC, H, W, generator=g)
    noisy = torch.randn(b, 3, n * FPC, H, W, generator=g)
    return hist, noisy, torch.rand(b, n, generator=g)


def routed_cached_outputs(model, cfg, hist, noisy, t, t_hist, recorder=None):
    policy = AttentionPolicy(cfg, recorder)
    cache = model.new_cache(H, W)
    outs = []
    for i in range(t.shape[1]):
        sl = slice(i * FPC, (i + 1) * FPC)
        outs.append(model.forward_chunk(noisy[:, :, sl], t[:, i:i + 1], cache, layout=policy.cached(cache, False)))
        model.write_cache(hist[:, :, sl], cache, t=t_hist[:, i:i + 1], layout=policy.cached(cache, True))
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize("cfg", [topk(1), topk(2), HistoryAttentionConfig(mode="window", window=1, sink=1)],
                         ids=["top1", "top2", "window1_sink1"])
def test_routed_two_stream_equals_routed_kv_cache(randomize, cfg):
    model = make(randomize)
    hist, noisy, t = data()
    t_hist = torch.rand(2, N) * 0.2
    with torch.no_grad():
        dense = model(noisy, t, history=hist, t_history=t_hist)
        routed = model(noisy, t, history=hist, t_history=t_hist, attention=AttentionPolicy(cfg))
        cached = routed_cached_outputs(model, cfg, hist, noisy, t, t_hist)
        assert torch.equal(model(noisy, t, history=hist, t_history=t_hist), dense)
        # a dense policy is the model's default
        assert torch.equal(model(noisy, t, history=hist, t_history=t_hist,
                                 attention=AttentionPolicy(HistoryAttentionConfig())), dense)
    assert (routed - cached).abs().max().item() <= 1e-5
    # routing is really on: chunks 0..1 see <= 1 history chunk (identical to dense),
    # chunk 3 sees fewer than its 3 history chunks (different)
    c = 2 * FPC
    assert (routed[:, :, :c] - dense[:, :, :c]).abs().max() <= 1e-5
    assert (routed[:, :, 3 * FPC:] - dense[:, :, 3 * FPC:]).abs().max() > 1e-3


def test_routed_parity_breaks_if_selection_is_wrong(randomize, monkeypatch):
    """The parity is real: if training picked the k *lowest*-scoring chunks, it would differ."""
    from resforce.model.attention.routing_grouped import GroupedRoutedLayout

    cfg = topk(1)
    model = make(randomize)
    hist, noisy, t = data()
    t_hist = torch.zeros(2, N)
    with torch.no_grad():
        cached = routed_cached_outputs(model, cfg, hist, noisy, t, t_hist)
        orig = GroupedRoutedLayout._select

        def lowest(self, q, k):
            return orig(self, -q, k)

        monkeypatch.setattr(GroupedRoutedLayout, "_select", lowest)
        bad = model(noisy, t, history=hist, t_history=t_hist, attention=AttentionPolicy(cfg))
    assert (bad - cached).abs().max().item() > 1e-3


def test_routed_block_causal_equals_two_stream_with_same_history(randomize):
    """With history == x and t_history == t, the routed history stream is the routed
    block-causal stream, so both passes agree."""
    model = make(randomize)
    _, x, t = data()
    routed = AttentionPolicy(topk(1))
    with torch.no_grad():
        a = model(x, t, attention=routed)
        b = model(x, t, history=x, t_history=t, attention=routed)
    assert (a - b).abs().max().item() <= 1e-5
    # the block-causal routed mask: own chunk + top-1 of the chunks before (dense: all of them)
    L, n = 2, 4
    q, k = torch.randn(1, 1, n * L, 4), torch.randn(1, 1, n * L, 4)
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool)).repeat_interleave(L, 0)
    dense = naive_block_causal_layout(HistoryAttentionConfig(), n, L).chunk_mask(q, k)[0, 0]
    assert torch.equal(dense, causal)
    top1 = naive_block_causal_layout(topk(1), n, L).chunk_mask(q, k)[0, 0]
    assert torch.equal(top1.sum(-1), torch.tensor([1, 1, 2, 2, 2, 2, 2, 2]))
    assert not (top1 & ~causal).any()  # never a later chunk
    assert top1[torch.arange(n * L), torch.arange(n * L) // L].all()  # always the own chunk


def test_routed_training_pass_has_gradients(randomize):
    model = make(randomize).train()
    hist, noisy, t = data()
    model(noisy, t, history=hist, attention=AttentionPolicy(topk(1))).square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.blocks[0].attn1.to_k.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- rollout + recorder
def test_routed_rollout_and_recorder(randomize, tmp_path):
    model = make(randomize)
    sc = SampleConfig(chunks=4, steps=2, shift=3.0, seed=2)
    base = rollout(model, 2, H, W, sc)
    # dense factory == no factory; top-k with k >= all chunks == dense
    assert torch.equal(rollout(model, 2, H, W, sc, attention=AttentionPolicy(HistoryAttentionConfig())), base)
    assert (rollout(model, 2, H, W, sc, attention=AttentionPolicy(topk(8))) - base).abs().max() <= 1e-4
    rec = RouterRecorder()
    routed = rollout(model, 2, H, W, sc, attention=AttentionPolicy(topk(1), rec))
    assert routed.shape == base.shape and torch.isfinite(routed).all()
    assert (routed - base).abs().max() > 1e-4  # chunks 2, 3 route over 2, 3 history chunks
    heads, tpc = model.config.num_attention_heads, model.tokens_per_chunk(H, W)
    assert rec.layers == list(range(model.config.num_layers))
    # per chunk i: steps denoising calls + 1 write call, each selecting min(1, i) chunk per
    # (b, head, token); chunk 0 has no history and records nothing
    calls_with_history = (sc.chunks - 1) * (sc.steps + 1)
    assert rec.calls == calls_with_history * model.config.num_layers
    for layer in rec.layers:
        assert rec.by_index[layer].shape == (heads, sc.chunks - 1)
        assert rec.by_index[layer].sum() == calls_with_history * 2 * heads * tpc
        assert rec.by_distance[layer].sum() == rec.by_index[layer].sum()
        assert rec.by_distance[layer][:, 0].sum() == 0  # distance >= 1
        # distance 1 was available in every call, index 2 only at chunk 3
        assert (rec.avail_distance[layer][:, 1] == calls_with_history * 2 * tpc).all()
        assert (rec.avail_index[layer][:, 2] == (sc.steps + 1) * 2 * tpc).all()
        f = rec.distance_frequency(layer)
        assert np.nanmax(f) <= 1.0 and np.isnan(f[:, 0]).all()
        # with one history chunk (at chunk 1) chunk 0 is always picked
        assert (rec.by_index[layer][:, 0] >= (sc.steps + 1) * 2 * tpc).all()
    js = json.loads(rec.save(tmp_path / "router.json").read_text())
    assert js["calls"] == rec.calls and len(js["by_distance"]) == model.config.num_layers
    npz = np.load(rec.save(tmp_path / "router.npz"))
    assert np.array_equal(npz["by_index_layer0"], rec.by_index[0])
    png = plot_router_selections(rec, tmp_path / "router.png")
    assert png.stat().st_size > 1000


def test_config_validation():
    with pytest.raises(ValueError, match="mode"):
        HistoryAttentionConfig(mode="sparse").validate()
    with pytest.raises(ValueError, match="topk"):
        HistoryAttentionConfig(mode="topk", topk=0).validate()
    with pytest.raises(NotImplementedError, match="post_rope"):
        HistoryAttentionConfig(mode="topk", descriptor="pre_rope").validate()
    with pytest.raises(ValueError, match="window"):
        AttentionPolicy(HistoryAttentionConfig(mode="window", window=0, sink=0))


def test_fast_path_with_and_without_grad_equals_reference():
    """The cached top-k path gives the reference's numbers with autograd on or off, and its
    q / k / v gradients are the reference's."""
    b, h, L, d, n = 2, 2, 4, 8, 6
    cache, hk, hv = filled_cache(b, h, n, L, d)
    q, k, v = qkv(b, h, L, d)
    with torch.no_grad():
        plain = RoutedCachedLayout(cache, False, topk(2)).attend(0, q, k, v)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out = RoutedCachedLayout(cache, False, topk(2)).attend(0, *leaves)
    ref_leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    ref = routed_reference(topk(2), *ref_leaves, hk, hv)
    assert (out - plain).abs().max() <= 1e-6 and (out - ref).abs().max() <= 1e-5
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    grads = torch.autograd.grad((out * w).sum(), leaves)
    ref_grads = torch.autograd.grad((ref * w).sum(), ref_leaves)
    for g, r in zip(grads, ref_grads):
        assert r.abs().max() > 1e-3 and (g - r).abs().max() <= 1e-5


def test_every_stage_attention_is_checked_when_the_config_loads():
    """A typo in a later stage's attention fails at load time, naming the stage, not when
    that stage starts."""
    from resforce.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"stages\.1\.attention: .*mode"):
        load_config("configs/bb_resampling.yaml", ["stages.1.attention.mode=topkk"])
    with pytest.raises(ConfigError, match=r"stages\.1\.attention: .*post_rope"):
        load_config("configs/bb_resampling.yaml", ["stages.1.attention.descriptor=pre_rope"])
