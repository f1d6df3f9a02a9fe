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


class _FolderStream:
    """VideoFolder behind the same `batch(batch_size, num_frames)` call as BouncingBalls."""

    def __init__(self, cfg: VideoFolderConfig, seed: int):
        from resforce.data.videos import list_videos, probe_videos

        self.cfg, self.seed = cfg, seed
        probe_videos(list_videos(cfg.root, cfg.extensions))  # at start, not when a file is first drawn
        self._by_frames: dict[int, VideoFolder] = {}
        self._state: dict | None = None

    def _folder(self, num_frames: int) -> VideoFolder:
        if num_frames not in self._by_frames:
            import dataclasses
            folder = VideoFolder(dataclasses.replace(self.cfg, num_frames=num_frames, seed=self.seed))
            if self._state is not None:
                folder.load_state_dict(self._state)
            self._by_frames = {num_frames: folder}
        return self._by_frames[num_frames]

    def batch(self, batch_size: int, num_frames: int):
        return self._folder(num_frames).batch(batch_size)

    def state_dict(self) -> dict:
        if not self._by_frames:
            return self._state or {}
        return next(iter(self._by_frames.values())).state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._state = state
        for f in self._by_frames.values():
            f.load_state_dict(state)


def make_dataset(cfg, seed: int = 0):
    """The training stream of a DataConfig: `.batch(batch_size, num_frames)` -> (videos, info),
    plus state_dict/load_state_dict for exact resume."""
    import dataclasses
    if cfg.kind == "bouncing_balls":
        return BouncingBalls(dataclasses.replace(cfg.bouncing_balls, seed=cfg.bouncing_balls.seed + seed))
    if cfg.kind == "video_folder":
        if not cfg.video_folder.root:
            raise ValueError("data.video_folder.root must name a folder of videos when data.kind=video_folder")
        return _FolderStream(cfg.video_folder, seed)
    raise ValueError(f"data.kind must be 'bouncing_balls' or 'video_folder', got {cfg.kind!r}")
