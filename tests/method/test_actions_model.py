"""Action conditioning proofs: a chunk's output depends on its own and earlier actions, never
later ones; the two-stream training pass equals the KV-cached rollout with actions; rollouts
(cached, rolling, guided) and every training path carry the actions."""

import pytest
import torch

from resforce.actions import NULL_ACTION, drop_actions
from resforce.training.detached_history import history_kv
from resforce.flow import TimestepSampler
from resforce.history import HistoryConfig, build_history_and_cache
from resforce.loss import flow_matching_loss
from resforce.model import build_model
from resforce.rollout import SampleConfig, reference_rollout, rollout

B, N, FPC, H, W, A, D = 2, 4, 2, 8, 8, 6, 3


def make(randomize, kind="discrete", fpc=FPC):
    width = A if kind == "discrete" else D
    return randomize(build_model(preset="test", frames_per_chunk=fpc, patch_size=(1, 4, 4),
                                 action_kind=kind, action_dim=width))


def actions(kind, n=N, fpc=FPC, seed=0, b=B):
    g = torch.Generator().manual_seed(seed)
    if kind == "discrete":
        return torch.randint(0, A, (b, n * fpc), generator=g)
    return torch.randn(b, n * fpc, D, generator=g)


def changed(a, frame, kind):
    a = a.clone()
    if kind == "discrete":
        a[:, frame] = (a[:, frame] + 1) % A
    else:
        a[:, frame] += 1.0
    return a


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 3, N * FPC, H, W, generator=g), torch.randn(B, 3, N * FPC, H, W, generator=g),
            torch.rand(B, N, generator=g))


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_two_stream_equals_kv_cache_with_actions(randomize, kind):
    model = make(randomize, kind)
    hist, noisy, t = data()
    a = actions(kind)
    with torch.no_grad():
        parallel = model(noisy, t, history=hist, actions=a)
        cache, outs = model.new_cache(H, W), []
        for i in range(N):
            sl = slice(i * FPC, (i + 1) * FPC)
            outs.append(model.forward_chunk(noisy[:, :, sl], t[:, i:i + 1], cache, actions=a[:, sl]))
            model.write_cache(hist[:, :, sl], cache, actions=a[:, sl])
    assert (parallel - torch.cat(outs, dim=2)).abs().max().item() <= 1e-5
    assert (parallel - model(noisy, t, history=hist)).abs().max().item() > 1e-3  # the actions matter


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_a_chunk_depends_on_its_own_and_earlier_actions_never_later(randomize, kind):
    model = make(randomize, kind)
    hist, noisy, t = data()
    a = actions(kind)
    with torch.no_grad():
        base = model(noisy, t, history=hist, actions=a)
        single = model(noisy, t, actions=a)  # block-causal single stream
        for k in range(N):
            for frame in (k * FPC, k * FPC + 1):  # either frame of chunk k
                a2 = changed(a, frame, kind)
                for out, ref in ((model(noisy, t, history=hist, actions=a2), base), (model(noisy, t, actions=a2), single)):
                    assert torch.equal(out[:, :, :k * FPC], ref[:, :, :k * FPC]), (k, frame)  # earlier: identical
                    assert not torch.allclose(out[:, :, k * FPC:(k + 1) * FPC], ref[:, :, k * FPC:(k + 1) * FPC])
                    if k < N - 1:  # through the history stream, later chunks see it
                        later = slice((k + 1) * FPC, None)
                        assert not torch.allclose(out[:, :, later], ref[:, :, later])


@pytest.mark.parametrize("context", [None, 3])
def test_cached_rollout_equals_uncached_with_actions(randomize, context):
    model = make(randomize, fpc=1)
    cfg = SampleConfig(chunks=6, steps=2, shift=3.0, seed=4, context=context)
    prefix = torch.randn(B, 3, 2, H, W)
    a = actions("discrete", n=8, fpc=1)
    fast = rollout(model, B, H, W, cfg, prefix=prefix, actions=a)
    slow = reference_rollout(model, B, H, W, cfg, prefix=prefix, actions=a)
    assert (fast - slow).abs().max().item() <= 1e-4
    # a later action changes only the frames from it on
    a2 = changed(a, 5, "discrete")
    other = rollout(model, B, H, W, cfg, prefix=prefix, actions=a2)
    assert torch.equal(other[:, :, :5], fast[:, :, :5]) and not torch.allclose(other[:, :, 5:], fast[:, :, 5:])


def test_null_actions_none_and_bad_input(randomize):
    model = make(randomize, fpc=1)
    cfg = SampleConfig(chunks=2, steps=2, seed=1)
    null = torch.full((1, 2), NULL_ACTION)
    assert torch.equal(rollout(model, 1, H, W, cfg), rollout(model, 1, H, W, cfg, actions=null))
    with pytest.raises(ValueError, match=r"rollout actions .* must be \(1, 2\) integers"):
        rollout(model, 1, H, W, cfg, actions=torch.zeros(1, 3, dtype=torch.long))
    plain = randomize(build_model(preset="test", frames_per_chunk=1, patch_size=(1, 4, 4)))
    with pytest.raises(ValueError, match="no action conditioning"):
        rollout(plain, 1, H, W, cfg, actions=null)
    assert not any("action" in k for k in plain.state_dict())  # off by default: Wan's layout


