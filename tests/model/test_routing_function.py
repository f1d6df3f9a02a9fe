"""The routed attention as one autograd function (routing_function.py), the training default:
equals the naive masked reference (routing_naive.py) and the plain-autograd grouped path,
forward and backward, in float32 and under bf16 autocast, top-k and window, with invalid
routes (tokens with fewer candidate chunks than k) and with several head groups; calls the
kernel once per head group (no loop over blocks); keeps only q, k, v, the routes, the merged
output and LSE for the backward; and no op output outgrows one head group's routes. Seconds."""

import pytest
import torch

from largest_output import LargestOutput
from resforce.model.attention import (HistoryAttentionConfig, naive_block_causal_layout, naive_two_stream_layout,
                                      routed_block_causal_layout, routed_two_stream_layout)
from resforce.model.attention import routing_function
from resforce.model.attention.chunked import as_one_op
from resforce.model.attention.tile_kernels import KERNELS

CFGS = {"top2": HistoryAttentionConfig(mode="topk", topk=2),
        # more than the first chunks' candidates: many tokens have invalid routes
        "top4": HistoryAttentionConfig(mode="topk", topk=4),
        "window2_sink1": HistoryAttentionConfig(mode="window", window=2, sink=1)}
LAYOUTS = {"two_stream": (routed_two_stream_layout, naive_two_stream_layout, 2),
           "block_causal": (routed_block_causal_layout, naive_block_causal_layout, 1)}
B, H, N, L, D = 2, 3, 6, 5, 8


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def inputs(streams):
    s = streams * N * L
    q, k, v = (randn(B, H, s, D, seed=i) * (2.0 if i == 0 else 1.0) for i in range(3))  # peaky softmax
    return q, k, v, randn(B, H, s, D, seed=9)


def out_and_grads(layout, q, k, v, weight, autocast=False):
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        qkv = [x.to(torch.bfloat16) if autocast else x for x in leaves]  # as the projections give
        out = layout.attend(0, *qkv)
    grads = torch.autograd.grad((out.float() * weight).sum(), leaves)
    return out.detach().float(), [g.float() for g in grads]


@pytest.fixture(params=[None, 1], ids=["one_group", "group_per_head"])
def budget(request, monkeypatch):
    """Routes per head group: the default (all heads in one group here) or one head a group."""
    if request.param is not None:
        monkeypatch.setattr(routing_function, "ROUTE_BUDGET", request.param)
    return request.param


@pytest.mark.parametrize("kind", list(LAYOUTS))
@pytest.mark.parametrize("name", list(CFGS))
def test_fused_equals_naive_and_grouped_fp32(name, kind, budget):
    cfg, (grouped, naive, streams) = CFGS[name], LAYOUTS[kind]
    q, k, v, weight = inputs(streams)
    assert grouped(cfg, N, L).fused  # the default
    out, grads = out_and_grads(grouped(cfg, N, L), q, k, v, weight)
    for ref_layout in (naive(cfg, N, L), grouped(cfg, N, L, fused=False)):
        ref, ref_grads = out_and_grads(ref_layout, q, k, v, weight)
        assert (out - ref).abs().max() <= 1e-5
        for g, r, which in zip(grads, ref_grads, "qkv"):
            assert (g - r).abs().max() <= 2e-5, which
    dense, _ = out_and_grads(naive(HistoryAttentionConfig(), N, L), q, k, v, weight)
    assert (out - dense).abs().max() > 1e-2  # the selection matters


