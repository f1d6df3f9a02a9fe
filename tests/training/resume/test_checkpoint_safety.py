"""Checkpoints hold data only, are written durably, and a damaged one never blocks a resume.

Each test here was seen to fail with the fix it proves taken out (see the commit messages).
"""

import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from resforce.training import checkpoint as ck
from resforce.io import fileio
from resforce.training.checkpoint import (CheckpointDamaged, CheckpointMismatch, CheckpointWriteError,
                                 NonFiniteCheckpoint, checkpoint_dirs, latest_checkpoint,
                                 load_checkpoint, save_checkpoint)
from resforce.config import load_config
from resforce.training.statefile import load_state, save_state
from resforce.training.loop import Trainer, train
from tiny import tiny

RECIPE = "configs/bb_resampling.yaml"


def cfg(tmp_path, name, *extra):
    return load_config(RECIPE, tiny(tmp_path / name, "stages.0.steps=2", "stages.1.steps=2", *extra))


def same_weights(a, b):
    (ma, ea, sa), (mb, eb, sb) = load_checkpoint(latest_checkpoint(a)), load_checkpoint(latest_checkpoint(b))
    return (sa["step"] == sb["step"] and all(torch.equal(ma[k], mb[k]) for k in ma)
            and all(torch.equal(ea[k], eb[k]) for k in ea))


# ----------------------------------------------------------------------------- data only
def test_state_round_trip_keeps_every_type(tmp_path):
    rng = __import__("numpy").random.default_rng(3)
    state = {"optimizer": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(3, 2)}},
                           "param_groups": [{"lr": 0.1 / 3, "betas": (0.9, 0.99), "params": [0],
                                             "foreach": None, "amsgrad": False}]},
             "step": 12, "generator": torch.get_rng_state(), "bf16": torch.ones(2, dtype=torch.bfloat16),
             "data": {"bit_generator": rng.bit_generator.state, "__odd": [1, "x"]}, "ranks": [{"a": 1}]}
    save_state(tmp_path, state)
    back = load_state(tmp_path)
    assert list(back["optimizer"]["state"]) == [0]  # an int key stays an int
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)  # a tuple stays a tuple
    assert back["optimizer"]["param_groups"][0]["lr"] == 0.1 / 3  # floats exactly
    assert back["data"]["bit_generator"] == rng.bit_generator.state  # 128-bit ints
    assert back["data"]["__odd"] == [1, "x"] and back["step"] == 12 and back["ranks"] == [{"a": 1}]
    for k in ("generator", "bf16"):
        assert back[k].dtype == state[k].dtype and torch.equal(back[k], state[k])
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])


def test_a_checkpoint_is_safetensors_and_json_only(tmp_path, monkeypatch):
    train(cfg(tmp_path, "r"), stop_at=2, progress=False)
    ckpt = latest_checkpoint(tmp_path / "r")
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.yaml", "ema.safetensors", "model.safetensors",
                                                      "state.json", "state.safetensors"]
    json.loads((ckpt / "state.json").read_text())
    # resuming never unpickles anything
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called on resume"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called on resume"))
    t = Trainer(cfg(tmp_path, "r"), progress=False)
    assert t.step == 2
    t.close()


