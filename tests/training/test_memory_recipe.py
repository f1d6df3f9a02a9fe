"""`resforce memory` measures the recipe's stages as the trainer runs them: the stage's history
attention (dense, routed top-k, window) in every pass, routed included under fake tensors, and
gradient accumulation (optim.grad_accum) with the trainer's gradient sync (optim.grad_sync):
'last' leaves FSDP2 holding every block's unsharded fp32 gradient between micro-batches,
'every' (the fsdp default) only its shard. Tiny shapes, seconds on the CPU."""

import json

import pytest

from resforce.cli.main import main
from resforce.model import build_model
from resforce.model.dit import PRESETS, DiTConfig
from resforce.training import distributed as parallel
from resforce.training.memory_estimate import MemoryPlan, estimate_memory

SHAPES = dict(num_layers=2, text_dim=8, ffn_dim=64)
TINY = dict(preset="test", chunks=2, height=128, width=128, text_tokens=16, precision="fp32",
            checkpointing="selective", model_overrides=SHAPES)


def param_bytes() -> int:
    return sum(p.numel() * 4 for p in build_model(DiTConfig(**{**PRESETS["test"], **SHAPES})).parameters())


def test_accumulation_under_fsdp_holds_unsharded_gradients_only_with_sync_on_the_last():
    one = estimate_memory(MemoryPlan(**TINY, gpus=8))
    every = estimate_memory(MemoryPlan(**TINY, gpus=8, grad_accum=8, grad_sync="every"))
    last = estimate_memory(MemoryPlan(**TINY, gpus=8, grad_accum=8, grad_sync="last"))
    auto = estimate_memory(MemoryPlan(**TINY, gpus=8, grad_accum=8))
    assert auto["plan"]["grad_sync"] == "every" and auto["peak_bytes"] == every["peak_bytes"]
    grads = lambda r: {k: v for k, v in r["peak_breakdown_bytes"].items() if "Grad" in k}  # noqa: E731
    assert grads(last) == {"Unsharded Grad": param_bytes()}  # every block's fp32 gradient, in full
    assert set(grads(every)) == {"Sharded Grad"} and grads(every)["Sharded Grad"] < param_bytes() / 4
    assert one["peak_bytes"] < every["peak_bytes"] < last["peak_bytes"]
    assert last["peak_bytes"] - every["peak_bytes"] > 0.7 * param_bytes()


# routed over 8 GPUs (the recipe's fourth stage; routed on one GPU: the real-allocation test
# below) and the window on one
@pytest.mark.parametrize("gpus,mode,extra", [(8, "topk", {"topk": 1}), (1, "window", {"window": 1, "sink": 1})])
def test_routed_and_window_stages_measure_under_fake_tensors(mode, extra, gpus):
    r = estimate_memory(MemoryPlan(**TINY, gpus=gpus, strategy="resampling", history_attention=mode, **extra))
    assert r["plan"]["history_attention"].startswith(mode) and r["peak_bytes"] > 0


def test_routed_measure_matches_real_cpu_allocations():
    """The routed stage on real tensors (one GPU) peaks within 10% of the fake-tensor estimate."""
    plan = dict(**TINY, strategy="resampling", history_attention="topk", topk=1)
    fake = estimate_memory(MemoryPlan(**plan))
    real = estimate_memory(MemoryPlan(**plan), fake=False)
    assert abs(fake["peak_bytes"] - real["peak_bytes"]) <= 0.1 * real["peak_bytes"]


def test_trainer_sync_policy():
    skips = lambda mode, sync: [parallel.skips_grad_sync(mode, sync, k, 3) for k in range(3)]  # noqa: E731
    assert skips("fsdp", "auto") == skips("fsdp", "every") == skips("ddp", "every") == [False] * 3
    assert skips("ddp", "auto") == skips("fsdp", "last") == [True, True, False]
    with pytest.raises(ValueError, match="grad_sync"):
        parallel.skips_grad_sync("fsdp", "never", 0, 2)


def test_cli_memory_takes_the_stage_attention_and_accumulation(tmp_path, capsys):
    out = tmp_path / "m.json"
    main(["memory", "--preset", "test", "--chunks", "2", "--height", "64", "--width", "64", "--text-tokens", "4",
          "--precision", "fp32", "--history-attention", "topk", "--topk", "1", "--grad-accum", "4",
          "--grad-sync", "last", "--json", str(out)])
    assert "history attention topk (k=1), grad_accum 4 (gradient sync: last)" in capsys.readouterr().out
    plan = json.loads(out.read_text())["plan"]
    assert (plan["history_attention"], plan["grad_accum"], plan["grad_sync"]) == ("topk (k=1)", 4, "last")
    with pytest.raises(SystemExit):
        main(["memory", "--history-attention", "routed"])


def test_grad_sync_is_a_checked_config_field(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import tiny
    from resforce.config import ConfigError, load_config

    assert load_config("configs/bb_teacher.yaml", tiny(tmp_path / "r")).optim.grad_sync == "auto"
    with pytest.raises(ConfigError, match="optim.grad_sync"):
        load_config("configs/bb_teacher.yaml", tiny(tmp_path / "r", "optim.grad_sync=sometimes"))


@pytest.mark.parametrize("gpus", [1, 8])
def test_lora_holds_gradients_and_adam_state_for_the_adapters_only(gpus):
    full = estimate_memory(MemoryPlan(**TINY, gpus=gpus))
    lora = estimate_memory(MemoryPlan(**TINY, gpus=gpus, lora_rank=2))
    assert lora["trainable_parameters"] < full["parameters"] / 4
    opt = lambda r: sum(v for k, v in r["peak_breakdown_bytes"].items() if k.lower() == "optstate")  # noqa: E731
    assert opt(lora) < opt(full) / 4
    if gpus == 1:  # the EMA shares the frozen base: only the adapters' EMA is extra
        assert lora["peak_breakdown_bytes"]["EMA"] < full["peak_breakdown_bytes"]["EMA"] / 4
    assert lora["peak_bytes"] < full["peak_bytes"]
