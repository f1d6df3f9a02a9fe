"""`resforce record atari:GAME` writes a video folder whose actions follow the gymnasium
convention; read back with alignment produces_next (the default), the loader pairs frame f
with the action that produced it: stepping the emulator from the episode's start with the
loader's action of each frame reproduces the recorded frames, and the log read the other way
does not."""

import json

import numpy as np
import pytest

pytest.importorskip("ale_py", reason="the atari world needs ale-py: pip install 'resforce[atari]'")

from resforce.cli.main import main  # noqa: E402
from resforce.worlds.atari.recording import episode_rng  # noqa: E402
from resforce.worlds.atari.world import AtariConfig  # noqa: E402
from resforce.worlds.video_folder.reader import VideoFolder, VideoFolderConfig  # noqa: E402

FRAMES, SEED = 40, 5
VIDEO_TOL = 0.06
"""Mean absolute difference (in [-1, 1] units) allowed between a decoded H.264 frame and the
emulator's frame it encodes."""


def emulate(cfg, index, actions):
    """The emulator from recorded episode `index`'s start, stepped with actions[1:] (action f
    produced frame f): its frames (F, 3, R, R)."""
    em = cfg.emulator()
    frames = [em.reset(episode_rng(SEED, index))]
    frames += [em.step(int(a)) for a in actions[1:]]
    return np.stack(frames)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "pong"
    main(["record", "atari:pong", "--episodes", "2", "--frames", str(FRAMES), "--out", str(out), "--seed", str(SEED)])
    return out


def load(root, alignment):
    meta = json.loads((root / "recording.json").read_text())
    space = {k: meta["actions"][k] for k in ("kind", "n", "names")}
    ds = VideoFolder(VideoFolderConfig(root=str(root), num_frames=FRAMES, resolution=32,
                                       actions={**space, "alignment": alignment}))
    return ds, meta


def test_recording_read_with_produces_next_pairs_each_frame_with_the_action_that_produced_it(recording):
    ds, meta = load(recording, "produces_next")
    assert meta["alignment"] == "produces_next" and meta["actions"]["names"][:2] == ["NOOP", "FIRE"]
    cfg = AtariConfig(game="pong")
    for index, path in enumerate(ds.files):
        video = ds.read_clip(path, 0).numpy().transpose(1, 0, 2, 3)  # whole file: (F, 3, R, R)
        actions = ds.actions[path]
        assert actions[0] == -1 and (actions[1:] >= 0).all()  # nothing recorded produced frame 0
        replayed = emulate(cfg, index, actions)
        error = np.abs(replayed - video).mean(axis=(1, 2, 3))
        assert error.max() < VIDEO_TOL, error.max()
        logged = np.load(path.with_name(path.stem + ".actions.npy"))
        wrong = emulate(cfg, index, logged)  # the log read as produced_this: every action one frame early
        differ = np.abs(wrong - replayed) > 0.1  # pixels where the two pairings disagree (the paddle)
        assert differ.any(axis=(1, 2, 3)).sum() >= 3
        # there, the recording is what the right pairing makes, far from the wrong one
        right_error, wrong_error = np.abs(replayed - video)[differ].mean(), np.abs(wrong - video)[differ].mean()
        assert right_error < 0.5 * wrong_error, (right_error, wrong_error)


def test_record_errors(tmp_path, recording, capsys):
    for argv, match in [(["atari:pongx"], "resforce record atari:pongx: no Atari ROM 'pongx'"),
                        (["pong"], "resforce record pong: expected atari:GAME"),
                        (["atari:pong", "--frames", "1"], "--frames must be >= 2"),
                        (["atari:pong"], "already holds a recording")]:
        out = recording if "already" in match else tmp_path / "x"
        with pytest.raises(SystemExit):
            main(["record", *argv, "--out", str(out)])
        assert match in capsys.readouterr().err


def test_command_line_actions_read_a_recording_as_the_loader_does(recording, capsys):
    """`score --actions` and generate / eval / compare `--actions` with --alignment produces_next
    pair a recording's frames with its actions as the video-folder loader does; without the
    flag (produced_this) the log is taken as it is; the flag without actions is refused."""
    from argparse import Namespace

    from resforce.cli.args import generation_options
    from resforce.cli.main import build_parser
    from resforce.cli.score import load_actions

    ds, meta = load(recording, "produces_next")
    logs = [path.with_name(path.stem + ".actions.npy") for path in ds.files]
    space = AtariConfig(game="pong").action_space()
    scored = load_actions(logs, len(logs), FRAMES, space, "produces_next")
    as_is = load_actions(logs, len(logs), FRAMES, space)
    for i, path in enumerate(ds.files):
        np.testing.assert_array_equal(scored[i], ds.actions[path])
        np.testing.assert_array_equal(as_is[i], np.load(logs[i]))
    parser = build_parser()
    for command in (["generate", "RUN", "--out", "x.mp4"], ["eval", "RUN"], ["compare", "A", "B", "--out", "o"],
                    ["score", "v.npy"]):
        args = parser.parse_args([*command, "--actions", str(logs[0]), "--alignment", "produces_next"])
        assert args.alignment == "produces_next"
    args = parser.parse_args(["generate", "RUN", "--out", "x.mp4", "--actions", str(logs[0]), "--alignment",
                              "produces_next"])
    np.testing.assert_array_equal(generation_options(args)["actions"], ds.actions[ds.files[0]])
    with pytest.raises(ValueError, match="--alignment produces_next says how to read --actions FILE"):
        generation_options(Namespace(**{**vars(args), "actions": None}))
