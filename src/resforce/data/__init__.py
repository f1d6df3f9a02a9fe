"""Training data: the built-in procedural world and folders of video files."""

from resforce.data.videos import VideoFolder, VideoFolderConfig
from resforce.data.worlds import (
    BallStates,
    BouncingBalls,
    BouncingBallsConfig,
    reflect,
    render,
    simulate,
)

__all__ = [
    "BallStates",
    "BouncingBalls",
    "BouncingBallsConfig",
    "VideoFolder",
    "VideoFolderConfig",
    "reflect",
    "render",
    "simulate",
]
