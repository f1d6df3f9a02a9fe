"""Object ground truth of Atari games, decoded from the console's 128 bytes of RAM.

The RAM addresses are those of the AtariARI annotations (Anand et al., "Unsupervised State
Representation Learning in Atari", NeurIPS 2019; atariari/benchmark/ram_annotations.py of
mila-iqia/atari-representation-learning):

  pong:     ball_x = RAM[49], ball_y = RAM[54], player_y = RAM[51] (the right, green paddle,
            the one the actions move), enemy_y = RAM[50] (the left, orange paddle); the paddles'
            x (RAM[46], RAM[45]) never change.
  breakout: ball_x = RAM[99], ball_y = RAM[101], player_x = RAM[72] (the paddle),
            blocks_hit_count = RAM[77] (bricks broken in the current wall of 6 x 18 = 108).

AtariARI gives addresses only; the offsets from RAM value to screen pixel below were measured
against ALE's rendered 210x160 screens (the centroid of each object's colour) and are checked
by tests/worlds/test_atari_ram.py: the ball within 1.5 screen pixels, a fully visible paddle within 1.
Positions are (x, y) = (column, row) of the object's centre in screen pixel indices; `to_world`
maps them onto a world frame of R x R pixels. The RAM keeps a position while the object is
hidden (the Pong ball between points), so a decoded ball is not a visible one.
"""

from __future__ import annotations

import numpy as np

from resforce.worlds.atari.emulator import SCREEN

BREAKOUT_BRICKS = 108
"""Bricks of a full Breakout wall (6 rows of 18)."""

PONG_PLAYER_X, PONG_ENEMY_X = 141.5, 17.5
"""Screen columns of the centres of Pong's right (player) and left (enemy) paddles."""
BREAKOUT_PADDLE_Y = 190.5
"""Screen row of the centre of Breakout's paddle (rows 189-192)."""


def pong(ram: np.ndarray) -> dict[str, np.ndarray]:
    """Pong objects of RAM (..., 128): ball, player and enemy paddle centres (..., 2) in screen
    pixels (x, y). Offsets: ball (RAM[49] - 48.5, RAM[54] - 12.5); player paddle y RAM[51] - 6
    (the drawn paddle alternates between -6.5 and -5.5); enemy paddle y RAM[50] - 7.5."""
    r = np.asarray(ram).astype(np.float32)
    ones = np.ones_like(r[..., 0])
    return {
        "ball": np.stack([r[..., 49] - 48.5, r[..., 54] - 12.5], -1),
        "player": np.stack([PONG_PLAYER_X * ones, r[..., 51] - 6.0], -1),
        "enemy": np.stack([PONG_ENEMY_X * ones, r[..., 50] - 7.5], -1),
    }


def breakout(ram: np.ndarray) -> dict[str, np.ndarray]:
    """Breakout objects of RAM (..., 128): ball and paddle centres (..., 2) in screen pixels
    (ball (RAM[99] - 48.5, RAM[101] + 10.5); paddle (RAM[72] - 39.5, 190.5), the centre of its
    16 columns starting at RAM[72] - 47) and the bricks left (...,) of the current wall,
    108 - RAM[77]."""
    r = np.asarray(ram).astype(np.float32)
    return {
        "ball": np.stack([r[..., 99] - 48.5, r[..., 101] + 10.5], -1),
        "player": np.stack([r[..., 72] - 39.5, BREAKOUT_PADDLE_Y * np.ones_like(r[..., 0])], -1),
        "bricks": BREAKOUT_BRICKS - r[..., 77],
    }


DECODERS = {"pong": pong, "breakout": breakout}
"""Games whose objects are decoded from RAM."""


def decode(game: str, ram: np.ndarray) -> dict[str, np.ndarray] | None:
    """The game's objects (screen pixels), or None for a game without a decoder."""
    fn = DECODERS.get(game)
    return fn(ram) if fn is not None else None


def to_world(xy: np.ndarray, resolution: int) -> np.ndarray:
    """Screen (x, y) pixel indices (..., 2) -> pixel indices of an R x R world frame (the area
    resize maps the screen's [0, 160) x [0, 210) onto [0, R) x [0, R))."""
    xy = np.asarray(xy, dtype=np.float32)
    scale = np.array([resolution / SCREEN[1], resolution / SCREEN[0]], dtype=np.float32)
    return (xy + 0.5) * scale - 0.5
