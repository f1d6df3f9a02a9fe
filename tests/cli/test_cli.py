"""Every strategy and a two-stage recipe end to end through the CLI; generate; errors."""

import subprocess
import sys

import numpy as np
import pytest

from resforce.cli.main import main
from tiny import tiny

RECIPES = ["bb_teacher", "bb_noise_aug", "bb_diffusion_forcing", "bb_parallel_resampling",
           "bb_resampling", "bb_resampling_routed"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_train_then_generate_every_recipe(tmp_path, recipe, capsys):
    run = tmp_path / recipe
    steps = [f"stages.{i}.steps=2" for i in range(3 if recipe.endswith("routed") else 2)]
    main(["train", f"configs/{recipe}.yaml", *tiny(run, *steps)])
    assert "run directory" in capsys.readouterr().out
    out = tmp_path / "roll.npy"
    main(["generate", str(run), "--chunks", "5", "--prefix-chunks", "1", "--out", str(out)])
    video = np.load(out)
    assert video.shape == (3, 6, 8, 8) and np.abs(video).max() <= 1.0


def test_generate_formats_and_routing_flags(tmp_path):
    run = tmp_path / "rf"
    main(["train", "configs/bb_resampling.yaml", *tiny(run, "stages.0.steps=1", "stages.1.steps=1")])
    for ext in ("mp4", "gif"):
        main(["generate", str(run), "--chunks", "4", "--batch", "2", "--out", str(tmp_path / f"v.{ext}")])
        assert (tmp_path / f"v.{ext}").stat().st_size > 0
    stats = tmp_path / "router.json"
    main(["generate", str(run), "--chunks", "6", "--topk", "2", "--out", str(tmp_path / "r.npy"),
          "--router-stats", str(stats)])
    assert stats.stat().st_size > 0 and stats.with_suffix(".png").stat().st_size > 0
    main(["generate", str(run), "--chunks", "4", "--window", "1", "--sink", "1", "--out", str(tmp_path / "w.npy")])
    a, b = np.load(tmp_path / "r.npy"), np.load(tmp_path / "w.npy")
    assert a.shape == (3, 6, 8, 8) and b.shape == (3, 4, 8, 8)


def test_bad_override_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "configs/bb_teacher.yaml", *tiny(tmp_path / "x", "optim.lrr=1")])
    assert "lrr" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "configs/nope.yaml"])
    assert "nope.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", str(tmp_path / "missing"), "--out", str(tmp_path / "a.npy")])
    assert "does not exist" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "resforce.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("train", "generate", "eval", "compare", "demo", "score"):
        assert cmd in out.stdout


def test_export_half_precision_generates_like_the_run(tmp_path):
    run = tmp_path / "rf"
    main(["train", "configs/bb_teacher.yaml", *tiny(run, "stages.0.steps=2", "stages.1.steps=0")])
    main(["export", str(run), "--out", str(tmp_path / "m.safetensors")])
    full, half = tmp_path / "a.npy", tmp_path / "b.npy"
    main(["generate", str(run), "--chunks", "3", "--out", str(full)])
    main(["generate", str(tmp_path / "m.safetensors"), "--chunks", "3", "--out", str(half)])
    a, b = np.load(full), np.load(half)
    assert a.shape == b.shape and 0 < np.abs(a - b).max() < 0.05  # fp16 rounding only
