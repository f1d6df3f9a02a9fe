"""No host syncs in the per-chunk and per-Euler-step loops (rollout, self-resampling, the
training step): counted on the CPU by tests/support/host_syncs.py, where a GPU would block the host.

A rollout makes none at all; a training step makes exactly one from resforce code (reading
the loss and gradient norm together, which the skip-a-non-finite-step decision needs), and
the same total (torch's own CPU reads, e.g. AdamW's step counter, included) whatever the
number of chunks, Euler steps and micro-batches."""

import pytest
import torch

from host_syncs import HostSyncs
from resforce.config import load_config
from resforce.model import build_model
from resforce.model.attention.policy import AttentionPolicy
from resforce.model.attention.config import HistoryAttentionConfig
from resforce.rollout import SampleConfig, rollout
from resforce.training.loop import Trainer
from tiny import tiny

FPC, H, W = 2, 8, 8


def _model(randomize):
    return randomize(build_model(preset="test", frames_per_chunk=FPC, patch_size=(1, 4, 4), text_dim=8))


@pytest.mark.parametrize("attention", [None, HistoryAttentionConfig(mode="topk", topk=1)])
def test_rollout_makes_no_host_sync(randomize, attention):
    model = _model(randomize)
    ctx, null = torch.randn(1, 3, 8), torch.zeros(1, 3, 8)
    prefix = torch.randn(1, 3, FPC, H, W)
    counts = []
    for n in (2, 4):  # chunks and Euler steps per chunk; guidance and re-noised history on
        cfg = SampleConfig(chunks=n, steps=n, cfg_scale=2.0, history_noise=0.1, seed=0)
        policy = None if attention is None else AttentionPolicy(attention)
        with HostSyncs() as syncs:
            rollout(model, 1, H, W, cfg, prefix=prefix, text=ctx, uncond_text=null, attention=policy)
        counts.append(syncs.calls)
    assert counts == [[], []], counts


def _trainer(tmp_path, name, chunks, steps):
    cfg = load_config("configs/bb_resampling.yaml", tiny(
        tmp_path / name, "stages.0.steps=0", "stages.1.steps=2", f"stages.1.clip_chunks={chunks}",
        f"stages.1.history.resample_steps={steps}", "optim.grad_accum=2"))
    return Trainer(cfg, resume=False, progress=False)


def test_training_step_syncs_once_whatever_the_chunks_and_steps(tmp_path):
    found = []
    for chunks, steps in ((2, 1), (4, 3)):  # self-resampling: chunks x Euler steps per micro-batch
        trainer = _trainer(tmp_path, f"run{chunks}", chunks, steps)
        try:
            trainer.train_step()  # first step: the optimizer creates its state
            with HostSyncs() as syncs:
                m = trainer.train_step()
        finally:
            trainer.close()
        assert m["loss"] > 0 and not m.get("skipped")
        found.append(syncs)
    small, large = found
    assert [w for _, w in small.ours] == [w for _, w in large.ours] and len(small.ours) == 1, small.ours
    assert len(small.calls) == len(large.calls), (small.calls, large.calls)


def test_rope_tables_are_built_once_and_equal_the_reference(randomize):
    """RoPE comes from tables cached on the device: a rollout builds one per axis, not one per
    call (each call used to build its angles on the host and copy them over), and the tables
    give exactly the reference rotation, far out too."""
    from resforce.model.rope import grid_positions, rope_cos_sin

    model = _model(randomize)
    rollout(model, 1, H, W, SampleConfig(chunks=4, steps=4), text=torch.randn(1, 3, 8))
    assert model.rope_tables.builds == 3  # (t, h, w) axes; 4 chunks x (4 steps + 1 write) calls
    head_dim = model.config.attention_head_dim
    for offset in (0, 3, 5000):
        cos, sin = model.rope_tables.grid(2, 3, 4, offset)
        ref_cos, ref_sin = rope_cos_sin(grid_positions(2, 3, 4, offset), head_dim)
        assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
