"""The built-in controllable world: an agent the actions move, among bouncing balls
(data/agent_balls.py simulates it).

Scored on two things (worlds/agent_balls/metrics.py): whether the agent moves as commanded (action
following, with a chance baseline) and whether the balls and the agent persist (the
bouncing-balls identity metrics, which count a vanished object as lost). A play server drives
its ground truth with `simulator(seed)`; `action_space` says what the actions are.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from resforce.actions import ActionSpace
from resforce.worlds.agent_balls.simulator import AgentBalls, AgentBallsConfig, AgentSimulator
from resforce.worlds.base import EVAL_SEED_OFFSET, World


class AgentBallsWorld(World):
    kind = "agent_balls"
    playable = True
    config_class = AgentBallsConfig
    config_doc = "The controllable agent world (used when kind = agent_balls): actions move an agent."
    table_metrics = ("follow", "follow_chance", "agent_found", "count_error", "identity_error", "lost",
                     "color_integrity", "background_noise", "generic_flicker")
    plot_metrics = ("follow", "agent_found", "count_error", "identity_error", "lost")
    per_sample_metrics = ("follow", "follow_chance", "agent_found", "count_error", "identity_error", "lost",
                          "spawned", "color_integrity", "background_noise")
    summary_definition = ("follow: fraction of frames in which the agent (the white disc, found by colour) "
                          "moved as the frame's action commanded (noop: stayed within half a step; a move: "
                          "went at least half a step that way and less than half a step sideways); a frame "
                          "without the agent fails; moves blocked by a wall are not scored. follow_chance: "
                          "the same frames scored against an independent sticky random action stream. "
                          "identity_error / lost: balls and agent of the given frames that vanished or "
                          "changed colour (bouncing-balls metrics)")
    verdict_metrics = {"lost": ("keeps more of the given objects (same colour)", "objects lost per frame")}
    title = "agent among bouncing balls"
    scores_files = False


    @property
    def resolution_key(self) -> str:
        return "data.agent_balls.balls.resolution"

    @property
    def action_space(self) -> ActionSpace:
        return self.config.action_space()

    def stream(self, seed: int = 0) -> AgentBalls:
        return AgentBalls(dataclasses.replace(self.config, seed=self.config.seed + seed))

    def clips(self, batch: int, frames: int, seed: int):
        cfg = dataclasses.replace(self.config, seed=self.config.seed + EVAL_SEED_OFFSET + seed)
        return AgentBalls(cfg).batch(batch, frames)

    def simulator(self, seed: int = 0) -> AgentSimulator:
        """The ground-truth world, stepped one action at a time (reset(seed), step(action))."""
        return AgentSimulator(self.config, seed)

    def score(self, videos: np.ndarray, states=None, ground_truth=None, ref_frames: int = 2) -> dict[str, np.ndarray]:
        from resforce.worlds.agent_balls.metrics import evaluate_agent_world

        return evaluate_agent_world(videos, self.config, states, ref_frames)
