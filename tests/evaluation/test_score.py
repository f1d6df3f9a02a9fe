"""`resforce score`: any video file scored with the world's metrics; painted-over balls score worse."""

import json

import numpy as np
import pytest

from resforce.cli.main import main
from resforce.worlds.bouncing_balls.simulator import BouncingBalls, BouncingBallsConfig
from resforce.io.video_io import save_video

FRAMES, PREFIX = 24, 2


@pytest.fixture(scope="module")
def clips():
    """A 'rollout' (ground truth rendered by the world) and the same with its balls painted over
    with the background after the given frames."""
    video, states = BouncingBalls(BouncingBallsConfig(seed=5)).batch(2, FRAMES)
    rollout = video.numpy()
    painted = rollout.copy()
    bg = np.asarray(BouncingBallsConfig().background, np.float32) * 2 - 1
    painted[:, :, PREFIX:] = bg[None, :, None, None, None]
    return rollout, painted


def score(capsys, *args):
    main(["score", *map(str, args)])
    return capsys.readouterr().out


def failure(path):
    d = json.loads(path.read_text())
    return np.array([r["mean"]["failure"] for r in d["rows"]]), d


@pytest.mark.parametrize("ext", ["npy", "mp4"])
def test_painted_over_rollout_scores_worse(clips, tmp_path, capsys, ext):
    rollout, painted = clips
    files = {}
    for name, v in (("rollout", rollout), ("painted", painted)):
        files[name] = [tmp_path / f"{name}{i}.{ext}" for i in range(2)]
        for f, x in zip(files[name], v):
            np.save(f, x) if ext == "npy" else save_video(f, x)
    out = {}
    for name, fs in files.items():
        js = tmp_path / f"{name}.json"
        text = score(capsys, *fs, "--world", "bouncing_balls", "--prefix-frames", PREFIX, "--segment", 8, "--json", js,
                     "--frechet-reference", 16)
        assert "failure" in text and "16-24" in text
        out[name] = failure(js)
    (fr, dr), (fp, dp) = out["rollout"], out["painted"]
    assert dr["samples"] == 2 and dr["frames"] == FRAMES and dr["prefix_frames"] == PREFIX
    assert dr["files"] == [str(f) for f in files["rollout"]] and dr["world"] == "bouncing_balls"
    assert np.all(fr < 0.1)  # the world's own clips: near the floor
    assert np.all(fp > fr + 0.5)  # every segment of the painted one is far worse
    assert fp[1:] == pytest.approx(5 / 7, abs=1e-3)  # nothing left but the background
    lost = np.array(dp["per_sample_segments"]["lost"])
    assert np.all(lost[:, 1:] >= 1) and np.all(np.array(dr["per_sample_segments"]["lost"]) == 0)
    assert "frechet_floor" in dr["rows"][0]["mean"]
    if ext == "mp4":  # written 4x upscaled: scored back at the world's 32 px
        assert "block-averaged to 32x32" in " ".join(dr["notes"])


def test_layouts_batch_and_config(clips, tmp_path, capsys):
    rollout, _ = clips
    u8 = np.round((rollout.transpose(0, 2, 3, 4, 1) + 1) * 127.5).astype(np.uint8)  # (M,F,H,W,C) uint8
    np.save(tmp_path / "batch.npy", u8)
    np.save(tmp_path / "a.npy", rollout[0])
    js_b, js_a = tmp_path / "b.json", tmp_path / "a.json"
    score(capsys, tmp_path / "batch.npy", "--world", "bouncing_balls", "--segment", 8, "--json", js_b,
          "--frechet-reference", 0)
    score(capsys, tmp_path / "a.npy", "--world", "bouncing_balls", "--segment", 8, "--json", js_a,
          "--frechet-reference", 0)
    fb, db = failure(js_b)
    fa, _ = failure(js_a)
    assert db["samples"] == 2 and db["frechet_reference"] == {}
    assert db["per_sample_segments"]["failure"][0] == pytest.approx(failure(js_a)[1]["per_sample_segments"]["failure"][0], abs=0.02)
    # a run's config: its world and training length (segments beyond it are marked)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("stages:\n  - name: tf\n    steps: 1\n    clip_chunks: 8\n")
    text = score(capsys, tmp_path / "a.npy", "--world", "bouncing_balls", "--config", cfg, "--frechet-reference", 0)
    assert "8-16 *" in text and "16-24 *" in text


