"""The registry of worlds: `data.kind` -> World (see base.py for what a world provides).

A new world is one folder (its World subclass with its config class, data, metrics) plus one
entry in WORLDS; config.DataConfig takes the world's config section from here.
"""

from __future__ import annotations

from resforce.worlds.base import EVAL_SEED_OFFSET, DataStream, World
from resforce.worlds.agent_balls.world import AgentBallsWorld
from resforce.worlds.atari.world import AtariWorld
from resforce.worlds.bouncing_balls.world import BouncingBallsWorld
from resforce.worlds.latents.world import LatentsWorld
from resforce.worlds.video_folder.world import VideoFolderWorld

WORLDS: dict[str, type[World]] = {w.kind: w for w in (BouncingBallsWorld, VideoFolderWorld, AgentBallsWorld,
                                                          LatentsWorld, AtariWorld)}


def known_kinds() -> str:
    """The data.kind values, for error messages: 'a' or 'b'."""
    return " or ".join(repr(k) for k in WORLDS)


def scoring_worlds() -> tuple[str, ...]:
    """The worlds whose metrics `resforce score` applies to video files."""
    return tuple(k for k, w in WORLDS.items() if w.scores_files)


def world_of(data_cfg) -> World:
    """The world of a DataConfig (a run's `cfg.data`)."""
    if data_cfg.kind not in WORLDS:
        raise ValueError(f"data.kind must be {known_kinds()}, got {data_cfg.kind!r}")
    return WORLDS[data_cfg.kind](data_cfg)


__all__ = ["EVAL_SEED_OFFSET", "DataStream", "World", "WORLDS", "known_kinds", "scoring_worlds", "world_of"]
