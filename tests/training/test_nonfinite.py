"""NaN/inf guard: a non-finite step is skipped, too many in a row stop the run naming the step,
no checkpoint ever holds NaN/inf, and generation refuses NaN in or out."""

import json

import numpy as np
import pytest
import torch

from resforce.training.checkpoint import checkpoint_dirs, latest_checkpoint, load_checkpoint, read_weights, save_weights
from resforce.cli.main import main
from resforce.config import load_config
from resforce.worlds.bouncing_balls.simulator import BouncingBalls
from resforce.training.loop import NonFiniteError, train
from tiny import tiny

RECIPE = "configs/bb_teacher.yaml"


def cfg(run, *extra):
    return load_config(RECIPE, tiny(run, "stages.0.steps=3", "stages.1.steps=3", *extra))


@pytest.fixture
def nan_pixel_at(monkeypatch):
    """nan_pixel_at({3, 4}): one NaN pixel in the clips of those (1-based) training steps."""
    steps = set()
    real = BouncingBalls.batch

    def batch(self, batch_size, num_frames=None):
        clips, states = real(self, batch_size, num_frames)
        if self.clips_emitted // batch_size in steps:
            clips[0, 0, 0, 0, 0] = float("nan")
        return clips, states

    monkeypatch.setattr(BouncingBalls, "batch", batch)
    return steps.update


def test_a_nonfinite_step_is_skipped_and_training_goes_on(tmp_path, nan_pixel_at):
    nan_pixel_at({3})
    with pytest.warns(UserWarning, match=r"step 3: loss nan.*step skipped \(1 in a row, max_nonfinite_skips=3\)"):
        train(cfg(tmp_path / "r", "ckpt_every=2"), progress=False)
    log = [json.loads(l) for l in open(tmp_path / "r" / "metrics.jsonl")]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6] and [r.get("skipped", False) for r in log][2]
    model, ema, state = load_checkpoint(latest_checkpoint(tmp_path / "r"))
    assert state["step"] == 6 and all(torch.isfinite(v).all() for v in [*model.values(), *ema.values()])


def test_too_many_nonfinite_steps_stop_with_an_error_naming_the_step(tmp_path, nan_pixel_at, capsys):
    nan_pixel_at({3, 4, 5, 6})
    with pytest.raises(SystemExit) as e:
        main(["train", RECIPE, *tiny(tmp_path / "r", "stages.0.steps=3", "stages.1.steps=3",
                                     "ckpt_every=1", "max_nonfinite_skips=2")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: step 5: loss nan" in err and "3 non-finite steps in a row (steps 3-5)" in err
    assert "max_nonfinite_skips=2" in err
    # checkpoints up to step 4 (3 and 4 are skipped steps: the weights of step 2), all finite
    dirs = checkpoint_dirs(tmp_path / "r")
    assert dirs[-1].name == "step_00000004"
    m2, m4 = load_checkpoint(dirs[0])[0], load_checkpoint(dirs[-1])[0]
    assert all(torch.equal(m2[k], m4[k]) for k in m2)


def test_a_skip_streak_survives_a_resume(tmp_path, nan_pixel_at):
    """The count of non-finite steps in a row is part of the checkpoint: a run stopped inside
    a streak stops at the same step after resuming as an uninterrupted run."""
    nan_pixel_at({3, 4, 5})
    with pytest.raises(NonFiniteError, match="step 5"):
        train(cfg(tmp_path / "a", "max_nonfinite_skips=2"), progress=False)
    train(cfg(tmp_path / "b", "max_nonfinite_skips=2"), stop_at=4, progress=False)
    with pytest.raises(NonFiniteError, match="step 5"):
        train(cfg(tmp_path / "b", "max_nonfinite_skips=2"), progress=False)


def test_diverged_weights_never_reach_a_checkpoint_and_the_last_good_one_survives(tmp_path, monkeypatch):
    """An update that overflows the weights (finite loss and gradient, inf after the step):
    the next checkpoint is refused, naming the step, and keep_last=1 rotation keeps the good one."""
    run = tmp_path / "r"
    train(cfg(run, "keep_last=1"), stop_at=2, progress=False)
    good = latest_checkpoint(run)
    real_step = torch.optim.AdamW.step

    def overflowing_step(self, *a, **k):
        out = real_step(self, *a, **k)
        self.param_groups[0]["params"][0].data.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing_step)
    with pytest.raises(ValueError, match=r"step 3: model weights hold NaN or inf \(at scale_shift_table\); "
                                         r"refusing to write .*step_00000003; the last finite checkpoint stays "
                                         r".*step_00000002"):
        train(cfg(run, "keep_last=1", "ckpt_every=1"), progress=False)
    assert checkpoint_dirs(run) == [good] and not list((run / "checkpoints").glob(".*"))
    assert all(torch.isfinite(v).all() for v in load_checkpoint(good)[0].values())


def test_generate_refuses_a_nonfinite_prefix_and_diverged_weights(tmp_path, capsys):
    run = tmp_path / "r"
    train(cfg(run), stop_at=1, progress=False)
    prefix = np.zeros((3, 1, 8, 8), dtype=np.float32)
    prefix[0, 0, 3, 3] = np.nan
    np.save(tmp_path / "p.npy", prefix)
    out = tmp_path / "out.npy"
    with pytest.raises(SystemExit):
        main(["generate", str(run), "--chunks", "2", "--prefix", str(tmp_path / "p.npy"), "--out", str(out)])
    assert "p.npy holds NaN or inf" in capsys.readouterr().err and not out.exists()
    sd, yaml = read_weights(latest_checkpoint(run) / "ema.safetensors")
    sd["proj_out.weight"][0, 0] = float("inf")
    save_weights(tmp_path / "nan.safetensors", sd, yaml)
    with pytest.raises(SystemExit):
        main(["generate", str(tmp_path / "nan.safetensors"), "--chunks", "2", "--out", str(out)])
    assert "nan.safetensors holds NaN or inf (tensor proj_out.weight)" in capsys.readouterr().err
    assert not out.exists()


def test_generate_refuses_nonfinite_output_of_finite_weights(tmp_path, capsys):
    run = tmp_path / "r"
    train(cfg(run), stop_at=1, progress=False)
    sd, yaml = read_weights(latest_checkpoint(run) / "ema.safetensors")
    sd = {k: v * 1e30 if k.startswith("proj_out") or "scale_shift" in k else v for k, v in sd.items()}
    assert all(torch.isfinite(v).all() for v in sd.values())
    save_weights(tmp_path / "huge.safetensors", sd, yaml)
    out = tmp_path / "out.npy"
    with pytest.raises(SystemExit):
        main(["generate", str(tmp_path / "huge.safetensors"), "--chunks", "2", "--out", str(out)])
    assert "huge.safetensors produced NaN or inf values" in capsys.readouterr().err and not out.exists()
