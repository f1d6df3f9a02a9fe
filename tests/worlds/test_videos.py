"""VideoFolder: clips from real encoded files, captions, resumable RNG and clear errors."""

import numpy as np
import pytest
import torch

from resforce.worlds.video_folder.reader import VideoFileError, VideoFolder, VideoFolderConfig
from resforce.io.video_io import save_video


def counter_video(frames, height=32, width=32):
    """Uniform grey frames whose level encodes the frame index: -0.9 + 0.15 * i."""
    levels = -0.9 + 0.15 * np.arange(frames, dtype=np.float32)
    return np.broadcast_to(levels[None, :, None, None], (3, frames, height, width)).copy()


def frame_indices(clip):
    """Recover frame indices from a clip of counter_video frames."""
    return np.round((clip.mean(dim=(0, 2, 3)).numpy() + 0.9) / 0.15).astype(int)


@pytest.fixture
def folder(tmp_path):
    save_video(tmp_path / "a.mp4", counter_video(12), scale=1)
    (tmp_path / "a.txt").write_text("a grey ramp\n", encoding="utf-8")
    (tmp_path / "nested").mkdir()
    save_video(tmp_path / "nested" / "b.MP4", counter_video(12, 48, 64), scale=1)
    save_video(tmp_path / "c.gif", counter_video(12), scale=1)
    (tmp_path / "notes.md").write_text("not a video")
    return tmp_path


def test_lists_videos_recursively_and_sorted(folder):
    ds = VideoFolder(VideoFolderConfig(root=str(folder), num_frames=4))
    assert [p.relative_to(folder).as_posix() for p in ds.files] == ["a.mp4", "c.gif", "nested/b.MP4"]


def test_clips_have_shape_range_and_consecutive_frames(folder):
    ds = VideoFolder(VideoFolderConfig(root=str(folder), num_frames=5, frame_stride=2, resolution=[16, 24]))
    starts = set()
    for _ in range(12):
        clip, _ = ds.sample()
        assert clip.shape == (3, 5, 16, 24) and clip.dtype == torch.float32
        assert clip.min() >= -1.0 and clip.max() <= 1.0
        idx = frame_indices(clip)
        np.testing.assert_array_equal(np.diff(idx), 2)  # every 2nd frame, in order
        assert 0 <= idx[0] and idx[-1] <= 11
        starts.add(idx[0])
    assert len(starts) > 1  # random start, not always frame 0


def test_centre_crop_keeps_the_middle(tmp_path):
    # 32 x 64 video: red left quarter, green middle half, blue right quarter.
    video = -np.ones((3, 4, 32, 64), dtype=np.float32)
    video[0, :, :, :16] = 1.0
    video[1, :, :, 16:48] = 1.0
    video[2, :, :, 48:] = 1.0
    save_video(tmp_path / "wide.mp4", video, scale=1)
    clip, _ = VideoFolder(VideoFolderConfig(root=str(tmp_path), num_frames=2, resolution=16)).sample()
    assert clip.shape == (3, 2, 16, 16)
    mean_rgb = clip.mean(dim=(1, 2, 3))
    assert mean_rgb[1] > 0.8 and mean_rgb[0] < -0.8 and mean_rgb[2] < -0.8


def test_caption_sidecar(folder):
    ds = VideoFolder(VideoFolderConfig(root=str(folder), num_frames=3))
    seen = {ds.sample()[1] for _ in range(30)}
    assert seen == {"a grey ramp", None}  # stripped text for a.mp4, None for files without one


def test_batch_and_determinism(folder):
    cfg = dict(root=str(folder), num_frames=4, seed=5)
    videos, captions = VideoFolder(VideoFolderConfig(**cfg)).batch(3)
    assert videos.shape == (3, 3, 4, 32, 32)
    assert len(captions) == 3
    again, again_captions = VideoFolder(VideoFolderConfig(**cfg)).batch(3)
    assert torch.equal(videos, again) and captions == again_captions


def test_state_dict_resumes_exact_stream(folder):
    ds = VideoFolder(VideoFolderConfig(root=str(folder), num_frames=4, seed=1))
    ds.batch(2)
    state = ds.state_dict()
    expected, _ = ds.batch(4)
    resumed = VideoFolder(VideoFolderConfig(root=str(folder), num_frames=4, seed=1))
    resumed.load_state_dict(state)
    got, _ = resumed.batch(4)
    assert torch.equal(got, expected)


def test_empty_folder_names_root_and_extensions(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path.name}.*\.mp4.*\.webm"):
        VideoFolder(VideoFolderConfig(root=str(tmp_path), extensions=[".mp4", ".webm"]))
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        VideoFolder(VideoFolderConfig(root=str(tmp_path / "does_not_exist")))


def test_too_short_file_names_file_and_counts(tmp_path):
    save_video(tmp_path / "short.mp4", counter_video(5), scale=1)
    ds = VideoFolder(VideoFolderConfig(root=str(tmp_path), num_frames=3, frame_stride=3))
    # Needs frames 0, 3, 6: 7 frames, the file has 5.
    with pytest.raises(VideoFileError, match=r"short\.mp4.*5 frames.*needs 7.*num_frames=3.*frame_stride=3"):
        ds.sample()
    with pytest.raises(VideoFileError, match=r"short\.mp4"):
        ds.verify()
    # Exactly long enough is fine: 5 frames for num_frames=3, stride=2.
    clip, _ = VideoFolder(VideoFolderConfig(root=str(tmp_path), num_frames=3, frame_stride=2)).sample()
    np.testing.assert_array_equal(frame_indices(clip), [0, 2, 4])


def test_corrupt_file_names_file(tmp_path):
    """Opening the folder probes every header: the corrupt file is named at once, not when drawn."""
    (tmp_path / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VideoFileError, match=r"broken\.mp4"):
        VideoFolder(VideoFolderConfig(root=str(tmp_path), num_frames=2))


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="num_frames"):
        VideoFolderConfig(root=str(tmp_path), num_frames=0)
    with pytest.raises(ValueError, match="frame_stride"):
        VideoFolderConfig(root=str(tmp_path), frame_stride=0)
    with pytest.raises(ValueError, match="resolution"):
        VideoFolderConfig(root=str(tmp_path), resolution=[16, 16, 3])
    with pytest.raises(ValueError, match="extensions"):
        VideoFolderConfig(root=str(tmp_path), extensions=["mp4"])
