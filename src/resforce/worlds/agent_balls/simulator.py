"""Built-in controllable world: a white agent, moved by the player, among bouncing balls.

The balls are the bouncing-balls world's (data/worlds.py: same sampling, elastic walls, same
renderer); the agent is one more disc, white (off the ball palette, so it is found by colour),
drawn on top. Each frame one discrete action moves it `agent_speed` pixels: noop, left,
right, up, down; it stops at the walls. Actions beyond those five (num_actions > 5, e.g. an
18-button pad) do nothing, like the redundant buttons of an Atari pad.

Frame convention (resforce.actions): action f is applied between frame f - 1 and frame f;
frame 0 is the initial state (its action is recorded but moves nothing).

Training data come from a random policy with sticky actions: each frame keeps the previous
action with probability `action_repeat`, else draws a new one uniformly.

`AgentSimulator` steps the same world one frame at a time for an interactive player (the
play server's ground truth): `reset(seed)`, then `step(action)`; clips of the stream are
made by exactly that stepping, so the two agree bit for bit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from resforce.actions import ActionSpace
from resforce.worlds.config_coerce import coerce_config
from resforce.worlds.simulated_stream import SimulatedStream
from resforce.worlds.bouncing_balls.simulator import BallStates, BouncingBallsConfig, check_rgb, sample_balls, reflect, render

MOVES = ("noop", "left", "right", "up", "down")
"""The actions the agent understands, in index order."""
DIRECTIONS = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.float64)
"""Unit (x, y) displacement of each of MOVES (y grows downwards, like rows)."""
BROWSER_KEYS = {"ArrowLeft": "left", "ArrowRight": "right", "ArrowUp": "up", "ArrowDown": "down",
                "a": "left", "d": "right", "w": "up", "s": "down"}


def direction(action: np.ndarray | int) -> np.ndarray:
    """(..., 2) unit displacement of actions (indices beyond MOVES are noops)."""
    a = np.asarray(action)
    return np.where((a < len(MOVES))[..., None], DIRECTIONS[np.clip(a, 0, len(MOVES) - 1)], 0.0)


def _default_balls() -> BouncingBallsConfig:
    return BouncingBallsConfig(resolution=16, num_balls_min=1, num_balls_max=2, radius_min=2.0, radius_max=3.0,
                               speed_min=0.5, speed_max=1.2)


@dataclass
class AgentBallsConfig:
    """Parameters of the agent world (sizes in pixels)."""

    balls: BouncingBallsConfig = field(default_factory=_default_balls)
    """The bouncing balls around the agent; balls.resolution is the frame size."""
    agent_radius: float = 2.0
    """Radius of the agent's disc."""
    agent_speed: float = 1.0
    """Pixels the agent moves per frame when an action moves it."""
    agent_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """RGB in [0, 1]; white is off the ball palette, so the agent is found by colour."""
    num_actions: int = 5
    """Discrete actions (>= 5: noop, left, right, up, down, then buttons that do nothing)."""
    action_repeat: float = 0.8
    """Random policy: probability that a frame repeats the previous action (sticky actions)."""
    seed: int = 0
    """Seed of the clip stream."""

    def __post_init__(self) -> None:
        if isinstance(self.balls, Mapping):
            self.balls = coerce_config(dict(self.balls), BouncingBallsConfig)
        self.validate()

    def validate(self) -> None:
        self.balls.validate()
        res = self.balls.resolution
        if not 0 < self.agent_radius < res / 2:
            raise ValueError(f"agent_radius must be in (0, resolution / 2 = {res / 2}), got {self.agent_radius}")
        if not 0 < self.agent_speed < res / 2:
            raise ValueError(f"agent_speed must be in (0, resolution / 2), got {self.agent_speed}")
        if self.num_actions < len(MOVES):
            raise ValueError(f"num_actions must be >= {len(MOVES)} ({', '.join(MOVES)}), got {self.num_actions}")
        if not 0 <= self.action_repeat <= 1:
            raise ValueError(f"action_repeat must be in [0, 1], got {self.action_repeat}")
        check_rgb("agent_color", self.agent_color)

    @property
    def resolution(self) -> int:
        return self.balls.resolution

    def action_space(self) -> ActionSpace:
        names = list(MOVES) + [f"button{i}" for i in range(len(MOVES), self.num_actions)]
        return ActionSpace(kind="discrete", n=self.num_actions, names=names, keys=dict(BROWSER_KEYS), default=0)


@dataclass
class AgentBallsStates:
    """Ground truth of one clip (or a batch, with a leading axis on every array)."""

    balls: BallStates
    """The bouncing balls (positions (F, K, 2), radii, colours, valid)."""
    agent: np.ndarray
    """(F, 2) float32 agent centre (x, y) in pixels, as rendered."""
    actions: np.ndarray
    """(F,) int64 action of each frame (action f moved the agent from frame f - 1 to f)."""

    @staticmethod
    def stack(states: list[AgentBallsStates]) -> AgentBallsStates:
        return AgentBallsStates(BallStates.stack([s.balls for s in states]),
                                np.stack([s.agent for s in states]), np.stack([s.actions for s in states]))


