"""Multi-process training (resforce.training.distributed): 2 CPU ranks with Gloo under torchrun, DDP and FSDP2.

One torchrun launch runs this file as its script for both modes in turn (`_driver` below): an uninterrupted
tiny Resampling Forcing run (3 teacher steps, 3 resampling steps, 2 gradient-accumulation
micro-batches), the same run stopped at step 4 (inside the resampling stage) and resumed by a
fresh Trainer, and dumps of what each rank holds. The tests then check the files: checkpoints,
finite logged loss, identical weights on both ranks (DDP: each rank's full copy; FSDP: each
rank's shard is its slice of the gathered checkpoint), resumed == uninterrupted bit for bit,
and (FSDP) that the non-forward calls of the resampling pass (forward_chunk / write_cache on
the sharded model) give what an unsharded copy of the same weights gives.

A DDP run on 2 ranks is not compared with a single process on the same global batch: the ranks
draw different data and noise streams (by design), so the two runs see different samples.
NCCL / CUDA is not tested here (CPU-only).
"""

from __future__ import annotations

import json
import math
import socket
import sys
from pathlib import Path

import pytest
import torch

# process groups and torchrun launches run on one test worker (make test runs two: pytest-xdist)
pytestmark = pytest.mark.xdist_group("processes")

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "configs" / "bb_resampling.yaml")


def _overrides(run_dir, mode, *extra):
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from tiny import tiny
    return tiny(run_dir, "stages.0.steps=3", "stages.1.steps=3", "optim.grad_accum=2",
                f"parallel={mode}", "device=cpu", *extra)


# ----------------------------------------------------------------------------- the torchrun script
def _driver(modes: str, root: str) -> None:
    """Every mode of `modes` (comma-separated) in turn, in one launch (one torchrun start for
    all): each in its own folder root/MODE, on the one process group."""
    from resforce.training import distributed as parallel

    for mode in modes.split(","):
        _drive(mode, Path(root) / mode)
    parallel.shutdown()


def _drive(mode: str, out: Path) -> None:
    from torch.distributed.tensor import DTensor

    from resforce.training import distributed as parallel
    from resforce.io.weights import load_model
    from resforce.config import load_config
    from resforce.history import autoregressive_resample
    from resforce.training.loop import Trainer

    t = Trainer(load_config(RECIPE, _overrides(out / "full", mode)), progress=False)
    t.run()
    Trainer(load_config(RECIPE, _overrides(out / "part", mode)), progress=False).run(stop_at=4)
    Trainer(load_config(RECIPE, _overrides(out / "part", mode)), progress=False).run()
    # a single-process checkpoint (written by the test before the launch) resumed on 2 ranks
    Trainer(load_config(RECIPE, _overrides(out / "single", mode)), progress=False).run()

    r = parallel.rank()
    local = {n: (p.to_local() if isinstance(p, DTensor) else p).detach().clone()
             for n, p in t.model.named_parameters()}
    torch.save({"params": local, "world": parallel.world_size(), "mode": t.parallel},
               out / f"rank{r}.pt")

    # non-forward calls on the (sharded) training model vs an unsharded copy of its weights
    plain, _ = load_model(out / "full", prefer_ema=False)
    g = torch.Generator().manual_seed(123)
    clean = torch.rand(2, 3, 4, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(clean.shape, generator=g)
    t_s = torch.tensor([0.3, 0.7])
    t_hist = torch.zeros(2, 4)
    t.model.eval()
    with torch.no_grad():
        got = autoregressive_resample(t.model, clean, t_s, 2, noise=noise)
        want = autoregressive_resample(plain, clean, t_s, 2, noise=noise)
        fwd = t.model(clean, t_hist + 0.5, history=clean, t_history=t_hist)
        fwd_want = plain(clean, t_hist + 0.5, history=clean, t_history=t_hist)
    (out / f"resample_rank{r}.json").write_text(json.dumps({
        "resample_max_err": float((got - want).abs().max()),
        "forward_max_err": float((fwd - fwd_want).abs().max())}))


# ----------------------------------------------------------------------------- helpers


def _ckpt(run_dir):
    return load_checkpoint_at(run_dir, 6)


def _check_run(out: Path, mode: str) -> None:
    (m_full, e_full, s_full) = _ckpt(out / "full")
    (m_part, e_part, s_part) = _ckpt(out / "part")
    # losses were logged once per step (rank 0 only) and are finite
    for name in ("full", "part"):
        lines = [json.loads(ln) for ln in open(out / name / "metrics.jsonl")]
        assert [ln["step"] for ln in lines] == list(range(1, 7))
        assert all(math.isfinite(ln["loss"]) and math.isfinite(ln["grad_norm"]) for ln in lines)
    assert [ln["stage"] for ln in lines] == ["warmup"] * 3 + ["resampling"] * 3
    # every rank's stream state is in the checkpoint, and the streams differ by rank
    assert s_full["world_size"] == 2 and len(s_full["ranks"]) == 2
    assert not torch.equal(s_full["ranks"][0]["generator"], s_full["ranks"][1]["generator"])
    # resumed == uninterrupted, bit for bit (weights, EMA, optimizer moments)
    for k in m_full:
        assert torch.equal(m_full[k], m_part[k]), k
        assert torch.equal(e_full[k], e_part[k]), k
    for i, st in s_full["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg_sq"], s_part["optimizer"]["state"][i]["exp_avg_sq"]), i
    assert any(not torch.equal(m_full[k], e_full[k]) for k in m_full)  # EMA is not a copy
    # both ranks hold the checkpointed weights: DDP a full copy each, FSDP its dim-0 shard
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    assert all(d["world"] == 2 and d["mode"] == mode for d in ranks)
    for k, full in m_full.items():
        if mode == "ddp":
            for d in ranks:
                assert torch.equal(d["params"][k], full), k
        else:
            joined = torch.cat([d["params"][k] for d in ranks], dim=0)
            assert torch.equal(joined, full), k
            assert ranks[0]["params"][k].shape[0] < full.shape[0] or full.shape[0] == 1, k
    for r in range(2):
        err = json.loads((out / f"resample_rank{r}.json").read_text())
        assert err["resample_max_err"] < 1e-5 and err["forward_max_err"] < 1e-5, err


