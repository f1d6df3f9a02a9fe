"""Metrics of the agent world (worlds/agent_balls.py), from the frames alone.

Action following. The agent is found by its colour: a pixel's coverage is its position along
the mixing segment background -> agent colour (as ball_analysis does for balls), counted where
the pixel lies within COLOR_THRESH of that segment; the agent's centre is the coverage-weighted
centroid within agent_radius + 1.5 px of the strongest such pixel, and it is `found` when the coverage adds up to at least FOUND_AREA of its disc. For
frame f (f >= 1) and its action a_f (the move from f - 1 to f), with step s = agent_speed and
d the measured displacement:
  - a move (left/right/up/down, unit direction u): follows if d.u >= s / 2 and the sideways
    part |d - (d.u) u| < s / 2;
  - noop (and buttons that do nothing): follows if |d| < s / 2;
  - the agent missing in frame f - 1 or f: fails (0), so an empty or collapsed frame never
    follows; a move the wall blocks (less than a full step of room at f - 1) is not scored (NaN).
`follow` is that per frame; `follow_chance` scores the same frames against an independent
sticky random action stream (CHANCE_SEED) of the world's policy: what a model that ignores
the actions scores.

Persistence. The balls and the agent are the bouncing-balls metrics' (worlds/bouncing_balls/metrics.py) with
the agent's colour added to the palette: `count_error`, `lost`, `spawned`, `identity_error`
(collapse-aware: a vanished object is lost), `color_integrity`, `background_noise`.
"""

from __future__ import annotations

import math

import numpy as np

from resforce.worlds.bouncing_balls import identity as ball_identity
from resforce.worlds.bouncing_balls.metrics import evaluate_bouncing_balls
from resforce.worlds.agent_balls.simulator import AgentBallsConfig, direction, sticky_actions
from resforce.metrics.video import evaluate_generic
from resforce.metrics.arrays import batch01

COLOR_THRESH = 0.25
"""RGB distance from the background -> agent-colour segment within which a pixel is agent."""
FOUND_AREA = 0.4
"""Fraction of the agent's disc area its coverage must reach for it to count as found."""
CHANCE_SEED = 4242
"""Seed of the independent action stream of follow_chance."""
PIXEL_CENTER = 0.5
BALL_METRICS = ("count_error", "lost", "spawned", "identity_error", "color_integrity", "background_noise")


