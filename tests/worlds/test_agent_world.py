"""The controllable agent world: simulator, stream, actions, metrics (collapse never scores well)."""


import numpy as np
import pytest
import torch

from resforce.worlds.agent_balls.metrics import locate_agent
from resforce.config import ConfigError, load_config
from resforce.worlds.agent_balls.simulator import AgentBalls, AgentBallsConfig, AgentSimulator, simulate, to_uint8
from resforce.worlds import world_of


def world(**overrides):
    return world_of(load_config(None, ["data.kind=agent_balls", *[f"{k}={v}" for k, v in overrides.items()]]).data)


def test_stream_is_seeded_and_resumable():
    a, b = AgentBalls(AgentBallsConfig(seed=3)), AgentBalls(AgentBallsConfig(seed=3))
    va, sa = a.batch(2, 8)
    state = a.state_dict()
    vb, sb = b.batch(2, 8)
    assert torch.equal(va, vb) and np.array_equal(sa.actions, sb.actions)
    nxt = a.batch(2, 8)[0]
    b.load_state_dict(state)
    assert torch.equal(b.batch(2, 8)[0], nxt)
    assert va.shape == (2, 3, 8, 16, 16) and sa.actions.shape == (2, 8) and sa.actions.dtype == np.int64


def test_simulator_steps_reproduce_the_stream_bit_for_bit():
    cfg = AgentBallsConfig(seed=5)
    frames, states = simulate(cfg, np.random.default_rng(11), 20)
    sim = AgentSimulator(cfg)
    sim.reset(rng=np.random.default_rng(11))
    replay = [sim.frame] + [sim.step(int(a)) for a in states.actions[1:]]
    np.testing.assert_array_equal(np.stack(replay), frames)
    np.testing.assert_array_equal(sim.agent.astype(np.float32), states.agent[-1])


def test_actions_move_the_agent_and_walls_stop_it():
    sim = AgentSimulator(AgentBallsConfig(), seed=0)
    sim.agent = np.array([8.0, 8.0])
    for name, dx, dy in [("left", -1, 0), ("right", 1, 0), ("up", 0, -1), ("down", 0, 1), ("noop", 0, 0)]:
        before = sim.agent.copy()
        sim.step(name)
        np.testing.assert_allclose(sim.agent - before, [dx, dy])
    for _ in range(20):
        sim.step("left")
    assert sim.agent[0] == sim.config.agent_radius  # stopped by the wall
    frame = to_uint8(sim.frame)
    assert frame.shape == (16, 16, 3) and frame.dtype == np.uint8
    centre, found = locate_agent(sim.frame[None, :, None], sim.config)
    assert found.all() and np.allclose(centre[0, 0], sim.agent, atol=0.3)  # the edge ramp is cut by the wall


def test_a_pad_larger_than_the_game_works_extra_buttons_do_nothing():
    w = world(**{"data.agent_balls.num_actions": 18})
    space = w.action_space
    assert space.n == 18 and len(space.names) == 18 and space.names[:5] == ["noop", "left", "right", "up", "down"]
    _, states = w.stream(0).batch(8, 40)
    assert states.actions.max() >= 5  # the random policy presses the extra buttons too
    sim = w.simulator(1)
    before = sim.agent.copy()
    sim.step(17)
    np.testing.assert_array_equal(sim.agent, before)
    with pytest.raises(ValueError, match="outside the discrete action space"):
        sim.step(18)


def test_bad_config_names_the_field():
    with pytest.raises(ConfigError, match="num_actions"):
        load_config(None, ["data.kind=agent_balls", "data.agent_balls.num_actions=3"])


def test_ground_truth_follows_chance_does_not():
    w = world()
    v, st = w.clips(8, 48, seed=0)
    m = w.score(v.numpy(), st)
    assert np.nanmean(m["follow"]) == 1.0 and m["agent_found"].min() == 1.0
    assert np.nanmean(m["follow_chance"]) < 0.5
    assert np.nanmean(m["lost"]) < 0.1


def test_empty_frozen_or_ignoring_videos_never_score_well():
    w = world()
    v, st = w.clips(8, 48, seed=1)
    gt = w.score(v.numpy(), st)
    empty = w.score(-np.ones_like(v.numpy()), st)
    assert np.nanmean(empty["follow"]) == 0.0 and np.nanmean(empty["lost"]) >= 2  # balls + agent lost
    frozen = v.numpy().copy()
    frozen[:, :, 1:] = frozen[:, :, :1]  # the first frame forever: nothing moves
    fr = w.score(frozen, st)
    assert np.nanmean(fr["follow"]) < np.nanmean(gt["follow"]) - 0.5
    # a world that moves but ignores the actions: another clip's frames under these actions
    other, _ = w.clips(8, 48, seed=2)
    ig = w.score(other.numpy(), st)
    assert abs(np.nanmean(ig["follow"]) - np.nanmean(ig["follow_chance"])) < 0.15
    assert np.nanmean(ig["follow"]) < 0.5
