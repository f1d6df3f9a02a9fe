"""Object ground truth of Atari games from RAM (worlds/atari/ram.py) against the pixels ALE
renders: over a random-policy episode, the decoded positions match the centroid of each
object's colour in the full 210x160 screen (ball within 1.5 px, a fully visible paddle within
1 px) and Breakout's decoded brick count matches the bricks drawn."""

import numpy as np
import pytest

pytest.importorskip("ale_py", reason="the atari world needs ale-py: pip install 'resforce[atari]'")

from resforce.worlds.atari import ram  # noqa: E402
from resforce.worlds.atari.emulator import Emulator  # noqa: E402

BALL_TOL, PADDLE_TOL = 1.5, 1.0
"""Screen pixels between a decoded centre and the centroid of the drawn object."""


def frames(game, steps, seed=0, fire=0.0):
    """(screen, RAM) after every emulator frame of a random policy (frame_skip 1)."""
    em = Emulator(game, frame_skip=1, noop_max=0)
    rng = np.random.default_rng(seed)
    em.reset()
    out = []
    for _ in range(steps):
        a = 1 if rng.random() < fire else int(rng.integers(len(em.actions)))
        em.act(a)
        if em.game_over:
            em.reset()
        out.append((em.screen(), em.ram))
    return out


def centroid(screen, color, rows, cols=(0, 160)):
    """(x, y, pixel count) of the pixels of `color` inside the rows x cols box."""
    box = screen[rows[0]:rows[1], cols[0]:cols[1]]
    y, x = np.nonzero((box == np.array(color)).all(-1))
    return (x.mean() + cols[0], y.mean() + rows[0], len(x)) if len(x) else None


def check(found, decoded, size, tol, what, minimum):
    """Compare the decoded centre with the drawn one on frames where the object is fully drawn."""
    errors = [np.abs(np.array(c[:2]) - d).max() for c, d in zip(found, decoded) if c is not None and c[2] == size]
    assert len(errors) >= minimum, f"{what}: only {len(errors)} frames with the object fully visible"
    assert max(errors) <= tol, f"{what}: decoded position off by {max(errors):.2f} px (tolerance {tol})"


def test_pong_ball_and_paddles_match_the_screen():
    run = frames("pong", 2500)
    objs = ram.pong(np.stack([r for _, r in run]))
    field = (34, 194)  # below the score
    check([centroid(s, (236, 236, 236), field) for s, _ in run], objs["ball"], 8, BALL_TOL, "ball", 1000)
    check([centroid(s, (92, 186, 92), field, (130, 160)) for s, _ in run], objs["player"], 64, PADDLE_TOL,
          "player paddle", 1000)
    check([centroid(s, (213, 130, 74), field, (0, 30)) for s, _ in run], objs["enemy"], 64, PADDLE_TOL,
          "enemy paddle", 1000)


def test_breakout_ball_paddle_and_bricks_match_the_screen():
    run = frames("breakout", 4000, fire=0.2)
    objs = ram.breakout(np.stack([r for _, r in run]))
    red = (200, 72, 72)  # the ball, the paddle and the top row of bricks share it
    check([centroid(s, red, (94, 188), (8, 152)) for s, _ in run], objs["ball"], 8, BALL_TOL, "ball", 300)
    check([centroid(s, red, (189, 193), (8, 152)) for s, _ in run], objs["player"], 64, PADDLE_TOL, "paddle", 1000)
    # a brick is 8x6 px: 6 rows of 18 from row 57, column 8; sample each brick's centre
    drawn = np.array([(s[60:93:6, 12:152:8] != 0).any(-1).sum() for s, _ in run])
    agree = (drawn == objs["bricks"]).mean()
    assert agree > 0.99 and (drawn < ram.BREAKOUT_BRICKS).any(), (agree, drawn.min())


def test_world_coordinates_map_the_screen_onto_the_frame():
    corners = np.array([[-0.5, -0.5], [159.5, 209.5]])
    for r in (32, 64):
        np.testing.assert_allclose(ram.to_world(corners, r), [[-0.5, -0.5], [r - 0.5, r - 0.5]], atol=1e-5)
    assert ram.decode("pong", np.zeros(128, np.uint8))["ball"].shape == (2,)
    assert ram.decode("seaquest", np.zeros(128, np.uint8)) is None
