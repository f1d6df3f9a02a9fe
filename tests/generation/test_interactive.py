"""InteractiveSession: a played session equals a rollout of the same actions, rolls its cache
at the training context (constant memory), and takes names, indices and bad input as it should."""

import dataclasses

import numpy as np
import pytest
import torch

from resforce.config import load_config
from resforce.generation.interactive import InteractiveSession, frames_to_uint8
from resforce.model.dit import CausalVideoDiT
from resforce.rollout import SampleConfig, rollout
from resforce.training.loop import train
from tiny import tiny

AGENT = ["data.kind=agent_balls", "data.agent_balls.balls.resolution=8", "data.agent_balls.balls.radius_min=1.5",
         "data.agent_balls.balls.radius_max=2.0", "data.agent_balls.agent_radius=1.5",
         "model.action_kind=discrete", "model.action_dim=5", "stages.0.clip_chunks=3"]


def session(randomize, run_dir="unused", **kw):
    cfg = load_config(None, tiny(run_dir, *AGENT))
    model = randomize(CausalVideoDiT(cfg.model))
    return InteractiveSession(model, cfg, **kw), model


def test_playing_equals_a_rollout_of_the_same_actions(randomize):
    s, model = session(randomize, steps=3, seed=7)
    first = s.reset(seed=7)
    names = ["left", "left", "up", "noop", "down", "right", "right", "up"]
    frames = [s.step(a) for a in names]
    sim = s.world.simulator(7)
    prefix = torch.from_numpy(sim.frame)[None, :, None]
    acts = torch.tensor([[0] + [s.action_space.index(a) for a in names]])
    ref = rollout(model, 1, 8, 8, SampleConfig(chunks=len(names), steps=3, shift=s.shift, seed=7, context=3),
                  prefix=prefix, actions=acts)
    expected = frames_to_uint8(ref[0])
    assert np.array_equal(first, expected[0])
    got = np.stack(frames)
    assert np.abs(got.astype(int) - expected[1:].astype(int)).max() <= 1  # uint8 rounding of equal floats
    assert s.frame_index == 1 + len(names) and s.last_step_seconds > 0
    assert s.timing.denoise > 0 and s.timing.commit > 0


def test_memory_is_constant_and_actions_matter(randomize):
    s, _ = session(randomize, steps=2)
    for _ in range(6):
        s.step("right")
    size = [layer.k.shape for layer in s.cache.layers]
    assert s.cache.num_chunks == 2  # context 3: two history chunks kept
    for _ in range(20):
        s.step(1)
    assert [layer.k.shape for layer in s.cache.layers] == size
    s.reset(seed=3)
    left = [s.step("left") for _ in range(3)]
    s.reset(seed=3)
    right = [s.step("right") for _ in range(3)]
    assert not np.array_equal(np.stack(left), np.stack(right))
    s.reset(seed=3)
    assert np.array_equal(np.stack([s.step("left") for _ in range(3)]), np.stack(left))  # seeded


def test_bad_actions_and_prefix_are_named(randomize):
    s, _ = session(randomize)
    assert s.action_space.names == ["noop", "left", "right", "up", "down"]
    assert s.action_space.keys["ArrowLeft"] == "left"
    with pytest.raises(ValueError, match="unknown action 'jump'"):
        s.step("jump")
    with pytest.raises(ValueError, match="outside the discrete action space"):
        s.step(5)
    with pytest.raises(ValueError, match="prefix must be"):
        s.reset(prefix=np.zeros((1, 4, 4, 3), dtype=np.uint8))
    given = np.full((1, 8, 8, 3), 10, dtype=np.uint8)
    assert np.array_equal(s.reset(prefix=given), given[0])
    s.step(None)  # the null action: the model's own guess


def test_from_run_and_guidance(tmp_path):
    run = train(load_config(None, tiny(tmp_path / "run", *AGENT, "stages.0.steps=2")), progress=False)
    s = InteractiveSession.from_run(run, steps=2)
    assert s.step("up").shape == (8, 8, 3)
    g = InteractiveSession.from_run(run, steps=2, cfg_scale=2.0)
    assert g.step("up").dtype == np.uint8 and g.cache.layers[0].k.shape[0] == 2  # both branches, one batch


@pytest.mark.parametrize("attention", [["stages.0.attention.mode=topk", "stages.0.attention.topk=1"],
                                       ["stages.0.attention.mode=window", "stages.0.attention.window=1",
                                        "stages.0.attention.sink=1"]], ids=["routed", "window_with_sink"])
def test_playing_honours_the_runs_trained_attention(randomize, attention):
    """A routed or windowed run plays as `generate` rolls it out (its last stage's attention,
    its sink), not densely: the frames equal a rollout under the run's rolling session."""
    from resforce.generation.session import rolling_session
    from resforce.model.attention.policy import AttentionPolicy

    cfg = load_config(None, tiny("unused", *AGENT, "stages.0.clip_chunks=4", *attention))
    model = randomize(CausalVideoDiT(cfg.model))
    s = InteractiveSession(model, cfg, steps=2, seed=5)
    first = s.reset(seed=5)
    names = ["left", "up", "up", "right", "down", "noop", "left"]
    frames = np.stack([s.step(a) for a in names])
    session = rolling_session(cfg)
    assert session.attention.mode == cfg.stages[0].attention.mode and s.session == session
    sample = SampleConfig(chunks=len(names), steps=2, shift=s.shift, seed=5, context=4, sink=session.sink_chunks)
    prefix = torch.from_numpy(s.world.simulator(5).frame)[None, :, None]
    acts = torch.tensor([[0] + [s.action_space.index(a) for a in names]])
    ref = frames_to_uint8(rollout(model, 1, 8, 8, sample, prefix=prefix, actions=acts,
                                  attention=AttentionPolicy(session.attention))[0])
    dense = frames_to_uint8(rollout(model, 1, 8, 8, dataclasses.replace(sample, sink=0), prefix=prefix,
                                    actions=acts)[0])
    assert np.array_equal(first, ref[0])
    assert np.abs(frames.astype(int) - ref[1:].astype(int)).max() <= 1
    assert np.abs(frames.astype(int) - dense[1:].astype(int)).max() > 1  # the attention matters here
