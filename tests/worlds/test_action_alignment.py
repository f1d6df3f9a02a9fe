"""Action alignment of video-folder sidecars: a gymnasium-style log (beside observation t the
action taken after it, which produces t + 1) read with alignment produces_next pairs every
frame with the action that produced it; produced_this keeps the log as is."""

import numpy as np
import pytest

from resforce.actions import NULL_ACTION
from resforce.io.video_io import save_video
from resforce.worlds.video_folder.reader import VideoFolder, VideoFolderConfig

FRAMES, N = 14, 5
START_LEVEL = 0.9
"""Frame 0's grey level (no action produced it)."""


def level_of(action):
    return -0.9 + 0.3 * np.asarray(action)


def gym_episode(seed):
    """(frames (3, F, H, W), logged actions (F,)) recorded the gymnasium way: step(action_t)
    turns observation t into observation t + 1, whose grey level encodes action_t; the log
    stores action_t beside observation t (the last action produced no recorded frame)."""
    rng = np.random.default_rng(seed)
    logged = rng.integers(0, N, size=FRAMES)
    levels = np.concatenate([[START_LEVEL], level_of(logged[:-1])]).astype(np.float32)
    frames = np.broadcast_to(levels[None, :, None, None], (3, FRAMES, 16, 16)).copy()
    return frames, logged


def folder(tmp_path, alignment=None, kind="discrete"):
    for i in range(2):
        frames, logged = gym_episode(i)
        save_video(tmp_path / f"ep{i}.mp4", frames, scale=1)
        np.save(tmp_path / f"ep{i}.actions.npy",
                logged if kind == "discrete" else np.stack([logged, -logged], 1).astype(np.float32))
    actions = {"kind": kind, **({"n": N} if kind == "discrete" else {"dim": 2})}
    if alignment is not None:
        actions["alignment"] = alignment
    return VideoFolderConfig(root=str(tmp_path), num_frames=5, resolution=16, actions=actions)


def produced_by(clip):
    """The action that produced each frame of a clip, read off its grey level (-1: frame 0)."""
    level = clip.mean(dim=(0, 2, 3)).numpy()
    return np.where(level > 0.75, NULL_ACTION, np.round((level + 0.9) / 0.3)).astype(int)


@pytest.mark.parametrize("stride", [1, 2])
def test_produces_next_is_the_default_and_pairs_each_frame_with_the_action_that_produced_it(tmp_path, stride):
    cfg = folder(tmp_path)
    assert cfg.actions.alignment == "produces_next"
    videos, info = VideoFolder(VideoFolderConfig(**{**cfg.__dict__, "frame_stride": stride})).batch(12)
    for clip, actions in zip(videos, info.actions):
        np.testing.assert_array_equal(actions, produced_by(clip))
    assert (info.actions == NULL_ACTION).any()  # some clip starts at a file's first frame


def test_produced_this_uses_the_log_as_is(tmp_path):
    videos, info = VideoFolder(folder(tmp_path, "produced_this")).batch(12)
    for clip, actions in zip(videos, info.actions):
        produced = produced_by(clip)
        np.testing.assert_array_equal(actions[:-1][produced[1:] >= 0], produced[1:][produced[1:] >= 0])


def test_continuous_first_frame_gets_the_zero_vector(tmp_path):
    ds = VideoFolder(folder(tmp_path, kind="continuous"))
    first = ds.actions[ds.files[0]]
    assert first.dtype == np.float32 and first.shape == (FRAMES, 2)
    np.testing.assert_array_equal(first[0], [0.0, 0.0])
    np.testing.assert_array_equal(first[1:, 0], gym_episode(0)[1][:-1])


def test_bad_alignment_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="actions.alignment must be one of produces_next, produced_this"):
        folder(tmp_path, "before")


def test_one_conversion_for_sidecars_and_command_line_actions(tmp_path):
    """resforce.actions.per_frame_actions is the loader's conversion, for one log or a batch,
    discrete or continuous; an unknown alignment names the flag."""
    from resforce.actions import per_frame_actions

    ds = VideoFolder(folder(tmp_path))
    logs = np.stack([np.load(p.with_name(p.stem + ".actions.npy")) for p in ds.files])
    batch = per_frame_actions(logs, "produces_next")
    for row, path in zip(batch, ds.files):
        np.testing.assert_array_equal(row, ds.actions[path])
    np.testing.assert_array_equal(per_frame_actions(logs, "produced_this"), logs)
    continuous = np.stack([logs, -logs], -1).astype(np.float32)  # (videos, frames, 2)
    shifted = per_frame_actions(continuous, "produces_next")
    np.testing.assert_array_equal(shifted[:, 0], 0.0)
    np.testing.assert_array_equal(shifted[:, 1:], continuous[:, :-1])
    with pytest.raises(ValueError, match="--alignment must be one of produces_next, produced_this"):
        per_frame_actions(logs, "before", "--alignment")
