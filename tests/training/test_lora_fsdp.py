"""LoRA under FSDP2 on 2 CPU ranks (Gloo, torchrun): the frozen base and the adapters are
sharded together per block, only the adapters' gradients are reduce-scattered (with
gradient accumulation, optim.grad_sync auto = every micro-batch), the base stays
bit-identical, and a run stopped and resumed ends with the same weights as an uninterrupted
one. The checkpoint (gathered to rank 0) loads merged into a plain model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# process groups and torchrun launches run on one test worker (make test runs two: pytest-xdist):
# two 2-rank launches side by side have aborted a gloo rank
pytestmark = pytest.mark.xdist_group("processes")

pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[lora]')")

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "configs" / "bb_resampling.yaml")


def _overrides(run_dir, mode, *extra):
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from tiny import tiny
    return tiny(run_dir, "stages.0.steps=2", "stages.1.steps=2", "optim.grad_accum=2", "optim.lr=1e-2",
                "optim.warmup_steps=0", "model.init=wan", "lora.rank=2", "lora.alpha=4",
                f"parallel={mode}", "device=cpu", *extra)


def _driver(out: str) -> None:
    from resforce.config import load_config
    from resforce.training.loop import Trainer

    out = Path(out)
    Trainer(load_config(RECIPE, _overrides(out / "full", "fsdp")), progress=False).run()
    Trainer(load_config(RECIPE, _overrides(out / "part", "fsdp")), progress=False).run(stop_at=3)
    Trainer(load_config(RECIPE, _overrides(out / "part", "fsdp")), progress=False).run()


def test_lora_under_fsdp_on_two_ranks(tmp_path):
    from resforce.config import load_config
    from resforce.model.lora import is_adapter
    from resforce.io.weights import load_model
    from resforce.training.checkpoint import latest_checkpoint, load_checkpoint
    from resforce.training.loop import Trainer

    from torchrun_launch import run_torchrun

    run_torchrun(__file__, tmp_path)
    full, part = (load_checkpoint(latest_checkpoint(tmp_path / n)) for n in ("full", "part"))
    assert full[2]["step"] == part[2]["step"] == 4
    for k, v in full[0].items():
        assert torch.equal(v, part[0][k]), k  # resumed == uninterrupted
    # the base is the seeded initial model's (same seed, parallel=none, nothing trained)
    start = Trainer(load_config(RECIPE, _overrides(tmp_path / "start", "none")), progress=False)
    init = start.model.state_dict()
    start.close()
    assert all(torch.equal(full[0][k], init[k]) for k in init if not is_adapter(k))
    assert any(not torch.equal(full[0][k], init[k]) for k in init if ".lora_B." in k)
    model, cfg = load_model(tmp_path / "full")
    assert cfg.lora.rank == 2 and not any(is_adapter(k) for k in model.state_dict())


if __name__ == "__main__":  # run by torchrun from the test
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    _driver(sys.argv[1])
    from torchrun_launch import end_rank

    end_rank()  # no interpreter teardown: see end_rank
