"""`resforce score` is right or refuses: the world from the video's own run, sizes that must
match it, grids that resforce wrote split into their samples, .npy and .mp4 of one rollout
scored alike; and `generate`'s memory is estimated before a rollout starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import resforce
from resforce.cli.main import main
from resforce.cli.score import _run_config, score_files
from cli_errors import cli_error  # noqa: E402

SHIPPED = Path(resforce.__file__).parent / "assets" / "demo" / "teacher_forcing.safetensors"
CODEC_TOLERANCE = 0.02
"""Largest |failure(.mp4) - failure(.npy)| per segment for one rollout. H.264 at crf 18 on an
8x nearest-neighbour upscale, block-averaged back to the world's pixels, moves the per-segment
failure by <= 0.002 on these rollouts (measured); 0.02 leaves 10x headroom and is still well
below what the wrong world geometry shifts it by (0.059 -> 0.071 for the same rollout), and
below the spread between samples (standard error ~0.1)."""


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory):
    if not SHIPPED.is_file():
        pytest.skip(f"no shipped model at {SHIPPED}")
    root = tmp_path_factory.mktemp("rollouts")
    for name, batch in (("one.npy", 1), ("one.mp4", 1), ("four.npy", 4), ("four.mp4", 4)):
        main(["generate", str(SHIPPED), "--out", str(root / name), "--batch", str(batch), "--seed", "3",
              "--chunks", "12", "--steps", "4"])  # the files, not the quality, are tested: few steps
    return root


def failures(ev) -> list[float]:
    return [r["failure"][0] if isinstance(r["failure"], tuple) else r["failure"] for r in ev.rows]


def rows_failure(paths, cfg):
    ev, notes = score_files(paths, cfg, frechet_reference=0)
    return ev, notes




def mean_failure(ev) -> float:
    return float(np.nanmean(ev.per_frame["failure"]))


def test_npy_and_mp4_of_one_rollout_score_alike_in_the_runs_world(rollouts):
    cfg = _run_config("--run", str(SHIPPED))
    npy, _ = rows_failure([rollouts / "one.npy"], cfg)
    mp4, notes = rows_failure([rollouts / "one.mp4"], cfg)
    assert "8 x the world's 16 px" in notes[0]
    a, b = np.asarray(npy.per_frame["failure"]), np.asarray(mp4.per_frame["failure"])
    seg = 8
    for i in range(0, a.shape[-1], seg):
        assert abs(np.nanmean(a[..., i:i + seg]) - np.nanmean(b[..., i:i + seg])) <= CODEC_TOLERANCE


def test_a_grid_that_generate_wrote_is_split_into_its_samples(rollouts):
    cfg = _run_config("--run", str(SHIPPED))
    grid, notes = rows_failure([rollouts / "four.mp4"], cfg)
    batch, _ = rows_failure([rollouts / "four.npy"], cfg)
    assert grid.summary()["samples"] == 4 and "a grid of 4 videos side by side" in notes[0]
    assert abs(mean_failure(grid) - mean_failure(batch)) <= CODEC_TOLERANCE


def test_the_run_gives_the_world_and_config_takes_a_weights_file(rollouts, capsys):
    main(["score", str(rollouts / "one.npy"), "--run", str(SHIPPED), "--frechet-reference", "0"])
    out = capsys.readouterr().out
    assert f"world of --run {SHIPPED}" in out and "bouncing_balls" in out
    main(["score", str(rollouts / "one.npy"), "--world", "bouncing_balls", "--config", str(SHIPPED),
          "--frechet-reference", "0"])
    assert f"world of --config {SHIPPED}" in capsys.readouterr().out


def test_a_grid_scored_against_another_world_is_refused_naming_both_sizes(rollouts, capsys):
    err = cli_error(["score", str(rollouts / "four.mp4"), "--world", "bouncing_balls"], capsys)
    assert "four.mp4: frames are 128x560 px but the world scored against is 32x32 px" in err and "--run" in err


def test_an_upscaled_video_of_a_smaller_world_is_refused(rollouts, capsys):
    """128 px frames of the 16-px run would pass as 4 x the default 32-px world: the 8x
    nearest-neighbour blocks say otherwise."""
    err = cli_error(["score", str(rollouts / "one.mp4"), "--world", "bouncing_balls"], capsys)
    assert "frames of 128x128 px are a 8x upscale of 16x16 px videos, but the world scored against is 32x32" in err


@pytest.mark.parametrize("side", [7, 1])
def test_a_video_of_another_size_is_refused(tmp_path, side, capsys):
    p = tmp_path / f"v{side}.npy"
    np.save(p, np.zeros((3, 6, side, side), np.float32))
    err = cli_error(["score", str(p), "--world", "bouncing_balls"], capsys)
    assert f"frames are {side}x{side} px but the world scored against is 32x32 px" in err


def test_a_directory_is_not_a_video_or_a_config(tmp_path, capsys):
    err = cli_error(["score", str(tmp_path), "--world", "bouncing_balls"], capsys)
    assert f"{tmp_path} is a directory: expected a video file" in err
    v = tmp_path / "v.npy"
    np.save(v, np.zeros((3, 6, 32, 32), np.float32))
    err = cli_error(["score", str(v), "--world", "bouncing_balls", "--config", str(tmp_path)], capsys)
    assert f"--config {tmp_path} is a directory: expected a run's config.yaml" in err


def test_score_needs_a_world_it_knows_and_a_run_that_exists(tmp_path, capsys):
    v = tmp_path / "v.npy"
    np.save(v, np.zeros((3, 6, 16, 16), np.float32))
    assert "give --run RUN" in cli_error(["score", str(v)], capsys)
    err = cli_error(["score", str(v), "--run", str(SHIPPED), "--world", "marbles"], capsys)
    assert "--world 'marbles' is not a known world" in err
    err = cli_error(["score", str(v), "--run", str(SHIPPED), "--world", "agent_balls"], capsys)
    assert "data.kind is 'bouncing_balls', not --world 'agent_balls'" in err
    err = cli_error(["score", str(v), "--run", str(tmp_path / "nope")], capsys)
    assert f"--run {tmp_path / 'nope'}: " in err and "does not exist" in err


def test_a_text_file_named_npy_never_suggests_allow_pickle(tmp_path, capsys):
    p = tmp_path / "notes.npy"
    p.write_text("just some text\n")
    for argv in (["score", str(p), "--world", "bouncing_balls"],
                 ["generate", str(SHIPPED), "--out", str(tmp_path / "o.npy"), "--prefix", str(p)]):
        err = cli_error(argv, capsys)
        assert f"{p}" in err and "not a numeric .npy array" in err and "allow_pickle" not in err


def test_a_rollout_that_cannot_fit_in_memory_is_refused_up_front(tmp_path, capsys):
    import time

    t0 = time.monotonic()
    err = cli_error(["generate", str(SHIPPED), "--out", str(tmp_path / "o.npy"), "--chunks", "100000000",
                     "--batch", "100000"], capsys)
    assert "--batch 100000 x --chunks 100000000: the rollout needs about" in err and "GiB available here" in err
    assert time.monotonic() - t0 < 30 and not (tmp_path / "o.npy").exists()


def test_eval_names_samples_when_its_rollout_cannot_fit(tmp_path, capsys):
    err = cli_error(["eval", str(SHIPPED), "--samples", "100000", "--chunks", "10000000"], capsys)
    assert "--samples 100000 x --chunks 10000000: the rollout needs about" in err


@pytest.mark.parametrize("shape", [(0, 3, 8, 16, 16), (3, 0, 16, 16), (3, 4, 0, 16)])
def test_an_empty_video_array_is_named(tmp_path, capsys, shape):
    """An empty batch, no frames or no rows: one error line naming the file and its shape, not
    numpy's 'zero-size array to reduction operation'."""
    v = tmp_path / "empty.npy"
    np.save(v, np.zeros(shape, np.float32))
    err = cli_error(["score", str(v), "--run", str(SHIPPED)], capsys)
    assert f"{v}: an empty video array of shape {shape}" in err
