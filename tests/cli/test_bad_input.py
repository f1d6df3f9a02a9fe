"""Every bad input gets a clear, early error and touches nothing.

Each case runs `resforce ...` in-process and must: exit non-zero, print a message that names
the culprit (key, flag or file) and what was expected, never reach a training step or a
rollout, and leave every file that existed before (a trained run, an earlier output)
byte-for-byte as it was.
"""

from pathlib import Path

import numpy as np
import pytest

from resforce.generation import generate as sampling

from resforce.training import loop as train_module
from resforce.cli.main import main
from resforce.training.runlock import RunLock
from resforce.io.video_io import save_video
from tiny import tiny

TEACHER = "configs/bb_teacher.yaml"


def tr(run, *extra):
    return ["train", TEACHER, *tiny(run, "stages.0.steps=2", "stages.1.steps=0", *extra)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained run, an earlier output, prefixes, damaged weights, a video folder, another model."""
    root = tmp_path_factory.mktemp("world")
    P = {"root": root, "run": root / "run", "out": root / "outputs" / "old.npy", "scratch": root / "scratch"}
    main(tr(P["run"]))
    main(tr(root / "big", "model.num_layers=3"))
    P["out"].parent.mkdir()
    np.save(P["out"], np.linspace(-1, 1, 3 * 2 * 8 * 8, dtype=np.float32).reshape(3, 2, 8, 8))
    P["scratch"].mkdir()
    prefixes = {"ok": np.zeros((3, 1, 8, 8), np.float32), "wrong_res": np.zeros((3, 1, 16, 16), np.float32),
                "uint8": np.full((3, 1, 8, 8), 200.0, np.float32), "nan": np.full((3, 1, 8, 8), np.nan, np.float32)}
    for name, array in prefixes.items():
        np.save(root / f"{name}.npy", array)
    ema = P["run"] / "checkpoints" / "step_00000002" / "ema.safetensors"
    (root / "truncated.safetensors").write_bytes(ema.read_bytes()[:-64])
    videos = root / "videos"
    videos.mkdir()
    save_video(videos / "clip00.mp4", np.zeros((3, 20, 16, 16), np.float32), scale=1)
    for i in range(1, 40):
        (videos / f"clip{i:02d}.mp4").write_bytes((videos / "clip00.mp4").read_bytes())
    (videos / "clip17.mp4").write_bytes(np.random.default_rng(0).bytes(5000))  # 1 corrupt in 40
    return P


def snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and "scratch" not in p.parts}


# (id, argv from the paths, substrings the error must contain: the culprit and what was expected)
CASES = [
    # --- training config: validated when the config loads
    ("ckpt_every=0", lambda P: tr(P["run"], "ckpt_every=0"), ["ckpt_every=0", "integer >= 1"]),
    ("log_every=0", lambda P: tr(P["run"], "log_every=0"), ["log_every=0", "integer >= 1"]),
    ("grad_accum=0", lambda P: tr(P["run"], "optim.grad_accum=0"), ["optim.grad_accum=0", "integer >= 1"]),
    ("ema_decay=-1", lambda P: tr(P["run"], "optim.ema_decay=-1"), ["optim.ema_decay=-1", "[0, 1]"]),
    ("batch_size=0", lambda P: tr(P["run"], "optim.batch_size=0"), ["optim.batch_size=0", "integer >= 1"]),
    ("batch_not_multiple", lambda P: tr(P["run"], "optim.batch_size=3", "optim.grad_accum=2"),
     ["optim.batch_size=3", "multiple of optim.grad_accum=2"]),
    ("lr_negative", lambda P: tr(P["run"], "optim.lr=-0.1"), ["optim.lr=-0.1", "finite number > 0"]),
    ("lr_nan", lambda P: tr(P["run"], "optim.lr=.nan"), ["optim.lr=nan", "finite number > 0"]),
    ("keep_last=-1", lambda P: tr(P["run"], "keep_last=-1"), ["keep_last=-1", "integer >= 0"]),
    ("max_nonfinite_skips=-1", lambda P: tr(P["run"], "max_nonfinite_skips=-1"),
     ["max_nonfinite_skips=-1", "integer >= 0"]),
    ("in_channels", lambda P: tr(P["run"], "model.in_channels=4"),
     ["model.in_channels=4", "3-channel RGB clips"]),
    ("resolution_vs_patch", lambda P: tr(P["run"], "data.bouncing_balls.resolution=10"),
     ["data.bouncing_balls.resolution=[10, 10]", "multiple of the model's patch size 4x4"]),
    ("clip_chunks=0", lambda P: tr(P["run"], "stages.0.clip_chunks=0"), ["stages.0", "clip_chunks >= 1"]),
    ("sample.chunks=0", lambda P: tr(P["run"], "sample.chunks=0"), ["sample.chunks=0", "integer >= 1"]),
    ("unknown_key", lambda P: tr(P["run"], "optim.lrr=1"), ["lrr"]),
    ("wrong_type", lambda P: tr(P["run"], "optim.lr=fast"), ["optim.lr", "fast"]),
    ("missing_config", lambda P: ["train", "configs/nope.yaml"], ["nope.yaml", "does not exist"]),
    ("video_root_missing", lambda P: tr(P["scratch"] / "v", "data.kind=video_folder",
                                       f"data.video_folder.root={P['root'] / 'no_such_dir'}",
                                       "data.video_folder.resolution=8"),
     ["no_such_dir", "is not a directory"]),
    ("corrupt_video_at_start", lambda P: tr(P["scratch"] / "v", "data.kind=video_folder",
                                           f"data.video_folder.root={P['root'] / 'videos'}",
                                           "data.video_folder.resolution=8"),
     ["1 of 40 video file(s) cannot be opened", "clip17.mp4", "expected readable video containers"]),
    # --- training flags and run directories
    ("no_resume_used_dir", lambda P: [*tr(P["run"]), "--no-resume"], ["already holds a run", "--overwrite"]),
    ("stop_at=0", lambda P: [*tr(P["run"]), "--stop-at", "0"], ["--stop-at 0", "global step >= 1"]),
    ("init_from_missing", lambda P: [*tr(P["scratch"] / "fresh"), "--init-from", str(P["root"] / "nope")],
     ["--init-from", "nope does not exist", "run directory or a checkpoint directory"]),
    ("init_from_other_size", lambda P: [*tr(P["scratch"] / "b"), "--init-from", str(P["root"] / "big")],
     ["big/checkpoints/step_00000002 holds another model", "unexpected, e.g. blocks.2"]),
    ("resume_other_size", lambda P: tr(P["run"], "model.ffn_dim=24"),
     ["run/checkpoints/step_00000002 holds another model", "expected by this config"]),
    ("run_dir_locked", lambda P: tr(P["run"]), ["in use by another trainer (PID", ".lock"]),
    # --- generate
    ("chunks=0", lambda P: ["generate", str(P["run"]), "--chunks", "0", "--out", str(P["out"])],
     ["--chunks 0", "integer >= 1"]),
    ("chunks<0", lambda P: ["generate", str(P["run"]), "--chunks", "-3", "--out", str(P["out"])],
     ["--chunks -3", "integer >= 1"]),
    ("batch=0", lambda P: ["generate", str(P["run"]), "--batch", "0", "--out", str(P["out"])],
     ["--batch 0", "integer >= 1"]),
    ("steps=0", lambda P: ["generate", str(P["run"]), "--steps", "0", "--out", str(P["out"])],
     ["--steps 0", "integer >= 1"]),
    ("prefix_chunks<0", lambda P: ["generate", str(P["run"]), "--prefix-chunks", "-1", "--out", str(P["out"])],
     ["--prefix-chunks -1", "integer >= 0"]),
    ("fps=0", lambda P: ["generate", str(P["run"]), "--fps", "0", "--out", str(P["out"])], ["--fps 0", ">= 1"]),
    ("topk=0", lambda P: ["generate", str(P["run"]), "--topk", "0", "--out", str(P["out"])], ["--topk 0", ">= 1"]),
    ("history_noise=2", lambda P: ["generate", str(P["run"]), "--history-noise", "2", "--out", str(P["out"])],
     ["--history-noise 2", "[0, 1]"]),
    ("out_avi", lambda P: ["generate", str(P["run"]), "--out", str(P["scratch"] / "x.avi")],
     ["x.avi", "unsupported extension '.avi'", ".mp4"]),
    ("out_is_dir", lambda P: ["generate", str(P["run"]), "--out", str(P["scratch"] / "d.npy")],
     ["d.npy is a directory"]),
    ("router_stats_ext", lambda P: ["generate", str(P["run"]), "--out", str(P["out"]),
                                    "--router-stats", str(P["scratch"] / "r.txt")], ["--router-stats", ".json"]),
    ("prefix_resolution", lambda P: ["generate", str(P["run"]), "--prefix", str(P["root"] / "wrong_res.npy"),
                                     "--out", str(P["out"])],
     ["--prefix", "3 channels of 16x16 pixels", "expects 3 channels of 8x8"]),
    ("prefix_uint8_range", lambda P: ["generate", str(P["run"]), "--prefix", str(P["root"] / "uint8.npy"),
                                      "--out", str(P["out"])], ["uint8.npy has values in [200, 200]", "[-1, 1]"]),
    ("prefix_nan", lambda P: ["generate", str(P["run"]), "--prefix", str(P["root"] / "nan.npy"),
                              "--out", str(P["out"])], ["nan.npy holds NaN or inf", "finite pixels"]),
    ("prefix_missing", lambda P: ["generate", str(P["run"]), "--prefix", str(P["root"] / "gone.npy"),
                                  "--out", str(P["out"])], ["gone.npy", "not found"]),
    ("prefix_extension", lambda P: ["generate", str(P["run"]), "--prefix", str(P["root"] / "ok.txt"),
                                    "--out", str(P["out"])], ["ok.txt", "unsupported extension"]),
    ("run_missing", lambda P: ["generate", str(P["root"] / "nowhere"), "--out", str(P["out"])],
     ["nowhere does not exist", "run directory"]),
    ("weights_truncated", lambda P: ["generate", str(P["root"] / "truncated.safetensors"), "--out", str(P["out"])],
     ["truncated.safetensors is truncated or damaged", "header promises"]),
    # --- eval / compare / export
    ("eval_samples=0", lambda P: ["eval", str(P["run"]), "--samples", "0"], ["--samples 0", "integer >= 1"]),
    ("eval_chunks=-1", lambda P: ["eval", str(P["run"]), "--chunks", "-1"], ["--chunks -1", "integer >= 1"]),
    ("eval_segment=0", lambda P: ["eval", str(P["run"]), "--segment", "0"], ["--segment 0", "integer >= 1"]),
    ("eval_json_ext", lambda P: ["eval", str(P["run"]), "--json", str(P["scratch"] / "m.csv")], ["--json", ".json"]),
    ("compare_samples=0", lambda P: ["compare", str(P["run"]), "--out", str(P["scratch"] / "c"), "--samples", "0"],
     ["--samples 0", "integer >= 1"]),
    ("export_truncated", lambda P: ["export", str(P["root"] / "truncated.safetensors"),
                                    "--out", str(P["scratch"] / "e.safetensors")],
     ["truncated.safetensors is truncated or damaged"]),
]


@pytest.mark.parametrize("name,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_early_error_that_touches_nothing(world, name, argv, expected, capsys, monkeypatch):
    monkeypatch.setattr(sampling, "rollout", lambda *a, **k: pytest.fail("a rollout ran before the error"))
    monkeypatch.setattr(train_module.Trainer, "train_step", lambda *a, **k: pytest.fail("a training step ran"))
    if name == "out_is_dir":
        (world["scratch"] / "d.npy").mkdir(exist_ok=True)
    before = snapshot(world["root"])
    lock = RunLock(world["run"]).acquire() if name == "run_dir_locked" else None
    try:
        with pytest.raises(SystemExit) as e:
            main(argv(world))
    finally:
        if lock:
            lock.release()
    assert e.value.code not in (0, None)
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, f"{text!r} missing from: {err}"
    assert snapshot(world["root"]) == before
    assert not (world["scratch"] / "fresh").exists()  # a refused new run leaves no run directory


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25
