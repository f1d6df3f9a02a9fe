"""Resuming where the checkpoint's noise generator cannot go: a state saved by a generator of
another device type (a CUDA generator keeps 16 bytes, seed and offset; a CPU one 5056) is not
convertible, so the noise stream is re-derived from (seed, step, rank) with a warning, while the
weights, optimizer and data stream resume exactly. Without a GPU, the CUDA state is simulated
by writing one into the checkpoint (data only, through statefile)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "support"))
from tiny import tiny  # noqa: E402

RECIPE = str(ROOT / "configs" / "bb_resampling.yaml")


def _cfg(run_dir):
    from resforce.config import load_config
    return load_config(RECIPE, tiny(run_dir, "stages.0.steps=2", "stages.1.steps=0", "stages.0.clip_chunks=2",
                                    "device=cpu"))


def _one_step_run(run_dir):
    from resforce.training.checkpoint import latest_checkpoint
    from resforce.training.statefile import load_state
    from resforce.training.loop import train

    train(_cfg(run_dir), stop_at=1, progress=False)
    ckpt = latest_checkpoint(run_dir)
    return ckpt, load_state(ckpt)


@pytest.mark.parametrize("saved", ["cuda_state_tagged", "wrong_size_untagged"])
def test_a_generator_state_of_another_device_reseeds_with_a_warning(tmp_path, saved):
    from resforce.training.statefile import save_state
    from resforce.training.loop import Trainer

    ckpt, state = _one_step_run(tmp_path / "r")
    assert state["generator_device"] == "cpu"  # recorded with every checkpoint
    state["generator"] = torch.arange(16, dtype=torch.uint8)  # what a CUDA generator's get_state() gives
    if saved == "cuda_state_tagged":
        state["generator_device"] = "cuda"
        why = "saved by a cuda generator"
    else:  # a checkpoint from before the tag: the size tells
        del state["generator_device"]
        why = "size"
    save_state(ckpt, state)
    with pytest.warns(UserWarning, match=rf"noise generator state does not load .*{why}.*re-derived from "
                                         r"\(seed, step, rank\)"):
        t = Trainer(_cfg(tmp_path / "r"), progress=False)
    want = torch.Generator().manual_seed(t.cfg.seed + 1 + 1_000_003 * 1)  # _reseed_noise at step 1, rank 0
    assert torch.equal(t.gen.get_state(), want.get_state())
    assert t.step == 1 and t.data.state_dict() == state["data"]  # the data stream resumes exactly
    t.run()
    assert t.step == 2


def test_a_generator_state_of_this_device_resumes_exactly_without_a_warning(tmp_path, recwarn):
    from resforce.training.loop import Trainer

    ckpt, state = _one_step_run(tmp_path / "r")
    t = Trainer(_cfg(tmp_path / "r"), progress=False)
    assert torch.equal(t.gen.get_state(), state["generator"])
    assert not [w for w in recwarn if "generator" in str(w.message)]
    t.close()
