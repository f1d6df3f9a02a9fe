"""Sharded checkpoints (checkpoint_format=sharded, resforce.training.sharded_checkpoint): 2 CPU
ranks with Gloo under torchrun, FSDP2, every rank writing its own pieces with DCP.

Two torchrun launches serve every test here (a module fixture); this file is their script
(`_driver`). The first is killed with SIGKILL while rank 0 is inside the write of checkpoint 4
(every shard written, state.json in the temporary directory, not yet renamed into place). The
second trains an uninterrupted run, the same run stopped at step 4 and resumed by a fresh
Trainer, resumes the killed run, resumes a checkpoint saved by one process, and dumps the state
gathered in full (FSDP's full state dicts) to compare the shards with. The tests then check the
files: data only, exact resume, resume on another number of ranks (2 -> 1 in this process,
1 -> 2 in the launch), the kill, damaged shards, rotation and `resforce export`.
NCCL / CUDA is not tested here (CPU-only).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

# process groups and torchrun launches run on one test worker (make test runs two: pytest-xdist):
# two 2-rank launches side by side have aborted a gloo rank
pytestmark = pytest.mark.xdist_group("processes")

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "configs" / "bb_resampling.yaml")
STEPS = 6
KILL_AT = 4
SHARD1, SHARD2 = (f"shard-0000{r}-model-00001-of-00001.safetensors" for r in (1, 2))


def _overrides(run_dir, mode="fsdp", *extra):
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from tiny import tiny
    return tiny(run_dir, "stages.0.steps=3", "stages.1.steps=3", "optim.grad_accum=2", "ckpt_every=2",
                "keep_last=2", "checkpoint_format=sharded", f"parallel={mode}", "device=cpu", *extra)


def _cfg(run_dir, mode="fsdp", *extra):
    from resforce.config import load_config
    return load_config(RECIPE, _overrides(run_dir, mode, *extra))


# ----------------------------------------------------------------------------- the torchrun script
def _gathered(t) -> dict:
    """The trainer's model, EMA and optimizer state gathered in full (FSDP's own full state
    dicts, not the sharded checkpoint code); {} on rank 1."""
    from resforce.training import distributed as parallel
    model = parallel.full_state_dict(t.model, t.parallel)
    ema = parallel.full_state_dict(t.ema, t.parallel)
    optim = parallel.full_optim_state_dict(t.model, t.opt, t.parallel)
    return {"model": model, "ema": ema, "optimizer": optim, "step": t.step} if parallel.is_main() else {}


def _dump(t, where: Path) -> None:
    from resforce.training import distributed as parallel
    from resforce.training.statefile import save_state
    state = _gathered(t)
    if parallel.is_main():
        where.mkdir(parents=True)
        save_state(where, state)


def _driver(what: str, out: str) -> None:
    from resforce.training import distributed as parallel
    from resforce.training.loop import Trainer

    out = Path(out)
    if what == "kill":  # rank 0 stops inside the write of checkpoint KILL_AT; the test kills the job
        import resforce.training.sharded_checkpoint as sc
        pids = out / "pids"
        pids.mkdir(exist_ok=True)  # torchrun starts each rank in a session of its own: the test kills each
        (pids / str(os.getpid())).touch()
        real = sc.save_state

        def save_state(directory, state, *a, **kw):
            real(directory, state, *a, **kw)
            if state["step"] == KILL_AT:
                print(f"paused in save {KILL_AT}", flush=True)
                time.sleep(600)

        sc.save_state = save_state
        Trainer(_cfg(out / "killed"), progress=False).run()
        return
    t = Trainer(_cfg(out / "full"), progress=False)
    t.run()
    _dump(t, out / "gathered_full")
    # a bit flipped in rank 1's shard of the last checkpoint: rank 1 hashes that file at resume
    if parallel.is_main():
        shutil.copytree(out / "full", out / "damaged")
        _flip(out / "damaged" / "checkpoints" / f"step_{STEPS:08d}" / "shards" / SHARD2)
    parallel.barrier()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        d = Trainer(_cfg(out / "damaged"), progress=False)
    d.close()
    (out / f"damaged_rank{parallel.rank()}.json").write_text(json.dumps(
        {"step": d.step, "skipped": [str(w.message) for w in seen if "skipped checkpoint" in str(w.message)]}))
    Trainer(_cfg(out / "part"), progress=False).run(stop_at=KILL_AT)
    Trainer(_cfg(out / "part"), progress=False).run()
    Trainer(_cfg(out / "killed"), progress=False).run()
    # a checkpoint written by one process (before the launch) resumed on 2 ranks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "written by 1 rank(s)": the streams are re-derived
        one = Trainer(_cfg(out / "single"), progress=False)
    _dump(one, out / "gathered_single")
    one.close()
    parallel.shutdown()


# ----------------------------------------------------------------------------- helpers
def _flip(path: Path, back: int = 100) -> None:
    """Flip one bit in the tensor data near the end of a file (its header still parses)."""
    data = bytearray(path.read_bytes())
    data[-back] ^= 0x10
    path.write_bytes(bytes(data))


def _torchrun(what: str, out: Path, **popen) -> subprocess.Popen:
    from torchrun_launch import torchrun_command, torchrun_env

    env = torchrun_env()
    cmd = torchrun_command(__file__, what, str(out))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def _gone(pid: int) -> bool:
    """The process has ended (or is a zombie: its files, and so the run lock, are released)."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True


