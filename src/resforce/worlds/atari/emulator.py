"""An Atari 2600 game through the Arcade Learning Environment (ale_py.ALEInterface, no gymnasium).

`Emulator` loads a ROM shipped with ale-py (nothing downloads), steps it one agent action at a
time (`frame_skip` emulator frames per action, the screen of the last one) and gives the
screen resized to the world's resolution. The emulator is deterministic: ALE's own sticky
actions are off (`repeat_action_probability` 0), so the same actions from the same state give
the same frames; randomness (noop starts, the random policy) comes from the caller's seeded
numpy generator. Its state (`save` / `load`) is ALE's own serialization, held in a uint8 array,
so a training stream resumes from a checkpoint without pickling.

Resizing is a fixed area resize: every output pixel is the mean of the 210x160 screen area it
covers (fractional pixel overlaps weighted), as two precomputed matrices, so small objects (the
2-pixel ball) fade rather than vanish or alias, and the same screen always gives the same frame.
"""

from __future__ import annotations

import functools

import numpy as np

SCREEN = (210, 160)
"""(H, W) of the Atari screen."""
ACTION_NAMES = ("NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
                "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE",
                "DOWNLEFTFIRE")
"""The 18 joystick actions of the full action set, in ALE's order (ale_py.Action)."""


def require_ale():
    """The ale_py module, or a ValueError saying how to install it."""
    try:
        import ale_py
    except ImportError as e:
        raise ValueError(f"the atari world needs ale-py ({e}): pip install 'resforce[atari]'") from None
    return ale_py


@functools.lru_cache(maxsize=None)
def known_games() -> tuple[str, ...]:
    """The ROM ids shipped with ale-py (e.g. 'pong', 'breakout')."""
    return tuple(sorted(require_ale().roms.get_all_rom_ids()))


def check_game(game: str, key: str = "data.atari.game") -> None:
    """ValueError naming `key` unless ale-py ships a ROM for `game`."""
    if game not in known_games():
        close = [g for g in known_games() if g.startswith(game[:3])][:8] or list(known_games()[:8])
        raise ValueError(f"{key}: no Atari ROM {game!r} in ale-py; expected one of {len(known_games())} games, "
                         f"e.g. {', '.join(close)}")


@functools.lru_cache(maxsize=None)
def action_ids(game: str, action_set: str) -> tuple[int, ...]:
    """ALE action ids of the game's action set: 'minimal' (the buttons the game uses) or 'full' (18)."""
    if action_set == "full":
        return tuple(range(len(ACTION_NAMES)))
    check_game(game)
    ale = _interface(game, seed=0, frame_skip=1)
    return tuple(int(a.value) for a in ale.getMinimalActionSet())


def action_names(game: str, action_set: str) -> list[str]:
    """Names of the action set's actions, in index order (e.g. NOOP, FIRE, RIGHT, LEFT, ...)."""
    return [ACTION_NAMES[i] for i in action_ids(game, action_set)]


def _interface(game: str, seed: int, frame_skip: int):
    ale_py = require_ale()
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
    ale.setInt("random_seed", int(seed) % (2**31))
    ale.setFloat("repeat_action_probability", 0.0)  # deterministic: stickiness is the policy's
    ale.setInt("frame_skip", int(frame_skip))
    ale.loadROM(ale_py.roms.get_rom_path(game))
    return ale


@functools.lru_cache(maxsize=None)
def area_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) float32 matrix of a 1-D area resize: row i averages the source interval
    [i, i + 1) * src / dst, partial pixels weighted by their overlap; rows sum to 1."""
    edges = np.arange(dst + 1) * (src / dst)
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(src)[None]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0, None)
    return (overlap / overlap.sum(1, keepdims=True)).astype(np.float32)


def resize_screen(screen: np.ndarray, resolution: int) -> np.ndarray:
    """An (210, 160, 3) or (210, 160) uint8 screen -> float32 (3, R, R) in [-1, 1] (area resize;
    a grey screen fills all three channels)."""
    wh, ww = area_weights(SCREEN[0], resolution), area_weights(SCREEN[1], resolution)
    s = screen.astype(np.float32)
    if s.ndim == 2:
        out = wh @ s @ ww.T
        out = np.broadcast_to(out, (3, resolution, resolution))
    else:  # rows, then columns: two matrix products
        rows = (wh @ s.reshape(SCREEN[0], -1)).reshape(resolution, SCREEN[1], 3)
        out = rows.transpose(2, 0, 1) @ ww.T
    return np.ascontiguousarray(out / 127.5 - 1.0, dtype=np.float32)


class Emulator:
    """One Atari game: `reset(rng)` starts an episode, `step(index)` plays one action of the
    action set, `frame` is the current screen at the world's resolution, `ram` its 128 bytes."""

    def __init__(self, game: str, resolution: int = 32, frame_skip: int = 4, action_set: str = "minimal",
                 grayscale: bool = False, noop_max: int = 30) -> None:
        check_game(game)
        self.game, self.resolution, self.grayscale, self.noop_max = game, resolution, grayscale, noop_max
        self.ale = _interface(game, seed=0, frame_skip=frame_skip)
        self.actions = [require_ale().Action(i) for i in action_ids(game, action_set)]
        self.names = action_names(game, action_set)
        self.reward = 0.0

    def reset(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """A new episode: the game's start, then 0..noop_max NOOP actions drawn from `rng` (none
        without one), so episodes of different seeds start apart. Returns the first frame."""
        self.ale.reset_game()
        noops = int(rng.integers(self.noop_max + 1)) if rng is not None and self.noop_max else 0
        for _ in range(noops):
            self.ale.act(self.actions[0])
        self.reward = 0.0
        return self.frame

    def step(self, index: int) -> np.ndarray:
        """Play action `index` of the action set (frame_skip emulator frames): the next frame."""
        self.act(index)
        return self.frame

    def act(self, index: int) -> None:
        """`step` without making the frame (fast-forwarding)."""
        self.reward = float(self.ale.act(self.actions[int(index)]))

    @property
    def game_over(self) -> bool:
        return bool(self.ale.game_over())

    @property
    def frame(self) -> np.ndarray:
        """The current screen as float32 (3, R, R) in [-1, 1]."""
        return resize_screen(self.screen(), self.resolution)

    def screen(self) -> np.ndarray:
        """The full-resolution screen: uint8 (210, 160, 3) (or (210, 160) in grayscale)."""
        return self.ale.getScreenGrayscale() if self.grayscale else self.ale.getScreenRGB()

    @property
    def ram(self) -> np.ndarray:
        """The console's 128 bytes of RAM, uint8 (128,)."""
        return self.ale.getRAM().copy()

    def save(self) -> np.ndarray:
        """The emulator state (ALE's serialization) as a uint8 array."""
        return np.frombuffer(self.ale.cloneState().serialize(), dtype=np.uint8).copy()

    def load(self, state: np.ndarray) -> None:
        """Restore a state from `save`."""
        ale_py = require_ale()
        s = ale_py.ALEState.__new__(ale_py.ALEState)
        s.__setstate__(np.asarray(state, dtype=np.uint8).tobytes())
        self.ale.restoreState(s)