class Payload:
    """Unpickling this creates the marker file: proof that unpickling ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _legacy(ckpt: Path, extra=None) -> None:
    """Turn a checkpoint into the old layout: one pickled state.pt."""
    state = load_checkpoint(ckpt)[2]
    if extra is not None:
        state["data"]["hidden"] = extra
    torch.save(state, ckpt / "state.pt")
    (ckpt / "state.json").unlink()
    (ckpt / "state.safetensors").unlink()


@pytest.mark.parametrize("where", ["legacy_state_pt", "hidden_in_valid_state", "next_to_new_files"])
def test_a_malicious_pickle_never_runs(tmp_path, where):
    c = cfg(tmp_path, "r", "ckpt_every=1")
    train(c, stop_at=2, progress=False)
    ckpt = latest_checkpoint(c.run_dir)
    marker = tmp_path / "PWNED"
    if where == "legacy_state_pt":
        _legacy(ckpt)
        torch.save(Payload(marker), ckpt / "state.pt")
    elif where == "hidden_in_valid_state":
        _legacy(ckpt, extra=Payload(marker))
    else:
        torch.save(Payload(marker), ckpt / "state.pt")  # planted beside state.json: never read
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t = Trainer(cfg(tmp_path, "r", "ckpt_every=1"), progress=False)
    t.close()
    assert not marker.exists()
    if where == "next_to_new_files":
        assert t.step == 2
    else:  # refused with a message naming the file; resumed from the step before
        assert t.step == 1
        assert any("state.pt" in str(x.message) and "weights_only" in str(x.message) for x in w)


def test_an_old_pickled_checkpoint_still_resumes_exactly(tmp_path):
    """Checkpoints of earlier versions (state.pt) load through weights_only and resume bit for bit."""
    train(cfg(tmp_path, "full"), progress=False)
    train(cfg(tmp_path, "part"), stop_at=3, progress=False)
    _legacy(latest_checkpoint(tmp_path / "part"))
    t = Trainer(cfg(tmp_path, "part"), progress=False)
    assert t.step == 3  # from the old-format checkpoint itself, not a fallback
    t.run()
    assert same_weights(tmp_path / "full", tmp_path / "part")
    assert (latest_checkpoint(tmp_path / "part") / "state.json").is_file()  # new saves: new format


def test_non_data_state_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match="data/thing"):
        save_checkpoint(tmp_path, 1, {"w": torch.ones(1)}, {"w": torch.ones(1)},
                        {"step": 1, "data": {"thing": object()}}, "")
    assert not (tmp_path / "checkpoints").exists()


# ----------------------------------------------------------------------------- damaged files
def test_truncated_weights_name_the_file_and_expected_size(tmp_path):
    train(cfg(tmp_path, "r"), stop_at=1, progress=False)
    f = latest_checkpoint(tmp_path / "r") / "model.safetensors"
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[:size - 100])
    with pytest.raises(CheckpointDamaged, match=rf"model\.safetensors.*promises {size} bytes, the file has {size - 100}"):
        load_checkpoint(f.parent)


def test_resume_falls_back_to_the_newest_checkpoint_that_loads(tmp_path):
    train(cfg(tmp_path, "full"), progress=False)
    c = cfg(tmp_path, "part", "ckpt_every=1")
    train(c, stop_at=3, progress=False)
    bad = latest_checkpoint(c.run_dir)
    (bad / "state.json").write_text('{"format": "resforce-state-1", "sta')  # half-written
    with pytest.warns(UserWarning, match=r"skipped checkpoint step_00000003 .*state\.json is not valid JSON"):
        t = Trainer(cfg(tmp_path, "part", "ckpt_every=1"), progress=False)
    assert t.step == 2 and (Path(c.run_dir) / "checkpoints" / "step_00000003.damaged").is_dir()
    t.run()
    assert same_weights(tmp_path / "full", tmp_path / "part")  # the fallback resume is still exact


def test_no_loadable_checkpoint_is_an_error_that_moves_nothing(tmp_path):
    c = cfg(tmp_path, "r", "ckpt_every=1", "keep_last=2")
    train(c, stop_at=2, progress=False)
    for d in checkpoint_dirs(c.run_dir):
        (d / "ema.safetensors").unlink()
    with pytest.raises(ck.CheckpointError, match=r"no checkpoint .* loads.*ema\.safetensors missing"):
        Trainer(c, progress=False)
    assert [d.name for d in checkpoint_dirs(c.run_dir)] == ["step_00000001", "step_00000002"]


def test_a_checkpoint_of_another_model_size_names_path_and_shapes(tmp_path):
    train(cfg(tmp_path, "r"), stop_at=1, progress=False)
    before = (tmp_path / "r" / "config.yaml").read_text()
    with pytest.raises(CheckpointMismatch, match=r"step_00000001 holds another model.*expected by this config"):
        Trainer(cfg(tmp_path, "r", "model.ffn_dim=24"), progress=False)
    assert (tmp_path / "r" / "config.yaml").read_text() == before  # nothing rewritten
    with pytest.raises(CheckpointMismatch, match="missing, e.g. blocks.2"):
        Trainer(cfg(tmp_path, "b", "model.num_layers=3"), progress=False, init_from=tmp_path / "r")


# ----------------------------------------------------------------------------- NaN, rotation
def test_a_nonfinite_checkpoint_is_never_written(tmp_path):
    sd = {"w": torch.ones(2)}
    first = save_checkpoint(tmp_path, 1, sd, sd, {"step": 1}, "", keep=1)
    with pytest.raises(NonFiniteCheckpoint, match=r"step 2: EMA weights hold NaN or inf \(at w\)"):
        save_checkpoint(tmp_path, 2, sd, {"w": torch.tensor([1.0, float("nan")])}, {"step": 2}, "", keep=1)
    assert checkpoint_dirs(tmp_path) == [first] and load_checkpoint(first)[2]["step"] == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001"]


def test_rotation_orders_by_step_number_and_keeps_the_new_one(tmp_path):
    sd = {"w": torch.ones(1)}
    for step in (99_999_999, 100_000_000):  # the second sorts first by name
        save_checkpoint(tmp_path, step, sd, sd, {"step": step}, "", keep=1)
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step_100000000"]
    save_checkpoint(tmp_path, 5, sd, sd, {"step": 5}, "", keep=1)  # an older step written last
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step_00000005", "step_100000000"]


# ----------------------------------------------------------------------------- durability
def _record_fsyncs_and_renames(monkeypatch) -> list:
    """Patch os.fsync / os.replace to log ("fsync", path) and ("rename", target) in order."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", str(b))), real_replace(a, b))[1])
    return events