def _kill_inside_a_save(out: Path) -> dict:
    """Launch 1: start the 'killed' run, SIGKILL every process of the job inside save KILL_AT.
    Returns what the checkpoint directory held right after the kill."""
    p = _torchrun("kill", out)
    t0 = time.time()
    for line in p.stdout:
        if line.strip() == f"paused in save {KILL_AT}":
            break
        assert time.time() - t0 < 300, "no pause in time"
    else:
        raise AssertionError(f"the job ended before pausing: rc={p.wait()} {p.stderr.read()[-4000:]}")
    ranks = [int(q.name) for q in (out / "pids").iterdir()]
    assert len(ranks) == 2
    for pid in [p.pid, *ranks]:  # every process of the job at once, like a node going down
        os.kill(pid, signal.SIGKILL)
    p.wait()
    while not all(_gone(pid) for pid in ranks):
        time.sleep(0.05)
    root = out / "killed" / "checkpoints"
    tmp = root / f".tmp_step_{KILL_AT:08d}"
    return {"names": sorted(q.name for q in root.iterdir()), "tmp": sorted(str(q.relative_to(tmp)) for q in tmp.rglob("*"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from resforce.training.loop import train

    out = tmp_path_factory.mktemp("sharded")
    killed = _kill_inside_a_save(out)
    train(_cfg(out / "single", "none"), stop_at=3, progress=False)  # one process, sharded
    p = _torchrun("main", out)
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, f"torchrun failed:\n{stdout[-3000:]}\n{stderr[-6000:]}"
    return out, killed, stderr


def _latest(run_dir):
    from resforce.training.checkpoint import latest_checkpoint, load_checkpoint
    ckpt = latest_checkpoint(run_dir)
    return ckpt, load_checkpoint(ckpt)


def _equal_trees(a, b, where=""):
    """Assert two state trees are the same, tensors bit for bit (dtype and values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (where, sorted(a)[:5], sorted(b)[:5])
        for k in a:
            _equal_trees(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal_trees(x, y, f"{where}/{i}")
    else:
        assert a == b, (where, a, b)


# ----------------------------------------------------------------------------- tests
def test_each_rank_writes_its_own_shard_as_safetensors_and_json_only(runs):
    out, _, _ = runs
    ckpt, (model, ema, state) = _latest(out / "full")
    assert ckpt.name == f"step_{STEPS:08d}" and state["step"] == STEPS and state["world_size"] == 2
    files = sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file())
    assert files == ["config.yaml", "shards.json", f"shards/{SHARD1}", f"shards/{SHARD2}", "state.json",
                     "state.safetensors"]
    # each rank's file holds its half of a sharded tensor (dim 0), not the whole
    from resforce.io.sharded_weights import inspect_sharded
    pieces = inspect_sharded(ckpt).tensors["model.blocks.0.ffn.net.0.proj.weight"].pieces
    assert sorted(p.file.name[:11] for p in pieces) == ["shard-00001", "shard-00002"]
    assert [p.shape[0] for p in pieces] == [model["blocks.0.ffn.net.0.proj.weight"].shape[0] // 2] * 2
    # rotation: keep_last=2 of the checkpoints at steps 2, 3 (stage change), 4, 6
    assert sorted(p.name for p in (out / "full" / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]


def test_the_shards_hold_exactly_the_state_gathered_in_full(runs):
    from resforce.training.statefile import load_state

    out, _, _ = runs
    _, (model, ema, state) = _latest(out / "full")
    gathered = load_state(out / "gathered_full")
    _equal_trees(gathered["model"], model, "model")
    _equal_trees(gathered["ema"], ema, "ema")
    _equal_trees(gathered["optimizer"], state["optimizer"], "optimizer")
    assert any(not torch.equal(model[k], ema[k]) for k in model)  # the EMA is not a copy


def test_stop_and_resume_on_two_ranks_equals_an_uninterrupted_run(runs):
    out, _, _ = runs
    _, full = _latest(out / "full")
    _, part = _latest(out / "part")
    for i, what in enumerate(("model", "ema")):
        _equal_trees(full[i], part[i], what)
    _equal_trees(full[2]["optimizer"], part[2]["optimizer"], "optimizer")
    assert full[2]["step"] == part[2]["step"] == STEPS
    for r in range(2):  # every rank's streams resume where they stopped
        _equal_trees(full[2]["ranks"][r], part[2]["ranks"][r], f"ranks/{r}")


def test_a_kill_inside_a_sharded_save_leaves_the_previous_checkpoint_and_resumes_exactly(runs):
    out, killed, stderr = runs
    # right after the kill: checkpoint 4 only in the temporary directory, every rank's shard
    # and state.json written; the earlier checkpoints untouched (no rotation ran)
    assert killed["names"] == [f".tmp_step_{KILL_AT:08d}", "step_00000002", "step_00000003"]
    assert {f"shards/{SHARD1}", f"shards/{SHARD2}", "state.json"} <= set(killed["tmp"])
    # the resume removed the leftover, restarted from step 3 and ended where the uninterrupted run did
    assert f"removed .tmp_step_{KILL_AT:08d}" in stderr
    assert sorted(p.name for p in (out / "killed" / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]
    _, full = _latest(out / "full")
    _, resumed = _latest(out / "killed")
    for i in range(2):
        _equal_trees(full[i], resumed[i])
    _equal_trees(full[2]["optimizer"], resumed[2]["optimizer"], "optimizer")


def test_two_rank_shards_resume_in_one_process_bit_for_bit(runs, tmp_path, monkeypatch):
    """2 ranks -> 1 process: DCP reads the two ranks' pieces into full tensors. Nothing is
    unpickled on the way."""
    from resforce.training.loop import Trainer
    from resforce.training.statefile import load_state

    out, _, _ = runs
    run = tmp_path / "full"
    shutil.copytree(out / "full", run)
    gathered = load_state(out / "gathered_full")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called on resume"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called on resume"))
    with pytest.warns(UserWarning, match="written by 2 rank"):  # and goes on writing the full layout
        t = Trainer(_cfg(run, "none", f"stages.1.steps={STEPS - 3 + 1}", "checkpoint_format=full"), progress=False)
    assert t.step == STEPS
    _equal_trees(gathered["model"], {k: v for k, v in t.model.state_dict().items()}, "model")
    _equal_trees(gathered["ema"], t.ema.state_dict(), "ema")
    _equal_trees(gathered["optimizer"], t.opt.state_dict(), "optimizer")
    t.run()  # and trains on
    ckpt, (model, _, state) = _latest(run)
    assert state["step"] == STEPS + 1 and "ranks" not in state and (ckpt / "model.safetensors").is_file()
    assert all(torch.isfinite(v).all() for v in model.values())


def test_one_process_shards_resume_on_two_ranks_bit_for_bit(runs):
    from resforce.training.statefile import load_state

    out, _, _ = runs
    _, (model, ema, state) = _latest(out / "single")
    assert state["step"] == 3 and "world_size" not in state
    got = load_state(out / "gathered_single")
    assert got["step"] == 3
    _equal_trees(model, got["model"], "model")
    _equal_trees(ema, got["ema"], "ema")
    _equal_trees(state["optimizer"], got["optimizer"], "optimizer")


@pytest.mark.parametrize("damage", ["bit_flip", "truncated", "deleted"])
def test_a_damaged_shard_is_detected_at_resume_naming_the_file(runs, tmp_path, damage):
    from resforce.training.loop import Trainer

    out, _, _ = runs
    run = tmp_path / "full"
    shutil.copytree(out / "full", run)
    shard = run / "checkpoints" / f"step_{STEPS:08d}" / "shards" / SHARD2
    if damage == "bit_flip":  # a flip in the tensor data: the header still parses, the hash does not match
        _flip(shard)
        why = "fails its checksum"
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:-64])
        why = "truncated"
    else:
        shard.unlink()
        why = "is missing"
    with pytest.warns(UserWarning) as seen:
        t = Trainer(_cfg(run, "none"), progress=False)
    skipped = [str(w.message) for w in seen if "skipped checkpoint" in str(w.message)]
    assert len(skipped) == 1 and f"step_{STEPS:08d} (" in skipped[0], skipped
    assert SHARD2 in skipped[0] and why in skipped[0], skipped
    t.close()
    assert t.step == 4  # the previous checkpoint
    assert (run / "checkpoints" / f"step_{STEPS:08d}.damaged").is_dir()


def test_a_shard_damaged_on_one_rank_makes_both_ranks_fall_back(runs):
    """On 2 ranks each hashes its share of the shards (rank 1: the second file); both agree."""
    out, _, _ = runs
    ranks = [json.loads((out / f"damaged_rank{r}.json").read_text()) for r in range(2)]
    assert [d["step"] for d in ranks] == [4, 4]
    assert ranks[1]["skipped"] == []  # rank 0 alone moves the checkpoint aside and says so
    (warning,) = ranks[0]["skipped"]
    assert f"skipped checkpoint step_{STEPS:08d}" in warning and f"{SHARD2} fails its checksum" in warning
    assert (out / "damaged" / "checkpoints" / f"step_{STEPS:08d}.damaged").is_dir()


def test_export_merges_the_shards_in_one_process(runs, tmp_path, capsys):
    """`resforce export` on a sharded run (no torchrun): the EMA (or --online, the weights) in
    one file, equal to the state gathered in full; generate names export on a sharded run."""
    from cli_errors import cli_error

    from resforce.cli.main import main
    from resforce.io.weights import load_model, read_weights
    from resforce.training.statefile import load_state

    out, _, _ = runs
    gathered = load_state(out / "gathered_full")
    for flag, want in (([], gathered["ema"]), (["--online"], gathered["model"])):
        f = tmp_path / f"export{len(flag)}.safetensors"
        main(["export", str(out / "full"), "--out", str(f), "--dtype", "float32", *flag])
        sd, config = read_weights(f)
        _equal_trees(want, sd)
        assert "checkpoint_format: sharded" in config
    model, _ = load_model(tmp_path / "export0.safetensors")  # generate / eval / play load the file
    _equal_trees(gathered["ema"], model.state_dict())
    capsys.readouterr()
    err = cli_error(["generate", str(out / "full"), "--out", str(tmp_path / "v.npy")], capsys)
    assert "sharded checkpoint" in err and f"resforce export {out / 'full'} --out" in err


def test_export_refuses_a_damaged_shard_naming_it(runs, tmp_path):
    from resforce.io.export import export_weights
    from resforce.io.weights import DamagedFileError

    out, _, _ = runs
    run = tmp_path / "full"
    shutil.copytree(out / "full", run)
    _flip(run / "checkpoints" / f"step_{STEPS:08d}" / "shards" / SHARD1, back=8)
    with pytest.raises(DamagedFileError, match=rf"{SHARD1} fails its checksum"):
        export_weights(run, tmp_path / "x.safetensors")


def test_checkpoint_format_is_checked(tmp_path):
    from resforce.config import ConfigError, load_config

    assert load_config(RECIPE, [f"run_dir={tmp_path}"]).checkpoint_format == "full"
    import yaml
    assert yaml.safe_load((ROOT / "configs" / "wan2.1_1.3b_rf.yaml").read_text())["checkpoint_format"] == "sharded"
    with pytest.raises(ConfigError, match="checkpoint_format must be one of .*got 'zero'"):
        load_config(RECIPE, [f"run_dir={tmp_path}", "checkpoint_format=zero"])


if __name__ == "__main__":  # run by torchrun from _torchrun()
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    _driver(sys.argv[1], sys.argv[2])
    from torchrun_launch import end_rank

    end_rank()  # no interpreter teardown: see end_rank
