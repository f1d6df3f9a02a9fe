"""The pixel detector of Atari objects (worlds/atari/objects.py) against the RAM's ground truth
(worlds/atari/ram.py) on real frames of the world's stream at 32x32 and 64x64: an object the
RAM shows is found on at least 95 % of frames and one it hides on at most 5 %; a found ball is
within 1.5 px of the RAM's position, a paddle within 1 px (world pixels); Breakout's brick
count is the RAM's. A blank or noise frame has no object and no wall."""

import numpy as np
import pytest

pytest.importorskip("ale_py", reason="the atari world needs ale-py: pip install 'resforce[atari]'")

from resforce.worlds.atari import objects  # noqa: E402
from resforce.worlds.atari.world import AtariConfig, AtariStream  # noqa: E402

FOUND, FALSE_FOUND = 0.95, 0.05
"""Fraction of frames an object the RAM shows is found on (at least) / one it hides (at most)."""
TOLERANCE = {"ball": 1.5, "player": 1.0, "enemy": 1.0}
"""World pixels between the found and the RAM's centre."""


def stream_frames(game, resolution, clips=2, frames=200, seed=0):
    """Clips of the world's training stream: (videos (B, 3, F, R, R), AtariStates)."""
    cfg = AtariConfig(game=game, resolution=resolution, episode_frames=600, seed=seed)
    videos, states = AtariStream(cfg, frames).batch(clips)
    return videos.numpy(), states


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("game", ["pong", "breakout"])
def test_detector_agrees_with_the_ram_on_the_stream(game, resolution):
    videos, states = stream_frames(game, resolution)
    found = objects.detect(videos, game)
    ram = objects.shown_in_ram(game, states.objects, resolution)
    assert set(found.found) == set(ram.found) == set(TOLERANCE) - ({"enemy"} if game == "breakout" else set())
    for name, shown in ram.found.items():
        got = found.found[name]
        assert shown.sum() >= 100, (name, shown.sum())  # the clips show the object often enough to judge
        assert got[shown].mean() >= FOUND, f"{name}: found on {got[shown].mean():.3f} of the frames the RAM shows it"
        if (~shown).sum() >= 10:
            assert got[~shown].mean() <= FALSE_FOUND, f"{name}: found on {got[~shown].mean():.3f} of hidden frames"
        error = np.linalg.norm(found.position[name] - ram.position[name], axis=-1)[shown & got]
        assert error.max() <= TOLERANCE[name], f"{name}: {error.max():.2f} px from the RAM's position"
    if game == "breakout":
        assert (ram.bricks < objects.BREAKOUT.bricks.cols * len(objects.BREAKOUT.bricks.colours)).any()
        agree = (np.abs(found.bricks - ram.bricks) < 0.5).mean()
        assert agree >= 0.99, f"bricks counted as the RAM's on {agree:.3f} of frames"
    else:
        assert found.bricks is None


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("game", ["pong", "breakout"])
def test_blank_and_noise_frames_have_no_objects(game, resolution):
    rng = np.random.default_rng(0)
    shape = (1, 3, 4, resolution, resolution)
    frames = {"black": -np.ones(shape), "grey": np.zeros(shape), "white": np.ones(shape),
              "noise": rng.uniform(-1, 1, shape), "grey noise": rng.normal(0, 0.3, shape).clip(-1, 1)}
    for what, video in frames.items():
        found = objects.detect(video, game)
        assert not any(f.any() for f in found.found.values()), (what, {k: v.tolist() for k, v in found.found.items()})
        assert all(np.isnan(p).all() for p in found.position.values())
        if game == "breakout":
            assert (found.bricks == 0).all(), (what, found.bricks)


def test_detector_refuses_frames_it_cannot_read():
    with pytest.raises(ValueError, match="needs RGB square frames"):
        objects.detect(np.zeros((1, 1, 2, 32, 32)), "pong")
