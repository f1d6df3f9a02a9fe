"""Detached-history training (`history_grad: false`): the loss equals the two-stream loss,
no gradient reaches the history stream, self-resampling's cache is reused (no extra history
pass), train and eval mode agree, config."""

import pytest
import torch

from resforce.training import activation_checkpoint
from resforce.config import ConfigError, load_config
from resforce.training.detached_history import history_kv
from resforce.flow import TimestepSampler
from resforce.history import STRATEGIES, HistoryConfig, build_history_and_cache
from resforce.loss import flow_matching_loss
from resforce.model import build_model
from resforce.model.attention.policy import AttentionPolicy
from resforce.model.cache import KVCache
from resforce.model.attention.detached import (DetachedLayout, HistoryDetachedPolicy, detached_attention,
                                            detached_attention_reference)
from resforce.model.attention.config import HistoryAttentionConfig
from resforce.training.loop import Trainer
from tiny import tiny

B, N, FPC, H, W = 3, 5, 2, 8, 8
POLICIES = {"dense": None, "topk": HistoryAttentionConfig(mode="topk", topk=2),
            "window": HistoryAttentionConfig(mode="window", window=2, sink=1)}


@pytest.fixture
def model(randomize):
    return randomize(build_model(preset="test", frames_per_chunk=FPC)).train()


def policy(name):
    return None if POLICIES[name] is None else AttentionPolicy(POLICIES[name])


def clean(seed=0, device="cpu"):
    return torch.randn(B, 3, N * FPC, H, W, generator=torch.Generator().manual_seed(seed)).to(device)


def device_of(model):
    return next(model.parameters()).device


def history_and_kv(model, strategy, attention, seed=1):
    """(history, t_history, kv cache, generator after the history was built): the history as
    the two-stream step builds it, the kv cache as the detached step does (skip_last), from
    the same random draws."""
    cfg, dev = HistoryConfig(strategy=strategy), device_of(model)
    gen, gen_det = (torch.Generator(device=dev).manual_seed(seed) for _ in range(2))
    hist, t_hist, _ = build_history_and_cache(cfg, model, clean(0, dev), gen, attention=attention)
    hist_det, t_det, cache = build_history_and_cache(cfg, model, clean(0, dev), gen_det, attention=attention,
                                                     skip_last=True)
    assert torch.equal(gen.get_state(), gen_det.get_state()) and torch.equal(t_hist, t_det)
    n_det = N - 1 if strategy == "resampling" else N  # only self-resampling skips the last chunk
    assert torch.equal(hist_det, hist[:, :, :n_det * FPC])
    return hist, t_hist, history_kv(cfg, model, hist_det, t_det, cache, attention), gen


def loss_of(model, hist, t_hist, gen_state, attention, kv=None, reference=False):
    """The training loss with the same noise and t (the generator restarts at gen_state)."""
    gen = torch.Generator(device=device_of(model))
    gen.set_state(gen_state)
    if reference:
        attention = HistoryDetachedPolicy(attention)
    return flow_matching_loss(model, clean(0, device_of(model)), hist, t_hist, TimestepSampler(), gen,
                              attention=attention, history_kv=kv)


@pytest.mark.parametrize("routing", list(POLICIES))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_detached_forward_equals_two_stream(model, strategy, routing):
    """Same velocity for every noisy token, same loss (fp32), for every strategy and routing."""
    attention = policy(routing)
    hist, t_hist, kv, gen = history_and_kv(model, strategy, attention)
    assert kv.num_chunks == N - 1 and not kv[0].k.requires_grad
    g = torch.Generator().manual_seed(7)
    x, t = torch.randn(B, 3, N * FPC, H, W, generator=g), torch.rand(B, N, generator=g)
    with torch.no_grad():
        two = model(x, t, history=hist, t_history=t_hist, attention=attention)
        det = model(x, t, history_kv=kv, attention=attention)
    assert two.abs().mean() > 0.1  # a random model: outputs of order one
    torch.testing.assert_close(det, two, atol=2e-5, rtol=1e-5)
    state = gen.get_state()
    l_two = loss_of(model, hist, t_hist, state, attention)
    l_det = loss_of(model, hist, t_hist, state, attention, kv=kv)
    torch.testing.assert_close(l_det, l_two, atol=0, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 6])
