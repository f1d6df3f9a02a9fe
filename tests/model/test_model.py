"""Core proofs: parity of the two-stream pass with the KV cache, causality, rollout
equivalence, RoPE offsets, FlexAttention vs SDPA. Tiny random models, seconds each."""

import pytest
import torch

from resforce.model import build_model
from resforce.model.attention.layouts import expand_chunk_mask, two_stream_chunk_mask
from resforce.model.rope import apply_rope, grid_positions, rope_cos_sin
from resforce.rollout import SampleConfig, reference_rollout, rollout

N, FPC, H, W = 4, 2, 8, 8


def make(randomize, **kw):
    kw = {"frames_per_chunk": FPC, "patch_size": (1, 4, 4), **kw}
    return randomize(build_model(preset="test", **kw))


def data(b=2, n=N, seed=1, c=3):
    g = torch.Generator().manual_seed(seed)
    hist = torch.randn(b, c, n * FPC, H, W, generator=g)
    noisy = torch.randn(b, c, n * FPC, H, W, generator=g)
    t = torch.rand(b, n, generator=g)
    return hist, noisy, t


def cached_outputs(model, hist, noisy, t, t_hist=None):
    """Chunk by chunk: velocity of noisy chunk i given the cache of history chunks < i."""
    cache = model.new_cache(H, W)
    outs = []
    for i in range(t.shape[1]):
        sl = slice(i * FPC, (i + 1) * FPC)
        outs.append(model.forward_chunk(noisy[:, :, sl], t[:, i:i + 1], cache))
        th = None if t_hist is None else t_hist[:, i:i + 1]
        model.write_cache(hist[:, :, sl], cache, t=th)
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize("prediction", ["velocity", "x0"])
def test_parity_two_stream_equals_kv_cache(randomize, prediction):
    model = make(randomize, prediction=prediction)
    hist, noisy, t = data()
    t_hist = torch.rand(2, N) * 0.2  # noisy-history strategies carry their own time
    with torch.no_grad():
        parallel = model(noisy, t, history=hist, t_history=t_hist)
        cached = cached_outputs(model, hist, noisy, t, t_hist)
    assert parallel.shape == noisy.shape
    diff = parallel - cached
    if prediction == "x0":  # compare the network outputs: v = (x_t - x0) / t amplifies by 1/t
        diff = diff * t.repeat_interleave(FPC, 1)[:, None, :, None, None]
    assert diff.abs().max().item() <= 1e-5


def test_parity_with_cross_attention(randomize):
    model = make(randomize, text_dim=8)
    hist, noisy, t = data()
    ctx = torch.randn(2, 5, 8)
    with torch.no_grad():
        parallel = model(noisy, t, history=hist, context=ctx)
        cache = model.new_cache(H, W)
        outs = []
        for i in range(N):
            sl = slice(i * FPC, (i + 1) * FPC)
            outs.append(model.forward_chunk(noisy[:, :, sl], t[:, i:i + 1], cache, context=ctx))
            model.write_cache(hist[:, :, sl], cache, context=ctx)
    assert (parallel - torch.cat(outs, 2)).abs().max().item() <= 1e-5


def test_parity_breaks_if_mask_is_wrong(randomize, monkeypatch):
    """The parity test is real: a mask that lets noisy chunk i see history i breaks it."""
    from resforce.model.attention import layouts as attention

    def leaky(n, device=None):
        m = two_stream_chunk_mask(n, device)
        m[n:, :n] |= torch.eye(n, dtype=torch.bool, device=device)
        return m

    model = make(randomize)
    hist, noisy, t = data()
    with torch.no_grad():
        good = model(noisy, t, history=hist)
        monkeypatch.setattr(attention, "two_stream_chunk_mask", leaky)
        bad = model(noisy, t, history=hist)
    cached = cached_outputs(model, hist, noisy, t)
    assert (good - cached).abs().max() <= 1e-5
    assert (bad - cached).abs().max() > 1e-3


