"""save_video / load_video / save_grid_video: round trips, layouts, atomic writes."""

import os

import numpy as np
import pytest
import torch

import resforce.io.video_io as video_io
from resforce.io.video_io import load_video, make_grid, save_grid_video, save_video


def smooth_video(frames=10, height=32, width=32, hold=None):
    """Smooth moving colour gradients in [-0.8, 0.8], (3, F, H, W) float32."""
    t = np.arange(frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    video = np.stack(
        [
            0.8 * np.sin((x + 2 * t) / 7.0) + 0 * y,
            0.8 * np.cos((y - t) / 6.0) + 0 * x,
            0.6 * np.sin((x + y) / 9.0 + t / 4.0),
        ]
    ).astype(np.float32)
    if hold is not None:  # make frame `hold` a copy of the previous one
        video[:, hold] = video[:, hold - 1]
    return video


def downscale(video, factor):
    """Average factor x factor blocks of (C, F, H, W)."""
    c, f, h, w = video.shape
    return video.reshape(c, f, h // factor, factor, w // factor, factor).mean(axis=(3, 5))


def test_npy_round_trip_is_exact(tmp_path):
    video = smooth_video() * 1.5  # out-of-range values are kept: .npy stores raw floats
    path = save_video(tmp_path / "clip.npy", torch.from_numpy(video))
    loaded = load_video(path)
    assert loaded.dtype == torch.float32
    np.testing.assert_array_equal(loaded.numpy(), video)


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_lossy_round_trip_preserves_frame_count_and_values(tmp_path, ext):
    # Frame 5 repeats frame 4: Pillow's default GIF writer would merge them into one frame.
    video = smooth_video(frames=10, hold=5)
    loaded = load_video(save_video(tmp_path / f"clip{ext}", video, scale=1)).numpy()
    assert loaded.shape == video.shape
    assert loaded.min() >= -1.0 and loaded.max() <= 1.0
    assert np.abs(loaded - video).mean() < 0.1
    # Per frame too, so a shuffled or dropped frame would be caught.
    per_frame = np.abs(loaded - video).mean(axis=(0, 2, 3))
    assert (per_frame < 0.1).all()


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_default_scale_upscales_small_videos(tmp_path, ext):
    video = smooth_video(frames=4, height=32, width=48)
    loaded = load_video(save_video(tmp_path / f"clip{ext}", video)).numpy()
    assert loaded.shape == (3, 4, 128, 192)  # factor 4: shorter side 32 -> 128
    assert np.abs(downscale(loaded, 4) - video).mean() < 0.06


def test_mp4_odd_size_is_padded_to_even(tmp_path):
    video = smooth_video(frames=3, height=15, width=21)
    loaded = load_video(save_video(tmp_path / "odd.mp4", video, scale=1))
    assert loaded.shape == (3, 3, 16, 22)
    assert np.abs(loaded[:, :, :15, :21].numpy() - video).mean() < 0.1


def test_uint8_fhwc_input(tmp_path):
    pixels = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # red
    loaded = load_video(save_video(tmp_path / "red.npy", pixels))
    assert loaded.shape == (3, 3, 8, 8)
    assert torch.equal(loaded[0], torch.ones(3, 8, 8))
    assert torch.equal(loaded[1:], -torch.ones(2, 3, 8, 8))


def test_grayscale_video_is_written_as_rgb(tmp_path):
    video = smooth_video(frames=3)[:1]
    loaded = load_video(save_video(tmp_path / "grey.gif", video, scale=1)).numpy()
    assert loaded.shape == (3, 3, 32, 32)
    assert np.abs(loaded - video).mean() < 0.05


def test_unknown_extension_names_path_and_supported(tmp_path):
    target = tmp_path / "clip.avi"
    with pytest.raises(ValueError, match=r"clip\.avi.*\.mp4.*\.gif.*\.npy"):
        save_video(target, smooth_video(frames=2))
    assert not target.exists()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((3, 4, 8), dtype=np.float32),  # 3-D
        np.zeros((4, 3, 8, 8), dtype=np.float32),  # (F, C, H, W)
        np.zeros((2, 8, 8, 4), dtype=np.uint8),  # RGBA
        np.full((3, 2, 8, 8), np.nan, dtype=np.float32),
    ],
)
def test_invalid_frames_raise(tmp_path, bad):
    with pytest.raises(ValueError):
        save_video(tmp_path / "x.mp4", bad)


def test_failed_write_keeps_existing_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "clip.mp4"
    original = smooth_video(frames=4)
    save_video(target, original, scale=1)
    before = target.read_bytes()

    # Invalid input: rejected before the file is touched.
    with pytest.raises(ValueError):
        save_video(target, np.full((3, 2, 8, 8), np.nan, dtype=np.float32))
    assert target.read_bytes() == before

    # Failure in the middle of encoding, after bytes were written.
    def broken_writer(tmp, pixels, fps, **encoder_options):
        tmp.write_bytes(b"half a video")
        raise RuntimeError("disk full")

    monkeypatch.setattr(video_io, "_write_mp4", broken_writer)
    with pytest.raises(RuntimeError, match="disk full"):
        save_video(target, smooth_video(frames=6), scale=1)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["clip.mp4"]
    assert load_video(target).shape == original.shape


def test_overwrite_replaces_content(tmp_path):
    target = tmp_path / "sub" / "clip.gif"  # parent directories are created
    save_video(target, smooth_video(frames=3), scale=1)
    save_video(target, smooth_video(frames=5), scale=1)
    assert load_video(target).shape[1] == 5
    assert os.listdir(target.parent) == ["clip.gif"]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_video(tmp_path / "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(2000))
    with pytest.raises(ValueError, match="garbage.mp4"):
        load_video(garbage)
    with pytest.raises(ValueError, match=r"clip\.txt"):
        load_video(tmp_path / "clip.txt")


def test_make_grid_layout():
    a = smooth_video(frames=4, height=8, width=6)
    b = -smooth_video(frames=2, height=8, width=5)
    grid = make_grid([a, torch.from_numpy(b)], separator=2, separator_value=1.0)
    assert grid.shape == (3, 4, 8, 6 + 2 + 5)
    np.testing.assert_array_equal(grid[:, :, :, :6], a)
    assert (grid[:, :, :, 6:8] == 1.0).all()
    np.testing.assert_array_equal(grid[:, :2, :, 8:], b)
    # The shorter video holds its last frame.
    np.testing.assert_array_equal(grid[:, 3, :, 8:], b[:, 1])
    with pytest.raises(ValueError, match=r"videos\[1\]"):
        make_grid([a, smooth_video(frames=4, height=9, width=6)])


def test_save_grid_video(tmp_path):
    a, b = smooth_video(frames=3), -smooth_video(frames=3)
    loaded = load_video(save_grid_video(tmp_path / "cmp.mp4", [a, b], scale=1)).numpy()
    assert loaded.shape == (3, 3, 32, 66)
    assert np.abs(loaded[:, :, :, 34:] - b).mean() < 0.1
    assert loaded[:, :, 4:-4, 32:34].mean() > 0.8  # white separator


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os

    from resforce.io.fileio import write_text_atomic

    mask = os.umask(0o022)
    try:
        p = write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(mask)
    assert os.stat(p).st_mode & 0o777 == 0o644


def test_a_file_without_a_video_stream_is_a_value_error(tmp_path):
    """An audio-only file (PyAV opens it, then finds no video stream: IndexError inside PyAV)
    is one ValueError naming the file, never a traceback."""
    import av

    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(ValueError, match="sound.mp4"):
        load_video(path)
