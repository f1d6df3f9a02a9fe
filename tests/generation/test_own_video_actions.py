"""Your own videos with actions from the CLI: `generate` / `eval --actions FILE` (one action per
frame, prefix included; without --chunks they set the length), `play RUN --prefix FILE` (a
video whose frames start every episode), with errors that name the flag."""

import numpy as np
import pytest

from resforce.cli.main import main
from resforce.config import load_config
from resforce.io.video_io import save_video
from resforce.training.loop import train
from tiny import tiny

FRAMES = 12


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    videos = root / "videos"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        save_video(videos / f"{name}.mp4", rng.uniform(-1, 1, (3, FRAMES, 8, 8)).astype(np.float32), scale=1)
        np.save(videos / f"{name}.actions.npy", rng.integers(0, 4, FRAMES))
    cfg = load_config(None, tiny(root / "run", "data.kind=video_folder", f"data.video_folder.root={videos}",
                                 "data.video_folder.resolution=8", "data.video_folder.actions.kind=discrete",
                                 "data.video_folder.actions.n=4", "model.action_kind=discrete", "model.action_dim=4",
                                 "stages.0.clip_chunks=3", "stages.0.steps=2"))
    train(cfg, progress=False)
    return root


def test_generate_with_a_prefix_file_and_actions(folder_run, capsys):
    root = folder_run
    np.save(root / "acts.npy", np.r_[-1, np.arange(FRAMES - 1) % 4, [0, 1, 2, 3]].astype(np.int64))  # 12 given + 4
    out = root / "gen.npy"
    main(["generate", str(root / "run"), "--prefix", str(root / "videos" / "a.mp4"), "--actions",
          str(root / "acts.npy"), "--out", str(out), "--steps", "1"])
    assert "wrote" in capsys.readouterr().out
    assert np.load(out).shape == (3, FRAMES + 4, 8, 8)  # the actions set the length


def test_actions_errors_name_the_flag(folder_run, capsys):
    root = folder_run
    np.save(root / "short.npy", np.zeros(3, dtype=np.int64))
    np.save(root / "big.npy", np.full(FRAMES + 2, 7, dtype=np.int64))
    prefix = ["--prefix", str(root / "videos" / "a.mp4")]
    for argv, match in [(["--actions", str(root / "short.npy")], "--actions: 3 actions for 12 given frame(s)"),
                        (["--actions", str(root / "big.npy")], "--actions: action 7 at frame 0 is outside"),
                        (["--actions", str(root / "nope.npy")], "--actions"),
                        (["--actions", str(root / "short.npy"), "--chunks", "4"],
                         "--actions: 3 actions for 12 given + 4 generated = 16 frames")]:
        with pytest.raises(SystemExit):
            main(["generate", str(root / "run"), *prefix, *argv, "--out", str(root / "x.npy"), "--steps", "1"])
        assert match in capsys.readouterr().err


def test_play_starts_from_the_prefix_file(folder_run):
    pytest.importorskip("starlette", reason="resforce play needs starlette (pip install 'resforce[play]')")
    from resforce.play.sources import ModelSource

    root = folder_run
    with pytest.raises(ValueError, match="--prefix FILE"):
        ModelSource.from_run(root / "run", steps=1)
    src = ModelSource.from_run(root / "run", steps=1, prefix=root / "videos" / "b.mp4")
    first = src.reset(0)
    from resforce.io.video_io import load_video

    last = np.clip(np.rint((load_video(root / "videos" / "b.mp4")[:, -1].numpy().transpose(1, 2, 0) + 1) * 127.5), 0, 255)
    assert np.array_equal(first[-1], last.astype(np.uint8))
    assert src.step(2).shape[-3:] == (8, 8, 3)
    with pytest.raises(ValueError, match=r"--prefix .*a\.actions\.npy"):
        ModelSource.from_run(root / "run", steps=1, prefix=root / "videos" / "a.actions.npy")
