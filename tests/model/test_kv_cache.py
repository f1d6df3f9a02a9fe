"""KV cache memory: allocated once at exact capacity where the caller knows it (rollout,
rolling context, self-resampling), doubling only when nobody does; keys kept in their own
dtype; self-resampling's cache gone before the loss; guidance as one batch of 2B over one
cache, equal to the two-cache computation it replaces."""

import weakref

import pytest
import torch

from resforce.flow import add_noise, euler_grid
from resforce.history import HistoryConfig, autoregressive_resample, build_history
from resforce.model import build_model
from resforce.model.cache import KVCache
from resforce.rollout import SampleConfig, rollout

FPC, H, W = 2, 8, 8


def make(randomize, **kw):
    return randomize(build_model(preset="test", frames_per_chunk=FPC, patch_size=(1, 4, 4), **kw))


def spy_caches(model, keep=True):
    """Record the caches the model hands out (weak references unless keep)."""
    made, new_cache = [], model.new_cache

    def spy(*a, **k):
        cache = new_cache(*a, **k)
        made.append(cache if keep else weakref.ref(cache))
        return cache

    model.new_cache = spy
    return made


@pytest.mark.parametrize("context,slots", [(None, 5), (0, 5), (3, 3), (1, 1)])
def test_rollout_cache_has_exact_capacity(randomize, context, slots):
    """1 prefix chunk + 4 chunks: 5 slots for all history (doubling would give 8); a rolling
    context of c chunks keeps c - 1 and stages 1, so c slots."""
    model = make(randomize)
    made = spy_caches(model)
    rollout(model, 2, H, W, SampleConfig(chunks=4, steps=1, context=context), prefix=torch.randn(2, 3, FPC, H, W))
    (cache,) = made
    assert {layer.k.shape[2] for layer in cache.layers} == {layer.v.shape[2] for layer in cache.layers} == {slots}
    assert cache.position == 5


def test_self_resampling_cache_is_exact_and_gone_before_the_loss(randomize):
    model = make(randomize)
    clean = torch.randn(2, 3, 5 * FPC, H, W)
    made = spy_caches(model)
    autoregressive_resample(model, clean, torch.full((2,), 0.5), 1)
    assert made[0][0].k.shape[2] == 5 and made[0].num_chunks == 4  # last chunk staged, not committed
    del model.new_cache, made  # the spy above keeps its caches
    gone = spy_caches(model, keep=False)
    build_history(HistoryConfig(strategy="resampling"), model, clean)
    (ref,) = gone
    assert ref() is None  # freed on return (refcount, no gc pass): nothing holds it through the loss


def test_without_a_capacity_the_cache_doubles():
    cache = KVCache(1, tokens_per_chunk=2)
    for n in range(1, 6):
        cache[0].append(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4), 2)
        assert cache[0].k.shape[2] == (4 if n <= 4 else 8)
    exact = KVCache(1, tokens_per_chunk=2, capacity=5)
    for _ in range(5):
        exact[0].append(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4), 2)
    assert exact[0].k.shape[2] == 5


def test_cache_keeps_the_dtype_of_its_keys():
    cache = KVCache(1, tokens_per_chunk=2)
    cache[0].append(torch.randn(1, 1, 2, 4, dtype=torch.bfloat16), torch.randn(1, 1, 2, 4, dtype=torch.bfloat16), 2)
    assert cache[0].k.dtype == cache[0].v.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="bfloat16 keys, got torch.float32"):
        cache[0].append(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4), 2)


def two_cache_guidance(model, cfg, prefix, ctx, null):
    """What guidance computed before: a cache per branch, two passes per Euler step."""
    gen = torch.Generator().manual_seed(cfg.seed)
    b = prefix.shape[0]
    caches = [model.new_cache(H, W), model.new_cache(H, W)]

    def commit(chunk):
        t = torch.full((b, 1), cfg.history_noise)
        chunk = add_noise(chunk, torch.randn(chunk.shape, generator=gen), t, FPC)
        for cache, c in zip(caches, (ctx, null)):
            model.write_cache(chunk, cache, t=t, context=c)

    commit(prefix)
    out, grid = [prefix], euler_grid(cfg.steps, cfg.shift)
    with torch.no_grad():
        for _ in range(cfg.chunks):
            x = torch.randn(prefix.shape, generator=gen)
            for t0, t1 in zip(grid[:-1], grid[1:]):
                t = torch.full((b, 1), t0)
                v_c = model.forward_chunk(x, t, caches[0], context=ctx)
                v_u = model.forward_chunk(x, t, caches[1], context=null)
                x = x + (t1 - t0) * (v_u + cfg.cfg_scale * (v_c - v_u))
            commit(x)
            out.append(x)
    return torch.cat(out, dim=2)


def test_guidance_as_one_batch_equals_two_caches(randomize):
    model = make(randomize, text_dim=8)
    ctx, null = torch.randn(2, 3, 8), torch.zeros(1, 3, 8)  # the empty prompt shared by the batch
    prefix = torch.randn(2, 3, FPC, H, W)
    cfg = SampleConfig(chunks=3, steps=3, cfg_scale=4.0, history_noise=0.05, seed=2)
    made = spy_caches(model)
    fast = rollout(model, 2, H, W, cfg, prefix=prefix, text=ctx, uncond_text=null)
    slow = two_cache_guidance(model, cfg, prefix, ctx, null)
    assert len(made) == 3 and made[0][0].k.shape[:3] == (4, 2, 4)  # one cache of batch 2B
    assert (fast - slow).abs().max() < 1e-5
    plain = rollout(model, 2, H, W, SampleConfig(chunks=3, steps=3, history_noise=0.05, seed=2), prefix=prefix,
                    text=ctx)
    assert (fast - plain).abs().max() > 0.1  # guidance changed the video
    with pytest.raises(ValueError, match="same tokens"):
        rollout(model, 2, H, W, cfg, text=ctx, uncond_text=torch.zeros(1, 4, 8))
