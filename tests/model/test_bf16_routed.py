"""The routed stage under bf16 autocast: the grouped routed layout's forward and backward run
(and agree with fp32) when the model's matmuls are autocast to bf16. Before the fix the
varlen block attention's forward ran its matmuls in bf16 under autocast and its backward
multiplied those bf16 tensors by fp32 ones ("expected scalar type Float but found BFloat16").
Tiny shapes: bf16 autocast is slow on these CPUs."""

import pytest
import torch

from resforce.model.attention import HistoryAttentionConfig, routed_block_causal_layout, routed_two_stream_layout
from resforce.model.attention.varlen import varlen_attention_lse


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _run(layout, q, k, v, weight, autocast):
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        # the model's projections produce bf16 q, k, v under autocast
        qkv = [x.to(torch.bfloat16) if autocast else x for x in leaves]
        out = layout.attend(0, *qkv)
        loss = (out.float() * weight).sum()
    loss.backward()
    return out.detach().float(), [x.grad for x in leaves]


@pytest.mark.parametrize("make,streams", [(routed_two_stream_layout, 2), (routed_block_causal_layout, 1)],
                         ids=["two_stream", "block_causal"])
def test_routed_forward_and_backward_under_bf16_autocast(make, streams):
    b, h, n, L, d = 1, 2, 4, 3, 8
    s = streams * n * L
    q, k, v = (randn(b, h, s, d, seed=i) for i in range(3))
    weight = randn(b, h, s, d, seed=9)
    layout = make(HistoryAttentionConfig(mode="topk", topk=2), n, L)
    out16, grads16 = _run(layout, q, k, v, weight, autocast=True)
    out32, grads32 = _run(layout, q, k, v, weight, autocast=False)
    assert (out16 - out32).abs().max() < 0.05
    for g16, g32, name in zip(grads16, grads32, "qkv"):
        assert g16.dtype == torch.float32 and torch.isfinite(g16).all(), name
        assert torch.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > 0.99, name


def test_varlen_attention_is_float32_under_autocast():
    """(out, lse) in float32 under bf16 autocast, as documented, and a backward through them."""
    counts = torch.tensor([3, 0, 5])
    q = randn(8, 4, seed=0).to(torch.bfloat16).requires_grad_(True)
    k_rows = randn(3, 5, 4, seed=1).to(torch.bfloat16).requires_grad_(True)
    v_rows = randn(3, 5, 4, seed=2).to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, lse = varlen_attention_lse(q, counts, k_rows, v_rows)
    assert out.dtype == lse.dtype == torch.float32
    (out.sum() + lse.sum()).backward()
    assert q.grad.dtype == k_rows.grad.dtype == torch.bfloat16