def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = _record_fsyncs_and_renames(monkeypatch)
    target = tmp_path / "sub" / "out.txt"
    fileio.write_text_atomic(target, "hello")
    kinds = [(e[0], Path(e[1]).name if e[0] == "rename" else e[1]) for e in events]
    assert kinds[0][0] == "fsync" and kinds[0][1].startswith(str(target.parent / ".out.txt."))
    assert kinds[1] == ("rename", "out.txt")
    assert kinds[2] == ("fsync", str(target.parent))


def test_a_checkpoint_is_durable_before_rotation_removes_an_older_one(tmp_path, monkeypatch):
    events = _record_fsyncs_and_renames(monkeypatch)
    sd = {"w": torch.ones(1)}
    save_checkpoint(tmp_path / "run", 1, sd, sd, {"step": 1}, "", keep=1)
    events.clear()
    save_checkpoint(tmp_path / "run", 2, sd, sd, {"step": 2}, "", keep=1)
    root = str(tmp_path / "run" / "checkpoints")
    placed, rotated = events.index(("rename", root + "/step_00000002")), events.index(("rename", root + "/.del_step_00000001"))
    assert ("fsync", root) in events[placed:rotated]


def test_a_failed_write_leaves_no_temporary_directory(tmp_path, monkeypatch):
    sd = {"w": torch.ones(1)}
    save_checkpoint(tmp_path, 1, sd, sd, {"step": 1}, "")

    def disk_full(directory, state, name="state", checksum=()):
        (Path(directory) / "state.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_state", disk_full)
    with pytest.raises(CheckpointWriteError, match=r"step_00000002: No space left on device; earlier checkpoints"):
        save_checkpoint(tmp_path, 2, sd, sd, {"step": 2}, "")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001"]


def test_leftovers_of_an_interrupted_save_are_cleaned_up_at_start(tmp_path):
    c = cfg(tmp_path, "r", "ckpt_every=1", "keep_last=5")
    train(c, stop_at=3, progress=False)
    root = Path(c.run_dir) / "checkpoints"
    (root / ".tmp_step_00000004").mkdir()
    (root / ".tmp_step_00000004" / "model.safetensors").write_bytes(b"half")
    os.replace(root / "step_00000003", root / ".old_step_00000003")  # killed mid re-save
    (root / ".del_step_00000001").mkdir()  # killed mid rotation
    with pytest.warns(UserWarning, match="restored step_00000003"):
        t = Trainer(c, progress=False)
    t.close()
    assert t.step == 3
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001", "step_00000002", "step_00000003"]
