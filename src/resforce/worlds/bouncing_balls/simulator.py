"""Built-in procedural world: coloured balls bouncing inside a square box.

The world is cheap to simulate, has exact ground-truth physics, and its balls can be found
again in generated frames by colour segmentation, so evaluation can measure whether a model's
rollout obeys the dynamics (constant speed, elastic wall reflections) over long horizons.

Coordinates are continuous pixels: the image covers [0, resolution] on both axes, pixel
(row i, column j) covers [j, j+1] x [i, i+1] and its centre is (j + 0.5, i + 0.5).
Positions are (x, y) = (column axis, row axis).

Physics: walls are always perfectly elastic (the speed is kept, the normal component of the
velocity flips). Balls do NOT collide with each other: they pass through one another, and the
ball drawn later (higher index) is drawn on top. This keeps every ball's trajectory a closed-form
function of its initial state, which is what makes long-horizon ground truth cheap and exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from resforce.worlds.simulated_stream import SimulatedStream

# Six saturated colours that are pairwise >= 1.0 apart in RGB, so nearest-colour segmentation
# separates them even after lossy compression or a model's blurry reconstruction.
DEFAULT_PALETTE: list[tuple[float, float, float]] = [
    (1.0, 0.0, 0.0),  # red
    (0.0, 1.0, 0.0),  # green
    (0.0, 0.0, 1.0),  # blue
    (1.0, 1.0, 0.0),  # yellow
    (1.0, 0.0, 1.0),  # magenta
    (0.0, 1.0, 1.0),  # cyan
]


@dataclass
class BouncingBallsConfig:
    """Parameters of the bouncing-balls world (sizes in pixels, colours as RGB in [0, 1])."""

    resolution: int = 32
    """Side length of the square frames, in pixels."""
    num_balls_min: int = 1
    """Fewest balls in a clip (inclusive)."""
    num_balls_max: int = 2
    """Most balls in a clip (inclusive); ground-truth arrays are padded to this many balls."""
    radius_min: float = 3.0
    """Smallest ball radius, in pixels."""
    radius_max: float = 5.0
    """Largest ball radius, in pixels; must be < resolution / 2 so a ball can move."""
    colors: list[list[float]] = field(default_factory=lambda: [list(c) for c in DEFAULT_PALETTE])
    """Palette the ball colours are drawn from, RGB triples in [0, 1]."""
    distinct_colors: bool = True
    """If True, balls in one clip get different palette colours (needs len(colors) >= num_balls_max)."""
    speed_min: float = 1.0
    """Slowest ball speed, in pixels per frame."""
    speed_max: float = 2.5
    """Fastest ball speed, in pixels per frame."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Background colour, RGB in [0, 1]."""
    antialias: bool = True
    """Soft ~1 px ball edge (pixel coverage) so motion gives smooth sub-pixel gradients."""
    seed: int = 0
    """Seed of the clip stream; the same seed always yields the same clips."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        if int(self.resolution) != self.resolution or self.resolution < 4:
            raise ValueError(f"resolution must be an integer >= 4, got {self.resolution!r}")
        if self.num_balls_min < 1:
            raise ValueError(f"num_balls_min must be >= 1, got {self.num_balls_min}")
        if self.num_balls_min > self.num_balls_max:
            raise ValueError(
                f"num_balls_min ({self.num_balls_min}) must be <= num_balls_max ({self.num_balls_max})"
            )
        if not 0 < self.radius_min <= self.radius_max:
            raise ValueError(
                f"radius_min must satisfy 0 < radius_min <= radius_max, got radius_min="
                f"{self.radius_min}, radius_max={self.radius_max}"
            )
        if 2 * self.radius_max >= self.resolution:
            raise ValueError(
                f"radius_max ({self.radius_max}) must be < resolution / 2 ({self.resolution / 2}) "
                "so that a ball fits and can move"
            )
        if not 0 <= self.speed_min <= self.speed_max:
            raise ValueError(
                f"speed_min must satisfy 0 <= speed_min <= speed_max, got speed_min="
                f"{self.speed_min}, speed_max={self.speed_max}"
            )
        if len(self.colors) == 0:
            raise ValueError("colors must contain at least one RGB triple")
        for i, c in enumerate(self.colors):
            check_rgb(f"colors[{i}]", c)
        check_rgb("background", self.background)
        if self.distinct_colors and len(self.colors) < self.num_balls_max:
            raise ValueError(
                f"colors has {len(self.colors)} entries but distinct_colors=True needs at least "
                f"num_balls_max={self.num_balls_max}"
            )


def check_rgb(name: str, rgb: Any) -> None:
    values = list(rgb)
    if len(values) != 3 or not all(0.0 <= float(v) <= 1.0 for v in values):
        raise ValueError(f"{name} must be an RGB triple with values in [0, 1], got {rgb!r}")


@dataclass
class BallStates:
    """Ground truth of one clip (or of a batch, with a leading batch axis on every array).

    Clips have a variable number of balls; arrays are padded to num_balls_max = K and `valid`
    marks the real balls. Padded entries are zeros.
    """

    positions: np.ndarray
    """(F, K, 2) float32 ball centres (x, y) in pixels, as rendered in each frame."""
    velocities: np.ndarray
    """(F, K, 2) float32 velocity used to go from frame t to t+1 (already flipped after a bounce)."""
    radii: np.ndarray
    """(K,) float32 radii in pixels."""
    colors: np.ndarray
    """(K, 3) float32 RGB in [0, 1]."""
    valid: np.ndarray
    """(K,) bool, True for real balls."""

    @staticmethod
    def stack(states: list[BallStates]) -> BallStates:
        """Batch clips' ground truth along a new leading axis (all must share F and K)."""
        names = [f.name for f in fields(BallStates)]
        return BallStates(**{n: np.stack([getattr(s, n) for s in states]) for n in names})