def test_two_stream_mask_layout():
    m = two_stream_chunk_mask(3)
    hist_hist, noisy_hist, noisy_noisy = m[:3, :3], m[3:, :3], m[3:, 3:]
    assert torch.equal(hist_hist, torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    assert torch.equal(noisy_hist, torch.tril(torch.ones(3, 3, dtype=torch.bool), -1))
    assert torch.equal(noisy_noisy, torch.eye(3, dtype=torch.bool))
    assert not m[:3, 3:].any()  # history never sees the noisy stream
    assert expand_chunk_mask(m, 4).shape == (24, 24)


def test_causal_two_stream(randomize):
    model = make(randomize)
    hist, noisy, t = data()
    with torch.no_grad():
        base = model(noisy, t, history=hist)
        for k in range(1, N):  # perturb chunk k in either stream
            sl = slice(k * FPC, (k + 1) * FPC)
            for stream in ("history", "noisy"):
                h2, n2 = hist.clone(), noisy.clone()
                (h2 if stream == "history" else n2)[:, :, sl] += 1.0
                out = model(n2, t, history=h2)
                # every earlier noisy chunk is bit-identical
                assert torch.equal(out[:, :, :k * FPC], base[:, :, :k * FPC]), (k, stream)
                # noisy chunk k never depends on its own clean copy
                if stream == "history":
                    assert torch.equal(out[:, :, sl], base[:, :, sl]), k
                else:
                    assert not torch.equal(out[:, :, sl], base[:, :, sl])
            # nor on other noisy chunks (earlier or later)
            n3 = noisy.clone()
            n3[:, :, sl] += 1.0
            out = model(n3, t, history=hist)
            others = [i for i in range(N) if i != k]
            for i in others:
                s = slice(i * FPC, (i + 1) * FPC)
                assert torch.equal(out[:, :, s], base[:, :, s]), (i, k)


def test_causal_time_and_later_history_chunks(randomize):
    """Perturbing a later chunk's timestep leaves earlier outputs identical; history chunk j
    does influence noisy chunks > j (otherwise history would be ignored)."""
    model = make(randomize)
    hist, noisy, t = data()
    with torch.no_grad():
        base = model(noisy, t, history=hist)
        t2 = t.clone()
        t2[:, 2] += 0.3
        out = model(noisy, t2, history=hist)
        assert torch.equal(out[:, :, :2 * FPC], base[:, :, :2 * FPC])
        h2 = hist.clone()
        h2[:, :, :FPC] += 1.0
        out = model(noisy, t, history=h2)
        assert not torch.equal(out[:, :, FPC:2 * FPC], base[:, :, FPC:2 * FPC])


def test_causal_block_causal_single_stream(randomize):
    model = make(randomize)
    _, x, t = data()
    with torch.no_grad():
        base = model(x, t)
        for k in range(1, N):
            x2 = x.clone()
            x2[:, :, k * FPC:] += 1.0
            out = model(x2, t)
            assert torch.equal(out[:, :, :k * FPC], base[:, :, :k * FPC])
            assert not torch.equal(out[:, :, k * FPC:], base[:, :, k * FPC:])


@pytest.mark.parametrize("with_prefix", [False, True])
def test_rollout_cache_equals_uncached(randomize, with_prefix):
    model = make(randomize)
    cfg = SampleConfig(chunks=3, steps=3, shift=3.0, seed=5)
    prefix = torch.randn(2, 3, FPC, H, W) if with_prefix else None
    fast = rollout(model, 2, H, W, cfg, prefix=prefix)
    slow = reference_rollout(model, 2, H, W, cfg, prefix=prefix)
    n_total = 3 + (1 if with_prefix else 0)
    assert fast.shape == (2, 3, n_total * FPC, H, W)
    assert (fast - slow).abs().max().item() <= 1e-4
    if with_prefix:
        assert torch.equal(fast[:, :, :FPC], prefix)


def test_rollout_is_seeded_and_streams(randomize):
    model = make(randomize)
    seen = []
    a = rollout(model, 1, H, W, SampleConfig(chunks=2, steps=2, seed=3), callback=lambda i, c: seen.append(i))
    b = rollout(model, 1, H, W, SampleConfig(chunks=2, steps=2, seed=3))
    c = rollout(model, 1, H, W, SampleConfig(chunks=2, steps=2, seed=4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert seen == [0, 1]


def test_rollout_cfg_needs_uncond_and_guides(randomize):
    model = make(randomize, text_dim=8)
    ctx, null = torch.randn(1, 3, 8), torch.zeros(1, 3, 8)
    with pytest.raises(ValueError, match="uncond"):
        rollout(model, 1, H, W, SampleConfig(chunks=1, steps=2, cfg_scale=3.0), text=ctx)
    plain = rollout(model, 1, H, W, SampleConfig(chunks=2, steps=2), text=ctx)
    same = rollout(model, 1, H, W, SampleConfig(chunks=2, steps=2, cfg_scale=1.0), text=ctx,
                   uncond_text=null)
    guided = rollout(model, 1, H, W, SampleConfig(chunks=2, steps=2, cfg_scale=3.0), text=ctx,
                     uncond_text=null)
    assert torch.equal(plain, same) and not torch.allclose(plain, guided)


def test_rope_offset_matches_full_pass_far_out():
    head_dim = 24
    pos_full = grid_positions(5003, 2, 2)
    cos_f, sin_f = rope_cos_sin(pos_full, head_dim)
    cos_o, sin_o = rope_cos_sin(grid_positions(3, 2, 2, frame_offset=5000), head_dim)
    assert torch.equal(cos_f[-12:], cos_o) and torch.equal(sin_f[-12:], sin_o)
    # a rotation: norms preserved, and q.k depends only on the position difference
    q, k = torch.randn(1, 1, 1, head_dim), torch.randn(1, 1, 1, head_dim)

    def rot(x, p):
        c, s = rope_cos_sin(torch.tensor([[p, 1, 1]]), head_dim)
        return apply_rope(x, c, s)

    d1 = (rot(q, 5007) * rot(k, 5000)).sum()
    d2 = (rot(q, 7) * rot(k, 0)).sum()
    assert torch.allclose(d1, d2, atol=1e-4)


def test_rope_offset_in_cached_model_at_5000(randomize):
    """A chunk at position 5000 in the cache sees the same rotation as in a full pass:
    here the model's RoPE at chunk offset 2500 (FPC=2) equals the full table's rows."""
    model = make(randomize)
    c_cache, _ = model._rope(FPC, H, W, 2500, "cpu")
    c_full, _ = model._rope(2501 * FPC, H, W, 0, "cpu")
    assert torch.equal(c_cache, c_full[-c_cache.shape[0]:])


def test_flex_forward_equals_sdpa(randomize):
    pytest.importorskip("torch.nn.attention.flex_attention")
    model = make(randomize, attention_backend="sdpa")
    hist, noisy, t = data(n=3)
    with torch.no_grad():
        ref = model(noisy, t, history=hist)
        model.config.attention_backend = "flex"
        flex = model(noisy, t, history=hist)
    assert (flex - ref).abs().max().item() <= 1e-5


def test_zero_init_starts_at_zero_output():
    model = build_model(preset="test", frames_per_chunk=FPC, patch_size=(1, 4, 4))
    hist, noisy, t = data()
    assert model(noisy, t, history=hist).abs().max() == 0


def test_parameter_names_follow_wan():
    model = build_model(preset="test", text_dim=8)
    names = set(dict(model.named_parameters()))
    for n in ["patch_embedding.weight", "condition_embedder.time_embedder.linear_1.weight",
              "condition_embedder.time_embedder.linear_2.weight", "condition_embedder.time_proj.weight",
              "condition_embedder.text_embedder.linear_1.weight", "blocks.0.attn1.to_q.weight",
              "blocks.0.attn1.to_out.0.weight", "blocks.0.attn1.norm_q.weight",
              "blocks.0.attn1.norm_k.weight", "blocks.0.attn2.to_k.weight", "blocks.0.norm2.weight",
              "blocks.0.ffn.net.0.proj.weight", "blocks.0.ffn.net.2.weight",
              "blocks.0.scale_shift_table", "scale_shift_table", "proj_out.weight"]:
        assert n in names, n


def test_bad_shapes_name_the_problem(randomize):
    model = make(randomize)
    hist, noisy, t = data()
    with pytest.raises(ValueError, match="timesteps"):
        model(noisy, t[:, :2], history=hist)
    with pytest.raises(ValueError, match="not a whole number of chunks"):
        model(noisy[:, :, :3], t)
    with pytest.raises(ValueError, match="patch"):
        model(torch.randn(2, 3, N * FPC, 6, 8), t)


def test_text_model_requires_context_and_runs_in_bf16(randomize):
    model = make(randomize, text_dim=8)
    _, x, t = data()
    with pytest.raises(ValueError, match="pass context"):
        model(x, t)
    out = model.to(torch.bfloat16)(x.bfloat16(), t, context=torch.randn(2, 3, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