def sticky_actions(rng: np.random.Generator, num_frames: int, num_actions: int, repeat: float) -> np.ndarray:
    """A random policy's actions (F,) int64: each frame repeats the last with prob `repeat`."""
    draws = rng.integers(0, num_actions, size=num_frames)
    keep = rng.random(num_frames) < repeat
    out = np.empty(num_frames, dtype=np.int64)
    for f in range(num_frames):
        out[f] = out[f - 1] if f > 0 and keep[f] else draws[f]
    return out


def move_agent(position: np.ndarray, action: int, cfg: AgentBallsConfig) -> np.ndarray:
    """The agent's next centre: one step in the action's direction, stopped by the walls."""
    r = cfg.agent_radius
    return np.clip(position + cfg.agent_speed * direction(action), r, cfg.resolution - r)


def render_frame(balls: BallStates, ball_pos: np.ndarray, agent: np.ndarray, cfg: AgentBallsConfig) -> np.ndarray:
    """float32 (3, H, W) in [-1, 1]: the balls at ball_pos (K, 2), then the agent on top."""
    b = cfg.balls
    pos = np.concatenate([ball_pos, agent[None]]).astype(np.float32)
    radii = np.append(balls.radii, cfg.agent_radius).astype(np.float32)
    colors = np.concatenate([balls.colors, np.asarray(cfg.agent_color, dtype=np.float32)[None]])
    valid = np.append(balls.valid, True)
    return render(pos, radii, colors, b.resolution, b.background, b.antialias, valid)


class AgentSimulator:
    """The agent world one frame at a time (ground truth for a player).

    reset(seed) -> frame 0; step(action) -> the next frame. Frames are float32 (3, H, W) in
    [-1, 1]; `to_uint8` makes (H, W, 3) uint8 for display. `state` is the ground truth so far
    of the current frame (balls at their positions, the agent, the last action)."""

    def __init__(self, config: AgentBallsConfig | Mapping[str, Any] | None = None, seed: int = 0) -> None:
        self.config = coerce_config(AgentBallsConfig() if config is None else config, AgentBallsConfig)
        self.action_space = self.config.action_space()
        self.reset(seed)

    def reset(self, seed: int | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
        """A new episode from world seed `seed` (or a given generator): frame 0."""
        rng = rng if rng is not None else np.random.default_rng(self.config.seed if seed is None else seed)
        cfg = self.config
        self.balls = sample_balls(cfg.balls, rng)
        r = cfg.agent_radius
        self.agent = rng.uniform(r, cfg.resolution - r, size=2)
        self.ball_pos, self.ball_vel = self.balls.positions[0], self.balls.velocities[0]
        self.frame_index, self.last_action = 0, 0
        self.frame = self._render()
        return self.frame

    def step(self, action) -> np.ndarray:
        """Apply one action (an index, or a name of action_space.names): the next frame."""
        a = self.action_space.index(action)
        self.ball_pos, self.ball_vel = reflect(self.ball_pos + self.ball_vel, self.ball_vel, self.balls.radii,
                                               self.config.resolution)
        self.agent = move_agent(self.agent, a, self.config)
        self.frame_index, self.last_action = self.frame_index + 1, a
        self.frame = self._render()
        return self.frame

    def _render(self) -> np.ndarray:
        return render_frame(self.balls, self.ball_pos, self.agent, self.config)


def to_uint8(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8, for display."""
    f = frame.detach().float().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    return np.clip(np.rint((f.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def simulate(cfg: AgentBallsConfig, rng: np.random.Generator, num_frames: int,
             actions: np.ndarray | None = None) -> tuple[np.ndarray, AgentBallsStates]:
    """One clip: float32 frames (F, 3, H, W) in [-1, 1] and its ground truth, made by stepping
    an AgentSimulator with sticky random actions (or the given ones). Pure in `rng`."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    sim = AgentSimulator.__new__(AgentSimulator)
    sim.config, sim.action_space = cfg, cfg.action_space()
    frames = [sim.reset(rng=rng)]
    if actions is None:
        actions = sticky_actions(rng, num_frames, cfg.num_actions, cfg.action_repeat)
    k = cfg.balls.num_balls_max
    ball_pos, ball_vel, agent = [sim.ball_pos], [sim.ball_vel], [sim.agent]
    for f in range(1, num_frames):
        frames.append(sim.step(int(actions[f])))
        ball_pos.append(sim.ball_pos), ball_vel.append(sim.ball_vel), agent.append(sim.agent)
    balls = dataclasses.replace(sim.balls, positions=np.stack(ball_pos).astype(np.float32).reshape(-1, k, 2),
                                velocities=np.stack(ball_vel).astype(np.float32).reshape(-1, k, 2),
                                radii=sim.balls.radii.astype(np.float32), colors=sim.balls.colors.astype(np.float32))
    states = AgentBallsStates(balls, np.stack(agent).astype(np.float32), np.asarray(actions, dtype=np.int64))
    return np.stack(frames), states


class AgentBalls(SimulatedStream):
    """Seeded, infinite, resumable stream of agent-world clips: batch(n, frames) -> ((n, 3, F,
    H, W) in [-1, 1], AgentBallsStates with `.actions` (n, F))."""

    config_class = AgentBallsConfig
    states_class = AgentBallsStates
    simulate = staticmethod(simulate)


__all__ = ["AgentBalls", "AgentBallsConfig", "AgentBallsStates", "AgentSimulator", "MOVES", "direction",
           "simulate", "sticky_actions", "to_uint8"]