def locate_agent(videos, cfg: AgentBallsConfig) -> tuple[np.ndarray, np.ndarray]:
    """(centres (M, F, 2) (x, y) in px, NaN where not found; found (M, F) bool)."""
    v = batch01(videos).astype(np.float64)  # (M, C, F, H, W)
    bg = np.asarray(cfg.balls.background, dtype=np.float64)[None, :, None, None, None]
    axis = np.asarray(cfg.agent_color, dtype=np.float64) - np.asarray(cfg.balls.background, dtype=np.float64)
    rel = v - bg
    alpha = np.clip(np.einsum("mcfhw,c->mfhw", rel, axis) / float(axis @ axis), 0.0, 1.0)
    off = rel - alpha[:, None] * axis[None, :, None, None, None]
    coverage = np.where(np.linalg.norm(off, axis=1) < COLOR_THRESH, alpha, 0.0)  # (M, F, H, W)
    h, w = coverage.shape[-2:]
    ys, xs = np.arange(h) + PIXEL_CENTER, np.arange(w) + PIXEL_CENTER
    # only coverage near the strongest agent pixel: where two balls of complementary colours
    # overlap, their anti-aliased mix is grey, i.e. on the black -> white segment too
    peak = coverage.reshape(*coverage.shape[:2], -1).argmax(-1)
    cx, cy = xs[peak % w], ys[peak // w]
    for _ in range(2):  # re-centre the window once on the centroid it gives
        near = (xs[None, None, None, :] - cx[..., None, None]) ** 2 + (ys[None, None, :, None] - cy[..., None, None]) ** 2
        window = np.where(near <= (cfg.agent_radius + 1.5) ** 2, coverage, 0.0)
        mass = window.sum(axis=(2, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            cx = (window * xs[None, None, None, :]).sum(axis=(2, 3)) / mass
            cy = (window * ys[None, None, :, None]).sum(axis=(2, 3)) / mass
    found = mass >= FOUND_AREA * math.pi * cfg.agent_radius ** 2
    centres = np.where(found[..., None], np.stack([cx, cy], -1), np.nan)
    return centres, found


def follow_score(centres: np.ndarray, found: np.ndarray, actions: np.ndarray, cfg: AgentBallsConfig) -> np.ndarray:
    """(M, F) 1 where the agent moved as action f commanded, 0 where not (or missing), NaN at
    frame 0 and where a wall blocks the move (see the module doc)."""
    s, r, res = cfg.agent_speed, cfg.agent_radius, cfg.resolution
    a = np.asarray(actions)[:, 1:]
    u = direction(a)  # (M, F-1, 2)
    prev, now = centres[:, :-1], centres[:, 1:]
    d = np.nan_to_num(now - prev)
    along = (d * u).sum(-1)
    sideways = np.linalg.norm(d - along[..., None] * u, axis=-1)
    moving = np.abs(u).sum(-1) > 0
    ok = np.where(moving, (along >= s / 2) & (sideways < s / 2), np.linalg.norm(d, axis=-1) < s / 2)
    both = found[:, :-1] & found[:, 1:]
    score = np.where(both, ok, False).astype(np.float64)
    # room towards the commanded wall, measured at f - 1 (NaN where the agent is missing)
    room = np.where(u > 0, res - r - prev, np.where(u < 0, prev - r, np.inf)).min(-1)
    blocked = moving & both & (room < s)
    score = np.where(blocked, np.nan, score)
    return np.concatenate([np.full((score.shape[0], 1), np.nan), score], axis=1)


def chance_actions(batch: int, frames: int, cfg: AgentBallsConfig) -> np.ndarray:
    """(batch, frames) independent sticky random actions (follow_chance's)."""
    rng = np.random.default_rng(CHANCE_SEED)
    return np.stack([sticky_actions(rng, frames, cfg.num_actions, cfg.action_repeat) for _ in range(batch)])


def evaluate_agent_world(videos, cfg: AgentBallsConfig, states=None, ref_frames: int = 2) -> dict[str, np.ndarray]:
    """Per-frame metrics (M, F) of videos (M, C, F, H, W) in [-1, 1] of the agent world. The
    action metrics need the commanded actions (states.actions, (M, F)); without states only
    agent_found, the persistence and the generic metrics are computed."""
    v = batch01(videos)
    m, f = v.shape[0], v.shape[2]
    centres, found = locate_agent(videos, cfg)
    out = {"agent_found": found.astype(np.float64)}
    if states is not None:
        actions = np.asarray(states.actions)[:, :f]
        if actions.shape != (m, f):
            raise ValueError(f"states.actions {actions.shape} must cover the videos' (samples, frames) = {(m, f)}")
        out["follow"] = follow_score(centres, found, actions, cfg)
        out["follow_chance"] = follow_score(centres, found, chance_actions(m, f, cfg), cfg)
    palette = [list(c) for c in cfg.balls.colors] + [list(cfg.agent_color)]
    known = {}
    if states is not None:
        b = states.balls
        agent_index = len(palette) - 1
        known = dict(radii=[list(r[ok]) + [cfg.agent_radius] for r, ok in zip(b.radii, b.valid)],
                     reference_balls=[np.append(ball_identity.palette_indices(c[ok], cfg.balls.colors), agent_index)
                                      for c, ok in zip(b.colors, b.valid)])
    balls = evaluate_bouncing_balls(videos, palette, cfg.balls.background, pixel_center=PIXEL_CENTER,
                                    ref_frames=ref_frames, **known)
    out.update({k: balls[k] for k in BALL_METRICS})
    out.update({f"generic_{k}": val for k, val in evaluate_generic(videos).items()})
    return out
