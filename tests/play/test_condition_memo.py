"""The conditioning memo changes nothing a played model computes, and skips repeated work."""

import numpy as np
import pytest

from resforce.play.condition_memo import memoize_conditioning
from resforce.config import load_config
from resforce.generation.interactive import InteractiveSession
from resforce.model.dit import CausalVideoDiT
from tiny import tiny

AGENT = ["data.kind=agent_balls", "data.agent_balls.balls.resolution=8", "data.agent_balls.balls.radius_min=1.5",
         "data.agent_balls.balls.radius_max=2.0", "data.agent_balls.agent_radius=1.5",
         "model.action_kind=discrete", "model.action_dim=5", "stages.0.clip_chunks=3"]
ACTIONS = ["left", "left", "up", "noop", "down", "right", "right", "up", "left", "noop", "down", "down"]


def play(model, cfg):
    s = InteractiveSession(model, cfg, steps=3, seed=5)
    first = s.reset(5)
    return np.stack([first] + [s.step(a) for a in ACTIONS])


def test_memo_plays_the_same_frames_and_skips_repeats(randomize):
    cfg = load_config(None, tiny("unused", *AGENT))
    model = randomize(CausalVideoDiT(cfg.model))
    plain = play(model, cfg)
    memo = memoize_conditioning(model)
    memoized = play(model, cfg)
    assert np.array_equal(memoized, plain)  # bit for bit: the stored outputs are the embedder's own
    calls = 2 + len(ACTIONS) * (3 + 1)  # two resets write the first frame, then 3 Euler steps + 1 write a frame
    assert memo.hits + memo.misses == calls
    # distinct inputs: 3 Euler times + the write at t = 0, for each of the 5 actions (the first frame: noop)
    assert memo.misses <= 4 * 5 and memo.hits >= calls - 20
    memo.remove()
    assert "forward" not in model.condition_embedder.__dict__
    assert np.array_equal(play(model, cfg), plain)


def test_memo_refuses_training_mode(randomize):
    cfg = load_config(None, tiny("unused", *AGENT))
    model = CausalVideoDiT(cfg.model).train()
    with pytest.raises(ValueError, match="eval mode"):
        memoize_conditioning(model)
