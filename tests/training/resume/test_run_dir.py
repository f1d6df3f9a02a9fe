"""One trainer per run directory; a fresh start never mixes with, or deletes, an old run;
a half-written metrics line does not block a resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resforce.training.checkpoint import checkpoint_dirs, latest_checkpoint, load_checkpoint
from resforce.cli.main import main
from resforce.config import load_config
from resforce.training.runlock import RunLock, RunLocked
from resforce.training.loop import Trainer, train
from tiny import tiny

ROOT = Path(__file__).resolve().parents[3]
RECIPE = "configs/bb_teacher.yaml"


def args(run, *extra):
    return tiny(run, "stages.0.steps=2", "stages.1.steps=1", *extra)


def cfg(run, *extra):
    return load_config(RECIPE, args(run, *extra))


def holder(lock_dir: Path):
    """Another process holding the run lock (it prints its PID once it holds it)."""
    code = ("import sys, time; from resforce.training.runlock import RunLock; "
            f"lk = RunLock({str(lock_dir)!r}).acquire(); print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env={"PYTHONPATH": str(ROOT / "src")})
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_trainer_fails_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "r"
    p = holder(run)
    try:
        with pytest.raises(SystemExit) as e:
            main(["train", RECIPE, *args(run)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"in use by another trainer (PID {p.pid}" in err and str(run / ".lock") in err
        assert not (run / "checkpoints").exists() and not (run / "config.yaml").exists()
    finally:
        p.kill()
        p.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_said(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "r"
    run.mkdir()
    (run / ".lock").write_text(f"{dead.pid}\n")  # what a kill -9 leaves behind
    with pytest.warns(UserWarning, match=rf"took over the stale lock .* of PID {dead.pid} \(no longer running"):
        train(cfg(run), progress=False)
    assert latest_checkpoint(run).name == "step_00000003"
    assert (run / ".lock").read_text() == ""  # released cleanly


def test_the_lock_is_held_for_the_run_and_released_after(tmp_path):
    t = Trainer(cfg(tmp_path / "r"), progress=False)
    with pytest.raises(RunLocked, match="in use"):
        RunLock(tmp_path / "r").acquire()
    t.run()
    RunLock(tmp_path / "r").acquire().release()  # free again
    with pytest.raises(ValueError, match="holds another model") as failed:  # a failed start lets go too
        Trainer(cfg(tmp_path / "r", "model.num_layers=3"), progress=False)
    RunLock(tmp_path / "r").acquire().release()  # even while its traceback (and the Trainer) lives on
    assert failed.value is not None


def test_no_resume_on_a_used_run_dir_is_refused(tmp_path, capsys):
    run = tmp_path / "r"
    train(cfg(run), stop_at=2, progress=False)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit):
        main(["train", RECIPE, *args(run, "optim.lr=0.01"), "--no-resume"])
    err = capsys.readouterr().err
    assert f"run_dir {run} already holds a run (checkpoints up to step_00000002)" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_overwrite_moves_the_old_run_aside_whole_and_starts_clean(tmp_path):
    run = tmp_path / "r"
    train(cfg(run, "ckpt_every=1", "keep_last=5", "stages.0.steps=5"), progress=False)  # old run: 6 steps
    old = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.warns(UserWarning, match="moved the previous run"):
        train(cfg(run, "ckpt_every=1", "keep_last=5"), resume=False, overwrite=True, progress=False)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("r.old-")]
    assert len(aside) == 1
    assert {p.relative_to(aside[0]): p.read_bytes() for p in aside[0].rglob("*")
            if p.is_file() and p.name != ".lock"} == old
    # the new run is whole and alone: its own 3 checkpoints (none rotated away by the old
    # run's higher steps), its own metrics, and the weights of a fresh run
    assert [d.name for d in checkpoint_dirs(run)] == ["step_00000001", "step_00000002", "step_00000003"]
    assert [json.loads(l)["step"] for l in open(run / "metrics.jsonl")] == [1, 2, 3]
    train(cfg(tmp_path / "fresh"), progress=False)
    a, b = load_checkpoint(latest_checkpoint(run))[0], load_checkpoint(latest_checkpoint(tmp_path / "fresh"))[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_half_written_metrics_line_is_skipped_with_a_warning(tmp_path):
    run = tmp_path / "r"
    train(cfg(run, "ckpt_every=1"), stop_at=2, progress=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "stage": "warm')  # the disk filled up mid-line
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: skipped 1 unreadable line\(s\) \(line 3\)"):
        train(cfg(run, "ckpt_every=1"), progress=False)
    assert [json.loads(l)["step"] for l in open(run / "metrics.jsonl")] == [1, 2, 3]
