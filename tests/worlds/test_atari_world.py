"""The atari world (data.kind=atari): a seeded, exactly resumable stream of game clips whose
action f produced frame f; evaluation clips; a step-by-step simulator for play; config errors
that name the key."""

import numpy as np
import pytest
import torch

pytest.importorskip("ale_py", reason="the atari world needs ale-py: pip install 'resforce[atari]'")

from resforce.config import ConfigError, DataConfig, load_config  # noqa: E402
from resforce.training.statefile import load_state, save_state  # noqa: E402
from resforce.worlds import world_of  # noqa: E402
from resforce.worlds.atari.world import AtariConfig, AtariSimulator, AtariStream, episode  # noqa: E402

CFG = AtariConfig(game="pong", episode_frames=60)


def test_stream_is_pure_in_its_seed():
    a, b, c = AtariStream(CFG, 6), AtariStream(CFG, 6), AtariStream(AtariConfig(game="pong", episode_frames=60, seed=1), 6)
    va, sa = a.batch(3)
    vb, sb = b.batch(3)
    assert va.shape == (3, 3, 6, 32, 32) and va.dtype == torch.float32 and -1 <= va.min() and va.max() <= 1
    assert torch.equal(va, vb) and np.array_equal(sa.actions, sb.actions) and np.array_equal(sa.ram, sb.ram)
    assert sa.actions.dtype == np.int64 and sa.actions.shape == (3, 6) and (sa.actions >= 0).all()
    assert sa.objects["ball"].shape == (3, 6, 2)
    assert not torch.equal(va, c.batch(3)[0])


def test_stream_resumes_exactly_through_a_checkpoint_state(tmp_path):
    a = AtariStream(CFG, 5)
    a.batch(3)
    save_state(tmp_path, {"data": a.state_dict()})  # JSON + tensors: nothing pickled
    expected_v, expected_s = a.batch(4, 7)
    b = AtariStream(CFG, 5)
    b.load_state_dict(load_state(tmp_path)["data"])
    got_v, got_s = b.batch(4, 7)
    assert torch.equal(expected_v, got_v) and np.array_equal(expected_s.actions, got_s.actions)


def test_action_f_produced_frame_f():
    """Replaying a clip's actions reproduces it: in episode() (after the same warm-up) and,
    from the episode's start, in the play simulator, one step per frame."""
    frames, states = episode(CFG, seed=3, frames=20, warmup=7)
    replay, _ = episode(CFG, seed=3, frames=20, warmup=7, actions=states.actions)
    np.testing.assert_array_equal(frames, replay)
    start, start_states = episode(CFG, seed=3, frames=12)
    sim = AtariSimulator(CFG, seed=3)
    np.testing.assert_array_equal(sim.frame, start[0])
    for f in range(1, 12):
        np.testing.assert_array_equal(sim.step(int(start_states.actions[f])), start[f])
    assert (np.abs(np.diff(start, axis=0)).sum(axis=(1, 2, 3)) > 0).any()  # the game moves


def test_world_clips_simulator_and_play_keys():
    world = world_of(DataConfig(kind="atari", atari=AtariConfig(game="pong", resolution=64, episode_frames=40)))
    videos, states = world.clips(2, 9, seed=0)
    assert videos.shape == (2, 3, 9, 64, 64) and states.actions.shape == (2, 9)
    again, _ = world.clips(2, 9, seed=0)
    assert torch.equal(videos, again)
    space = world.action_space
    assert space.names == ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
    assert space.keys["ArrowUp"] == "RIGHT" and space.keys[" "] == "FIRE"  # Pong's paddle goes up on RIGHT
    sim = world.simulator(0)
    assert sim.step("RIGHT").shape == (3, 64, 64) and sim.action_space.n == 6
    breakout = world_of(DataConfig(kind="atari", atari=AtariConfig(game="breakout"))).action_space
    assert breakout.names == ["NOOP", "FIRE", "RIGHT", "LEFT"] and breakout.keys["ArrowLeft"] == "LEFT"
    assert world_of(DataConfig(kind="atari", atari=AtariConfig(action_set="full"))).action_space.n == 18


@pytest.mark.parametrize("override, match", [
    ("data.atari.game=pongg", "data.atari.game: no Atari ROM 'pongg'"),
    ("data.atari.resolution=48", "data.atari.resolution must be 32 or 64"),
    ("data.atari.action_set=all", "data.atari.action_set must be 'minimal' or 'full'"),
    ("model.action_dim=18", "model.action_dim=6"),
])
def test_config_errors_name_the_key(override, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        load_config("configs/atari_pong_teacher.yaml", [override])


def test_grayscale_fills_three_channels():
    v, _ = AtariStream(AtariConfig(game="breakout", grayscale=True, episode_frames=30), 3).batch(1)
    assert torch.equal(v[:, 0], v[:, 1]) and torch.equal(v[:, 1], v[:, 2])


def test_evaluation_clips_longer_than_the_games_episodes_are_an_error(monkeypatch):
    """Breakout's episodes under the sticky random policy end after a few hundred frames: asking
    for longer evaluation clips is an error naming the length and the longest episode played,
    after a bounded number of episodes (it used to retry seeds forever)."""
    import resforce.worlds.atari.world as atari_world

    monkeypatch.setattr(atari_world, "EPISODE_TRIES", 2)
    world = world_of(DataConfig(kind="atari", atari=AtariConfig(game="breakout", episode_frames=3000)))
    with pytest.raises(ValueError, match=r"1 clips of 2000 frames: 0 of the 2 breakout episodes .* held that long "
                                         r"\(the longest played \d+ frames .*--chunks"):
        world.clips(1, 2000, seed=0)
    monkeypatch.undo()
    videos, _ = world.clips(1, 9, seed=0)  # short clips still come (after a few episodes that end in their warm-up)
    assert videos.shape[2] == 9