def test_guidance_over_actions(randomize):
    model = make(randomize, fpc=1)
    a = actions("discrete", n=3, fpc=1, b=1)
    plain = rollout(model, 1, H, W, SampleConfig(chunks=3, steps=2, seed=2), actions=a)
    guided = rollout(model, 1, H, W, SampleConfig(chunks=3, steps=2, seed=2, cfg_scale=3.0), actions=a)
    assert not torch.allclose(plain, guided)
    # scale 0: the action-free branch alone, which is the null-action rollout
    free = rollout(model, 1, H, W, SampleConfig(chunks=3, steps=2, seed=2, cfg_scale=0.0), actions=a)
    assert (free - rollout(model, 1, H, W, SampleConfig(chunks=3, steps=2, seed=2))).abs().max() <= 1e-5


def test_action_dropout_is_per_clip():
    a = torch.arange(40).reshape(8, 5) % 5
    assert drop_actions(a, 0.0) is a
    d = drop_actions(a, 0.5, torch.Generator().manual_seed(0))
    dropped = (d == NULL_ACTION).all(1)
    assert dropped.any() and not dropped.all()
    assert torch.equal(d[~dropped], a[~dropped])
    c = torch.randn(8, 5, 2)
    dc = drop_actions(c, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(dc[dropped], torch.zeros_like(dc[dropped])) and torch.equal(dc[~dropped], c[~dropped])


@pytest.mark.parametrize("strategy", ["teacher", "parallel_resampling", "resampling"])
def test_training_history_and_loss_carry_actions(randomize, strategy):
    """Self-resampling makes history chunk k with actions <= k; the detached-history loss
    equals the two-stream loss with actions; the loss depends on the actions."""
    model = make(randomize).train()
    clean = data()[0]
    a = actions("discrete")
    cfg = HistoryConfig(strategy=strategy)

    def history(acts, skip_last=False):
        return build_history_and_cache(cfg, model, clean, torch.Generator().manual_seed(3), actions=acts,
                                       skip_last=skip_last)

    hist, t_hist, _ = history(a)
    if strategy != "teacher":
        hist2 = history(changed(a, 2 * FPC, "discrete"))[0]
        assert torch.equal(hist2[:, :, :2 * FPC], hist[:, :, :2 * FPC])
        assert not torch.allclose(hist2[:, :, 2 * FPC:], hist[:, :, 2 * FPC:])
    hist_det, t_det, cache = history(a, skip_last=True)
    kv = history_kv(cfg, model, hist_det, t_det, cache, actions=a)

    def loss(acts, **kw):
        return flow_matching_loss(model, clean, hist, t_hist, TimestepSampler(), torch.Generator().manual_seed(5),
                                  actions=acts, **kw)

    with torch.no_grad():
        two_stream, detached = loss(a), loss(a, history_kv=kv)
        assert abs(two_stream.item() - detached.item()) <= 1e-5 * max(1.0, two_stream.item())
        assert abs(loss(changed(a, 0, "discrete")).item() - two_stream.item()) > 1e-6


def test_wan_weights_start_an_action_model_unchanged(randomize):
    """An action model from Wan's weights (which have no action embedder) gets zero action
    weights: whatever the actions, it computes what the Wan model computes."""
    from resforce.wan.transformer import convert_state_dict

    wan = randomize(build_model(preset="test", frames_per_chunk=FPC, patch_size=(1, 4, 4)))
    action_model = build_model(preset="test", frames_per_chunk=FPC, patch_size=(1, 4, 4), action_kind="discrete",
                               action_dim=A)
    action_model.load_state_dict(convert_state_dict(wan.state_dict(), action_model.config))
    hist, noisy, t = data()
    with torch.no_grad():
        assert torch.equal(action_model(noisy, t, history=hist, actions=actions("discrete")),
                           wan(noisy, t, history=hist))


def test_config_must_match_the_worlds_action_space():
    from resforce.config import ConfigError, load_config

    agent = ["data.kind=agent_balls", "data.agent_balls.num_actions=7"]
    with pytest.raises(ConfigError, match="set model.action_kind=discrete model.action_dim=7"):
        load_config(None, agent + ["model.action_kind=discrete", "model.action_dim=5"])
    with pytest.raises(ConfigError, match="gives actions of kind 'none'"):
        load_config(None, ["model.action_kind=discrete", "model.action_dim=5"])  # bouncing balls: no actions
    assert load_config(None, agent).model.action_kind == "none"  # a plain video model ignores the actions
