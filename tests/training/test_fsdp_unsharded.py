"""parallel.unsharded: under FSDP2 the self-resampling pass gathers the model's weights once,
not once per model call (2 CPU ranks, Gloo, torch.multiprocessing).

Each rank counts the all-gathers FSDP2 issues (torch.distributed's all-gather entry points,
patched) during the same resampling pass: per call (resample_unsharded false, what FSDP2
does by itself) and once (the default). The histories, and a training step after them, are
bitwise equal; afterwards every parameter is a shard again."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# process groups and torchrun launches run on one test worker (make test runs two: pytest-xdist)
pytestmark = pytest.mark.xdist_group("processes")

CHUNKS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AllGatherCount:
    """Counts calls of torch.distributed's all-gather functions FSDP2 may use (the one it
    calls depends on the torch version), while active."""

    NAMES = ("all_gather_single", "all_gather_into_tensor")

    def __init__(self):
        self.calls = 0
        self._orig = {}

    def __enter__(self):
        for name in self.NAMES:
            if hasattr(dist, name):
                orig = self._orig[name] = getattr(dist, name)

                def counted(*args, _orig=orig, **kwargs):
                    self.calls += 1
                    return _orig(*args, **kwargs)

                setattr(dist, name, counted)
        return self

    def __exit__(self, *exc):
        for name, orig in self._orig.items():
            setattr(dist, name, orig)


def _sharded_model():
    from resforce.training import distributed as parallel
    from resforce.model import build_model

    torch.manual_seed(0)  # the same weights on every rank before sharding
    model = build_model(preset="test", patch_size=(1, 4, 4), text_dim=8)
    for p in model.parameters():  # the zero-initialised gates would hide the history
        p.data.normal_(0, 0.2)
    parallel.apply_data_parallel(model, "fsdp", torch.device("cpu"))
    return model


def _resample_and_train(model, unsharded: bool):
    """(history, all-gathers in the resampling pass, whether every parameter is a shard after
    it, loss, gradient of the first parameter)."""
    from torch.distributed.tensor import DTensor

    from resforce.flow import TimestepSampler
    from resforce.history import HistoryConfig, build_history
    from resforce.training import distributed as parallel
    from resforce.loss import flow_matching_loss

    g = torch.Generator().manual_seed(1)
    clean = torch.randn(1, 3, CHUNKS * model.config.frames_per_chunk, 8, 8, generator=g)
    context = torch.randn(1, 5, 8, generator=g)
    cfg = HistoryConfig(strategy="resampling", resample_steps=2, resample_unsharded=unsharded)
    with AllGatherCount() as count:
        history, t_hist = build_history(cfg, model, clean, torch.Generator().manual_seed(2), context=context,
                                        gather_weights=parallel.unsharded)
    resharded = all(isinstance(p, DTensor) and p.to_local().shape[0] <= (p.shape[0] + 1) // 2
                    for p in model.parameters())  # each rank holds its half again
    model.zero_grad()
    loss = flow_matching_loss(model, clean, history, t_hist, TimestepSampler(),
                              torch.Generator().manual_seed(3), context=context)
    loss.backward()
    grad = next(model.parameters()).grad.to_local().clone()
    return history, count.calls, resharded, loss.detach(), grad


def _rank(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.fsdp import FSDPModule

        per_call = _sharded_model()
        once = _sharded_model()
        groups = sum(isinstance(m, FSDPModule) for m in once.modules())
        assert groups == len(once.blocks) + 1  # the root and every block
        h0, gathers0, _, loss0, grad0 = _resample_and_train(per_call, unsharded=False)
        h1, gathers1, resharded, loss1, grad1 = _resample_and_train(once, unsharded=True)
        # 2 Euler steps on each of 3 chunks + 2 cache writes = 8 model calls, each gathering
        # every group (the root stays gathered after its first forward: fully_shard's default)
        calls = CHUNKS * 2 + CHUNKS - 1
        assert gathers0 == calls * len(once.blocks) + 1, (gathers0, calls, groups)
        assert gathers1 == groups, gathers1
        assert resharded  # on exit (per call, fully_shard leaves the root gathered)
        assert torch.equal(h0, h1)
        assert torch.equal(loss0, loss1) and torch.equal(grad0, grad1)
        # both ranks done before gloo is torn down: a rank that leaves while the other still
        # talks to it can abort it (SIGABRT, "terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_resampling_gathers_the_weights_once_under_fsdp():
    pytest.importorskip("torch.distributed.fsdp")
    mp.spawn(_rank, args=(2, _free_port()), nprocs=2, join=True)