# ----------------------------------------------------------------------------- torchrun tests
@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One 2-rank launch trains both modes (root/ddp, root/fsdp), each from a single-process
    checkpoint written first; speed is not a unit test's business (benchmarks/)."""
    from torchrun_launch import run_torchrun
    from resforce.config import load_config
    from resforce.training.loop import train

    root = tmp_path_factory.mktemp("torchrun")
    for mode in ("ddp", "fsdp"):
        train(load_config(RECIPE, _overrides(root / mode / "single", "none")), stop_at=3, progress=False)
    run_torchrun(__file__, "ddp,fsdp", root)
    return root


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_two_ranks(launched, mode):
    from resforce.config import load_config
    from resforce.training.loop import train

    tmp_path = launched / mode
    _check_run(tmp_path, mode)
    # checkpoints are full and mode-independent, whatever the number of ranks: 1 -> 2 ranks
    # (in the launch) and 2 ranks -> 1 process (here), the streams re-derived with a warning
    assert _ckpt(tmp_path / "single")[2]["world_size"] == 2
    longer = load_config(RECIPE, _overrides(tmp_path / "full", "none", "stages.1.steps=4"))
    with pytest.warns(UserWarning, match="written by 2 rank"):
        train(longer, progress=False)
    m7, _, s7 = load_checkpoint_at(tmp_path / "full", 7)
    assert all(torch.isfinite(v).all() for v in m7.values()) and "ranks" not in s7


# ----------------------------------------------------------------------------- in-process checks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_rank_group(monkeypatch):
    """The environment torchrun gives a 1-process job; the Trainer opens the group itself."""
    for k, v in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(k, v)
    yield
    from resforce.training import distributed as parallel
    parallel.shutdown()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_one_rank_group_matches_single_process(tmp_path, one_rank_group, mode):
    """ddp / fsdp on a 1-rank Gloo group (a stop + resume inside the resampling stage): the
    same weights, bit for bit, as plain single-process training - the wrapping, the full
    state-dict round trips and the resampling on the raw / sharded model change nothing."""
    from resforce.config import load_config
    from resforce.training.loop import Trainer, train

    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from tiny import tiny

    def cfg(name, m, *extra):
        return load_config(RECIPE, tiny(tmp_path / name, "stages.0.steps=1", "stages.1.steps=2",
                                        f"parallel={m}", "device=cpu", *extra))

    t = Trainer(cfg("dist", mode), progress=False)
    from resforce.training import distributed as parallel
    assert t.parallel == mode and parallel.is_distributed() and parallel.world_size() == 1
    # one model handle: data parallelism is applied in place, no wrapper and no name prefix
    from resforce.model.dit import CausalVideoDiT
    assert isinstance(t.model, CausalVideoDiT) and hasattr(t.model, "set_requires_gradient_sync")
    assert not hasattr(t, "wrapped") and not any(k.startswith("module.") for k in t.model.state_dict())
    t.run(stop_at=2)
    Trainer(cfg("dist", mode), progress=False).run()  # resume inside the resampling stage
    m_dist = _ckpt_step(tmp_path / "dist", 3)
    parallel.shutdown()
    train(cfg("plain", "none"), progress=False)
    m_plain = _ckpt_step(tmp_path / "plain", 3)
    for k in m_plain:
        assert torch.equal(m_dist[k], m_plain[k]), k


def load_checkpoint_at(run_dir, step):
    from resforce.training.checkpoint import latest_checkpoint, load_checkpoint
    ckpt = latest_checkpoint(run_dir)
    assert ckpt.name == f"step_{step:08d}", ckpt
    return load_checkpoint(ckpt)


def _ckpt_step(run_dir, step):
    return load_checkpoint_at(run_dir, step)[0]


def test_global_batch_must_split_across_ranks(tmp_path, monkeypatch):
    from resforce.training import distributed as parallel
    from resforce.config import load_config
    from resforce.training.loop import Trainer

    monkeypatch.setattr(parallel, "world_size", lambda: 3)
    c = load_config(RECIPE, _overrides(tmp_path / "x", "none"))  # batch 4, grad_accum 2
    with pytest.raises(ValueError, match="global batch"):
        Trainer(c, progress=False)


def test_parallel_mode_errors(monkeypatch):
    from resforce.training import distributed as parallel

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert parallel.resolve_mode("auto") == "none"
    with pytest.raises(ValueError, match="torchrun"):
        parallel.resolve_mode("fsdp")
    with pytest.raises(ValueError, match="parallel must be"):
        parallel.resolve_mode("zero3")
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    assert parallel.resolve_mode("auto") == "ddp"
    with pytest.raises(ValueError, match="parallel=none"):
        parallel.resolve_mode("none")


if __name__ == "__main__":  # run by torchrun from the fixture `launched`
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    _driver(sys.argv[1], sys.argv[2])
    from torchrun_launch import end_rank

    end_rank()  # no interpreter teardown: see end_rank
