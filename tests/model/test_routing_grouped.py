"""Routing without S x S tensors: the grouped layouts (routing_grouped.py, model/attention/varlen.py)
equal the naive masked reference (routing_naive.py) forward and backward, in the tiny
model's two-stream loss too, and allocate no (S, S)-sized tensor nor keys per query token
(the numel of every op output is recorded under a TorchDispatchMode). Seconds in all."""

import pytest
import torch

from largest_output import LargestOutput
from resforce.flow import TimestepSampler
from resforce.loss import flow_matching_loss
from resforce.model import build_model
from resforce.model.attention import (AttentionPolicy, HistoryAttentionConfig, RoutedCachedLayout,
                                    naive_block_causal_layout, naive_two_stream_layout, routed_block_causal_layout,
                                    routed_reference, routed_two_stream_layout)
from resforce.model.attention.varlen import block_attention_lse, varlen_attention_lse

CFGS = {"top1": HistoryAttentionConfig(mode="topk", topk=1), "top2": HistoryAttentionConfig(mode="topk", topk=2),
        "window2_sink1": HistoryAttentionConfig(mode="window", window=2, sink=1)}
LAYOUTS = {"two_stream": (routed_two_stream_layout, naive_two_stream_layout, 2),
           "block_causal": (routed_block_causal_layout, naive_block_causal_layout, 1)}


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def out_and_grads(layout, q, k, v, weight):
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out = layout.attend(0, *leaves)
    return out.detach(), torch.autograd.grad((out * weight).sum(), leaves)


@pytest.mark.parametrize("kind", list(LAYOUTS))
@pytest.mark.parametrize("name", list(CFGS))
def test_grouped_equals_naive_forward_and_backward(name, kind):
    cfg, (grouped, naive, streams) = CFGS[name], LAYOUTS[kind]
    b, h, n, L, d = 2, 3, 6, 5, 8
    s = streams * n * L
    q, k, v = (randn(b, h, s, d, seed=i) * (2.0 if i == 0 else 1.0) for i in range(3))  # peaky softmax
    weight = randn(b, h, s, d, seed=9)
    out, grads = out_and_grads(grouped(cfg, n, L), q, k, v, weight)
    ref, ref_grads = out_and_grads(naive(cfg, n, L), q, k, v, weight)
    assert (out - ref).abs().max() <= 1e-5
    for g, r, name_ in zip(grads, ref_grads, "qkv"):
        assert (g - r).abs().max() <= 1e-5, name_
    # the selection matters: dense attention over all history gives other numbers
    dense, _ = out_and_grads(naive(HistoryAttentionConfig(), n, L), q, k, v, weight)
    assert (out - dense).abs().max() > 1e-2


def loop_reference(q, counts, k_rows, v_rows):
    """Per group python loop in float64: softmax of its queries over its key chunk."""
    d = q.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.full(q.shape[:1], float("-inf"), dtype=torch.float64)
    start = 0
    for g, c in enumerate(counts.tolist()):
        qq = q[start:start + c].double()
        logits = qq @ k_rows[g].double().T / d ** 0.5
        lse[start:start + c] = logits.logsumexp(-1)
        out[start:start + c] = torch.softmax(logits, -1) @ v_rows[g].double()
        start += c
    return out, lse


@pytest.mark.parametrize("block,budget", [(None, 1 << 25), (1, 1 << 25), (2, 30), (5, 1)],
                         ids=["default", "block1", "block2_small_batches", "block5_one_block_per_batch"])
def test_varlen_attention_equals_a_loop_over_groups(block, budget):
    """Empty groups, groups longer than a block, padding queries past counts.sum(), any block
    size and batch budget: the same (out, lse) and gradients as a loop over the groups."""
    counts = torch.tensor([3, 0, 9, 1, 0, 12, 2])
    r, L, d, pad = len(counts), 5, 4, 3
    m = int(counts.sum()) + pad
    q, k_rows, v_rows = randn(m, d, seed=0), randn(r, L, d, seed=1), randn(r, L, d, seed=2)
    leaves = [x.clone().requires_grad_(True) for x in (q, k_rows, v_rows)]
    out, lse = varlen_attention_lse(*leaves[:1], counts, *leaves[1:], block=block, budget=budget)
    ref, ref_lse = loop_reference(q, counts, k_rows, v_rows)
    assert (out - ref).abs().max() <= 1e-5 and (lse[:-pad] - ref_lse[:-pad]).abs().max() <= 1e-5
    assert (out[-pad:] == 0).all() and (lse[-pad:] == float("-inf")).all()
    w = randn(m, d, seed=3)
    grads = torch.autograd.grad((out * w).sum() + lse[:-pad].sum(), leaves)
    ref_leaves = [x.double().requires_grad_(True) for x in (q, k_rows, v_rows)]
    ref, ref_lse = loop_reference(*ref_leaves[:1], counts, *ref_leaves[1:])
    ref_grads = torch.autograd.grad((ref * w.double()).sum() + ref_lse[:-pad].sum(), ref_leaves)
    for g, rg in zip(grads, ref_grads):
        assert (g.double() - rg).abs().max() <= 1e-5
    assert (grads[0][-pad:] == 0).all()  # padding queries: no output, no gradient