def test_clear_errors(clips, tmp_path, capsys):
    rollout, _ = clips
    np.save(tmp_path / "a.npy", rollout[0])
    np.save(tmp_path / "short.npy", rollout[0][:, :10])
    cases = [
        (["--world", "pong"], "--world 'pong'"),
        (["--world", "bouncing_balls", "--prefix-frames", str(FRAMES)], "--prefix-frames 24"),
        (["--world", "bouncing_balls", "--segment", "99"], "--segment 99"),
        (["--world", "bouncing_balls", "--config", str(tmp_path / "nope.yaml")], "nope.yaml"),
    ]
    for extra, msg in cases:
        with pytest.raises(SystemExit):
            main(["score", str(tmp_path / "a.npy"), *extra])
        assert msg in capsys.readouterr().err, msg
    with pytest.raises(SystemExit):
        main(["score", str(tmp_path / "a.npy"), str(tmp_path / "missing.mp4"), "--world", "bouncing_balls"])
    assert "missing.mp4" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score", str(tmp_path / "a.npy"), str(tmp_path / "short.npy"), "--world", "bouncing_balls"])
    assert "short.npy" in capsys.readouterr().err
    np.save(tmp_path / "big.npy", rollout[0] * 3)
    with pytest.raises(SystemExit):
        main(["score", str(tmp_path / "big.npy"), "--world", "bouncing_balls"])
    assert "[-1, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("game", ["pong", "breakout"])
def test_score_world_atari_game_reports_object_metrics(tmp_path, capsys, game):
    """`--world atari:GAME` scores with that game's object metrics: the world's own clips keep
    their objects, the same clips with the objects painted out after the given frames lose them
    (written as resforce writes .mp4: upscaled, scored back at 32x32)."""
    pytest.importorskip("ale_py", reason="the atari world needs ale-py: pip install 'resforce[atari]'")
    from resforce.config import DataConfig
    from resforce.worlds import world_of
    from resforce.worlds.atari import objects
    from resforce.worlds.atari.world import AtariConfig

    videos, _ = world_of(DataConfig(kind="atari", atari=AtariConfig(game=game, episode_frames=200))).clips(2, 16, seed=2)
    scene = objects._model(game, 32)[0].astype(np.float32) / 127.5 - 1
    missing = {}
    for name in ("clip", "gone"):
        v = videos.numpy().copy()
        if name == "gone":
            v[:, :, PREFIX:] = scene[None, :, None]
        files = [tmp_path / f"{name}{i}.mp4" for i in range(2)]
        for f, x in zip(files, v):
            save_video(f, x)
        js = tmp_path / f"{name}.json"
        text = score(capsys, *files, "--world", f"atari:{game}", "--segment", 8, "--frechet-reference", 0, "--json", js)
        assert f"with the atari:{game} metrics" in text and "reference objects: those found in the first 2" in text
        header = next(line for line in text.splitlines() if line.startswith("frames")).split()
        assert header[:4] == ["frames", "missing", "spurious", "ball_found"] and ("brick_error" in header) == (game == "breakout")
        missing[name] = [r["mean"]["missing"] for r in json.loads(js.read_text())["rows"]]
    assert missing["gone"][-1] >= 1 and missing["gone"][-1] > missing["clip"][-1] + 0.5, missing


def test_score_world_argument_errors(clips, tmp_path, capsys):
    np.save(tmp_path / "a.npy", clips[0][0])
    cases = [(["--world", "bouncing_balls:x"], "--world bouncing_balls:x: the bouncing_balls world takes no argument"),
             (["--world", "atari:pong", "--config", "configs/atari_pong_teacher.yaml"],
              "--world atari:pong: the run's config sets the atari world; with --run or --config give --world atari"),
             (["--world", "bouncing_balls", "--alignment", "produces_next"],
              "--alignment produces_next says how to read --actions FILE")]
    for extra, msg in cases:
        with pytest.raises(SystemExit):
            main(["score", str(tmp_path / "a.npy"), *extra])
        assert msg in capsys.readouterr().err, msg