def test_chunked_detached_attention_equals_per_chunk_reference(n):
    """The block-sparse path (chunk_attention under the (N, 2N - 1) mask) equals one SDPA call
    per chunk, forward and backward (q, k, v grads), with history read from a cache buffer."""
    g = torch.Generator().manual_seed(n)
    b, h, tpc, d = 2, 3, 4, 8
    cache = KVCache(1, tpc)
    for _ in range(max(n - 1, 0) + 2):  # more chunks than needed, the buffer grown past them
        cache[0].append(torch.randn(b, h, tpc, d, generator=g), torch.randn(b, h, tpc, d, generator=g), tpc)
    hk, hv = cache[0].chunks()
    q, k, v = (torch.randn(b, h, n * tpc, d, generator=g, requires_grad=True) for _ in range(3))
    dout = torch.randn(b, h, n * tpc, d, generator=g)
    outs = []
    for fn in (detached_attention, detached_attention_reference):
        out = fn(q, k, v, hk, hv, tpc)
        outs.append((out, *torch.autograd.grad(out, (q, k, v), dout)))
    for fast, ref in zip(*outs):
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_detached_with_text_context(randomize):
    """Cross-attention models: the context reaches the history pass and the training pass."""
    model = randomize(build_model(preset="test", frames_per_chunk=FPC, text_dim=8)).train()
    context = torch.randn(B, 5, 8, generator=torch.Generator().manual_seed(3))
    for strategy in ("teacher", "resampling"):
        cfg = HistoryConfig(strategy=strategy)
        hist, t_hist, _ = build_history_and_cache(cfg, model, clean(), torch.Generator().manual_seed(1),
                                                  context=context)
        _, _, cache = build_history_and_cache(cfg, model, clean(), torch.Generator().manual_seed(1),
                                              context=context, skip_last=True)
        kv = history_kv(cfg, model, hist, t_hist, cache, context=context)
        x, t = clean(4), torch.rand(B, N, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            two = model(x, t, history=hist, t_history=t_hist, context=context)
            det = model(x, t, history_kv=kv, context=context)
            other = model(x, t, history_kv=kv, context=context.flip(0))
        torch.testing.assert_close(det, two, atol=2e-5, rtol=1e-5)
        assert (other - two).abs().max() > 1e-2  # the context matters


def grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("strategy,routing", [("teacher", "dense"), ("resampling", "dense"),
                                              ("diffusion_forcing", "topk"), ("resampling", "window")])
def test_no_gradient_reaches_the_history_stream(model, strategy, routing, device):
    """Detached grads equal those of the two-stream pass with the history stream's keys/values
    detached (the naive reference), and differ from the two-stream grads: the history stream
    would have contributed. The losses are equal too (on CUDA: the detached path's check)."""
    model.to(device)
    attention = policy(routing)
    hist, t_hist, kv, gen = history_and_kv(model, strategy, attention)
    state = gen.get_state()
    l_det, l_ref, l_two = (loss_of(model, hist, t_hist, state, attention, kv=kv),
                           loss_of(model, hist, t_hist, state, attention, reference=True),
                           loss_of(model, hist, t_hist, state, attention))
    slack = 10 if device == "cuda" else 1  # other SDPA kernels for masked and unmasked calls
    torch.testing.assert_close(l_det, l_two, atol=0, rtol=1e-5 * slack)
    g_det, g_ref, g_two = grads(model, l_det), grads(model, l_ref), grads(model, l_two)
    torch.testing.assert_close(g_det, g_ref, atol=1e-5 * slack, rtol=1e-4 * slack)
    assert (g_two - g_ref).norm() > 0.05 * g_ref.norm()


def test_detached_pass_under_activation_checkpointing(model):
    """Blocks recomputed in the backward (activation_checkpoint.apply_activation_checkpointing) re-read the
    cache: the same gradients."""
    import copy


    hist, t_hist, kv, gen = history_and_kv(model, "resampling", None)
    ckpt = activation_checkpoint.apply_activation_checkpointing(copy.deepcopy(model))
    g_plain = grads(model, loss_of(model, hist, t_hist, gen.get_state(), None, kv=kv))
    g_ckpt = grads(ckpt, loss_of(ckpt, hist, t_hist, gen.get_state(), None, kv=kv))
    torch.testing.assert_close(g_ckpt, g_plain, atol=1e-6, rtol=1e-6)


def test_no_gradient_reaches_history_inputs(model):
    """The history video itself gets no gradient in the detached pass (it does in two-stream)."""
    hist, t_hist, kv, gen = history_and_kv(model, "teacher", None)
    leaf = hist.clone().requires_grad_(True)
    kv_leaf = history_kv(HistoryConfig(strategy="teacher"), model, leaf, t_hist)
    loss_of(model, leaf, t_hist, gen.get_state(), None, kv=kv_leaf).backward()
    assert leaf.grad is None
    loss_of(model, leaf, t_hist, gen.get_state(), None).backward()
    assert leaf.grad.abs().sum() > 0


class TrunkCounter:
    """Counts the model's trunk calls and records the token count and layout of each."""

    def __init__(self, model):
        self.calls, self.real = [], model._trunk
        model._trunk = self

    def __call__(self, tokens, t, layout, *args):
        self.calls.append((tokens.shape[1], type(layout).__name__, getattr(layout, "cache", None)))
        return self.real(tokens, t, layout, *args)


def one_step_calls(tmp_path, name, strategy, history_grad, *extra):
    cfg = load_config("configs/bb_resampling.yaml", tiny(
        tmp_path / name, "stages.0.steps=0", "stages.1.steps=1", f"stages.1.history.strategy={strategy}",
        f"stages.1.history_grad={str(history_grad).lower()}", *extra))
    trainer = Trainer(cfg, progress=False)
    counter = TrunkCounter(trainer.model)
    try:
        m = trainer.train_step()
    finally:
        trainer.close()
    assert not m.get("skipped") and m["loss"] > 0
    n, steps = cfg.stages[1].clip_chunks, cfg.stages[1].history.resample_steps
    return counter.calls, n, steps, m["loss"]


def test_resampling_cache_is_reused_no_extra_history_pass(tmp_path):
    """One RF step: N * steps denoising calls + N - 1 cache writes, then ONE training call;
    detached: the same minus the last chunk's denoising (nobody's history), and the training
    call runs only the noisy tokens and reads the very cache the last resampling write filled."""
    two, n, steps, loss_two = one_step_calls(tmp_path, "two", "resampling", True)
    det, _, _, loss_det = one_step_calls(tmp_path, "det", "resampling", False)
    assert loss_det == pytest.approx(loss_two, rel=1e-5)  # same clips, noise and t in the trainer
    assert len(two) == n * steps + (n - 1) + 1
    assert len(det) == (n - 1) * steps + (n - 1) + 1  # the last chunk is nobody's history: skipped
    tpc = det[0][0]
    assert two[-1][:2] == (2 * n * tpc, "MaskedLayout")
    assert det[-1][:2] == (n * tpc, "DetachedLayout")
    assert det[-1][2] is det[-2][2]  # the cache the resampling pass wrote its last chunk into


def test_other_strategies_take_one_no_grad_history_pass(tmp_path):
    calls, n, _, loss_det = one_step_calls(tmp_path, "tf", "teacher", False)
    assert loss_det == pytest.approx(one_step_calls(tmp_path, "tf2", "teacher", True)[3], rel=1e-5)
    tpc = calls[-1][0] // n
    assert [c[:2] for c in calls] == [((n - 1) * tpc, "CacheWritingLayout"), (n * tpc, "DetachedLayout")]


def test_routed_stage_without_routed_resampling_recomputes_history(tmp_path):
    """Resampling that attended densely while the stage routes did not compute the routed
    history stream's keys: then (only then) one history pass runs."""
    routed = ["stages.1.attention.mode=topk", "stages.1.attention.topk=1"]
    same, n, steps, _ = one_step_calls(tmp_path, "same", "resampling", False, *routed)
    other, _, _, _ = one_step_calls(tmp_path, "other", "resampling", False, *routed,
                                    "stages.1.history.route_resampling=false")
    assert len(same) == (n - 1) * steps + (n - 1) + 1
    assert len(other) == len(same) + 1 and other[-2][1] == "CacheWritingLayout"


def test_train_mode_changes_nothing(model):
    """Resampling runs in eval mode, training in train mode: the model has no mode-dependent
    layer (its dropouts have p = 0, the identity), so both give the same keys, bit for bit,
    and draw no random numbers."""
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    x, t = clean(), torch.rand(B, N, generator=torch.Generator().manual_seed(2))
    rng = torch.get_rng_state()
    with torch.no_grad():
        train_out = model.train()(x, t, history=x)
        eval_out = model.eval()(x, t, history=x)
    assert torch.equal(train_out, eval_out) and torch.equal(rng, torch.get_rng_state())


def test_skip_last_leaves_the_resampling_cache_unchanged(model):
    """The detached step skips resampling the last chunk: the cache it reuses is, bit for bit,
    the cache of the full resampling pass."""
    caches = []
    for skip_last in (False, True):
        _, _, cache = build_history_and_cache(HistoryConfig(strategy="resampling"), model, clean(),
                                              torch.Generator().manual_seed(1), skip_last=skip_last)
        caches.append(cache)
    assert caches[0].num_chunks == caches[1].num_chunks == N - 1
    for a, b in zip(*(c.layers for c in caches)):
        assert torch.equal(a.chunks()[0], b.chunks()[0]) and torch.equal(a.chunks()[1], b.chunks()[1])
    one = build_history_and_cache(HistoryConfig(strategy="resampling"), model, clean()[:, :, :FPC],
                                  skip_last=True)
    assert one[0].shape[2] == 0 and one[2].num_chunks == 0


def test_misuse_names_the_problem(model):
    x, t = clean(), torch.rand(B, N)
    kv = model.new_cache(H, W)
    with pytest.raises(ValueError, match="not both"):
        model(x, t, history=x, history_kv=kv)
    with pytest.raises(ValueError, match=r">= 4 history chunks, the cache holds 0"):
        model(x, t, history_kv=kv)
    model.write_history(x[:, :, :FPC], kv)
    with pytest.raises(ValueError, match="empty cache"):
        model.write_history(x[:, :, :FPC], kv)
    kv.layers[0].evicted = 1
    with pytest.raises(ValueError, match="evicted"):
        DetachedLayout(kv)


def test_history_grad_config(tmp_path):
    for name in ("bb_teacher_detached", "bb_resampling_detached"):
        cfg = load_config(f"configs/{name}.yaml")
        assert [s.history_grad for s in cfg.stages] == [True, False]  # the warm-up is shared
        base = load_config(f"configs/{name.replace('_detached', '')}.yaml")
        assert [s.history for s in cfg.stages] == [s.history for s in base.stages]
    assert all(s.history_grad for s in load_config("configs/bb_resampling.yaml").stages)
    with pytest.raises(ConfigError, match="history_grad"):
        load_config("configs/bb_resampling.yaml", ["stages.1.history_grad=maybe"])