def test_block_attention_gradcheck_and_keeps_no_logits_for_backward():
    """BlockAttention's hand-written backward (recompute, with the lse gradient) passes
    gradcheck in float64, blocks sharing a key chunk included; and what autograd saves is
    O(queries x d): nothing the size of the logits (blocks x block x L)."""
    n, p, r, L, d = 5, 3, 3, 4, 2
    q, k_rows, v_rows = (randn(*shape, seed=i).double().requires_grad_(True)
                         for i, shape in enumerate([(n, p, d), (r, L, d), (r, L, d)]))
    rows = torch.tensor([2, 0, 2, 1, 2])

    def f(q, k_rows, v_rows):
        return block_attention_lse(q, k_rows, v_rows, rows, budget=2 * p * L)  # 2 blocks per batch

    assert torch.autograd.gradcheck(f, (q, k_rows, v_rows))
    n, p, r, L, d = 64, 16, 8, 64, 4
    q, k_rows, v_rows = (randn(*shape, seed=i).requires_grad_(True)
                         for i, shape in enumerate([(n, p, d), (r, L, d), (r, L, d)]))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out, lse = block_attention_lse(q, k_rows, v_rows, torch.arange(n) % r)
    assert max(saved) <= n * p * d < n * p * L // 4
    (out.sum() + lse.sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k_rows, v_rows))


class NaivePolicy(AttentionPolicy):
    """The same routing through the naive masked layouts (the reference of the model path)."""

    def masked(self, kind, num_chunks, tokens_per_chunk, backend="sdpa", device=None):
        make = naive_two_stream_layout if kind == "two_stream" else naive_block_causal_layout
        return make(self.cfg, num_chunks, tokens_per_chunk, device)


@pytest.mark.parametrize("name", ["top1", "top2", "window2_sink1"])
def test_tiny_model_two_stream_loss_and_grads_equal_naive(randomize, name):
    cfg = CFGS[name]
    model = randomize(build_model(preset="test", frames_per_chunk=2, patch_size=(1, 4, 4))).train()
    clean = randn(2, 3, 10, 8, 8, seed=1)  # 5 chunks
    hist, t_hist = randn(2, 3, 10, 8, 8, seed=2), torch.rand(2, 5, generator=torch.Generator().manual_seed(3)) * 0.3

    def loss_and_grads(policy):
        model.zero_grad(set_to_none=True)
        loss = flow_matching_loss(model, clean, hist, t_hist, TimestepSampler(),
                                  torch.Generator().manual_seed(4), attention=policy)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(AttentionPolicy(cfg))
    ref_loss, ref_grads = loss_and_grads(NaivePolicy(cfg))
    _, dense_grads = loss_and_grads(None)
    assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    off = {}
    for n in grads:
        scale = ref_grads[n].abs().max().item()
        assert (grads[n] - ref_grads[n]).abs().max() <= 1e-4 * scale + 1e-7, n
        off[n] = (grads[n] - dense_grads[n]).abs().max().item() / scale
    assert max(off.values()) > 1e-2  # routing is on: dense attention gives other gradients


# ----------------------------------------------------------------------------- memory


def largest_fwd_bwd(layout, q, k, v):
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    with LargestOutput() as rec:
        layout.attend(0, *leaves).sum().backward()
    return rec


@pytest.mark.parametrize("name", ["top2", "window2_sink1"])
def test_training_layout_allocates_nothing_of_size_s_squared(name):
    """At S = 512 tokens (two-stream, 32 chunks of 8), batch 2: the naive reference's mask is
    2 S^2 and a per-token gather of the selected keys would be >= 1.5 S^2; the grouped
    layout's largest tensor (forward and backward) stays below S^2."""
    cfg = CFGS[name]
    b, h, n, L, d = 2, 1, 32, 8, 16
    s = 2 * n * L
    q, k, v = (randn(b, h, s, d, seed=i) for i in range(3))
    per_token_keys = b * h * s * 3 * L * d  # >= 3 routes per token: 2 selected + own chunk
    assert per_token_keys >= 1.5 * s * s  # so the bound below would catch such a gather
    grouped = largest_fwd_bwd(routed_two_stream_layout(cfg, n, L), q, k, v)
    assert grouped.numel < s * s, (grouped.numel, grouped.op)
    naive = largest_fwd_bwd(naive_two_stream_layout(cfg, n, L), q, k, v)  # the recorder sees it
    assert naive.numel >= b * h * s * s, (naive.numel, naive.op)


def test_cached_rollout_gathers_no_keys_per_query_token():
    """One cached top-2 step over 6 chunks of 64 tokens: keys gathered per query token would
    be B*H*L*k*L*d elements; the grouped path's largest tensor (its logits, about B*H*L*k*L)
    is under a quarter of that, with gradients too."""
    b, h, n, L, d, kk = 2, 2, 6, 64, 16, 2
    cfg = CFGS["top2"]
    hk, hv = randn(b, h, n, L, d, seed=1), randn(b, h, n, L, d, seed=2)
    cache = build_model(preset="test").new_cache(8, 8)  # any cache; refill layer 0 with our chunks
    cache.layers = cache.layers[:1]
    cache.tokens_per_chunk = L
    for j in range(n):
        cache[0].append(hk[:, :, j], hv[:, :, j], L)
    q, k, v = (randn(b, h, L, d, seed=10 + i) for i in range(3))
    per_token_keys = b * h * L * kk * L * d
    rec = largest_fwd_bwd(RoutedCachedLayout(cache, False, cfg), q, k, v)
    assert rec.numel * 4 < per_token_keys, (rec.numel, rec.op)
    out = RoutedCachedLayout(cache, False, cfg).attend(0, q, k, v)
    assert (out - routed_reference(cfg, q, k, v, hk, hv)).abs().max() <= 1e-5