def reflect(
    positions: np.ndarray, velocities: np.ndarray, radii: np.ndarray, resolution: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fold positions back into the box, flipping the velocity once per wall hit.

    The centre must stay in [r, resolution - r] so the ball's edge stays inside [0, resolution].
    Unfolding the box into a mirror-tiled line makes this exact for any speed, even one that
    crosses the box several times in a single step: an odd number of folds means an odd number
    of bounces, i.e. a flipped velocity.

    positions, velocities: (..., K, 2); radii: (K,). Returns the new (positions, velocities).
    """
    r = radii[..., :, None]
    span = resolution - 2.0 * r  # free length the centre can travel on each axis
    u = positions - r
    folds = np.floor(u / span)
    u = u - folds * span
    odd = (folds % 2) != 0
    u = np.where(odd, span - u, u)
    u = np.clip(u, 0.0, span)  # floor/multiply rounding can land a hair outside
    return r + u, np.where(odd, -velocities, velocities)


def render(
    positions: np.ndarray,
    radii: np.ndarray,
    colors: np.ndarray,
    resolution: int,
    background: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0),
    antialias: bool = True,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Draw balls; returns float32 frames (F, 3, H, W) in [-1, 1] (or (3, H, W) for (K, 2) input).

    positions: (F, K, 2) or (K, 2) centres (x, y) in pixels; radii: (K,); colors: (K, 3) in [0, 1].
    Balls with valid=False or radius <= 0 (padding) are skipped. Later balls are drawn on top.
    Antialiasing uses coverage clip(r - d + 0.5, 0, 1), a 1 px linear ramp across the edge.
    """
    positions = np.asarray(positions, dtype=np.float32)
    single = positions.ndim == 2
    if single:
        positions = positions[None]
    radii = np.asarray(radii, dtype=np.float32)
    colors = np.asarray(colors, dtype=np.float32)
    keep = radii > 0 if valid is None else np.asarray(valid, dtype=bool) & (radii > 0)

    centres = np.arange(resolution, dtype=np.float32) + 0.5
    # (F, K, 1, W) and (F, K, H, 1) offsets broadcast to the (F, K, H, W) distance field.
    dx = centres[None, None, None, :] - positions[:, :, 0, None, None]
    dy = centres[None, None, :, None] - positions[:, :, 1, None, None]
    dist = np.sqrt(dx * dx + dy * dy)
    r = radii[None, :, None, None]
    alpha = np.clip(r - dist + 0.5, 0.0, 1.0) if antialias else (dist <= r).astype(np.float32)

    num_frames = positions.shape[0]
    bg = np.asarray(background, dtype=np.float32).reshape(1, 3, 1, 1)
    frames = np.broadcast_to(bg, (num_frames, 3, resolution, resolution)).copy()
    for k in np.flatnonzero(keep):  # K is tiny; composite in order so the last ball is on top
        a = alpha[:, k, None]
        frames = frames * (1.0 - a) + colors[k].reshape(1, 3, 1, 1) * a
    frames = frames * 2.0 - 1.0
    return frames[0] if single else frames


def sample_balls(cfg: BouncingBallsConfig, rng: np.random.Generator) -> BallStates:
    """Draw one clip's balls; returns states with F=1 (the initial frame)."""
    k_max = cfg.num_balls_max
    n = int(rng.integers(cfg.num_balls_min, cfg.num_balls_max + 1))
    radii = rng.uniform(cfg.radius_min, cfg.radius_max, size=n)
    positions = rng.uniform(radii[:, None], cfg.resolution - radii[:, None], size=(n, 2))
    speed = rng.uniform(cfg.speed_min, cfg.speed_max, size=n)
    angle = rng.uniform(0.0, 2.0 * np.pi, size=n)
    velocities = speed[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    palette = np.asarray(cfg.colors, dtype=np.float64)
    color_idx = rng.choice(len(palette), size=n, replace=not cfg.distinct_colors)

    def pad(a: np.ndarray) -> np.ndarray:
        out = np.zeros((k_max, *a.shape[1:]), dtype=np.float64)
        out[:n] = a
        return out

    return BallStates(
        positions=pad(positions)[None],
        velocities=pad(velocities)[None],
        radii=pad(radii),
        colors=pad(palette[color_idx]),
        valid=np.arange(k_max) < n,
    )


def simulate(
    cfg: BouncingBallsConfig, rng: np.random.Generator, num_frames: int
) -> tuple[np.ndarray, BallStates]:
    """Simulate one clip: float32 frames (F, 3, H, W) in [-1, 1] and its ground-truth states.

    Pure: everything random comes from `rng`, so the same generator state gives the same clip.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    init = sample_balls(cfg, rng)
    k = cfg.num_balls_max
    pos = np.zeros((num_frames, k, 2))
    vel = np.zeros((num_frames, k, 2))
    pos[0], vel[0] = init.positions[0], init.velocities[0]
    # Padded balls have radius 0 (span = resolution) and zero velocity, so they stay put at 0.
    for t in range(1, num_frames):
        pos[t], vel[t] = reflect(pos[t - 1] + vel[t - 1], vel[t - 1], init.radii, cfg.resolution)
    states = BallStates(
        positions=pos.astype(np.float32),
        velocities=vel.astype(np.float32),
        radii=init.radii.astype(np.float32),
        colors=init.colors.astype(np.float32),
        valid=init.valid,
    )
    # Render from the float32 ground truth that is returned, so re-rendering it is bit-exact.
    frames = render(
        states.positions, states.radii, states.colors, cfg.resolution,
        cfg.background, cfg.antialias, states.valid,
    )
    return frames, states


class BouncingBalls(SimulatedStream):
    """Seeded, infinite, resumable stream of bouncing-balls clips: batch(n, frames) ->
    ((n, 3, F, H, W) float32 in [-1, 1], BallStates with a leading n axis)."""

    config_class = BouncingBallsConfig
    states_class = BallStates
    simulate = staticmethod(simulate)