@pytest.mark.parametrize("kind", list(LAYOUTS))
@pytest.mark.parametrize("name", ["top2", "window2_sink1"])
def test_fused_under_bf16_autocast(name, kind, budget):
    cfg, (grouped, naive, streams) = CFGS[name], LAYOUTS[kind]
    q, k, v, weight = inputs(streams)
    out, grads = out_and_grads(grouped(cfg, N, L), q, k, v, weight, autocast=True)
    ref, ref_grads = out_and_grads(naive(cfg, N, L), q, k, v, weight, autocast=True)
    exact, exact_grads = out_and_grads(naive(cfg, N, L), q, k, v, weight)
    # bf16 rounding of q, k, v, the output and the per-route kernels: as close to the float32
    # result as the bf16 naive reference is
    assert (out - exact).abs().max() <= 2 * (ref - exact).abs().max() + 1e-2
    for g, r, e, which in zip(grads, ref_grads, exact_grads, "qkv"):
        assert torch.isfinite(g).all(), which
        assert (g - e).abs().max() <= 2 * (r - e).abs().max() + 2e-2, which
        assert torch.cosine_similarity(g.flatten(), e.flatten(), dim=0) > 0.999, which


def test_one_op_forward_equals_the_eager_one():
    """Under selective checkpointing the forward is the op resforce::routed_attention_forward."""
    q, k, v, weight = inputs(2)
    layout = routed_two_stream_layout(CFGS["top2"], N, L)
    out, grads = out_and_grads(layout, q, k, v, weight)
    with as_one_op():
        out1, grads1 = out_and_grads(layout, q, k, v, weight)
    assert torch.equal(out, out1) and all(torch.equal(a, b) for a, b in zip(grads, grads1))


def test_one_kernel_call_per_head_group(monkeypatch):
    """The blocks of a head group go to the kernel in one call, forward and backward: the
    calls are as many as the head groups, whatever the number of blocks."""
    calls = {"forward": 0, "backward": 0}
    kernel = KERNELS["cpu_flash"]
    for name in calls:
        def counted(*args, _f=getattr(kernel, name), _n=name):
            calls[_n] += 1
            return _f(*args)
        monkeypatch.setattr(kernel, name, counted)
    q, k, v, weight = inputs(2)
    out_and_grads(routed_two_stream_layout(CFGS["top2"], N, L), q, k, v, weight)
    assert calls == {"forward": 1, "backward": 1}
    monkeypatch.setattr(routing_function, "ROUTE_BUDGET", 1)
    calls.update(forward=0, backward=0)
    out_and_grads(routed_two_stream_layout(CFGS["top2"], N, L), q, k, v, weight)
    assert calls == {"forward": H, "backward": H}


def saved_bytes(layout, q, k, v):
    """Bytes autograd keeps for the backward of one attention call (inputs q, k, v excluded)."""
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    kept = {}

    def pack(t):
        if not any(t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for x in leaves):
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layout.attend(0, *leaves)
    return sum(kept.values())


def test_keeps_only_routes_and_merged_output_for_backward():
    q, k, v, _ = inputs(2)
    cfg = CFGS["top2"]
    tokens = q.shape[0] * q.shape[1] * q.shape[2]
    routes = tokens * (cfg.topk + 1)
    # chunk indices (int64) + validity (bool) per route; output (fp32) + LSE (fp32) per token
    expected = routes * (8 + 1) + tokens * (D * 4 + 4)
    assert saved_bytes(routed_two_stream_layout(cfg, N, L), q, k, v) <= expected
    # the plain-autograd path keeps per-route float32 outputs and more
    assert saved_bytes(routed_two_stream_layout(cfg, N, L, fused=False), q, k, v) > 2 * expected


def test_no_op_output_outgrows_a_head_group(monkeypatch):
    """With one head per group, the largest tensor of forward + backward does not grow with
    the number of heads (it is one head's share of the routes), while the plain-autograd
    path's does (it holds every head's routes at once)."""
    cfg = CFGS["top2"]

    def largest(heads, fused):
        s = 2 * N * L
        q, k, v, weight = (randn(B, heads, s, D, seed=i) for i in range(4))
        with LargestOutput() as rec:
            out_and_grads(routed_two_stream_layout(cfg, N, L, fused=fused), q, k, v, weight)
        return rec.numel

    monkeypatch.setattr(routing_function, "ROUTE_BUDGET", 1)
    assert largest(2 * H, True) == largest(H, True)
    assert largest(2 * H, False) >= 2 * largest(H, False) - 1
    assert largest(2 * H, False) >= B * 2 * H * 2 * N * L * (cfg.topk + 1) * D  # every route's output
