"""Your own videos (data.kind = video_folder): no ground truth, generic metrics only."""

from __future__ import annotations

import dataclasses

from resforce.worlds.video_folder.reader import VideoFolder
from resforce.worlds.video_folder.reader import VideoFolderConfig
from resforce.worlds.base import World


class VideoFolderWorld(World):
    kind = "video_folder"
    config_class = VideoFolderConfig
    config_doc = "The video folder (used when kind = video_folder)."


    @property
    def resolution(self) -> tuple[int, int]:
        return tuple(self.config.size)

    @property
    def resolution_key(self) -> str:
        return "data.video_folder.resolution"

    @property
    def action_space(self):
        return self.config.actions

    def stream(self, seed: int = 0) -> VideoFolder:
        if not self.config.root:
            raise ValueError("data.video_folder.root must name a folder of videos when data.kind=video_folder")
        return VideoFolder(dataclasses.replace(self.config, seed=seed))
