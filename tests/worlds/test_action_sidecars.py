"""Actions in video folders: NAME.actions.npy beside NAME.mp4, aligned with the clip's frames,
checked (length, range, dtype) when the folder opens with an error naming the file; a pad
larger than the game (18 buttons) trains."""

import numpy as np
import pytest

from resforce.config import ConfigError, load_config
from resforce.worlds.video_folder.reader import VideoFileError, VideoFolder, VideoFolderConfig
from resforce.training.loop import train
from resforce.io.video_io import save_video
from test_videos import counter_video, frame_indices
from tiny import tiny

FRAMES = 12


def make_folder(tmp_path, actions=lambda i: np.arange(FRAMES, dtype=np.int64) % 18, names=("a", "b")):
    for i, name in enumerate(names):
        save_video(tmp_path / f"{name}.mp4", counter_video(FRAMES, 16, 16), scale=1)
        np.save(tmp_path / f"{name}.actions.npy", actions(i))
    return tmp_path


def discrete(root, n=18, **kw):  # frame i logged the action that produced it (test_action_alignment.py: the other way)
    return VideoFolderConfig(root=str(root), num_frames=4, resolution=16,
                             actions={"kind": "discrete", "n": n, "alignment": "produced_this"}, **kw)


def test_clip_actions_are_the_actions_of_its_frames(tmp_path):
    ds = VideoFolder(discrete(make_folder(tmp_path), frame_stride=2))
    videos, info = ds.batch(6)
    assert info.actions.shape == (6, 4) and info.actions.dtype == np.int64
    for clip, acts in zip(videos, info.actions):
        np.testing.assert_array_equal(acts, frame_indices(clip) % 18)  # frame i logged action i
    assert info.actions.max() <= 17 and list(info) == [None] * 6  # still the captions list


def test_continuous_actions(tmp_path):
    root = make_folder(tmp_path, lambda i: np.stack([np.arange(FRAMES), -np.arange(FRAMES)], 1).astype(np.float32))
    ds = VideoFolder(VideoFolderConfig(root=str(root), num_frames=3, resolution=16,
                                       actions={"kind": "continuous", "dim": 2, "alignment": "produced_this"}))
    videos, info = ds.batch(3)
    assert info.actions.shape == (3, 3, 2) and info.actions.dtype == np.float32
    np.testing.assert_array_equal(info.actions[0, :, 0], frame_indices(videos[0]))


@pytest.mark.parametrize("bad, match", [
    (lambda i: np.zeros(FRAMES - 1, dtype=np.int64), r"b\.actions\.npy.*11 actions for 12 frames"),
    (lambda i: np.full(FRAMES, 18, dtype=np.int64), r"b\.actions\.npy.*action 18 at frame 0 is outside .*\[0, 18\)"),
    (lambda i: np.zeros(FRAMES, dtype=np.float32), r"b\.actions\.npy.*integer array"),
])
def test_bad_sidecar_is_an_error_naming_the_file(tmp_path, bad, match):
    root = make_folder(tmp_path, lambda i: np.zeros(FRAMES, dtype=np.int64) if i == 0 else bad(i))
    with pytest.raises(ValueError, match=match):
        VideoFolder(discrete(root))


def test_missing_sidecar_and_bad_space_are_named(tmp_path):
    root = make_folder(tmp_path)
    (root / "a.actions.npy").unlink()
    with pytest.raises(VideoFileError, match=r"a\.actions\.npy' is missing"):
        VideoFolder(discrete(root))
    with pytest.raises(ValueError, match="actions: a discrete action space needs n >= 1"):
        discrete(root, n=0)
    VideoFolder(VideoFolderConfig(root=str(root), num_frames=4, resolution=16))  # no action space: ignored


def test_an_18_button_world_model_trains_and_the_config_must_match(tmp_path):
    (tmp_path / "videos").mkdir()
    root = make_folder(tmp_path / "videos")
    data = ["data.kind=video_folder", f"data.video_folder.root={root}", "data.video_folder.resolution=8",
            "data.video_folder.actions.kind=discrete", "data.video_folder.actions.n=18", "stages.0.clip_chunks=3",
            "stages.0.history.strategy=resampling", "stages.0.steps=2"]
    with pytest.raises(ConfigError, match="model.action_kind=discrete model.action_dim=18"):
        load_config(None, tiny(tmp_path / "run", *data, "model.action_kind=discrete", "model.action_dim=5"))
    cfg = load_config(None, tiny(tmp_path / "run", *data, "model.action_kind=discrete", "model.action_dim=18",
                                 "model.action_dropout=0.5"))
    train(cfg, progress=False)
    assert (tmp_path / "run" / "checkpoints").is_dir()
