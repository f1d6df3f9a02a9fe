"""Crashes: a trainer killed with SIGKILL (at random points, and inside a checkpoint write)
resumes to the same weights, bit for bit, as a run that was never interrupted; a checkpoint
write that fills the disk fails cleanly and leaves the previous checkpoint whole.

The killed trainers are real `resforce train` processes. This file is also their driver script:
run as a program it trains like `resforce train`, printing each finished step, and with
PAUSE_IN_SAVE=N it stops inside the write of checkpoint N (after the weights and state files
are in the temporary directory, before it is renamed into place) so the test can kill it there.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
RECIPE = "configs/bb_resampling.yaml"
SEED = 20240917  # of the random kill points; printed on failure


def overrides(run_dir):
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from tiny import tiny
    return tiny(run_dir, "stages.0.steps=4", "stages.1.steps=4", "ckpt_every=1", "keep_last=2",
                "optim.grad_accum=2", "device=cpu")


# ----------------------------------------------------------------------------- the driver
def _driver(run_dir: str) -> None:
    import resforce.training.checkpoint as ck
    from resforce.cli.main import main
    from resforce.training.loop import Trainer

    pause = int(os.environ.get("PAUSE_IN_SAVE", "0"))
    real_save_state, real_step = ck.save_state, Trainer.train_step

    def save_state(directory, state, name="state", **kw):
        real_save_state(directory, state, name, **kw)
        if state["step"] == pause:
            print(f"paused in save {pause}", flush=True)
            time.sleep(600)

    def train_step(self):
        m = real_step(self)
        print(f"step {m['step']}", flush=True)
        return m

    ck.save_state, Trainer.train_step = save_state, train_step
    main(["train", str(ROOT / RECIPE), *overrides(run_dir)])


# ----------------------------------------------------------------------------- helpers
def _start(run_dir: Path, **env) -> subprocess.Popen:
    e = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests' / 'support'}",
         "OMP_NUM_THREADS": str(torch.get_num_threads()), **env}
    return subprocess.Popen([sys.executable, __file__, str(run_dir)], cwd=ROOT, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(p: subprocess.Popen, line: str, timeout: float = 120) -> None:
    t0 = time.time()
    for got in p.stdout:
        if got.strip() == line:
            return
        assert time.time() - t0 < timeout, f"no {line!r} in time"
    raise AssertionError(f"process ended before printing {line!r}: rc={p.wait()} {p.stderr.read()[-3000:]}")


def _kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL


def _everything(run_dir: Path):
    from resforce.training.checkpoint import latest_checkpoint, load_checkpoint
    return load_checkpoint(latest_checkpoint(run_dir))


def _assert_identical(a: Path, b: Path, note: str = "") -> None:
    (ma, ea, sa), (mb, eb, sb) = _everything(a), _everything(b)
    assert sa["step"] == sb["step"] == 8, note
    for k in ma:
        assert torch.equal(ma[k], mb[k]) and torch.equal(ea[k], eb[k]), f"{k} differs {note}"
    for i, st in sa["optimizer"]["state"].items():
        for name, v in st.items():
            assert torch.equal(v, sb["optimizer"]["state"][i][name]), f"optimizer {i}.{name} differs {note}"
    steps = [json.loads(line)["step"] for line in open(b / "metrics.jsonl")]
    assert steps == list(range(1, 9)), f"metrics log {steps} {note}"


# ----------------------------------------------------------------------------- tests
def _reference(tmp_path: Path) -> Path:
    from resforce.config import load_config
    from resforce.training.loop import train

    train(load_config(RECIPE, overrides(tmp_path / "reference")), progress=False)
    return tmp_path / "reference"


def _finish(run: Path) -> str:
    """Resume to the end; the leftovers of the kills are cleaned up. Returns stderr."""
    p = _start(run)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err[-3000:]
    assert not [q.name for q in (run / "checkpoints").iterdir() if q.name.startswith(".")]
    return err


def test_sigkill_inside_a_checkpoint_write_resumes_bit_identical(tmp_path):
    reference = _reference(tmp_path)
    run = tmp_path / "killed"
    p = _start(run, PAUSE_IN_SAVE="3")  # stops with checkpoint 3's files in .tmp_step_00000003
    _wait_for(p, "paused in save 3")
    _kill(p)
    ckpts = run / "checkpoints"
    assert (ckpts / ".tmp_step_00000003" / "state.json").is_file() and not (ckpts / "step_00000003").exists()
    err = _finish(run)
    assert "took over the stale lock" in err and "removed .tmp_step_00000003" in err
    _assert_identical(reference, run)


@pytest.mark.slow
def test_sigkill_at_random_points_resumes_bit_identical(tmp_path):
    """Killed 3 times at random points (mid-step, mid-save, mid-log: wherever they fall)."""
    rng = random.Random(SEED)
    reference = _reference(tmp_path)
    run = tmp_path / "killed"
    done = 0
    for _ in range(3):
        p = _start(run)
        done = rng.randint(done + 1, done + 2)  # at least one step further each time
        _wait_for(p, f"step {done}")
        time.sleep(rng.uniform(0.0, 0.3))
        _kill(p)
    _finish(run)
    _assert_identical(reference, run, f"(kill points from random seed {SEED})")


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root / CAP_SYS_ADMIN; skipped with the reason otherwise)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_checkpoint_write_that_fills_the_disk_fails_cleanly(small_disk, tmp_path, capsys):
    from resforce.training.checkpoint import checkpoint_dirs, load_checkpoint
    from resforce.cli.main import main

    run = small_disk / "run"
    args = ["train", RECIPE, *overrides(run)]
    main([*args, "--stop-at", "2"])
    kept = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    size = sum(len(b) for b in kept.values()) // 2  # of one checkpoint
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (free - size // 2))  # room for metrics and half a checkpoint
    with pytest.raises(SystemExit) as e:
        main([*args, "--stop-at", "4"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "could not write checkpoint" in err and "No space left on device" in err
    assert "earlier checkpoints are untouched" in err
    assert [d.name for d in checkpoint_dirs(run)] == ["step_00000001", "step_00000002"]
    assert {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()} == kept
    assert not [q.name for q in (run / "checkpoints").iterdir() if q.name.startswith(".")]
    load_checkpoint(run / "checkpoints" / "step_00000002")
    # with space again, the run goes on from step 2 to the end like an uninterrupted one
    filler.unlink()
    main(args)
    main(["train", RECIPE, *overrides(tmp_path / "reference")])
    _assert_identical(tmp_path / "reference", run)


if __name__ == "__main__":  # a trainer for the kill test
    _driver(sys.argv[1])
